// The owner page's recording control. It appears once the server says the session is recorded
// (recording_updated{enabled}, sent after ltx2_stream_start when streaming.recording_dir is set,
// and echoed after every toggle): a REC indicator, a button that stops or starts recording (each
// start is a new file), and the session's recordings, listed with the resume token (the owner's
// secret: a watch token does not do), each downloadable once it is finalised. The list stays
// reachable after the session ends, which is when the last file is finalised.

const LIST_RETRY_MS = 1000; // a file still being finalised (state "recording") is asked for again
const LIST_RETRIES = 10;

/** The recordings list of a session: GET /v1/sessions/{id}/recording with the resume token. */
export async function fetchRecordings(sessionId, resumeToken, fetchImpl = fetch) {
  const response = await fetchImpl(`/v1/sessions/${encodeURIComponent(sessionId)}/recording`, {
    headers: { Authorization: `Bearer ${resumeToken}` },
    cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return Array.isArray(body && body.recordings) ? body.recordings : [];
}

/** A finalised recording's download link: its url, with the token (an <a download> sends no header). */
export function downloadLink(recording, resumeToken) {
  const url = new URL(recording.url, location.href);
  url.searchParams.set("token", resumeToken);
  return url.href;
}

export class RecordingControl {
  /** `send(message)`: to the live session (false when there is none); `announce(text)`: screen readers. */
  constructor(doc, { send, announce = () => {} }) {
    const $ = (id) => doc.getElementById(id);
    this.doc = doc;
    this.send = send;
    this.announce = announce;
    this.root = $("recording");
    this.state = $("recording-state");
    this.toggleButton = $("recording-toggle");
    this.listButton = $("recording-list");
    this.list = $("recording-files");
    this.hint = $("recording-hint");
    this.enabled = false;
    this.owner = null; // {sessionId, token}: whose recordings the list shows
    this.listTimer = null;
    this.toggleButton.addEventListener("click", () => this.toggle());
    this.listButton.addEventListener("click", () => this.showList());
  }

  /** session_info: the session (and token) recordings are listed for; a new session starts afresh. */
  bind(sessionId, resumeToken) {
    if (!this.owner || this.owner.sessionId !== sessionId) this.reset();
    this.owner = { sessionId, token: resumeToken };
  }

  /** recording_updated{enabled} from the server: the session is (not) being recorded now. */
  update(enabled) {
    this.enabled = enabled === true;
    this.root.hidden = false;
    this.root.dataset.state = this.enabled ? "on" : "off";
    this.state.textContent = this.enabled ? "● Recording" : "Not recording";
    this.toggleButton.textContent = this.enabled ? "Stop recording" : "Record";
    this.toggleButton.setAttribute("aria-pressed", String(this.enabled));
    this.toggleButton.disabled = false;
    this.announce(this.enabled ? "Recording this session." : "Recording stopped.");
  }

  /** The session ended: no more toggling, the list (and downloads) stay. */
  ended() {
    this.toggleButton.disabled = true;
    if (this.enabled) this.state.textContent = "Recorded";
    this.enabled = false;
  }

  toggle() {
    const wanted = !this.enabled;
    if (this.send({ type: "recording_updated", enabled: wanted })) {
      this.toggleButton.disabled = true; // until the server's answer says what it did
    }
  }

  async showList(attempt = 0) {
    if (!this.owner) return;
    clearTimeout(this.listTimer);
    const { sessionId, token } = this.owner;
    let recordings;
    try {
      recordings = await fetchRecordings(sessionId, token);
    } catch (error) {
      this.hint.textContent = `Recordings unavailable: ${error.message}`;
      return;
    }
    if (!this.owner || this.owner.sessionId !== sessionId) return;
    this.render(recordings, token);
    const finishing = recordings.some((r) => r.state === "recording");
    if (finishing && !this.enabled && attempt < LIST_RETRIES) {
      this.listTimer = setTimeout(() => this.showList(attempt + 1), LIST_RETRY_MS);
    }
  }

  render(recordings, token) {
    this.list.replaceChildren();
    for (const recording of recordings) {
      const item = this.doc.createElement("li");
      item.dataset.state = recording.state;
      const seconds = typeof recording.duration_s === "number" ? `${recording.duration_s.toFixed(1)} s` : "";
      if (recording.state === "ready" && recording.url) {
        const link = this.doc.createElement("a");
        link.href = downloadLink(recording, token);
        link.download = recording.name;
        link.textContent = `${recording.name} (${seconds})`;
        item.append(link);
      } else {
        item.textContent = `${recording.name} (${recording.state === "recording" ? "recording…" : recording.state})`;
      }
      this.list.append(item);
    }
    this.hint.textContent = recordings.length ? "" : "No recording yet.";
  }

  reset() {
    clearTimeout(this.listTimer);
    this.enabled = false;
    this.owner = null;
    this.root.hidden = true;
    this.list.replaceChildren();
    this.hint.textContent = "";
    delete this.root.dataset.state;
  }
}
