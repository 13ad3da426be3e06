// The JSON control protocol (shared/reference/protocol.md), shared by both transports: the WebRTC
// data channel "control" and the WebSocket /v1/stream. Pure code, no DOM and no network:
// client message builders, parsing, human descriptions of errors and close codes, and
// StreamModel, which folds server messages into the state the page shows.

/** Client message types (the contract: names and fields must not change). */
export const CLIENT = Object.freeze({
  init: "session_init_v2",
  prompt: "segment_prompt_source",
  seeds: "seed_prompts_updated",
  enhancement: "enhancement_updated",
  autoExtension: "auto_extension_updated",
  loop: "loop_generation_updated",
  paused: "generation_paused_updated",
  snapshot: "snapshot_state",
  rewrite: "rewrite_seed_prompts",
});

export const IMAGE_MIME_TYPES = ["image/png", "image/jpeg", "image/jpg", "image/webp"];
export const MAX_IMAGE_BYTES = 32 * 1024 * 1024; // decoded, as the server enforces

/**
 * session_init_v2 from the page's settings.
 * settings: {curatedPrompts, enhancement, autoExtension, loop, singleClip, initialImage, continuationState,
 *            continuationFallback, clientId}; streamMode is "webrtc" or "av_fmp4".
 */
export function sessionInit(settings, streamMode) {
  const message = {
    type: CLIENT.init,
    stream_mode: streamMode,
    curated_prompts: (settings.curatedPrompts || []).filter((p) => p.trim() !== ""),
    enhancement_enabled: Boolean(settings.enhancement),
    auto_extension_enabled: Boolean(settings.autoExtension),
    loop_generation_enabled: Boolean(settings.loop),
    single_clip_mode: Boolean(settings.singleClip),
  };
  if (settings.clientId) message.client_id = settings.clientId;
  if (settings.initialImage) {
    const { mime, name, data } = settings.initialImage;
    message.initial_image = { mime, name, data };
  }
  if (settings.continuationState) {
    message.continuation_state = settings.continuationState;
    message.continuation_fallback = settings.continuationFallback === "fresh" ? "fresh" : "error";
  }
  return message;
}

export function promptMessage(prompt, source = "user") {
  return { type: CLIENT.prompt, prompt, source };
}

export function seedPromptsMessage(prompts) {
  return { type: CLIENT.seeds, seed_prompts: prompts.filter((p) => p.trim() !== "") };
}

/** One of the boolean live settings: "enhancement", "autoExtension", "loop". */
export function toggleMessage(setting, enabled) {
  const type = CLIENT[setting];
  if (!type || setting === "paused") throw new Error(`not a toggle: ${setting}`);
  return { type, enabled: Boolean(enabled) };
}

export function pausedMessage(paused) {
  return { type: CLIENT.paused, paused: Boolean(paused) };
}

export function snapshotMessage() {
  return { type: CLIENT.snapshot };
}

export function rewriteMessage(seedPrompt, count = 3) {
  return { type: CLIENT.rewrite, seed_prompt: seedPrompt, count };
}

/** Parses one text frame; null when it is not a protocol message. */
export function parseMessage(text) {
  try {
    const message = JSON.parse(text);
    if (message && typeof message === "object" && typeof message.type === "string") return message;
  } catch {
    // fall through
  }
  return null;
}

/** Parses an uploaded snapshot: our file format, a bare {kind, payload}, or the server message. */
export function snapshotFromFile(data) {
  const candidates = [data && data.state, data, data && data.continuation_state];
  for (const state of candidates) {
    if (state && typeof state.kind === "string" && state.kind && state.payload && typeof state.payload === "object" && !Array.isArray(state.payload)) {
      return { kind: state.kind, payload: state.payload };
    }
  }
  return null;
}

const ERROR_TITLES = {
  session_rejected: "The server is full",
  gpu_unavailable: "No GPU is available",
  worker_failed: "A GPU worker failed",
  upstream_timeout: "The generator timed out",
  internal_error: "Server error",
  preset_mismatch: "Preset mismatch",
  invalid_message: "Request refused",
  rate_limited: "Too many requests",
  unauthorized: "Not authorized: this page needs a valid access token",
};

// What the viewer can do about an error, where the server's message does not say it.
const ERROR_HINTS = {
  unauthorized: "Open the link you were given (it ends in #token=…), or ask whoever runs this service for access.",
};

/**
 * A server `error` message (or an HTTP `{error:{...}}` body) as {title, detail, code, retryable, hint}.
 * `hint` is what the viewer can do about it ("" when nothing to add).
 */
export function describeError(error) {
  const code = error && typeof error.code === "string" ? error.code : "internal_error";
  const message = error && typeof error.message === "string" ? error.message : "";
  let title = ERROR_TITLES[code] || "Error";
  if (code === "invalid_message" && /rewrit/i.test(message)) title = "Prompt suggestions are unavailable";
  else if (code === "invalid_message" && /continuation_state|snapshot/i.test(message)) title = "Snapshot not usable";
  else if (code === "invalid_message" && /image/i.test(message)) title = "Initial image refused";
  // A refused token stays refused: never offer a Retry for it, whatever the answer says. A full
  // server says session_rejected not retryable (as the original: no automatic retry), but a person
  // may well try again a little later.
  const retryable = code !== "unauthorized" && (Boolean(error && error.retryable) || code === "session_rejected");
  return { title, detail: message, code, retryable, hint: ERROR_HINTS[code] || "" };
}

/** `prompt_rejected` as {title, detail}. */
export function describeRejection(message) {
  const extras = [];
  if (message.label) extras.push(message.label);
  if (typeof message.score === "number") extras.push(`score ${message.score.toFixed(2)}`);
  const why = message.reason || "not accepted";
  return {
    title: "Prompt rejected",
    detail: `“${message.prompt}”: ${why}${extras.length ? ` (${extras.join(", ")})` : ""}`,
  };
}

const CLOSE_CODES = {
  1000: { text: "closed normally", retryable: false },
  1001: { text: "the server is shutting down", retryable: true },
  1003: { text: "the server refused the session settings", retryable: false },
  1006: { text: "connection lost", retryable: true },
  1008: { text: "the page stopped reading fast enough", retryable: true },
  1009: { text: "a message was too large", retryable: false },
  1011: { text: "internal server failure", retryable: true },
  1012: { text: "the server is restarting; the session moves to another", retryable: true },
  1013: { text: "server full, try again later", retryable: true },
  4401: { text: "not authorized", retryable: false, error: "unauthorized" },
  4429: { text: "too many requests, try again later", retryable: true, error: "rate_limited" },
};

/**
 * A WebSocket close as {code, text, retryable, normal, error}; `error` is the `{code, message,
 * retryable}` the close stands for (4401: unauthorized, 4429: rate_limited), else null.
 */
export function describeClose(code, reason = "") {
  const known = CLOSE_CODES[code] || { text: "connection closed", retryable: true };
  const text = `${known.text} (code ${code}${reason ? `: ${reason}` : ""})`;
  const error = known.error ? { code: known.error, message: text, retryable: known.retryable } : null;
  return { code, text, retryable: known.retryable, normal: code === 1000, error };
}

/**
 * The session as the server describes it. `apply(message)` folds one server message in and
 * returns what changed that the page may want to announce: {promptChanged, ended, admitted}.
 */
export class StreamModel {
  constructor() {
    this.reset();
  }

  reset() {
    this.queuePosition = null; // 0 admitted, > 0 waiting
    this.queueDepth = null;
    this.gpuId = null;
    this.sessionTimeoutS = null;
    this.stream = null; // {width, height, fps, numFrames}
    this.segmentIdx = null; // latest segment started
    this.segmentPrompt = null;
    this.step = 0;
    this.totalSteps = 0;
    this.generating = false;
    this.segmentsStarted = 0;
    this.segmentsReceived = 0;
    this.lastCompleteIdx = null;
    this.generationMs = null;
    this.e2eMs = null;
    this.nextPrompt = null; // {prompt, promptUsed, enhanced, segmentIdx}
    this.enhancedPrompt = null; // {prompt, promptUsed, segmentIdx}: the latest enhanced prompt
    this.prompts = new Map(); // segment_idx -> prompt, recent ones
    this.skipped = 0;
    this.endReason = null; // stream_complete reason or "timeout"
    this.lastError = null;
  }

  apply(message) {
    const change = { promptChanged: false, ended: false, admitted: false };
    switch (message.type) {
      case "queue_status":
        change.admitted = message.position === 0 && this.queuePosition !== 0;
        this.queuePosition = message.position;
        this.queueDepth = message.queue_depth;
        break;
      case "gpu_assigned":
        this.gpuId = message.gpu_id;
        this.sessionTimeoutS = message.session_timeout;
        break;
      case "ltx2_stream_start":
        this.stream = { width: message.width, height: message.height, fps: message.fps, numFrames: message.num_frames };
        break;
      case "ltx2_segment_start": {
        change.promptChanged = message.prompt !== this.segmentPrompt;
        if (this.segmentIdx !== message.segment_idx) this.segmentsStarted += 1; // a retried segment starts again
        this.segmentIdx = message.segment_idx;
        this.segmentPrompt = message.prompt;
        this.step = 0;
        this.totalSteps = message.total_steps;
        this.generating = true;
        this.prompts.set(message.segment_idx, message.prompt);
        for (const idx of this.prompts.keys()) if (idx < message.segment_idx - 16) this.prompts.delete(idx);
        if (this.nextPrompt && (this.nextPrompt.segmentIdx === null || this.nextPrompt.segmentIdx <= message.segment_idx)) {
          if (message.prompt === this.nextPrompt.promptUsed || message.prompt === this.nextPrompt.prompt) this.nextPrompt = null;
        }
        break;
      }
      case "step_complete":
        if (message.segment_idx === this.segmentIdx) {
          this.step = message.step;
          this.totalSteps = message.total_steps;
        }
        break;
      case "ltx2_segment_complete":
        this.segmentsReceived += 1;
        this.lastCompleteIdx = message.segment_idx;
        this.generationMs = message.generation_time_ms;
        if (typeof message.e2e_latency_ms === "number") this.e2eMs = message.e2e_latency_ms;
        if (message.segment_idx === this.segmentIdx) this.generating = false;
        break;
      case "media_segment_skipped":
        this.skipped += 1;
        break;
      case "prompt_received": {
        const entry = {
          prompt: message.prompt,
          promptUsed: message.prompt_used || message.prompt,
          enhanced: Boolean(message.enhanced),
          source: message.source,
          segmentIdx: typeof message.segment_idx === "number" ? message.segment_idx : null,
        };
        this.nextPrompt = entry;
        if (entry.enhanced) this.enhancedPrompt = entry;
        break;
      }
      case "ltx2_stream_complete":
        this.endReason = message.reason;
        this.generating = false;
        change.ended = true;
        break;
      case "session_timeout":
        this.endReason = "timeout";
        this.generating = false;
        change.ended = true;
        break;
      case "error":
        this.lastError = message;
        break;
      default:
        break;
    }
    return change;
  }

  /** The enhanced text behind the current segment's prompt, when the server enhanced it. */
  enhancedForCurrent() {
    const entry = this.enhancedPrompt;
    if (!entry || this.segmentPrompt === null) return null;
    if (entry.promptUsed === this.segmentPrompt && entry.promptUsed !== entry.prompt) return entry;
    return null;
  }
}
