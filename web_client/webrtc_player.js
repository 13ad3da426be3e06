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
import { describeError, parseMessage } from "./protocol.js";
import { RateMeter, selectedCandidatePair } from "./stats.js";

// Gathering can hang (e.g. mDNS host-name registration where multicast is unavailable, or a TURN
// server that does not answer); the offer then goes out with what was gathered and connectivity
// checks find the path (candidates found later reach the server as peer-reflexive ones).
const ICE_GATHERING_TIMEOUT_MS = 2000;
const ICE_SERVERS_TIMEOUT_MS = 10_000; // GET /v1/webrtc/ice-servers
// From the answer's arrival to a connected peer with the channel open. It starts at the answer, not
// at the offer: the server answers only once its own gathering is done (webrtc.gather_timeout_seconds,
// up to 30 s, e.g. waiting on its TURN server), and a slow answer says nothing about whether ICE
// will connect.
export const CONNECT_TIMEOUT_MS = 6000;
// The offer request itself gets its own, generous bound: above the server's longest gathering
// (30 s) plus admission, so only a server that hangs trips it, and the page still falls back then.
export const OFFER_TIMEOUT_MS = 40_000;
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" may recover; after this it counts as failed
const RESUMABLE_GRACE_MS = 1000; // the same for a session that can be resumed elsewhere: do so sooner
const FRAME_POLL_MS = 250; // how often the stall watch reads the inbound packet count
const FLOWING_STALL_MS = 500; // no video this long while it should flow: ask whether the session lives
const IDLE_STALL_MS = 2000; // the same while none is expected (paused, a single clip done)
const PROBE_TIMEOUT_MS = 1000; // GET /v1/sessions/{id}/frames; no answer in time counts as none
// Answers that say nothing about WebRTC itself: a malformed request, no or a refused token,
// a refused origin, too many requests. The WebSocket would be answered the same, so no fallback.
const NO_FALLBACK_STATUSES = new Set([400, 401, 403, 429]);

export async function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, ICE_GATHERING_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

class RequestTimeout extends Error {}

/**
 * play(), and if the browser refuses sound without a gesture (NotAllowedError), muted: muted video
 * may always play. The page starts muted; only the viewer's unmute (a gesture) turns sound on.
 */
export function playMutedIfRefused(video) {
  video.play().catch((error) => {
    if (error && error.name === "NotAllowedError" && !video.muted) {
      video.muted = true;
      video.play().catch(() => {});
    }
  });
}

/**
 * fetch() and the answer's JSON body (null when not JSON), within `timeoutMs`: {response, body}.
 * Throws RequestTimeout past it, AbortError when `signal` aborts, TypeError when the request fails.
 * (A plain AbortController rather than AbortSignal.any/timeout: iOS Safari before 17.4 lacks them.)
 */
async function fetchJson(url, options, timeoutMs, signal = null) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  const onAbort = () => controller.abort();
  if (signal) signal.addEventListener("abort", onAbort, { once: true });
  try {
    const response = await fetch(url, { ...options, signal: controller.signal });
    const body = await readJson(response);
    if (timedOut) throw new RequestTimeout(`no answer within ${Math.round(timeoutMs / 1000)} s`);
    return { response, body };
  } catch (error) {
    if (timedOut) throw new RequestTimeout(`no answer within ${Math.round(timeoutMs / 1000)} s`);
    throw error;
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener("abort", onAbort);
  }
}

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

/**
 * GET /v1/webrtc/ice-servers: {ok: true, iceServers, ttlSeconds} or {ok: false, response, body}
 * for an answer other than 200. Throws when the request fails or times out. Never cached: every
 * answer carries fresh TURN credentials (the server also says Cache-Control: no-store).
 */
export async function fetchIceServers(token, { signal = null, timeoutMs = ICE_SERVERS_TIMEOUT_MS } = {}) {
  const request = { headers: authHeaders(token), cache: "no-store" };
  const { response, body } = await fetchJson("/v1/webrtc/ice-servers", request, timeoutMs, signal);
  if (!response.ok) return { ok: false, response, body };
  const list = body && Array.isArray(body.ice_servers) ? body.ice_servers : [];
  const ttl = body && Number.isFinite(body.ttl_seconds) ? body.ttl_seconds : null;
  return { ok: true, iceServers: list, ttlSeconds: ttl };
}

/** True when a list holds a TURN server (something a relay-only peer can use). */
export function hasTurnServer(iceServers) {
  return iceServers.some((server) => {
    const urls = Array.isArray(server.urls) ? server.urls : [server.urls || server.url];
    return urls.some((url) => typeof url === "string" && /^turns?:/i.test(url));
  });
}

export class WebRtcTransport {
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
    this.kind = "webrtc";
    this.resuming = resuming; // this connection resumes a session: keep the last picture until new frames
    this.idleExpected = idleExpected; // () => true while no video is expected (paused, a clip done)
    this.resumable = false; // session_info arrived: a lost connection is a drop, resumed elsewhere
    this.video = video;
    this.init = init;
    this.token = token;
    this.relay = relay;
    this.offerTimeoutMs = offerTimeoutMs;
    this.iceServersTtlS = null; // how long the credentials of this connection's ICE servers last
    this.abort = new AbortController(); // cancels the requests in flight when the transport closes
    this.onMessage = onMessage;
    this.onEvent = onEvent;
    this.connectTimeoutMs = connectTimeoutMs;
    this.pc = null;
    this.channel = null;
    this.sessionId = null;
    this.pending = [];
    this.connected = false;
    this.serverEnded = false;
    this.closed = false;
    this.timers = new Set();
    this.rate = new RateMeter();
    this.released = Promise.resolve(null);
    this.stream = new MediaStream(); // what the <video> plays: the received video and audio tracks
  }

  later(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  async start() {
    try {
      await this.negotiate();
    } catch (error) {
      if (this.closed) return;
      this.fail(`WebRTC setup failed: ${error.message || error}`, { fallback: true, connectivity: true });
    }
  }

  /** The connect budget, from the answer's arrival (see CONNECT_TIMEOUT_MS). */
  startConnectTimer() {
    const seconds = Math.round(this.connectTimeoutMs / 1000);
    this.later(this.connectTimeoutMs, () => {
      if (!this.connected) this.fail(`WebRTC did not connect within ${seconds} s`, { fallback: true, connectivity: true });
    });
  }

  /** This connection's ICE servers, fresh; null when fail() was called instead. */
  async iceServers() {
    this.onEvent("progress", { text: "fetching ICE servers" });
    let answer;
    try {
      answer = await fetchIceServers(this.token, { signal: this.abort.signal });
    } catch (error) {
      if (this.closed) return null;
      // No STUN/TURN then: host candidates still work on a local network.
      console.warn(`no ICE servers (${error.message || error}); trying direct paths only`);
      answer = { ok: true, iceServers: [], ttlSeconds: null };
    }
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
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.relay ? "relay" : "all" });
    this.pc = pc;
    // For debugging and tests.
    window.peerConnection = pc;
    const channel = pc.createDataChannel("control");
    this.channel = channel;
    pc.addTransceiver("video", { direction: "recvonly" });
    // Sound too: a server whose generator makes none answers this m-line without a track.
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      // Both tracks go into one stream of our own: the server's may name a stream per track.
      if (!this.closed) this.stream.addTrack(event.track);
    });
    pc.addEventListener("connectionstatechange", () => this.onConnectionState());
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

    this.onEvent("progress", { text: this.relay ? "gathering relay candidates (TURN)" : "gathering ICE candidates" });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
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
      this.video.removeAttribute("src");
      this.video.srcObject = this.stream;
      playMutedIfRefused(this.video);
      const audio = this.stream.getAudioTracks().length > 0;
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
    let lastCount = null;
    let lastChange = performance.now();
    const tick = async () => {
      if (this.closed) return;
      const count = await this.packetsReceived();
      if (this.closed) return;
      const now = performance.now();
      if (count !== lastCount) {
        lastCount = count;
        lastChange = now;
      } else if (now - lastChange >= (this.idleExpected() ? IDLE_STALL_MS : FLOWING_STALL_MS)) {
        const alive = await this.sessionAnswers();
        if (this.closed) return;
        if (!alive) {
          const quiet = Math.round(now - lastChange);
          this.fail(`no video for ${quiet} ms and the server does not answer for the session`, { fallback: true, drop: true });
          return;
        }
        lastChange = performance.now(); // alive, only slow or idle: look again later
      }
      this.later(FRAME_POLL_MS, watch);
    };
    const watch = () => tick().catch((error) => console.warn("stall watch:", error));
    this.later(FRAME_POLL_MS, watch);
  }

  /** The inbound video's packet count (null before there is one). */
  async packetsReceived() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let packets = null;
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") packets = entry.packetsReceived;
    });
    return packets;
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

  onConnectionState() {
    if (this.closed) return;
    const state = this.pc.connectionState;
    if (state === "connected") {
      if (this.disconnectTimer) {
        clearTimeout(this.disconnectTimer);
        this.timers.delete(this.disconnectTimer);
        this.disconnectTimer = null;
      }
      this.checkConnected();
    } else if (state === "failed") {
      if (this.serverEnded) this.finish("connection closed");
      else this.fail("the WebRTC connection failed", { fallback: true, connectivity: !this.connected, drop: this.resumable });
    } else if (state === "disconnected" && !this.disconnectTimer) {
      this.onEvent("progress", { text: "connection interrupted, waiting for it to recover" });
      this.disconnectTimer = this.later(this.resumable ? RESUMABLE_GRACE_MS : DISCONNECTED_GRACE_MS, () => {
        this.disconnectTimer = null;
        if (this.closed || this.pc.connectionState === "connected") return;
        if (this.serverEnded) this.finish("connection closed");
        else this.fail("the WebRTC connection was lost", { fallback: true, drop: this.resumable });
      });
    } else if (state === "closed") {
      if (this.serverEnded) this.finish("connection closed");
      else if (this.resumable) this.fail("the WebRTC connection closed", { fallback: true, drop: true });
    }
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
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.channel) {
      try {
        this.channel.close();
      } catch {
        // already closed
      }
    }
    if (this.pc) this.pc.close();
  }

  /** Transport figures for the stats overlay, from getStats(). */
  async stats() {
    if (!this.pc || this.closed) return {};
    const report = await this.pc.getStats();
    let inbound = null;
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") inbound = entry;
    });
    const path = selectedCandidatePair(report);
    const result = {
      path,
      rttMs: path && typeof path.rttS === "number" ? path.rttS * 1000 : null,
    };
    if (!inbound) return result;
    result.bitrateKbps = this.rate.kbps(inbound.bytesReceived);
    if (inbound.jitterBufferEmittedCount > 0) {
      result.jitterBufferMs = (inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000;
    }
    result.framesDecoded = inbound.framesDecoded;
    result.framesDropped = inbound.framesDropped;
    result.packetsLost = inbound.packetsLost;
    result.decoderFps = inbound.framesPerSecond;
    return result;
  }
}
