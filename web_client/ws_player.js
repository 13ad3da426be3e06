// WebSocket transport (the fallback): JSON control messages as text frames, video as fMP4 binary
// frames played through Media Source Extensions. Same interface as WebRtcTransport (webrtc_player.js).
//
// Per segment the server sends media_init{mime}, then the init segment (ftyp+moov) as the first
// binary frame, then moof+mdat fragments, then media_segment_complete. Media timestamps continue
// across segments, so one SourceBuffer in "segments" mode takes init + fragments of every segment
// in order. With sound the mime names both codecs (e.g. 'video/mp4; codecs="avc1.42C01E,
// mp4a.40.2"'): the one SourceBuffer, made from it, takes both tracks of the muxed fMP4. The
// transport reports "sound" {available} from the first mime.
// With a token, the socket offers the subprotocols ["rtcvs", "bearer.<token>"] (auth.js); a refused
// token is answered with error{unauthorized} and close 4401.
//
// Where MediaSource is missing but ManagedMediaSource exists (iOS Safari 17.1+), the player uses
// that: it sets video.disableRemotePlayback (Safari attaches a ManagedMediaSource only then, or with
// an AirPlay alternative source, which a live stream lacks) and follows the browser's
// startstreaming/endstreaming hints (see MsePlayer.mayAppend).
//
// Resuming a session (app.js): a transport built with `player` goes on with the MsePlayer of the
// connection that dropped, so the <video> keeps its MediaSource and what it has buffered. The new
// server's encoder starts a timeline of its own (at 0), so the player places the resumed stream
// right after the last buffered frame (MsePlayer.continueTimeline) and the picture goes on there.

import { webSocketAuth } from "./auth.js";
import { fragmentDecodeTime, initTimescale } from "./fmp4.js";
import { describeClose, parseMessage } from "./protocol.js";
import { RateMeter } from "./stats.js";

const KEEP_BEHIND_S = 10; // buffered media kept behind currentTime when the quota runs out
const LIVE_EDGE_MARGIN_S = 0.1; // where a live-edge jump lands, before the buffered end
const QUOTA_RETRY_MS = 500; // wait this long when nothing can be evicted yet
const DEFAULT_SEGMENT_S = 1.0; // until the first media_segment_complete tells the real duration
// Live edge: jump when the playhead is more than one segment behind the end of what was buffered
// before the newest segment arrived, i.e. more than two segments behind the buffered end. The
// server paces so the client holds up to lookahead (1) + the segment just delivered; a one-segment
// threshold skipped the first segment of every session and then ran the buffer dry each segment.
const MAX_LAG_SEGMENTS = 2;
// ...plus this much: the server's pacing clock starts when it sends the first segment, the playhead a
// few hundred ms later (MSE setup, and with sound the audio renderer starting), so a session that
// never fell behind sits up to that much beyond two segments; jumping there ran the buffer dry.
const LAG_SLACK_S = 0.5;
// After endstreaming (ManagedMediaSource), buffers wait in the queue while this much media is still
// buffered ahead; below it they are appended anyway, so a missing startstreaming never starves
// the playhead (the stream is live: the server keeps sending whatever the browser says).
const HOLD_WHILE_AHEAD_S = 1.0;
// Close code for a connection left behind because the session is being resumed on another one:
// not 1000, which would tell the server (and a router) that the session ended normally.
const RESUMING_CLOSE_CODE = 4000;
// WebSocket closes that end the session for good: normal, a refused init (a resume refused
// included), a message too large, a refused token. Any other close may be resumed.
const FINAL_CLOSE_CODES = new Set([1000, 1003, 1009, 4401]);
// A queue entry, not media: what follows starts a new timeline (see continueTimeline).
const NEW_TIMELINE = Symbol("new timeline");

/**
 * The Media Source implementation this browser has: {MediaSourceClass, managed}, MediaSource first
 * (desktop browsers, Safari on macOS), else ManagedMediaSource (iOS Safari); null when neither.
 */
export function mediaSourceImpl(scope = window) {
  if (typeof scope.MediaSource === "function") return { MediaSourceClass: scope.MediaSource, managed: false };
  if (typeof scope.ManagedMediaSource === "function") return { MediaSourceClass: scope.ManagedMediaSource, managed: true };
  return null;
}

/** Audio codecs a media_init mime may name next to the video's (fMP4: AAC, Opus, AC-3, FLAC, ALAC). */
const AUDIO_CODEC = /^(mp4a|opus|ac-3|ec-3|flac|alac)(\.|$)/i;

/** True when `mime` (e.g. 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"') names an audio codec. */
export function mimeHasAudio(mime) {
  const match = /codecs\s*=\s*"?([^";]*)"?/i.exec(mime || "");
  if (!match) return false;
  return match[1].split(",").some((codec) => AUDIO_CODEC.test(codec.trim()));
}

/**
 * Plays a stream of fMP4 buffers on a <video> through one MediaSource/SourceBuffer.
 * Appends are strictly sequential: appendBuffer is asynchronous and a second call while
 * `updating` throws, so every buffer waits in a queue for the previous `updateend`.
 */
export class MsePlayer {
  constructor(video, { onError = () => {}, onStatus = () => {} } = {}) {
    const impl = mediaSourceImpl();
    if (impl === null) throw new Error("Media Source Extensions are not supported by this browser");
    this.video = video;
    this.onError = onError;
    this.onStatus = onStatus;
    this.MediaSourceClass = impl.MediaSourceClass;
    this.managed = impl.managed; // a ManagedMediaSource (for debugging and tests)
    if (this.managed) video.disableRemotePlayback = true; // before attaching: Safari requires it
    this.mediaSource = new this.MediaSourceClass();
    // ManagedMediaSource: whether the browser wants data now. Until it says (startstreaming or
    // endstreaming), appends go on: an event that never comes must not stall the stream.
    this.streaming = null;
    this.heldAppends = 0; // times an append waited because of endstreaming (for debugging and tests)
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
    this.timelines = 1; // server timelines played (one more per resumed connection)
    // While a new timeline waits for its first fragment: {at: where it goes (s), timescale}.
    this.rebase = null;
    this.opened = new Promise((resolve) => {
      this.mediaSource.addEventListener("sourceopen", resolve, { once: true });
    });
    if (this.managed) {
      this.mediaSource.addEventListener("startstreaming", () => {
        this.streaming = true;
        this.pump();
      });
      this.mediaSource.addEventListener("endstreaming", () => {
        this.streaming = false;
      });
    }
    this.objectUrl = URL.createObjectURL(this.mediaSource);
    video.srcObject = null;
    video.src = this.objectUrl;
    // Kept so destroy() can remove them: a later player on the same <video> must not share them.
    this.listeners = {
      timeupdate: () => {
        this.keepNearLiveEdge();
        if (this.queue.length) this.pump(); // held after endstreaming: the buffer may be running low
      },
      waiting: () => { if (this.playRequested) this.stalls += 1; },
      error: () => {
        const error = video.error;
        this.fail(`video error ${error ? error.code : "?"}: ${error && error.message ? error.message : "decode failed"}`);
      },
    };
    for (const [name, listener] of Object.entries(this.listeners)) video.addEventListener(name, listener);
  }

  /** Who hears about playback failures and progress: the transport feeding this player now. */
  setCallbacks({ onError, onStatus }) {
    this.onError = onError;
    this.onStatus = onStatus;
  }

  /**
   * A new connection's stream follows what was queued so far (a resumed session). Its timestamps
   * start wherever its server's encoder starts, so before its first fragment is appended,
   * timestampOffset is set to put that fragment's decode time (tfdt) right after the last frame
   * buffered; the rest of the stream follows on that offset. The playhead, waiting at the end of
   * what the dropped connection delivered, plays on into it. ("sequence" mode would do the same,
   * but crashed Chromium's renderer now and then when switched to in the middle of a stream.)
   */
  continueTimeline() {
    if (this.failed) return;
    this.queue.push(NEW_TIMELINE);
    this.pump();
  }

  /** Detaches from the <video> (listeners, object URL); what is on screen stays until replaced. */
  destroy() {
    this.failed = true; // stops appends and callbacks
    this.queue = [];
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    for (const [name, listener] of Object.entries(this.listeners)) this.video.removeEventListener(name, listener);
    URL.revokeObjectURL(this.objectUrl);
  }

  /** Seconds of media buffered ahead of the playhead. */
  bufferAhead() {
    const ranges = this.video.buffered;
    if (!ranges.length) return 0;
    return Math.max(0, this.bufferedEnd() - this.video.currentTime);
  }

  /** A segment starts (media_init): creates the SourceBuffer from the first mime seen. */
  async beginSegment(mime) {
    if (this.failed || this.sourceBuffer) {
      if (this.mime && mime !== this.mime) console.warn(`media_init mime changed from ${this.mime} to ${mime}`);
      return;
    }
    if (!this.MediaSourceClass.isTypeSupported(mime)) {
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
    if (buffer === NEW_TIMELINE) {
      this.queue.shift();
      this.timelines += 1;
      this.rebase = { at: this.bufferedEnd(), timescale: null };
      this.pump();
      return;
    }
    if (!this.mayAppend()) {
      this.heldAppends += 1;
      return; // startstreaming, or the playhead nearing the buffered end (timeupdate), pumps again
    }
    if (this.rebase !== null) this.placeTimeline(sb, buffer);
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

  /**
   * Whether to append now. Always with a plain MediaSource. A ManagedMediaSource says with
   * endstreaming that it has enough for now (memory is short on phones): then hold, unless less
   * than HOLD_WHILE_AHEAD_S is buffered ahead or nothing is buffered yet (the init segment, the
   * first media), so that a hint never becomes a stall.
   */
  mayAppend() {
    if (this.streaming !== false) return true;
    return !this.video.buffered.length || this.bufferAhead() < HOLD_WHILE_AHEAD_S;
  }

  /** See continueTimeline: learns the new stream's timescale, then offsets its first fragment. */
  placeTimeline(sb, buffer) {
    const rebase = this.rebase;
    const timescale = initTimescale(buffer);
    if (timescale !== null) {
      rebase.timescale = timescale;
      return; // an init segment: no media yet
    }
    const decodeTime = fragmentDecodeTime(buffer);
    if (decodeTime === null) return;
    this.rebase = null;
    if (rebase.timescale === null) console.warn("new timeline without an init segment first: assuming it starts at 0");
    const start = rebase.timescale === null ? 0 : decodeTime / rebase.timescale;
    try {
      sb.timestampOffset = rebase.at - start;
    } catch (error) {
      console.warn(`cannot place the resumed stream after what is buffered: ${error.message}`);
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
    // The page starts muted (muted autoplay needs no gesture); sound is on only after the viewer's
    // unmute. Should the browser still refuse it, play muted rather than not at all.
    this.video.play().catch((error) => {
      if (error.name === "NotAllowedError" && !this.video.muted) {
        this.video.muted = true;
        this.playRequested = false; // the next append tries again, muted
        return;
      }
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
    if (end - video.currentTime > this.maxLagSegments * this.segmentDuration + LAG_SLACK_S) {
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

const CLIENT_STOP_REASON = "client stop";

/**
 * One session over GET /v1/stream. `onMessage(message)` gets every control message (media ones
 * included, after the player took them); `onEvent(type, detail)` gets "progress" {text},
 * "connected", "failed" {text, retryable, code, error?, drop} and "closed" {text, code}. `drop`:
 * the connection went away while the session may live on (any close but FINAL_CLOSE_CODES).
 * `player`: an MsePlayer to go on with (a resumed session), instead of a new one. `path` and
 * `init: null`: a viewer's watch socket (GET /v1/sessions/{id}/watch, watch.js), which sends nothing.
 */
export class WebSocketTransport {
  constructor({ video, init, onMessage, onEvent, token = null, player = null, path = "/v1/stream" }) {
    this.kind = "ws";
    this.video = video;
    this.init = init; // null: nothing is sent on open (a viewer's watch socket)
    this.path = path;
    this.token = token;
    this.onMessage = onMessage;
    this.onEvent = onEvent;
    this.ws = null;
    this.player = player;
    this.adopted = player !== null; // the player came from a dropped connection
    this.playerTaken = false; // abandon() handed the player on: nothing here may end or destroy it
    this.resumable = false; // session_info arrived: a drop can be resumed
    this.sessionId = null; // from session_info
    this.pending = []; // messages sent before the socket opened
    this.segment = null; // {idx, chunks}: the segment whose binary frames are arriving
    this.serverEnded = false;
    this.closed = false;
    this.bytes = 0;
    this.rate = new RateMeter();
    this.soundReported = false;
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const { url, protocols } = webSocketAuth(`${scheme}://${location.host}${this.path}`, this.token);
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    const callbacks = {
      onError: (text) => {
        if (this.closed) return;
        this.onEvent("failed", { text: `playback error: ${text}`, retryable: true });
        this.close();
      },
      onStatus: (text) => this.onEvent("progress", { text }),
    };
    if (this.adopted) {
      this.player.setCallbacks(callbacks);
      this.player.continueTimeline();
    } else {
      this.player = new MsePlayer(this.video, callbacks);
    }
    // For debugging and tests: the player's counters (appends, live-edge jumps).
    window.wsPlayer = this.player;
    this.onEvent("progress", { text: "opening the WebSocket" });

    ws.addEventListener("open", () => {
      if (this.closed) return;
      if (this.init) ws.send(JSON.stringify(this.init));
      for (const text of this.pending.splice(0)) ws.send(text);
      this.onEvent("connected");
    });
    ws.addEventListener("message", (event) => this.receive(event.data));
    ws.addEventListener("close", (event) => {
      if (this.closed) return; // closed here (stop, abandon, a playback error): nothing to report
      this.closed = true;
      const close = describeClose(event.code, event.reason);
      if (close.normal || this.serverEnded) {
        if (this.player) this.player.end();
        this.onEvent("closed", { text: close.text, code: event.code });
        return;
      }
      const drop = !FINAL_CLOSE_CODES.has(event.code);
      this.onEvent("failed", { text: close.text, retryable: close.retryable, code: event.code, error: close.error, drop });
      // Unless the app took the player to resume the session on a new connection: play out what is buffered.
      if (this.player && !this.playerTaken) this.player.end();
    });
    return Promise.resolve();
  }

  receive(data) {
    if (this.closed) return;
    if (typeof data !== "string") {
      this.bytes += data.byteLength;
      if (this.segment === null) {
        console.warn("binary frame outside a segment ignored");
        return;
      }
      this.segment.chunks += 1; // the first one is the init segment
      this.player.append(data);
      return;
    }
    this.bytes += data.length;
    const message = parseMessage(data);
    if (message === null) {
      console.warn("ignoring a malformed control message", data);
      return;
    }
    switch (message.type) {
      case "media_init":
        this.segment = { idx: message.segment_idx, chunks: 0 };
        this.player.beginSegment(message.mime);
        this.reportSound(message.mime);
        break;
      case "media_segment_complete":
        if (this.segment && this.segment.chunks !== message.chunks + 1) {
          console.warn(`segment ${message.segment_idx}: got ${this.segment.chunks} binary frames, expected ${message.chunks + 1}`);
        }
        this.segment = null;
        this.player.endSegment(message.duration_ms);
        break;
      case "ltx2_stream_complete":
      case "session_timeout":
        this.serverEnded = true;
        this.player.end();
        break;
      case "session_info":
        this.sessionId = message.session_id || null;
        break;
      default:
        break;
    }
    this.onMessage(message);
  }

  /** "sound" {available, stream: null} for the first media_init (the player keeps its first mime). */
  reportSound(mime) {
    if (this.soundReported) return;
    this.soundReported = true;
    const playing = this.player.mime || mime; // the SourceBuffer's mime decides what plays
    this.onEvent("sound", { available: mimeHasAudio(playing), stream: null });
  }

  /** Sends a control message; queued until the socket opens. False once the session is over. */
  send(message) {
    if (this.closed || this.serverEnded) return false;
    const text = JSON.stringify(message);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
    else this.pending.push(text);
    return true;
  }

  /** Ends the session: closing the socket releases it on the server. */
  async stop() {
    this.close(1000, CLIENT_STOP_REASON);
  }

  /** The page is going away. */
  leave() {
    this.close(1000, "page closed"); // browsers allow only 1000 and 3000-4999 here
  }

  /** session_info arrived: a drop from now on can be resumed (the app decides; see `drop`). */
  markResumable() {
    this.resumable = true;
  }

  /**
   * Leaves this connection for another that resumes the session: closes it (not with 1000, which
   * would end the session) and hands over the player, so the <video> goes on with what it has.
   */
  abandon() {
    const player = this.playerTaken ? null : this.player;
    this.playerTaken = true;
    this.player = null;
    this.closed = true;
    if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) {
      this.ws.close(RESUMING_CLOSE_CODE, "resuming on another connection");
    }
    return player;
  }

  /** Tears down without reporting anything. The last frame stays on screen. */
  close(code = 1000, reason = "client closed") {
    this.closed = true;
    if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) {
      this.ws.close(code, reason);
    }
    if (this.player) this.player.destroy();
  }

  /** Transport figures for the stats overlay. */
  async stats() {
    const bitrateKbps = this.rate.kbps(this.bytes);
    const player = this.player;
    return {
      bitrateKbps,
      bufferS: player ? player.bufferAhead() : null,
      liveJumps: player ? player.liveJumps : 0,
      stalls: player ? player.stalls : 0,
    };
  }
}
