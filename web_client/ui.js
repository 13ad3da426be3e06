// The page's elements and the small widgets built on them: notices (errors with their actions),
// the screen-reader announcer, the status panel, the editable seed-prompt list and the sound control.
// No protocol or network code here.

const MAX_NOTICES = 5;

/** The page's elements, looked up once. */
export function getUi(doc = document) {
  const $ = (id) => doc.getElementById(id);
  return {
    doc,
    video: $("video"),
    placeholder: $("video-placeholder"),
    badge: $("connection-badge"),
    badgeText: $("badge-text"),
    form: $("prompt-form"),
    prompt: $("prompt"),
    status: $("status"),
    transport: $("transport"),
    transportSwitch: $("transport-switch"),
    queue: $("queue"),
    gpu: $("gpu"),
    segment: $("segment"),
    segmentPrompt: $("segment-prompt"),
    enhancedRow: $("enhanced-row"),
    enhancedPrompt: $("enhanced-prompt"),
    nextRow: $("next-row"),
    nextPrompt: $("next-prompt"),
    notices: $("notices"),
    announcer: $("announcer"),
    pause: $("pause"),
    enhancement: $("enhancement"),
    autoExtension: $("auto-extension"),
    loop: $("loop"),
    seedList: $("seed-list"),
    seedAdd: $("seed-add"),
    seedNew: $("seed-new"),
    stop: $("stop"),
    restart: $("restart"),
    snapshot: $("snapshot"),
    singleClip: $("single-clip"),
    initialImage: $("initial-image"),
    imagePreview: $("image-preview"),
    imageThumb: $("image-thumb"),
    imageName: $("image-name"),
    imageClear: $("image-clear"),
    resumeFile: $("resume-file"),
    resumeFresh: $("resume-fresh"),
    sessionHint: $("session-hint"),
    sound: $("sound"),
    soundToggle: $("sound-toggle"),
    soundText: $("sound-text"),
    soundVolume: $("sound-volume"),
  };
}

/**
 * The sound control over the video: a mute toggle and a volume slider acting on the <video>'s
 * muted and volume (the page starts muted: autoplay rules). Hidden while the stream has no sound.
 * `onUnmute()` runs inside the viewer's gesture (the AudioContext may start then).
 */
export class SoundControl {
  constructor(ui, video, { onUnmute = () => {} } = {}) {
    this.ui = ui;
    this.video = video;
    this.onUnmute = onUnmute;
    ui.soundToggle.addEventListener("click", () => this.setMuted(!video.muted));
    ui.soundVolume.addEventListener("input", () => {
      const volume = Number(ui.soundVolume.value) / 100;
      video.volume = volume;
      if (volume > 0 && video.muted) this.setMuted(false); // moving the slider up means "I want sound"
      this.sync();
    });
    video.addEventListener("volumechange", () => this.sync());
    this.sync();
  }

  setMuted(muted) {
    const video = this.video;
    if (!muted && video.volume === 0) video.volume = 1; // unmuting at volume 0 would still be silent
    video.muted = muted;
    if (!muted) this.onUnmute();
    announce(this.ui, muted ? "Sound off." : "Sound on.");
    this.sync();
  }

  /** Shows or hides the control: `available` when the current stream has sound. */
  setAvailable(available) {
    this.ui.sound.hidden = !available;
    this.ui.sound.dataset.available = String(Boolean(available));
  }

  sync() {
    const { soundToggle, soundText, soundVolume } = this.ui;
    const muted = this.video.muted;
    soundToggle.dataset.muted = String(muted);
    soundText.textContent = muted ? "Unmute" : "Mute";
    const percent = Math.round(this.video.volume * 100);
    if (Number(soundVolume.value) !== percent) soundVolume.value = String(percent);
    soundVolume.setAttribute("aria-valuetext", muted ? `${percent} %, muted` : `${percent} %`);
  }
}

function element(doc, tag, props = {}, children = []) {
  const el = doc.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el) el[key] = value;
    else el.setAttribute(key, value);
  }
  for (const child of children) el.append(child);
  return el;
}

/**
 * Shows a notice at the top of the notices region: {kind: "error"|"warning"|"info", title, detail,
 * code, actions: [{label, run}], timeoutMs}. Errors and warnings are alerts (announced at once).
 * Returns {el, append(text), setActions(actions), remove()}.
 */
export function showNotice(ui, { kind = "error", title, detail = "", code = null, actions = [], timeoutMs = 0 }) {
  const doc = ui.doc;
  const detailEl = element(doc, "p", { className: "notice-detail", textContent: detail });
  const titleEl = element(doc, "p", { className: "notice-title" }, [
    element(doc, "strong", { textContent: title }),
    ...(code ? [" ", element(doc, "code", { textContent: code })] : []),
  ]);
  const actionsEl = element(doc, "div", { className: "notice-actions" });
  const el = element(doc, "div", { className: `notice notice-${kind}`, role: kind === "info" ? "status" : "alert" }, [
    titleEl,
    detailEl,
    actionsEl,
  ]);
  if (code) el.dataset.code = code;
  el.dataset.kind = kind;
  let timer = null;
  const handle = {
    el,
    append(text) {
      detailEl.textContent = detailEl.textContent ? `${detailEl.textContent} · ${text}` : text;
    },
    setActions(list) {
      actionsEl.replaceChildren();
      for (const action of list) {
        const button = element(doc, "button", { type: "button", textContent: action.label, className: action.primary ? "primary" : "" });
        button.dataset.action = action.id || action.label.toLowerCase();
        button.addEventListener("click", () => {
          handle.remove();
          action.run();
        });
        actionsEl.append(button);
      }
      const dismiss = element(doc, "button", { type: "button", className: "dismiss", textContent: "Dismiss" });
      dismiss.setAttribute("aria-label", `Dismiss: ${title}`);
      dismiss.dataset.action = "dismiss";
      dismiss.addEventListener("click", () => {
        handle.remove();
        ui.prompt.focus();
      });
      actionsEl.append(dismiss);
    },
    remove() {
      if (timer) clearTimeout(timer);
      el.remove();
    },
  };
  handle.setActions(actions);
  ui.notices.prepend(el);
  while (ui.notices.children.length > MAX_NOTICES) ui.notices.lastElementChild.remove();
  if (timeoutMs > 0) timer = setTimeout(() => handle.remove(), timeoutMs);
  return handle;
}

/** Says `text` to screen readers (polite), without moving focus. */
export function announce(ui, text) {
  ui.announcer.textContent = "";
  // A fresh text node per message so that repeated texts are announced again.
  setTimeout(() => {
    ui.announcer.textContent = text;
  }, 50);
}

/** The status line: one short sentence; `state` "ok" or "error". */
export function setStatus(ui, text, state = "ok") {
  if (ui.status.textContent !== text) ui.status.textContent = text;
  ui.status.dataset.state = state;
  ui.status.classList.toggle("error", state === "error");
}

/** The header badge: {state: connecting|queued|live|paused|ended|error, text}. */
export function setBadge(ui, state, text) {
  ui.badge.dataset.state = state;
  ui.badgeText.textContent = text;
}

export const TRANSPORT_LABELS = { webrtc: "WebRTC", ws: "WebSocket · MSE" };

/** Shows the transport in use (and why, after a fallback) and offers a link to force the other one. */
export function showTransport(ui, kind, note = "") {
  const label = TRANSPORT_LABELS[kind] || kind;
  ui.transport.textContent = note ? `${label} (${note})` : label;
  ui.transport.dataset.transport = kind;
  const other = kind === "ws" ? "webrtc" : "ws";
  const query = new URLSearchParams(location.search); // keeps ?relay=1 and the like
  query.set("transport", other);
  ui.transportSwitch.href = `?${query}`;
  ui.transportSwitch.textContent = `use ${TRANSPORT_LABELS[other]}`;
}

/** The status panel from a StreamModel plus the page's own settings. */
export function renderModel(ui, model, { enhancement }) {
  if (model.queuePosition === null) ui.queue.textContent = "–";
  else if (model.queuePosition === 0) {
    ui.queue.textContent = model.queueDepth > 0 ? `admitted (${model.queueDepth} waiting)` : "admitted";
  } else {
    ui.queue.textContent = `waiting: position ${model.queuePosition} of ${Math.max(model.queueDepth, model.queuePosition)}`;
  }
  ui.queue.dataset.position = model.queuePosition === null ? "" : String(model.queuePosition);

  ui.gpu.textContent = model.gpuId === null ? "–" : `GPU ${model.gpuId}${model.sessionTimeoutS ? ` · ends after ${model.sessionTimeoutS} s without input` : ""}`;

  if (model.segmentIdx === null) {
    ui.segment.textContent = model.stream ? `starting (${model.stream.width}×${model.stream.height} @ ${model.stream.fps} fps)` : "–";
  } else {
    let progress;
    if (model.generating) progress = `generating step ${model.step}/${model.totalSteps}`;
    else if (model.generationMs !== null) progress = `generated in ${Math.round(model.generationMs)} ms`;
    else progress = "";
    const parts = [`segment ${model.segmentIdx}`, `${model.segmentsReceived} received`];
    if (progress) parts.push(progress);
    if (model.skipped) parts.push(`${model.skipped} skipped`);
    ui.segment.textContent = parts.join(" · ");
  }
  ui.segment.dataset.segmentIdx = model.segmentIdx === null ? "" : String(model.segmentIdx);
  ui.segment.dataset.started = String(model.segmentsStarted);
  ui.segment.dataset.received = String(model.segmentsReceived);

  ui.segmentPrompt.textContent = model.segmentPrompt === null ? "–" : model.segmentPrompt;

  const enhanced = model.enhancedForCurrent();
  ui.enhancedRow.hidden = !enhancement && !enhanced;
  if (enhanced) ui.enhancedPrompt.textContent = enhanced.promptUsed;
  else if (enhancement) ui.enhancedPrompt.textContent = model.segmentPrompt === null ? "on: waiting for a prompt" : "on: this prompt was used as written";

  const next = model.nextPrompt;
  ui.nextRow.hidden = !next;
  if (next) {
    const target = next.segmentIdx === null ? "" : ` → segment ${next.segmentIdx}`;
    const used = next.enhanced && next.promptUsed !== next.prompt ? ` (enhanced: “${next.promptUsed}”)` : "";
    ui.nextPrompt.textContent = `“${next.prompt}”${used}${target}`;
  }
}

/**
 * Renders the seed prompts as an ordered list of editable rows. `handlers`: {edit(i, text),
 * play(i), rewrite(i), remove(i), use(i, alternative)}; `rewrites`: Map index -> {busy, alternatives}.
 */
export function renderSeeds(ui, seeds, rewrites, handlers) {
  const doc = ui.doc;
  const focused = doc.activeElement && ui.seedList.contains(doc.activeElement) ? doc.activeElement.id : null;
  ui.seedList.replaceChildren();
  seeds.forEach((text, i) => {
    const n = i + 1;
    const input = element(doc, "input", { type: "text", id: `seed-${i}`, value: text, className: "seed-text" });
    input.setAttribute("aria-label", `Seed prompt ${n}`);
    input.addEventListener("change", () => handlers.edit(i, input.value));
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        handlers.edit(i, input.value);
      }
    });
    const button = (id, label, aria, run) => {
      const el = element(doc, "button", { type: "button", id, textContent: label });
      el.setAttribute("aria-label", aria);
      el.addEventListener("click", run);
      return el;
    };
    const rewrite = rewrites.get(i);
    const variations = button(`seed-${i}-rewrite`, rewrite && rewrite.busy ? "Finding…" : "Variations", `Suggest variations of seed prompt ${n}`, () => handlers.rewrite(i));
    variations.disabled = Boolean(rewrite && rewrite.busy);
    const row = element(doc, "li", { className: "seed" }, [
      input,
      element(doc, "div", { className: "seed-actions" }, [
        button(`seed-${i}-play`, "Play", `Play seed prompt ${n} now`, () => handlers.play(i)),
        variations,
        button(`seed-${i}-remove`, "Remove", `Remove seed prompt ${n}`, () => handlers.remove(i)),
      ]),
    ]);
    if (rewrite && rewrite.alternatives && rewrite.alternatives.length) {
      const list = element(doc, "ul", { className: "alternatives" });
      list.setAttribute("aria-label", `Variations of seed prompt ${n}`);
      rewrite.alternatives.forEach((alternative, k) => {
        const use = element(doc, "button", { type: "button", id: `seed-${i}-alt-${k}`, className: "alternative", textContent: alternative });
        use.setAttribute("aria-label", `Use variation: ${alternative}`);
        use.addEventListener("click", () => handlers.use(i, alternative));
        list.append(element(doc, "li", {}, [use]));
      });
      row.append(list);
    }
    ui.seedList.append(row);
  });
  if (focused) {
    const again = doc.getElementById(focused);
    if (again) again.focus();
  }
}
