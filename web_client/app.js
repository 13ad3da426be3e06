// Entry point: picks the transport from ?transport= (webrtc, the default, or ws) and starts it.
// WebRTC: offer with the session init, video over RTP, JSON over the "control" data channel.
// WebSocket: see ws_player.js (fMP4 over /v1/stream into Media Source Extensions).
import { bindPromptForm, createMessageHandler, getUi, parseMessage, showStatus, showTransport } from "./protocol.js";
import { startWebSocketSession } from "./ws_player.js";

const TRANSPORTS = ["webrtc", "ws"];

// Gathering can hang (e.g. mDNS host-name registration where multicast is unavailable); the offer
// then goes out with what was gathered and connectivity checks find the path.
const ICE_GATHERING_TIMEOUT_MS = 3000;
const CONNECT_TIMEOUT_MS = 15000; // after the answer; the server drops an unconnected peer sooner

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

async function startWebRtcSession(ui, handleMessage) {
  const iceResponse = await fetch("/v1/webrtc/ice-servers");
  const { ice_servers: iceServers } = await iceResponse.json();
  const pc = new RTCPeerConnection({ iceServers });
  const channel = pc.createDataChannel("control");
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (event) => {
    ui.video.srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  pc.addEventListener("connectionstatechange", () => {
    const failed = pc.connectionState === "failed";
    showStatus(ui, `connection: ${pc.connectionState}`, failed);
  });
  channel.addEventListener("message", (event) => {
    const message = parseMessage(ui, event.data);
    if (message !== null) handleMessage(message);
  });
  // For debugging and tests.
  window.peerConnection = pc;

  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const response = await fetch("/v1/webrtc/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session_init: { stream_mode: "webrtc" } }),
  });
  const body = await response.json();
  if (!response.ok) {
    const error = body.error || {};
    showStatus(ui, `rejected (${error.code || response.status}): ${error.message || response.statusText}`, true);
    pc.close();
    return;
  }
  await pc.setRemoteDescription(body);
  setTimeout(() => {
    if (pc.connectionState !== "connected" && pc.connectionState !== "closed") {
      showStatus(ui, `could not connect (ICE ${pc.iceConnectionState}); try ?transport=ws`, true);
    }
  }, CONNECT_TIMEOUT_MS);
  bindPromptForm(ui, (message) => {
    if (channel.readyState !== "open") return false;
    channel.send(JSON.stringify(message));
    return true;
  });
}

function main() {
  const ui = getUi();
  const requested = new URLSearchParams(location.search).get("transport");
  const transport = requested === null || requested === "" ? "webrtc" : requested.toLowerCase();
  const handleMessage = createMessageHandler(ui);
  if (!TRANSPORTS.includes(transport)) {
    showTransport(ui, "none", `unknown transport "${requested}"`);
    showStatus(ui, `unknown transport "${requested}": use webrtc or ws`, true);
    return;
  }
  showTransport(ui, transport);
  const start = transport === "ws" ? startWebSocketSession : startWebRtcSession;
  Promise.resolve()
    .then(() => start(ui, handleMessage))
    .catch((error) => showStatus(ui, `failed: ${error.message || error}`, true));
}

main();
