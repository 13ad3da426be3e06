// What the two WebRTC clients share: the owner page's transport (webrtc_player.js) and the viewer
// page's WHEP client (whep.js) both receive video and sound on a recvonly RTCPeerConnection, send one
// complete offer (no trickle), play the received tracks on one <video>, give "disconnected" a grace
// period, watch the inbound packet count and report the same overlay figures. How the offer is sent
// and what a failure means differ, and stay in each.

import { authHeaders } from "./auth.js";
import { fetchJson } from "./fetch_json.js";
import { RateMeter, selectedCandidatePair } from "./stats.js";

// Gathering can hang (e.g. mDNS host-name registration where multicast is unavailable, or a TURN
// server that does not answer); the offer then goes out with what was gathered and connectivity
// checks find the path (candidates found later reach the server as peer-reflexive ones).
const ICE_GATHERING_TIMEOUT_MS = 2000;
const ICE_SERVERS_TIMEOUT_MS = 10_000; // GET /v1/webrtc/ice-servers
// From the answer's arrival to a connected peer (with the owner's channel open). It starts at the
// answer, not at the offer: the server answers only once its own gathering is done
// (webrtc.gather_timeout_seconds, up to 30 s, e.g. waiting on its TURN server), and a slow answer
// says nothing about whether ICE will connect.
export const CONNECT_TIMEOUT_MS = 6000;
// The offer request itself gets its own, generous bound: above the server's longest gathering
// (30 s) plus admission, so only a server that hangs trips it, and the page still falls back then.
export const OFFER_TIMEOUT_MS = 40_000;
const FRAME_POLL_MS = 250; // how often a packet watch reads the inbound packet count

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

export const ICE_SERVERS_PATH = "/v1/webrtc/ice-servers"; // an owner's; a viewer's is per session

/**
 * GET `path` (ICE_SERVERS_PATH, or /v1/sessions/{id}/ice-servers with a watch token):
 * {ok: true, iceServers, ttlSeconds} or {ok: false, response, body} for an answer other than 200.
 * Throws when the request fails or times out. Never cached: every answer carries fresh TURN
 * credentials (the server also says Cache-Control: no-store).
 */
export async function fetchIceServers(
  token,
  { signal = null, timeoutMs = ICE_SERVERS_TIMEOUT_MS, path = ICE_SERVERS_PATH } = {},
) {
  const request = { headers: authHeaders(token), cache: "no-store" };
  const { response, body } = await fetchJson(path, request, timeoutMs, signal);
  if (!response.ok) return { ok: false, response, body };
  const list = body && Array.isArray(body.ice_servers) ? body.ice_servers : [];
  const ttl = body && Number.isFinite(body.ttl_seconds) ? body.ttl_seconds : null;
  return { ok: true, iceServers: list, ttlSeconds: ttl };
}

/** The inbound video's entry of a getStats() report; null before there is one. */
function inboundVideo(report) {
  let inbound = null;
  report.forEach((entry) => {
    if (entry.type === "inbound-rtp" && entry.kind === "video") inbound = entry;
  });
  return inbound;
}

/**
 * The life of a receive-only peer connection. A subclass defines negotiate() (the offer and its
 * answer), fail(text, detail), and what the connection states mean to it: peerConnected(),
 * peerDisconnected() (once per outage; awaitRecovery() gives it its grace) and peerGone(state)
 * ("failed" or "closed"). `label` names it in messages; `setupFailure` is the detail fail() gets
 * when setting up or connecting did not work.
 */
export class ReceivingPeer {
  constructor({ label, video, onEvent, connectTimeoutMs, setupFailure = {} }) {
    this.kind = "webrtc"; // the stats overlay shows the ICE path for it
    this.label = label;
    this.video = video;
    this.onEvent = onEvent;
    this.connectTimeoutMs = connectTimeoutMs;
    this.setupFailure = setupFailure;
    this.pc = null;
    this.connected = false;
    this.closed = false;
    this.disconnectTimer = null;
    this.abort = new AbortController(); // cancels the requests in flight when the peer closes
    this.timers = new Set(); // all cleared on close, so no callback outlives the peer
    this.rate = new RateMeter();
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
      this.fail(`${this.label} setup failed: ${error.message || error}`, this.setupFailure);
    }
  }

  /**
   * This connection's ICE servers, fresh (their TURN credentials are short-lived): the answer of
   * fetchIceServers(), none when unreachable (host candidates still work on a local network), null
   * once closed. `log` says so.
   */
  async requestIceServers(token, log, path = ICE_SERVERS_PATH) {
    this.onEvent("progress", { text: "fetching ICE servers" });
    try {
      return await fetchIceServers(token, { signal: this.abort.signal, path });
    } catch (error) {
      if (this.closed) return null;
      log(`no ICE servers (${error.message || error}); trying direct paths only`);
      return { ok: true, iceServers: [], ttlSeconds: null };
    }
  }

  /**
   * The peer connection: recvonly video and sound (a server whose generator makes none answers that
   * m-line without a track). `channel`: a data channel to open first, ahead of the media in the offer.
   */
  openPeer(config, { channel = null } = {}) {
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    window.peerConnection = pc; // for debugging and tests
    if (channel) this.channel = pc.createDataChannel(channel);
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      // Both tracks go into one stream of our own: the server's may name a stream per track.
      if (!this.closed) this.stream.addTrack(event.track);
    });
    pc.addEventListener("connectionstatechange", () => this.onConnectionState());
    return pc;
  }

  /** Sets the offer once ICE gathering is done (or has taken long enough): the server gets every candidate with it. */
  async gatherOffer(text) {
    this.onEvent("progress", { text });
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await waitForIceGathering(this.pc);
  }

  /** The connect budget, from the answer's arrival (see CONNECT_TIMEOUT_MS). */
  startConnectTimer() {
    const seconds = Math.round(this.connectTimeoutMs / 1000);
    this.later(this.connectTimeoutMs, () => {
      if (!this.connected) this.fail(`${this.label} did not connect within ${seconds} s`, this.setupFailure);
    });
  }

  /** Plays the received stream on the <video>; true when it has sound. */
  showStream() {
    this.video.removeAttribute("src");
    this.video.srcObject = this.stream;
    playMutedIfRefused(this.video);
    return this.stream.getAudioTracks().length > 0;
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
      this.peerConnected();
    } else if (state === "disconnected") {
      if (!this.disconnectTimer) this.peerDisconnected();
    } else if (state === "failed" || state === "closed") {
      this.peerGone(state);
    }
  }

  /** "disconnected" may recover: `onLost()` only when it is not connected again within `ms`. */
  awaitRecovery(ms, onLost) {
    this.disconnectTimer = this.later(ms, () => {
      this.disconnectTimer = null;
      if (!this.closed && this.pc.connectionState !== "connected") onLost();
    });
  }

  /**
   * Every FRAME_POLL_MS, reads the inbound video's packet count and awaits `check(quietMs)`: how long
   * it has not changed, 0 when it just did. `check` returning true counts the quiet afresh. Errors go
   * to `onError` and end the watch; closing ends it too.
   */
  watchPackets(check, onError) {
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
      }
      if (await check(now - changed)) changed = performance.now();
      if (this.closed) return;
      this.later(FRAME_POLL_MS, watch);
    };
    const watch = () => tick().catch(onError);
    this.later(FRAME_POLL_MS, watch);
  }

  /** The inbound video's packet count (null before there is one). */
  async packetsReceived() {
    if (!this.pc) return null;
    const inbound = inboundVideo(await this.pc.getStats());
    return inbound ? inbound.packetsReceived : null;
  }

  /** Figures for the stats overlay (stats.js), from getStats(). */
  async stats() {
    if (!this.pc || this.closed) return {};
    const report = await this.pc.getStats();
    return this.overlayFigures(selectedCandidatePair(report), inboundVideo(report));
  }

  /** The ICE path, and the received video's figures once there is an inbound video. */
  overlayFigures(path, inbound) {
    const result = { path };
    if (!inbound) return result;
    result.bitrateKbps = this.rate.kbps(inbound.bytesReceived);
    if (inbound.jitterBufferEmittedCount > 0) {
      result.jitterBufferMs = (inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000;
    }
    result.framesDecoded = inbound.framesDecoded;
    return result;
  }

  /** Tears down without reporting anything. The last frame stays on screen until replaced. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.pc) this.pc.close();
  }
}
