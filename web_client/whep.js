// A WHEP viewer (RFC 9725): receive-only WebRTC for watching someone else's session, no data channel.
//
// POST /v1/sessions/{id}/whep with `Authorization: Bearer <watch_token>`, `Content-Type:
// application/sdp` and the offer (recvonly video and audio), sent once ICE gathering is done (no
// trickle: the server answers with all its candidates) -> 201 Created, the SDP answer, and a
// `Location` naming this viewer; DELETE on it leaves (close(), and leave() with keepalive on page
// unload). Refusals carry `{error: {code, message, retryable}}`: 401 a wrong token, 404 an unknown
// or ended session, 503 + Retry-After a session with all the viewers it takes.
// ICE servers come from GET /v1/webrtc/ice-servers as for the owner's page (peer_common.js), with
// the page's access token when it has one; refused or unreachable, the viewer tries direct paths.
//
// `onEvent(type, detail)`: "progress" {text}; "failed" {text, status, error, retryAfterS} before the
// connection was up (the offer refused or not answered, ICE not connected within connectTimeoutMs of
// the answer: the page falls back to the fMP4 watch socket); "connected"; "sound" {available};
// "lost" {text} once connected (the connection failed, closed or stayed disconnected); "stalled"
// {ms} when no RTP packet came for STALL_MS, "flowing" when they come again (the page asks whether
// the session still lives: WHEP has no channel to say that it ended).

import { authHeaders } from "./auth.js";
import { CONNECT_TIMEOUT_MS, OFFER_TIMEOUT_MS, ReceivingPeer } from "./peer_common.js";

const DISCONNECTED_GRACE_MS = 1500; // "disconnected" may recover; after this it counts as lost
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

export class WhepViewer extends ReceivingPeer {
  /**
   * `sessionId`, `watchToken`: from the watch link; `accessToken`: the page's token for the ICE
   * servers, if any (auth.js); `video`: where the stream plays.
   */
  constructor({ video, sessionId, watchToken, accessToken = null, onEvent, connectTimeoutMs = CONNECT_TIMEOUT_MS }) {
    super({ label: "WHEP", video, onEvent, connectTimeoutMs });
    this.sessionId = sessionId;
    this.watchToken = watchToken;
    this.accessToken = accessToken;
    this.resource = null; // the Location of this viewer, once answered
    this.stalled = false;
  }

  async iceServers() {
    // The session's own list, for its watch token: a viewer has no access token for the owners' one.
    const path = `/v1/sessions/${encodeURIComponent(this.sessionId)}/ice-servers`;
    const answer = await this.requestIceServers(this.watchToken, console.info, path);
    if (!answer || answer.ok) return answer ? answer.iceServers : [];
    // A server without that endpoint (older, or the viewer's own token refused): the owners' list,
    // with the page's access token if it has one.
    const fallback = await this.requestIceServers(this.accessToken, console.info);
    if (!fallback || fallback.ok) return fallback ? fallback.iceServers : [];
    console.info(`ICE servers refused (HTTP ${fallback.response.status}); trying direct paths only`);
    return [];
  }

  async negotiate() {
    const iceServers = await this.iceServers();
    if (this.closed) return;
    const pc = this.openPeer({ iceServers });
    await this.gatherOffer("gathering ICE candidates");
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
    this.startConnectTimer();
    this.onEvent("progress", { text: "connecting (ICE)" });
    await pc.setRemoteDescription({ type: "answer", sdp });
    if (this.closed) return;
    if (!this.stream.getVideoTracks().length) {
      this.fail("WHEP: the answer has no video");
      return;
    }
    this.onEvent("sound", { available: this.showStream() });
  }

  peerConnected() {
    if (this.connected) return;
    this.connected = true;
    this.onEvent("connected");
    this.watchStalls();
  }

  peerDisconnected() {
    this.awaitRecovery(DISCONNECTED_GRACE_MS, () => this.lose("the WebRTC connection was lost"));
  }

  peerGone(state) {
    this.lose(`the WebRTC connection ${state}`);
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
  watchStalls() {
    const check = (quietMs) => {
      if (quietMs === 0 && this.stalled) {
        this.stalled = false;
        this.onEvent("flowing");
      } else if (!this.stalled && quietMs >= STALL_MS) {
        this.stalled = true;
        this.onEvent("stalled", { ms: Math.round(quietMs) });
      }
    };
    this.watchPackets(check, (error) => console.info("WHEP stall watch:", error));
  }

  /** Leaves the viewer resource (DELETE; `keepalive` outlives the page), then tears down. */
  close({ keepalive = false } = {}) {
    const resource = this.resource;
    this.resource = null;
    if (resource) {
      const request = { method: "DELETE", keepalive, headers: authHeaders(this.watchToken) };
      fetch(resource, request).catch(() => null);
    }
    super.close();
  }

  /** The page is going away. */
  leave() {
    this.close({ keepalive: true });
  }
}
