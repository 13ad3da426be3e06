// Audio/video offset, measured on what the viewer gets: the synthetic generator starts a click at
// the first sample of every segment's first frame and of every frame whose stream frame number is a
// multiple of the fps, and draws each frame's segment index and frame number in a marker
// (marker.js). The offset is the time from such a frame's display to the nearest click onset heard:
// positive when the sound comes late. The overlay shows the median of the last few.
//
// - Video: requestVideoFrameCallback gives each displayed frame's expected display time; the
//   marker's corner is drawn into a 32x32 canvas (4 px a cell) and read back, one small read a frame.
// - Audio: an AudioWorklet (click_worklet.js) finds click onsets on the AudioContext's clock;
//   getOutputTimestamp() turns that into the time the sample leaves the speakers (output latency
//   included), on the same clock as the video's display times (performance.now()).
//
// The AudioContext is created on the viewer's first unmute (browsers let it run only after a
// gesture, and a page that makes one earlier gets a console warning). It analyses a copy of the
// sound, never what the viewer hears, so measuring changes nothing about playback:
// - WebRTC: createMediaStreamSource on the received audio track (the <video> plays it);
// - MSE: createMediaStreamSource on the <video>'s captureStream(), which copies what the element
//   plays whether muted or not. (Routing the element itself through the context with
//   createMediaElementSource would delay its sound by the context's output latency, which the
//   browser's A/V sync does not see: +45 ms measured in Chromium against +3 ms with the copy. That
//   is only the fallback where captureStream is missing, e.g. Safari, and then needs sound on.)
// The copy's path to the speakers is taken to be as long as the element's own.
// No frame is read while there is no sound to analyse (the worklet then sees silence).

import { GRID_COLS, markerSize, readMarker } from "./marker.js";

const PX_PER_CELL = 4; // the marker is read from a 32x32 canvas
const MATCH_WINDOW_MS = 450; // a click onset this close to a click frame's display belongs to it
const SETTLE_MS = 700; // a click frame is matched once onsets this much later had time to arrive
const KEEP_EVENTS_MS = 5000; // unmatched frames and onsets older than this are dropped
const MEDIAN_OF = 5; // the overlay shows the median of this many offsets
const STALE_MS = 10_000; // offsets older than this no longer count (the sound stopped, a pause)
const WORKLET_URL = "/client/click_worklet.js";

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Pairs the display times of click frames with click onsets (both in ms on performance.now()'s
 * clock) and keeps the offsets. Pure: times come in as arguments.
 */
export class OffsetMeter {
  constructor({ windowMs = MATCH_WINDOW_MS, settleMs = SETTLE_MS, medianOf = MEDIAN_OF, staleMs = STALE_MS } = {}) {
    this.windowMs = windowMs;
    this.settleMs = settleMs;
    this.medianOf = medianOf;
    this.staleMs = staleMs;
    this.frames = []; // display times of click frames not matched yet
    this.onsets = []; // click onset times
    this.offsets = []; // {at, ms}
  }

  addFrame(at) {
    this.frames.push(at);
  }

  addOnset(at) {
    this.onsets.push(at);
  }

  /** Matches the frames whose onsets have had time to arrive; drops what is too old to match. */
  update(now) {
    const waiting = [];
    for (const frame of this.frames) {
      if (frame > now - this.settleMs) {
        waiting.push(frame);
        continue;
      }
      let best = null;
      for (const onset of this.onsets) {
        const ms = onset - frame;
        if (Math.abs(ms) <= this.windowMs && (best === null || Math.abs(ms) < Math.abs(best))) best = ms;
      }
      if (best !== null) this.offsets.push({ at: frame, ms: best });
    }
    this.frames = waiting;
    this.onsets = this.onsets.filter((at) => at > now - KEEP_EVENTS_MS);
    if (this.offsets.length > this.medianOf) this.offsets.splice(0, this.offsets.length - this.medianOf);
  }

  /** The median of the last few offsets not older than staleMs, or null. */
  medianMs(now) {
    return median(this.offsets.filter((o) => o.at > now - this.staleMs).map((o) => o.ms));
  }

  reset() {
    this.frames = [];
    this.onsets = [];
    this.offsets = [];
  }
}

/**
 * Click frames among displayed frames: the first frame of a segment (its segment index differs
 * from the frame displayed just before, which was the frame right before it: a dropped first frame
 * is no click frame), and every frame whose number is a multiple of the fps. Pure.
 */
export class ClickFrames {
  constructor() {
    this.last = null; // the marker of the frame displayed last
  }

  /** True when `marker` ({segmentIdx, frameNumber}) starts with a click; `fps` may be null (unknown). */
  isClick(marker, fps) {
    const last = this.last;
    this.last = marker;
    if (last && last.frameNumber === marker.frameNumber) return false; // the same frame again
    if (fps && marker.frameNumber % fps === 0) return true;
    return Boolean(last && last.segmentIdx !== marker.segmentIdx && last.frameNumber === marker.frameNumber - 1);
  }

  reset() {
    this.last = null;
  }
}

/** Reads the marker off the frame a <video> is about to show: a 32x32 canvas, one read a frame. */
class MarkerReader {
  constructor(video) {
    this.video = video;
    const side = GRID_COLS * PX_PER_CELL;
    this.canvas = document.createElement("canvas");
    this.canvas.width = side;
    this.canvas.height = side;
    this.context = this.canvas.getContext("2d", { willReadFrequently: true, alpha: false });
    this.failed = false;
  }

  read() {
    const video = this.video;
    const size = markerSize(video.videoWidth);
    if (this.failed || !video.videoWidth || video.videoWidth < size || video.videoHeight < size) return null;
    const side = this.canvas.width;
    try {
      this.context.drawImage(video, 0, 0, size, size, 0, 0, side, side);
      return readMarker(this.context.getImageData(0, 0, side, side).data, PX_PER_CELL);
    } catch (error) {
      this.failed = true; // e.g. a tainted canvas: measure nothing rather than throw every frame
      console.warn(`A/V offset: cannot read frames (${error.message || error})`);
      return null;
    }
  }
}

/**
 * The A/V offset of the sound and picture on `video`. `fps()` tells the stream's frame rate (null
 * until known). `setSource({stream} | {element: true} | null)` says where the current stream's
 * sound is: a WebRTC MediaStream, the <video> itself (MSE), or none (video only). `start()` is
 * called from the viewer's unmute (a user gesture): it creates the AudioContext.
 */
export class AvSync {
  constructor(video, { fps = () => null } = {}) {
    this.video = video;
    this.fps = fps;
    this.meter = new OffsetMeter();
    this.clicks = new ClickFrames();
    this.reader = null;
    this.context = null;
    this.ready = null; // resolves once the worklet module is loaded and the graph built
    this.tap = null; // GainNode every source feeds: the analysis input
    this.analyser = null;
    this.worklet = null;
    this.elementSource = null; // once made, the <video> plays through the context for good
    this.streamSource = null; // MediaStreamAudioSourceNode on streamTrack
    this.streamTrack = null;
    this.listened = null; // the MediaStream whose audio is analysed
    this.captured = null; // the <video>'s captureStream() (MSE)
    this.source = null; // what setSource was last given
    this.frameHandle = null;
    this.onsetCount = 0;
    this.frameCount = 0; // click frames seen
    this.reads = 0; // frames whose marker was read, and the time that took (debugging: the cost)
    this.readMs = 0;
    this.error = null;
    video.addEventListener("volumechange", () => this.updateActivity());
  }

  /** The viewer unmuted: makes (or resumes) the AudioContext, inside the gesture that allows it. */
  start() {
    if (this.error) return;
    if (this.context) {
      if (this.context.state === "suspended") this.context.resume().catch(() => {});
      return;
    }
    if (typeof AudioContext !== "function") {
      this.error = "no Web Audio";
      return;
    }
    try {
      this.context = new AudioContext({ latencyHint: "interactive" });
    } catch (error) {
      this.error = `no AudioContext: ${error.message || error}`;
      return;
    }
    this.context.addEventListener("statechange", () => this.updateActivity());
    this.ready = this.buildGraph().catch((error) => {
      this.error = `A/V analysis unavailable: ${error.message || error}`;
      console.warn(this.error);
    });
  }

  async buildGraph() {
    const context = this.context;
    this.tap = context.createGain();
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 2048;
    this.tap.connect(this.analyser);
    await context.audioWorklet.addModule(WORKLET_URL);
    this.worklet = new AudioWorkletNode(context, "click-onsets", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    this.worklet.port.onmessage = (event) => this.onOnset(event.data);
    this.tap.connect(this.worklet);
    this.worklet.connect(context.destination); // silent; connected so that it is surely processed
    this.connectSource();
    this.updateActivity();
  }

  /** Where the current stream's sound comes from (see the class comment). */
  setSource(source) {
    this.source = source;
    if (this.tap) this.connectSource();
    this.updateActivity();
  }

  connectSource() {
    this.disconnectStream();
    const source = this.source;
    if (!source) return;
    if (source.stream) {
      this.listenTo(source.stream);
    } else if (!this.elementSource && typeof this.video.captureStream === "function") {
      // A copy of what the element plays, muted or not, that leaves its output (and the browser's
      // own A/V sync of it) alone. Made once: it follows the element to every new MediaSource.
      this.captured = this.captured || this.video.captureStream();
      this.listenTo(this.captured);
    } else if (!this.elementSource) {
      // No captureStream (Safari): the element then plays through the context for good. Its muted
      // and volume apply before this node, and the browser's A/V sync does not see the context's
      // output latency (the sound comes out that much later): a fallback only.
      this.elementSource = this.context.createMediaElementSource(this.video);
      this.elementSource.connect(this.context.destination);
      this.elementSource.connect(this.tap);
    }
  }

  /** Analyses the newest live audio track of `stream`, now and whenever the stream gains one. */
  listenTo(stream) {
    this.listened = stream;
    stream.onaddtrack = () => this.connectTrack(stream);
    this.connectTrack(stream);
  }

  connectTrack(stream) {
    if (this.listened !== stream || !this.tap) return;
    if (stream === this.captured) {
      // Only the sound is needed: a live captured video track would copy every frame.
      for (const track of stream.getVideoTracks()) track.stop();
    }
    const track = stream.getAudioTracks().filter((t) => t.readyState === "live").pop();
    if (!track || track === this.streamTrack) return;
    this.disconnectStream();
    this.listened = stream;
    this.streamTrack = track;
    this.streamSource = this.context.createMediaStreamSource(new MediaStream([track]));
    this.streamSource.connect(this.tap);
    this.updateActivity();
  }

  disconnectStream() {
    if (this.listened) this.listened.onaddtrack = null;
    this.listened = null;
    if (this.streamSource) this.streamSource.disconnect();
    this.streamSource = null;
    this.streamTrack = null;
  }

  /** A new session: its frame numbers and clicks start over. */
  reset() {
    this.meter.reset();
    this.clicks.reset();
  }

  /** Whether there is sound to measure now: frames are read only then. */
  measuring() {
    if (!this.source || !this.worklet || !this.context || this.context.state !== "running") return false;
    if (!this.streamSource && !this.elementSource) return false;
    // The element's muted/volume apply before a MediaElementAudioSourceNode: nothing to hear then.
    if (this.elementSource && (this.video.muted || this.video.volume === 0)) return false;
    return true;
  }

  updateActivity() {
    const active = this.measuring();
    if (active && this.frameHandle === null && typeof this.video.requestVideoFrameCallback === "function") {
      this.reader = this.reader || new MarkerReader(this.video);
      const tick = (now, metadata) => {
        this.frameHandle = null;
        if (!this.measuring()) return;
        this.onFrame(metadata);
        this.frameHandle = this.video.requestVideoFrameCallback(tick);
      };
      this.frameHandle = this.video.requestVideoFrameCallback(tick);
    } else if (!active && this.frameHandle !== null) {
      this.video.cancelVideoFrameCallback(this.frameHandle);
      this.frameHandle = null;
      this.clicks.reset();
    }
  }

  onFrame(metadata) {
    const started = performance.now();
    const marker = this.reader.read();
    this.reads += 1;
    this.readMs += performance.now() - started;
    if (!marker) {
      this.clicks.reset();
      return;
    }
    if (this.clicks.isClick(marker, this.fps())) {
      this.frameCount += 1;
      this.meter.addFrame(metadata.expectedDisplayTime || metadata.presentationTime);
    }
  }

  /** A click onset from the worklet ({frame} on the context's clock): when it is heard, in ms. */
  onOnset({ frame }) {
    const context = this.context;
    if (!context) return;
    const at = frame / context.sampleRate;
    const stamp = context.getOutputTimestamp ? context.getOutputTimestamp() : null;
    let heardAt;
    if (stamp && stamp.performanceTime > 0) {
      heardAt = stamp.performanceTime + (at - stamp.contextTime) * 1000;
    } else {
      // No output timestamp yet: the context's clock now, plus the latency it reports.
      const latency = (context.outputLatency || 0) + (context.baseLatency || 0);
      heardAt = performance.now() + (at - context.currentTime + latency) * 1000;
    }
    this.onsetCount += 1;
    this.meter.addOnset(heardAt);
  }

  /** For the overlay: {offsetMs, state, title}; offsetMs null when not measurable. */
  stats(now = performance.now()) {
    this.meter.update(now);
    const offsetMs = this.meter.medianMs(now);
    let state;
    if (!this.source) state = "no sound";
    else if (this.error) state = this.error;
    else if (!this.context) state = "unmute to measure";
    else if (this.context.state !== "running") state = `audio ${this.context.state}`;
    else if (!this.measuring()) state = "unmute to measure";
    else if (offsetMs === null) state = "waiting for clicks and segment starts";
    else state = "measuring";
    return { offsetMs: this.measuring() ? offsetMs : null, state, onsets: this.onsetCount, clickFrames: this.frameCount };
  }

  /** Peak level (0..1) of the sound reaching the analyser now, or null without one (tests, debugging). */
  level() {
    if (!this.analyser) return null;
    const samples = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const value of samples) peak = Math.max(peak, Math.abs(value));
    return peak;
  }

  /** Debugging and tests: the raw offsets and what the graph holds. */
  debug() {
    return {
      context: this.context ? this.context.state : null,
      sampleRate: this.context ? this.context.sampleRate : null,
      outputLatency: this.context ? this.context.outputLatency || 0 : null,
      source: this.elementSource ? "element" : this.listened && this.listened === this.captured ? "capture" : this.streamSource ? "stream" : null,
      measuring: this.measuring(),
      onsets: this.onsetCount,
      clickFrames: this.frameCount,
      offsets: this.meter.offsets.map((o) => Math.round(o.ms)),
      markerReads: this.reads,
      msPerRead: this.reads ? Number((this.readMs / this.reads).toFixed(3)) : null,
      level: this.level(),
      error: this.error,
    };
  }
}
