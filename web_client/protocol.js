// Control protocol handling shared by both transports (WebRTC data channel and WebSocket):
// the page's elements, the status line, dispatch of server messages, and the prompt form.
// Message names follow shared/reference/protocol.md.

/** The page's elements, looked up once. */
export function getUi(doc = document) {
  return {
    video: doc.getElementById("video"),
    form: doc.getElementById("prompt-form"),
    prompt: doc.getElementById("prompt"),
    status: doc.getElementById("status"),
    segment: doc.getElementById("segment"),
    transport: doc.getElementById("transport"),
    transportSwitch: doc.getElementById("transport-switch"),
  };
}

/** Shows `text` in the status line; error text is styled and kept until the next error or reset. */
export function showStatus(ui, text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
  ui.status.dataset.state = isError ? "error" : "ok";
}

export function hasError(ui) {
  return ui.status.dataset.state === "error";
}

/** Shows the transport in use and offers a link to the other one. */
export function showTransport(ui, transport, note = "") {
  ui.transport.textContent = `transport: ${transport}${note ? ` (${note})` : ""}`;
  ui.transport.dataset.transport = transport;
  if (ui.transportSwitch) {
    const other = transport === "ws" ? "webrtc" : "ws";
    ui.transportSwitch.href = `?transport=${other}`;
    ui.transportSwitch.textContent = `switch to ${other}`;
  }
}

/** Status text for a WebSocket close event; `null` for a normal close (code 1000). */
export function describeClose(event) {
  if (event.code === 1000) return null;
  const reason = event.reason ? `: ${event.reason}` : "";
  return `connection closed (code ${event.code}${reason})`;
}

/**
 * Returns a function that applies one parsed server message to the page.
 * Media messages (media_init, media_segment_complete, media_segment_skipped) are the
 * transport's business; here they only update the segment line where useful.
 */
export function createMessageHandler(ui) {
  const segments = new Map(); // segment_idx -> prompt
  let totalSteps = 0;

  function showSegment(idx, suffix = "") {
    const prompt = segments.get(idx);
    const text = prompt === undefined ? `segment ${idx}` : `segment ${idx}: ${prompt}`;
    ui.segment.textContent = suffix ? `${text} (${suffix})` : text;
    ui.segment.dataset.segmentIdx = String(idx);
  }

  return function handleMessage(message) {
    switch (message.type) {
      case "queue_status":
        showStatus(ui, `queued: position ${message.position} of ${message.queue_depth}`);
        break;
      case "gpu_assigned":
        showStatus(ui, `worker ${message.gpu_id} assigned`);
        break;
      case "ltx2_stream_start":
        showStatus(ui, `streaming ${message.width}x${message.height} @ ${message.fps} fps`);
        break;
      case "ltx2_segment_start":
        segments.set(message.segment_idx, message.prompt);
        totalSteps = message.total_steps;
        // Forget prompts of segments long gone.
        for (const idx of segments.keys()) if (idx < message.segment_idx - 8) segments.delete(idx);
        showSegment(message.segment_idx, `generating 0/${totalSteps}`);
        break;
      case "step_complete":
        showSegment(message.segment_idx, `generating ${message.step}/${message.total_steps}`);
        break;
      case "ltx2_segment_complete":
        showSegment(message.segment_idx, `generated in ${Math.round(message.generation_time_ms)} ms`);
        break;
      case "media_segment_skipped":
        showStatus(ui, `segment ${message.segment_idx} skipped (client fell behind)`);
        break;
      case "prompt_received":
        if (!hasError(ui)) showStatus(ui, `prompt received: ${message.prompt_used}`);
        break;
      case "prompt_rejected":
        showStatus(ui, `prompt rejected: ${message.reason}`, true);
        break;
      case "session_timeout":
        showStatus(ui, `session timed out after ${message.timeout_seconds} s idle`, true);
        break;
      case "error":
        showStatus(ui, `error (${message.code}): ${message.message}`, true);
        break;
      case "ltx2_stream_complete":
        if (hasError(ui)) {
          showStatus(ui, `${ui.status.textContent}; stream ended: ${message.reason}`, true);
        } else {
          showStatus(ui, `stream complete: ${message.reason}`, message.reason === "error");
        }
        break;
      default:
        break;
    }
  };
}

/** Parses one text frame; returns null (and reports it) when it is not a protocol message. */
export function parseMessage(ui, text) {
  try {
    const message = JSON.parse(text);
    if (message && typeof message.type === "string") return message;
  } catch {
    // fall through
  }
  console.warn("ignoring a malformed control message", text);
  return null;
}

/** The client message for a prompt typed into the form. */
export function promptMessage(prompt) {
  return { type: "segment_prompt_source", prompt, source: "user" };
}

/**
 * Wires the prompt form: `send(message)` gets the message object and returns false when the
 * connection cannot take it (the prompt then stays in the input).
 */
export function bindPromptForm(ui, send) {
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = ui.prompt.value.trim();
    if (!prompt) return;
    if (send(promptMessage(prompt))) {
      ui.prompt.value = "";
    } else {
      showStatus(ui, "not connected: prompt not sent", true);
    }
  });
}
