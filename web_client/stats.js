// The live stats overlay: received fps (requestVideoFrameCallback), per-segment generation time
// and end-to-end latency (from ltx2_segment_complete), bitrate and buffer from the transport
// (WebRTC getStats: jitter buffer; MSE: seconds buffered ahead of the playhead), and for WebRTC
// the path the media takes: the selected ICE candidate pair's local candidate type (host, srflx,
// prflx or relay; "relay" means through a TURN server), and the A/V offset measured on the sync
// clicks (av_sync.js): "+40 ms" means the sound comes 40 ms after the picture.

const FPS_WINDOW_MS = 1000;
const REFRESH_MS = 500;
const RATE_WINDOW_MS = 3000; // segments arrive in bursts: average the bitrate over a few of them

/** Bitrate from a growing byte count, averaged over the last few seconds. */
export class RateMeter {
  constructor() {
    this.samples = [];
  }

  /** Records the byte count now; returns kb/s over the window, or null before two samples. */
  kbps(bytes, now = performance.now()) {
    this.samples.push({ at: now, bytes });
    while (this.samples.length > 2 && this.samples[1].at <= now - RATE_WINDOW_MS) this.samples.shift();
    const first = this.samples[0];
    if (this.samples.length < 2 || now <= first.at) return null;
    return ((bytes - first.bytes) * 8) / (now - first.at);
  }
}

/** Counts frames the <video> presents; falls back to decoded-frame counts without rVFC. */
export class FrameCounter {
  constructor(video) {
    this.video = video;
    this.frames = 0;
    this.times = [];
    this.supported = typeof video.requestVideoFrameCallback === "function";
    if (this.supported) {
      const tick = (now) => {
        this.frames += 1;
        this.times.push(now);
        this.trim(now);
        video.requestVideoFrameCallback(tick);
      };
      video.requestVideoFrameCallback(tick);
    }
    this.lastQuality = null;
  }

  trim(now) {
    while (this.times.length && this.times[0] < now - FPS_WINDOW_MS) this.times.shift();
  }

  /** Frames presented in the last second. */
  fps() {
    const now = performance.now();
    if (this.supported) {
      this.trim(now);
      return this.times.length;
    }
    const total = this.video.getVideoPlaybackQuality ? this.video.getVideoPlaybackQuality().totalVideoFrames : 0;
    const last = this.lastQuality;
    this.lastQuality = { at: now, total };
    if (!last || now <= last.at) return null;
    return ((total - last.total) * 1000) / (now - last.at);
  }
}

/**
 * The ICE candidate pair in use, from a getStats() report (an RTCStatsReport, or any Map of stats
 * by id): {local, remote, protocol, relayProtocol, rttS}, the candidate types being "host",
 * "srflx", "prflx" or "relay"; null before one is selected. The transport's selectedCandidatePairId
 * names it; browsers without it (Firefox) mark it `selected`, older ones nominated and succeeded.
 */
export function selectedCandidatePair(report) {
  let pair = null;
  let fallback = null;
  report.forEach((entry) => {
    if (entry.type === "transport" && entry.selectedCandidatePairId && report.get(entry.selectedCandidatePairId)) {
      pair = pair || report.get(entry.selectedCandidatePairId);
    } else if (entry.type === "candidate-pair" && (entry.selected || (entry.nominated && entry.state === "succeeded"))) {
      fallback = fallback || entry;
    }
  });
  pair = pair || fallback;
  if (!pair) return null;
  const local = report.get(pair.localCandidateId) || {};
  const remote = report.get(pair.remoteCandidateId) || {};
  return {
    local: local.candidateType || null,
    remote: remote.candidateType || null,
    protocol: local.protocol || null,
    relayProtocol: local.relayProtocol || null,
    rttS: typeof pair.currentRoundTripTime === "number" ? pair.currentRoundTripTime : null,
  };
}

/** The overlay's words for a path: what the title (tooltip) says. */
export function describePath(path) {
  if (!path) return "no ICE candidate pair selected yet";
  const via = path.local === "relay" ? `through a TURN server${path.relayProtocol ? ` (${path.relayProtocol} to it)` : ""}, ` : "";
  return `local ${path.local || "?"} ↔ remote ${path.remote || "?"} candidate, ${via}${path.protocol || "?"}`;
}

function ms(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return value >= 10_000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

function kbps(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} Mb/s` : `${Math.round(value)} kb/s`;
}

/** Refreshes the overlay twice a second from the frame counter, the model and the transport. */
export class StatsOverlay {
  constructor(doc, video, getContext) {
    this.el = {
      fps: doc.getElementById("stat-fps"),
      gen: doc.getElementById("stat-gen"),
      e2e: doc.getElementById("stat-e2e"),
      bitrate: doc.getElementById("stat-bitrate"),
      buffer: doc.getElementById("stat-buffer"),
      bufferLabel: doc.getElementById("stat-buffer-label"),
      path: doc.getElementById("stat-path"),
      av: doc.getElementById("stat-av"),
      root: doc.getElementById("stats"),
    };
    this.counter = new FrameCounter(video);
    this.getContext = getContext; // () => {model, transport}
    this.busy = false;
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      const { model, transport, avSync = null } = this.getContext();
      this.showOffset(avSync);
      const fps = this.counter.fps();
      this.el.fps.textContent = fps === null ? "–" : String(Math.round(fps));
      this.el.root.dataset.frames = String(this.counter.frames);
      this.el.gen.textContent = ms(model.generationMs);
      this.el.e2e.textContent = ms(model.e2eMs);
      let figures = {};
      if (transport) {
        try {
          figures = await transport.stats();
        } catch {
          figures = {};
        }
      }
      this.el.bitrate.textContent = kbps(figures.bitrateKbps);
      this.showPath(transport, figures.path || null);
      if (transport && transport.kind === "ws") {
        this.el.bufferLabel.textContent = "buffer";
        const jumps = figures.liveJumps ? ` · ${figures.liveJumps}↷` : "";
        this.el.buffer.textContent = typeof figures.bufferS === "number" ? `${figures.bufferS.toFixed(2)} s${jumps}` : "–";
        this.el.buffer.title = "media buffered ahead of the playhead; ↷ counts jumps to the live edge";
      } else {
        this.el.bufferLabel.textContent = "jitter";
        this.el.buffer.textContent = ms(figures.jitterBufferMs);
        this.el.buffer.title = "average WebRTC jitter-buffer delay";
      }
    } finally {
      this.busy = false;
    }
  }

  /** The A/V row: the median offset in ms (sound after picture is positive), "–" when not measurable. */
  showOffset(avSync) {
    const el = this.el.av;
    if (!el) return;
    const figures = avSync ? avSync.stats() : { offsetMs: null, state: "no sound" };
    const offset = figures.offsetMs === null ? null : Math.round(figures.offsetMs);
    el.textContent = offset === null ? "–" : `${offset > 0 ? "+" : ""}${offset} ms`;
    el.dataset.offsetMs = offset === null ? "" : String(offset);
    el.title =
      offset === null
        ? `A/V offset: ${figures.state}`
        : `sound ${offset >= 0 ? "after" : "before"} picture by ${Math.abs(offset)} ms (median of the last sync clicks)`;
  }

  /** The ICE path row: the local candidate type, with both types as data attributes for tests. */
  showPath(transport, path) {
    const el = this.el.path;
    if (!transport || transport.kind !== "webrtc") {
      el.textContent = transport ? "tcp" : "–";
      el.title = transport ? "WebSocket over TCP: no ICE" : "";
      el.dataset.local = "";
      el.dataset.remote = "";
      return;
    }
    el.textContent = path && path.local ? path.local : "–";
    el.title = describePath(path);
    el.dataset.local = path && path.local ? path.local : "";
    el.dataset.remote = path && path.remote ? path.remote : "";
  }
}
