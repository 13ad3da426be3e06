// Minimal WebRTC page: offer with the session init, video over RTP, JSON over the "control" channel.
const video = document.getElementById("video");
const statusLine = document.getElementById("status");
const segmentLine = document.getElementById("segment");
const form = document.getElementById("prompt-form");
const promptInput = document.getElementById("prompt");

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

async function connect() {
  const iceResponse = await fetch("/v1/webrtc/ice-servers");
  const { ice_servers: iceServers } = await iceResponse.json();
  const pc = new RTCPeerConnection({ iceServers });
  const channel = pc.createDataChannel("control");
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (event) => { video.srcObject = event.streams[0] || new MediaStream([event.track]); });
  pc.addEventListener("connectionstatechange", () => showStatus(`connection: ${pc.connectionState}`));
  channel.addEventListener("message", (event) => handleEvent(JSON.parse(event.data)));

  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const response = await fetch("/v1/webrtc/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session_init: { stream_mode: "webrtc" } }),
  });
  const body = await response.json();
  if (!response.ok) {
    showStatus(`rejected: ${body.error.message}`, true);
    return;
  }
  await pc.setRemoteDescription(body);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = promptInput.value.trim();
    if (!prompt || channel.readyState !== "open") return;
    channel.send(JSON.stringify({ type: "segment_prompt_source", prompt, source: "user" }));
    promptInput.value = "";
  });
}

function handleEvent(message) {
  switch (message.type) {
    case "ltx2_segment_start":
      segmentLine.textContent = `segment ${message.segment_idx}: ${message.prompt}`;
      break;
    case "error":
      showStatus(`error (${message.code}): ${message.message}`, true);
      break;
    case "ltx2_stream_complete":
      showStatus(`stream complete: ${message.reason}`);
      break;
    default:
      break;
  }
}

connect().catch((error) => showStatus(`failed: ${error}`, true));
