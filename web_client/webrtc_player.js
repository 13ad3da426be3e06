// WebRTC transport: POST /v1/webrtc/offer with the session init in the body, video over RTP, the
// JSON control protocol over the data channel "control". Same interface as WebSocketTransport.
//
// It reports "failed" with `fallback: true` when WebRTC itself is the problem (the offer endpoint
// unreachable or answering 5xx/413, ICE not connecting within connectTimeoutMs, the connection
// failing or the channel closing mid-stream); the app then falls back to the WebSocket path.
// Answers that any transport would get (400, 401, 403, 429) are reported without `fallback`.
// With a token, every request carries `Authorization: Bearer <token>` (auth.js).

import { authHeaders } from "./auth.js";
import { describeError, parseMessage } from "./protocol.js";
import { RateMeter } from "./stats.js";

// Gathering can hang (e.g. mDNS host-name registration where multicast is unavailable); the offer
// then goes out with what was gathered and connectivity checks find the path.
const ICE_GATHERING_TIMEOUT_MS = 2000;
export const CONNECT_TIMEOUT_MS = 6000; // from start to a connected peer with the channel open
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" may recover; after this it counts as failed
// Offer answers that say nothing about WebRTC itself: a malformed request, no or a refused token,
// a refused origin, too many requests. The WebSocket would be answered the same, so no fallback.
const NO_FALLBACK_STATUSES = new Set([400, 401, 403, 429]);

async function waitForIceGathering(pc) {
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

export class WebRtcTransport {
  constructor({ video, init, onMessage, onEvent, token = null, connectTimeoutMs = CONNECT_TIMEOUT_MS }) {
    this.kind = "webrtc";
    this.video = video;
    this.init = init;
    this.token = token;
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
    const seconds = Math.round(this.connectTimeoutMs / 1000);
    this.connectTimer = this.later(this.connectTimeoutMs, () => {
      if (!this.connected) this.fail(`WebRTC did not connect within ${seconds} s`, { fallback: true, connectivity: true });
    });
    try {
      await this.negotiate();
    } catch (error) {
      this.fail(`WebRTC setup failed: ${error.message || error}`, { fallback: true, connectivity: true });
    }
  }

  async negotiate() {
    this.onEvent("progress", { text: "fetching ICE servers" });
    let iceServers = [];
    try {
      const response = await fetch("/v1/webrtc/ice-servers", { headers: authHeaders(this.token) });
      if (response.ok) iceServers = ((await readJson(response)) || {}).ice_servers || [];
    } catch {
      // no STUN/TURN then: host candidates still work on a local network
    }
    if (this.closed) return;
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    // For debugging and tests.
    window.peerConnection = pc;
    const channel = pc.createDataChannel("control");
    this.channel = channel;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      if (this.closed) return;
      this.video.removeAttribute("src");
      this.video.srcObject = event.streams[0] || new MediaStream([event.track]);
      this.video.muted = true;
      this.video.play().catch(() => {}); // autoplay; muted video may always play
    });
    pc.addEventListener("connectionstatechange", () => this.onConnectionState());
    channel.addEventListener("open", () => {
      for (const text of this.pending.splice(0)) channel.send(text);
      this.checkConnected();
    });
    channel.addEventListener("message", (event) => this.receive(event.data));
    channel.addEventListener("close", () => {
      if (this.closed) return;
      if (this.serverEnded) this.finish("the server closed the session");
      else this.fail("the control channel closed unexpectedly", { fallback: true });
    });

    this.onEvent("progress", { text: "gathering ICE candidates" });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (this.closed) return;
    this.onEvent("progress", { text: "sending the offer" });
    let response;
    try {
      response = await fetch("/v1/webrtc/offer", {
        method: "POST",
        headers: authHeaders(this.token, { "Content-Type": "application/json" }),
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session_init: this.init }),
      });
    } catch (error) {
      this.fail(`the offer could not be sent: ${error.message || error}`, { fallback: true, connectivity: true });
      return;
    }
    const body = await readJson(response);
    if (this.closed) return;
    if (!response.ok || !body || typeof body.sdp !== "string") {
      const error = body && body.error ? body.error : null;
      const described = error
        ? describeError(error)
        : { title: "Offer refused", detail: response.statusText || "no answer", code: null, retryable: response.status >= 500 };
      const retryAfter = Number(response.headers.get("Retry-After"));
      this.fail(`offer refused (HTTP ${response.status}${described.code ? ` ${described.code}` : ""}): ${described.detail}`, {
        fallback: !NO_FALLBACK_STATUSES.has(response.status),
        status: response.status,
        error: error || null,
        retryable: described.retryable,
        retryAfterS: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
      });
      return;
    }
    this.sessionId = body.session_id || null;
    this.onEvent("progress", { text: "connecting (ICE)" });
    await pc.setRemoteDescription({ type: body.type || "answer", sdp: body.sdp });
  }

  checkConnected() {
    if (this.connected || this.closed || !this.pc) return;
    if (this.pc.connectionState === "connected" && this.channel.readyState === "open") {
      this.connected = true;
      this.onEvent("connected");
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
      else this.fail("the WebRTC connection failed", { fallback: true, connectivity: !this.connected });
    } else if (state === "disconnected" && !this.disconnectTimer) {
      this.onEvent("progress", { text: "connection interrupted, waiting for it to recover" });
      this.disconnectTimer = this.later(DISCONNECTED_GRACE_MS, () => {
        this.disconnectTimer = null;
        if (this.closed || this.pc.connectionState === "connected") return;
        if (this.serverEnded) this.finish("connection closed");
        else this.fail("the WebRTC connection was lost", { fallback: true });
      });
    } else if (state === "closed" && this.serverEnded) {
      this.finish("connection closed");
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
    if (sessionId && !this.serverEnded) this.released = this.deleteSession(sessionId);
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

  /** Tears down without reporting anything. The last frame stays on screen until replaced. */
  close() {
    if (this.closed) return;
    this.closed = true;
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
    let pair = null;
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") inbound = entry;
      if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") pair = entry;
    });
    const result = { rttMs: pair && typeof pair.currentRoundTripTime === "number" ? pair.currentRoundTripTime * 1000 : null };
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
