// A WHEP viewer (RFC 9725): receive-only WebRTC for watching someone else's session, no data channel.
//
// POST /v1/sessions/{id}/whep with `Authorization: Bearer <watch_token>`, `Content-Type:
// application/sdp` and the offer (recvonly video and audio), sent once ICE gathering is done (no
// trickle: the server answers with all its candidates) -> 201 Created, the SDP answer, and a
// `Location` naming this viewer; DELETE on it leaves (close(), and leave() with keepalive on page
// unload). Refusals carry `{error: {code, message, retryable}}`: 401 a wrong token, 404 an unknown
// or ended session, 503 + Retry-After a session with all the viewers it takes.
// ICE servers come from GET /v1/webrtc/ice-servers as for the owner's page (webrtc_player.js), with
// the page's access token when it has one; refused or unreachable, the viewer tries direct paths.
//
// `onEvent(type, detail)`: "progress" {text}; "failed" {text, status, error, retryAfterS} before the
// connection was up (the offer refused or not answered, ICE not connected within connectTimeoutMs of
// the answer: the page falls back to the fMP4 watch socket); "connected"; "sound" {available};
// "lost" {text} once connected (the connection failed, closed or stayed disconnected); "stalled"
// {ms} when no RTP packet came for STALL_MS, "flowing" when they come again (the page asks whether
// the session still lives: WHEP has no channel to say that it ended).

import { authHeaders } from "./auth.js";
import { RateMeter, selectedCandidatePair } from "./stats.js";
import { CONNECT_TIMEOUT_MS, OFFER_TIMEOUT_MS, fetchIceServers, playMutedIfRefused, waitForIceGathering } from "./webrtc_player.js";

const DISCONNECTED_GRACE_MS = 1500; // "disconnected" may recover; after this it counts as lost
const FRAME_POLL_MS = 250; // how often the stall watch reads the inbound packet count
export const STALL_MS = 2000; // no RTP for this long: "stalled"

/** The URL of the WHEP endpoint of a session. */
export function whepUrl(sessionId) {
  return `/v1/sessions/${encodeURIComponent(sessionId)}/whep`;
}

async function readError(response) {
  try {
    const body = await response.json();
    return body && body.error && typeof body.error === "object" ? body.error : null;
  } catch {
    return null; // not JSON: e.g. a server without the endpoint (a plain 404 or 405)
  }
}

export class WhepViewer {
  /**
   * `sessionId`, `watchToken`: from the watch link; `accessToken`: the page's token for the ICE
   * servers, if any (auth.js); `video`: where the stream plays.
   */
  constructor({ video, sessionId, watchToken, accessToken = null, onEvent, connectTimeoutMs = CONNECT_TIMEOUT_MS }) {
    this.kind = "webrtc"; // the stats overlay shows the ICE path for it
    this.label = "WHEP";
    this.video = video;
    this.sessionId = sessionId;
    this.watchToken = watchToken;
    this.accessToken = accessToken;
    this.onEvent = onEvent;
    this.connectTimeoutMs = connectTimeoutMs;
    this.pc = null;
    this.resource = null; // the Location of this viewer, once answered
    this.connected = false;
    this.closed = false;
    this.stalled = false;
    this.abort = new AbortController();
    this.timers = new Set();
    this.rate = new RateMeter();
    this.stream = new MediaStream();
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
      this.fail(`WHEP setup failed: ${error.message || error}`);
    }
  }

  async iceServers() {
    this.onEvent("progress", { text: "fetching ICE servers" });
    try {
      const answer = await fetchIceServers(this.accessToken, { signal: this.abort.signal });
      if (answer.ok) return answer.iceServers;
      // A server with auth gives them to its clients only; a viewer may have no such token.
      console.info(`ICE servers refused (HTTP ${answer.response.status}); trying direct paths only`);
    } catch (error) {
      if (!this.closed) console.info(`no ICE servers (${error.message || error}); trying direct paths only`);
    }
    return [];
  }

  async negotiate() {
    const iceServers = await this.iceServers();
    if (this.closed) return;
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    window.peerConnection = pc; // for debugging and tests
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      if (!this.closed) this.stream.addTrack(event.track);
    });
    pc.addEventListener("connectionstatechange", () => this.onConnectionState());
    this.onEvent("progress", { text: "gathering ICE candidates" });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (this.closed) return;
    this.onEvent("progress", { text: "sending the WHEP offer" });
    const timer = this.later(OFFER_TIMEOUT_MS, () => this.abort.abort());
    let response;
    let sdp;
    try {
      response = await fetch(whepUrl(this.sessionId), {
        method: "POST",
        headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${this.watchToken}` },
        body: pc.localDescription.sdp,
        signal: this.abort.signal,
        cache: "no-store",
      });
      sdp = response.status === 201 ? await response.text() : null;
    } catch (error) {
      if (this.closed) return;
      const text = this.abort.signal.aborted ? `no answer within ${OFFER_TIMEOUT_MS / 1000} s` : `${error.message || error}`;
      this.fail(`the WHEP offer failed: ${text}`);
      return;
    } finally {
      clearTimeout(timer);
      this.timers.delete(timer);
    }
    if (this.closed) return;
    if (response.status !== 201) {
      const error = await readError(response);
      const retryAfter = Number(response.headers.get("Retry-After"));
      this.fail(`WHEP: HTTP ${response.status}${error ? ` ${error.code}: ${error.message}` : ""}`, {
        status: response.status,
        error,
        retryAfterS: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
      });
      return;
    }
    const location = response.headers.get("Location");
    if (location) this.resource = new URL(location, response.url).toString();
    this.later(this.connectTimeoutMs, () => {
      if (!this.connected) this.fail(`WHEP did not connect within ${Math.round(this.connectTimeoutMs / 1000)} s`);
    });
    this.onEvent("progress", { text: "connecting (ICE)" });
    await pc.setRemoteDescription({ type: "answer", sdp });
    if (this.closed) return;
    if (!this.stream.getVideoTracks().length) {
      this.fail("WHEP: the answer has no video");
      return;
    }
    this.video.removeAttribute("src");
    this.video.srcObject = this.stream;
    playMutedIfRefused(this.video);
    this.onEvent("sound", { available: this.stream.getAudioTracks().length > 0 });
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
      if (!this.connected) {
        this.connected = true;
        this.onEvent("connected");
        this.watchPackets();
      }
    } else if (state === "failed" || state === "closed") {
      this.lose(`the WebRTC connection ${state === "failed" ? "failed" : "closed"}`);
    } else if (state === "disconnected" && !this.disconnectTimer) {
      this.disconnectTimer = this.later(DISCONNECTED_GRACE_MS, () => {
        this.disconnectTimer = null;
        if (this.pc.connectionState !== "connected") this.lose("the WebRTC connection was lost");
      });
    }
  }

  /** Before the connection was up: "failed" (the page may fall back); after: "lost". */
  fail(text, detail = {}) {
    if (this.closed) return;
    if (this.connected) {
      this.lose(text);
      return;
    }
    this.close();
    this.onEvent("failed", { text, status: null, error: null, retryAfterS: null, ...detail });
  }

  lose(text) {
    if (this.closed) return;
    if (!this.connected) {
      this.fail(text);
      return;
    }
    this.close();
    this.onEvent("lost", { text });
  }

  /** Reports "stalled" when no RTP packet came for STALL_MS, "flowing" when they come again. */
  watchPackets() {
    let last = null;
    let changed = performance.now();
    const tick = async () => {
      if (this.closed) return;
      const count = await this.packetsReceived();
      if (this.closed) return;
      const now = performance.now();
      if (count !== last) {
        last = count;
        changed = now;
        if (this.stalled) {
          this.stalled = false;
          this.onEvent("flowing");
        }
      } else if (!this.stalled && now - changed >= STALL_MS) {
        this.stalled = true;
        this.onEvent("stalled", { ms: Math.round(now - changed) });
      }
      this.later(FRAME_POLL_MS, watch);
    };
    const watch = () => tick().catch((error) => console.info("WHEP stall watch:", error));
    this.later(FRAME_POLL_MS, watch);
  }

  async packetsReceived() {
    const report = await this.pc.getStats();
    let packets = null;
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") packets = entry.packetsReceived;
    });
    return packets;
  }

  /** Leaves the viewer resource (DELETE; `keepalive` outlives the page), then tears down. */
  close({ keepalive = false } = {}) {
    const resource = this.resource;
    this.resource = null;
    if (resource) {
      const request = { method: "DELETE", keepalive, headers: authHeaders(this.watchToken) };
      fetch(resource, request).catch(() => null);
    }
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.pc) this.pc.close();
  }

  /** The page is going away. */
  leave() {
    this.close({ keepalive: true });
  }

  /** Figures for the stats overlay (stats.js), from getStats(). */
  async stats() {
    if (!this.pc || this.closed) return {};
    const report = await this.pc.getStats();
    let inbound = null;
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") inbound = entry;
    });
    const result = { path: selectedCandidatePair(report) };
    if (!inbound) return result;
    result.bitrateKbps = this.rate.kbps(inbound.bytesReceived);
    if (inbound.jitterBufferEmittedCount > 0) {
      result.jitterBufferMs = (inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000;
    }
    result.framesDecoded = inbound.framesDecoded;
    return result;
  }
}
