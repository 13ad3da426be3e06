// WebRTC transport: POST /v1/webrtc/offer with the session init in the body, video (and sound, when
// the server's generator makes some: the offer always has a recvonly audio m-line) over RTP, the
// JSON control protocol over the data channel "control". Same interface as WebSocketTransport.
// Both received tracks play on the one <video>; it reports "sound" {available, stream} once the
// stream is on it.
//
// ICE servers come from GET /v1/webrtc/ice-servers, fetched anew for every peer connection: its
// TURN credentials are short-lived (`ttl_seconds`), so none are kept for a later one. `relay: true`
// (the page's ?relay=1) sets iceTransportPolicy "relay": only TURN-relayed paths are tried.
//
// It reports "failed" with `fallback: true` when WebRTC itself is the problem (the offer endpoint
// unreachable, answering 5xx/413 or not answering within OFFER_TIMEOUT_MS, ICE not connecting
// within connectTimeoutMs of the answer, the connection failing or the channel closing mid-stream);
// the app then falls back to the WebSocket path. Answers that any transport would get (400, 401,
// 403, 429, from either endpoint) are reported without `fallback`.
// With a token, every request carries `Authorization: Bearer <token>` (auth.js).
//
// Resuming (app.js): once session_info has arrived (markResumable), losing the connection is a
// "drop" (`drop: true` on "failed"): the connection failed or closed, stayed "disconnected" over
// RESUMABLE_GRACE_MS, the control channel closed, or no video came for FLOWING_STALL_MS while the
// stream should flow (IDLE_STALL_MS while paused) and the session's server does not answer
// GET /v1/sessions/{id}/frames (a dead server sends nothing, not even a close). A dropped session
// is not ended with DELETE: the app resumes it on a new connection. A transport built with
// `resuming: true` is such a connection: it puts the new stream on the <video> once its first
// frames arrive, so the last picture stays until then.

import { authHeaders } from "./auth.js";
import { RequestTimeout, fetchJson } from "./fetch_json.js";
import { CONNECT_TIMEOUT_MS, OFFER_TIMEOUT_MS, ReceivingPeer } from "./peer_common.js";
import { describeError, parseMessage } from "./protocol.js";

// The shared bounds (peer_common.js), read from here by this transport's callers and tests.
export { CONNECT_TIMEOUT_MS, OFFER_TIMEOUT_MS };
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" may recover; after this it counts as failed
const RESUMABLE_GRACE_MS = 1000; // the same for a session that can be resumed elsewhere: do so sooner
const FLOWING_STALL_MS = 500; // no video this long while it should flow: ask whether the session lives
const IDLE_STALL_MS = 2000; // the same while none is expected (paused, a single clip done)
const PROBE_TIMEOUT_MS = 1000; // GET /v1/sessions/{id}/frames; no answer in time counts as none
// Answers that say nothing about WebRTC itself: a malformed request, no or a refused token,
// a refused origin, too many requests. The WebSocket would be answered the same, so no fallback.
const NO_FALLBACK_STATUSES = new Set([400, 401, 403, 429]);

/** What went wrong before the answer, for fail(): {text, detail}. */
function refusal(what, response, body) {
  const error = body && body.error ? body.error : null;
  const described = error
    ? describeError(error)
    : { title: "Refused", detail: response.statusText || "no answer", code: null, retryable: response.status >= 500 };
  const retryAfter = Number(response.headers.get("Retry-After"));
  return {
    text: `${what} refused (HTTP ${response.status}${described.code ? ` ${described.code}` : ""}): ${described.detail}`,
    detail: {
      fallback: !NO_FALLBACK_STATUSES.has(response.status),
      status: response.status,
      error: error || null,
      retryable: described.retryable,
      retryAfterS: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
    },
  };
}

/** True when a list holds a TURN server (something a relay-only peer can use). */
export function hasTurnServer(iceServers) {
  return iceServers.some((server) => {
    const urls = Array.isArray(server.urls) ? server.urls : [server.urls || server.url];
    return urls.some((url) => typeof url === "string" && /^turns?:/i.test(url));
  });
}

export class WebRtcTransport extends ReceivingPeer {
  constructor({
    video,
    init,
    onMessage,
    onEvent,
    token = null,
    relay = false,
    connectTimeoutMs = CONNECT_TIMEOUT_MS,
    offerTimeoutMs = OFFER_TIMEOUT_MS,
    resuming = false,
    idleExpected = () => false,
  }) {
    // WebRTC itself did not work: the app falls back to the WebSocket path.
    super({ label: "WebRTC", video, onEvent, connectTimeoutMs, setupFailure: { fallback: true, connectivity: true } });
    this.resuming = resuming; // this connection resumes a session: keep the last picture until new frames
    this.idleExpected = idleExpected; // () => true while no video is expected (paused, a clip done)
    this.resumable = false; // session_info arrived: a lost connection is a drop, resumed elsewhere
    this.init = init;
    this.token = token;
    this.relay = relay;
    this.offerTimeoutMs = offerTimeoutMs;
    this.iceServersTtlS = null; // how long the credentials of this connection's ICE servers last
    this.onMessage = onMessage;
    this.channel = null;
    this.sessionId = null;
    this.pending = [];
    this.serverEnded = false;
    this.released = Promise.resolve(null);
  }

  /** This connection's ICE servers, fresh; null when fail() was called instead. */
  async iceServers() {
    let answer = await this.requestIceServers(this.token, console.warn);
    if (this.closed) return null;
    if (!answer.ok) {
      const { text, detail } = refusal("ICE servers", answer.response, answer.body);
      if (!detail.fallback) {
        // Refused for a reason the offer would be refused for too (401, 403, 429): say so now.
        this.fail(text, detail);
        return null;
      }
      console.warn(`${text}; trying direct paths only`);
      answer = { ok: true, iceServers: [], ttlSeconds: null };
    }
    this.iceServersTtlS = answer.ttlSeconds;
    if (this.relay && !hasTurnServer(answer.iceServers)) {
      // Relay-only without a TURN server gathers nothing: no path could ever be found.
      this.fail("relay-only (?relay=1) needs a TURN server, and the server lists none", { fallback: true, connectivity: true });
      return null;
    }
    return answer.iceServers;
  }

  async negotiate() {
    const iceServers = await this.iceServers();
    if (iceServers === null || this.closed) return;
    const pc = this.openPeer({ iceServers, iceTransportPolicy: this.relay ? "relay" : "all" }, { channel: "control" });
    const channel = this.channel;
    pc.addEventListener("icecandidateerror", (event) => {
      // A STUN/TURN server that refused or did not answer (e.g. expired TURN credentials): worth a line.
      console.warn(`ICE candidate error ${event.errorCode} from ${event.url}: ${event.errorText}`);
    });
    channel.addEventListener("open", () => {
      for (const text of this.pending.splice(0)) channel.send(text);
      this.checkConnected();
    });
    channel.addEventListener("message", (event) => this.receive(event.data));
    channel.addEventListener("close", () => {
      if (this.closed) return;
      if (this.serverEnded) this.finish("the server closed the session");
      else this.fail("the control channel closed unexpectedly", { fallback: true, drop: this.resumable });
    });

    await this.gatherOffer(this.relay ? "gathering relay candidates (TURN)" : "gathering ICE candidates");
    if (this.closed) return;
    this.onEvent("progress", { text: "sending the offer" });
    let response;
    let body;
    try {
      ({ response, body } = await fetchJson(
        "/v1/webrtc/offer",
        {
          method: "POST",
          headers: authHeaders(this.token, { "Content-Type": "application/json" }),
          body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session_init: this.init }),
        },
        this.offerTimeoutMs,
        this.abort.signal,
      ));
    } catch (error) {
      if (this.closed) return;
      const text =
        error instanceof RequestTimeout
          ? `the server did not answer the offer within ${Math.round(this.offerTimeoutMs / 1000)} s`
          : `the offer could not be sent: ${error.message || error}`;
      this.fail(text, { fallback: true, connectivity: true });
      return;
    }
    if (this.closed) return;
    if (!response.ok || !body || typeof body.sdp !== "string") {
      const { text, detail } = refusal("offer", response, body);
      this.fail(text, detail);
      return;
    }
    this.sessionId = body.session_id || null;
    this.startConnectTimer();
    this.onEvent("progress", { text: "connecting (ICE)" });
    await pc.setRemoteDescription({ type: body.type || "answer", sdp: body.sdp });
    this.attachWhenReady();
  }

  /**
   * Puts the stream on the <video> once the answer's tracks are known (every "track" event fires
   * while the answer is applied): a resumed stream only once its video has frames (a track is muted
   * until then), so the last picture stays meanwhile. Then says whether the stream has sound.
   */
  attachWhenReady() {
    if (this.closed) return;
    const video = this.stream.getVideoTracks()[0];
    if (!video) return; // an answer without video: nothing to show
    const attach = () => {
      if (this.closed) return;
      const audio = this.showStream();
      this.onEvent("sound", { available: audio, stream: audio ? this.stream : null });
    };
    if (this.resuming && video && video.muted) video.addEventListener("unmute", attach, { once: true });
    else attach();
  }

  checkConnected() {
    if (this.connected || this.closed || !this.pc) return;
    if (this.pc.connectionState === "connected" && this.channel.readyState === "open") {
      this.connected = true;
      this.onEvent("connected");
      if (this.resumable) this.watchFrames();
    }
  }

  /** session_info arrived: from now on a lost connection is a drop (see the top of this file). */
  markResumable(sessionId) {
    if (this.resumable || this.closed) return;
    this.resumable = true;
    if (sessionId) this.sessionId = sessionId;
    if (this.connected) this.watchFrames();
  }

  /**
   * Notices a server that died: it sends nothing more, not even a close, and ICE takes seconds to
   * say so. When no RTP packet has come for a while, asks the session's server (through whatever
   * serves this page, a router included) whether it still has the session; no 200: a drop.
   */
  watchFrames() {
    const check = async (quietMs) => {
      if (quietMs < (this.idleExpected() ? IDLE_STALL_MS : FLOWING_STALL_MS)) return false;
      const alive = await this.sessionAnswers();
      if (this.closed) return false;
      if (!alive) {
        this.fail(`no video for ${Math.round(quietMs)} ms and the server does not answer for the session`, { fallback: true, drop: true });
        return false;
      }
      return true; // alive, only slow or idle: look again later
    };
    this.watchPackets(check, (error) => console.warn("stall watch:", error));
  }

  /** Whether GET /v1/sessions/{id}/frames answers 200 within PROBE_TIMEOUT_MS. */
  async sessionAnswers() {
    if (!this.sessionId) return true;
    const url = `/v1/sessions/${encodeURIComponent(this.sessionId)}/frames`;
    const request = { headers: authHeaders(this.token), cache: "no-store" };
    try {
      const { response } = await fetchJson(url, request, PROBE_TIMEOUT_MS, this.abort.signal);
      return response.status === 200;
    } catch {
      return false;
    }
  }

  peerConnected() {
    this.checkConnected();
  }

  peerDisconnected() {
    this.onEvent("progress", { text: "connection interrupted, waiting for it to recover" });
    this.awaitRecovery(this.resumable ? RESUMABLE_GRACE_MS : DISCONNECTED_GRACE_MS, () => {
      if (this.serverEnded) this.finish("connection closed");
      else this.fail("the WebRTC connection was lost", { fallback: true, drop: this.resumable });
    });
  }

  peerGone(state) {
    if (this.serverEnded) this.finish("connection closed");
    else if (state === "failed") this.fail("the WebRTC connection failed", { fallback: true, connectivity: !this.connected, drop: this.resumable });
    else if (this.resumable) this.fail("the WebRTC connection closed", { fallback: true, drop: true });
  }

  receive(data) {
    if (this.closed) return;
    if (typeof data !== "string") {
      console.warn("ignoring a binary message on the control channel");
      return;
    }
    const message = parseMessage(data);
    if (message === null) {
      console.warn("ignoring a malformed control message", data);
      return;
    }
    if (message.type === "ltx2_stream_complete" || message.type === "session_timeout") this.serverEnded = true;
    if (message.type === "session_info" && message.session_id) this.sessionId = message.session_id;
    this.onMessage(message);
  }

  /** Sends a control message; queued until the channel opens. False once the session is over. */
  send(message) {
    if (this.closed || this.serverEnded) return false;
    const text = JSON.stringify(message);
    if (this.channel && this.channel.readyState === "open") this.channel.send(text);
    else this.pending.push(text);
    return true;
  }

  fail(text, detail = {}) {
    if (this.closed) return;
    const sessionId = this.sessionId;
    this.close();
    // A peer that never connected still holds a server slot until its connect timeout: free it.
    // `released` settles once the server has ended it, so a fallback session is not refused.
    // Not a resumable one: that session lives on, to be resumed on a new connection.
    if (sessionId && !this.serverEnded && !this.resumable) this.released = this.deleteSession(sessionId);
    this.onEvent("failed", { text, fallback: false, retryable: true, ...detail });
  }

  finish(text) {
    if (this.closed) return;
    this.close();
    this.onEvent("closed", { text });
  }

  deleteSession(sessionId) {
    return fetch(`/v1/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE", headers: authHeaders(this.token) }).catch(
      () => null,
    );
  }

  /** Ends the session on the server (it answers ltx2_stream_complete{stop_requested}), then closes. */
  async stop() {
    if (this.closed) return;
    const sessionId = this.sessionId;
    if (sessionId && !this.serverEnded) {
      const response = await this.deleteSession(sessionId);
      if (response && response.ok) {
        // Let ltx2_stream_complete arrive over the channel; close anyway if it does not.
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
    }
    this.close();
  }

  /** The page is going away: end the session with a request that outlives the page. */
  leave() {
    if (this.sessionId && !this.serverEnded && !this.closed) {
      const request = { method: "DELETE", keepalive: true, headers: authHeaders(this.token) };
      fetch(`/v1/sessions/${encodeURIComponent(this.sessionId)}`, request).catch(() => null);
    }
    this.close();
  }

  /** Leaves this connection for one that resumes the session (no DELETE); the picture stays. */
  abandon() {
    this.close();
    return null;
  }

  /** Tears down without reporting anything. The last frame stays on screen until replaced. */
  close() {
    if (!this.closed && this.channel) {
      try {
        this.channel.close();
      } catch {
        // already closed
      }
    }
    super.close();
  }

  /** The shared figures (peer_common.js), and the round trip and decoder's. */
  overlayFigures(path, inbound) {
    const result = super.overlayFigures(path, inbound);
    result.rttMs = path && typeof path.rttS === "number" ? path.rttS * 1000 : null;
    if (!inbound) return result;
    result.framesDropped = inbound.framesDropped;
    result.packetsLost = inbound.packetsLost;
    result.decoderFps = inbound.framesPerSecond;
    return result;
  }
}
