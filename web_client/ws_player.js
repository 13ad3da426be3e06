// WebSocket fallback: JSON control messages as text frames, video as fMP4 binary frames played
// through Media Source Extensions.
//
// Per segment the server sends media_init{mime}, then the init segment (ftyp+moov) as the first
// binary frame, then moof+mdat fragments, then media_segment_complete. Media timestamps continue
// across segments, so one SourceBuffer in "segments" mode takes init + fragments of every segment
// in order.

import { bindPromptForm, describeClose, hasError, parseMessage, showStatus } from "./protocol.js";

const KEEP_BEHIND_S = 10; // buffered media kept behind currentTime when the quota runs out
const LIVE_EDGE_MARGIN_S = 0.1; // where a live-edge jump lands, before the buffered end
const QUOTA_RETRY_MS = 500; // wait this long when nothing can be evicted yet
const DEFAULT_SEGMENT_S = 1.0; // until the first media_segment_complete tells the real duration
// Live edge: jump when the playhead is more than one segment behind the end of what was buffered
// before the newest segment arrived, i.e. more than two segments behind the buffered end. The
// server paces so the client holds up to lookahead (1) + the segment just delivered; a one-segment
// threshold skipped the first segment of every session and then ran the buffer dry each segment.
const MAX_LAG_SEGMENTS = 2;

/**
 * Plays a stream of fMP4 buffers on a <video> through one MediaSource/SourceBuffer.
 * Appends are strictly sequential: appendBuffer is asynchronous and a second call while
 * `updating` throws, so every buffer waits in a queue for the previous `updateend`.
 */
export class MsePlayer {
  constructor(video, { onError = () => {}, onStatus = () => {} } = {}) {
    if (!("MediaSource" in window)) throw new Error("Media Source Extensions are not supported by this browser");
    this.video = video;
    this.onError = onError;
    this.onStatus = onStatus;
    this.mediaSource = new MediaSource();
    this.sourceBuffer = null;
    this.mime = null;
    this.queue = []; // ArrayBuffers waiting to be appended, in order
    this.pendingRemove = false;
    this.retryTimer = null;
    this.segmentDuration = DEFAULT_SEGMENT_S;
    this.playRequested = false;
    this.failed = false;
    this.liveJumps = 0;
    this.stalls = 0;
    this.maxLagSegments = MAX_LAG_SEGMENTS;
    this.appended = 0;
    this.opened = new Promise((resolve) => {
      this.mediaSource.addEventListener("sourceopen", resolve, { once: true });
    });
    this.objectUrl = URL.createObjectURL(this.mediaSource);
    video.srcObject = null;
    video.src = this.objectUrl;
    video.addEventListener("timeupdate", () => this.keepNearLiveEdge());
    video.addEventListener("waiting", () => { if (this.playRequested) this.stalls += 1; });
    video.addEventListener("error", () => {
      const error = video.error;
      this.fail(`video error ${error ? error.code : "?"}: ${error && error.message ? error.message : "decode failed"}`);
    });
  }

  /** A segment starts (media_init): creates the SourceBuffer from the first mime seen. */
  async beginSegment(mime) {
    if (this.failed || this.sourceBuffer) {
      if (this.mime && mime !== this.mime) console.warn(`media_init mime changed from ${this.mime} to ${mime}`);
      return;
    }
    if (!MediaSource.isTypeSupported(mime)) {
      this.fail(`this browser cannot play ${mime}`);
      return;
    }
    this.mime = mime; // set before awaiting so later media_init calls do not create a second buffer
    await this.opened;
    if (this.failed) return;
    try {
      this.sourceBuffer = this.mediaSource.addSourceBuffer(mime);
    } catch (error) {
      this.fail(`cannot create a SourceBuffer for ${mime}: ${error.message}`);
      return;
    }
    this.sourceBuffer.mode = "segments";
    this.sourceBuffer.addEventListener("updateend", () => this.onUpdateEnd());
    this.sourceBuffer.addEventListener("error", () => this.fail("SourceBuffer append failed"));
    this.pump();
  }

  /** One binary frame (init segment or fragment), appended after everything before it. */
  append(buffer) {
    if (this.failed) return;
    this.queue.push(buffer);
    this.pump();
  }

  /** media_segment_complete: learns the segment duration used for the live-edge check. */
  endSegment(durationMs) {
    if (typeof durationMs === "number" && durationMs > 0) this.segmentDuration = durationMs / 1000;
  }

  pump() {
    const sb = this.sourceBuffer;
    if (!sb || this.failed || sb.updating || this.pendingRemove || this.retryTimer !== null) return;
    if (this.mediaSource.readyState !== "open") return;
    const buffer = this.queue[0];
    if (buffer === undefined) return;
    try {
      sb.appendBuffer(buffer);
      this.queue.shift();
      this.appended += 1;
    } catch (error) {
      if (error.name === "QuotaExceededError") {
        this.evict();
      } else {
        this.fail(`appendBuffer failed: ${error.message}`);
      }
    }
  }

  onUpdateEnd() {
    if (this.pendingRemove) {
      this.pendingRemove = false;
    } else {
      this.startPlaybackIfReady();
      this.keepNearLiveEdge();
    }
    this.pump();
  }

  /** Quota exceeded: drop what lies more than KEEP_BEHIND_S behind the playhead, then retry. */
  evict() {
    const sb = this.sourceBuffer;
    const removeEnd = this.video.currentTime - KEEP_BEHIND_S;
    if (sb.buffered.length > 0 && removeEnd > sb.buffered.start(0)) {
      this.pendingRemove = true;
      sb.remove(sb.buffered.start(0), removeEnd); // updateend -> pump retries the append
      return;
    }
    // Nothing old enough to drop yet: let playback advance, then retry.
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, QUOTA_RETRY_MS);
  }

  bufferedEnd() {
    const ranges = this.video.buffered;
    return ranges.length ? ranges.end(ranges.length - 1) : 0;
  }

  startPlaybackIfReady() {
    const ranges = this.video.buffered;
    if (!ranges.length) return;
    // Media may start a little after 0; a playhead in front of the first range would stall.
    if (this.video.currentTime < ranges.start(0)) this.video.currentTime = ranges.start(0);
    if (this.playRequested) return;
    this.playRequested = true;
    this.video.muted = true; // muted autoplay is allowed without a user gesture
    this.video.play().catch((error) => {
      this.playRequested = false; // try again on the next append
      this.onStatus(`playback blocked: ${error.message}`);
    });
  }

  /** Fallen behind (see MAX_LAG_SEGMENTS): jump to just before the buffered end. */
  keepNearLiveEdge() {
    const video = this.video;
    // Not while paused: a pause is the viewer's choice (or autoplay was refused), not lag.
    if (this.failed || !video.buffered.length || video.seeking || video.paused) return;
    const end = this.bufferedEnd();
    if (end - video.currentTime > this.maxLagSegments * this.segmentDuration + LIVE_EDGE_MARGIN_S) {
      const target = Math.max(end - LIVE_EDGE_MARGIN_S, 0);
      this.liveJumps += 1;
      console.info(`live edge: ${video.currentTime.toFixed(2)} s -> ${target.toFixed(2)} s`);
      video.currentTime = target;
    }
  }

  fail(message) {
    if (this.failed) return;
    this.failed = true;
    this.queue = [];
    this.onError(message);
  }

  /** Ends the stream (no more media) without tearing down what is buffered. */
  end() {
    // endOfStream before any media arrived is a decode error (no metadata): leave such a source open.
    if (this.failed || !this.sourceBuffer) return;
    const finish = () => {
      if (this.mediaSource.readyState === "open" && !this.sourceBuffer.updating && this.video.buffered.length) {
        try {
          this.mediaSource.endOfStream();
        } catch {
          // already ended or closed
        }
      }
    };
    if (this.sourceBuffer.updating || this.queue.length) {
      // Let what is queued play out first.
      const check = () => {
        if (this.failed) return;
        if (this.queue.length || this.sourceBuffer.updating) setTimeout(check, 100);
        else finish();
      };
      check();
    } else {
      finish();
    }
  }
}

/**
 * Opens a WebSocket session on /v1/stream and plays it. `handleMessage` is the shared protocol
 * handler (protocol.js); media messages are consumed here first.
 */
export function startWebSocketSession(ui, handleMessage, { sessionInit = {} } = {}) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/stream`);
  ws.binaryType = "arraybuffer";

  const player = new MsePlayer(ui.video, {
    onError: (message) => {
      showStatus(ui, `playback error: ${message}`, true);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, "client playback error");
    },
    onStatus: (message) => showStatus(ui, message),
  });
  // For debugging and tests: the player's counters (appends, live-edge jumps).
  window.wsPlayer = player;

  let segment = null; // {idx, chunks}: the segment whose binary frames are arriving

  ws.addEventListener("open", () => {
    showStatus(ui, "connected, waiting for the stream");
    ws.send(JSON.stringify({ type: "session_init_v2", stream_mode: "av_fmp4", ...sessionInit }));
  });

  ws.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      if (segment === null) {
        console.warn("binary frame outside a segment ignored");
        return;
      }
      segment.chunks += 1; // the first one is the init segment
      player.append(event.data);
      return;
    }
    const message = parseMessage(ui, event.data);
    if (message === null) return;
    switch (message.type) {
      case "media_init":
        segment = { idx: message.segment_idx, chunks: 0 };
        player.beginSegment(message.mime);
        break;
      case "media_segment_complete":
        if (segment && segment.chunks !== message.chunks + 1) {
          console.warn(`segment ${message.segment_idx}: got ${segment.chunks} binary frames, expected ${message.chunks + 1}`);
        }
        segment = null;
        player.endSegment(message.duration_ms);
        break;
      case "ltx2_stream_complete":
        player.end();
        break;
      default:
        break;
    }
    handleMessage(message);
  });

  ws.addEventListener("close", (event) => {
    const problem = describeClose(event);
    if (problem !== null) {
      // Keep an error already shown (e.g. session_rejected before a 1013 close) in view.
      showStatus(ui, hasError(ui) ? `${ui.status.textContent}; ${problem}` : problem, true);
    } else if (!hasError(ui) && !ui.status.textContent.startsWith("stream complete")) {
      showStatus(ui, "connection closed");
    }
    player.end();
  });

  bindPromptForm(ui, (message) => {
    if (ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  });

  return { ws, player };
}
