// AudioWorklet processor (loaded by av_sync.js): finds click onsets in the stream's sound and posts
// each one's sample frame on the AudioContext's clock ({frame}). A click is a short burst standing
// well above the sound around it: the synthetic generator puts a 6 ms, 0.9-amplitude burst over a
// 0.15-amplitude tone at every segment start. Runs on the audio thread, one pass over each
// 128-sample block; posts only when it finds one (about once a second).
//
// An onset is the first sample louder than RATIO times the level before it (the median of recent
// block peaks, which a click's few blocks do not move) and than FLOOR. It counts only if the sound
// from SETTLE_S to CONFIRM_S after it is back below half the burst's peak: a step up in level (the
// sound unmuted, the volume raised, a louder scene) is not a click.

const HISTORY_BLOCKS = 16; // ~43 ms of block peaks at 48 kHz: the level a click is compared with
const RATIO = 3; // a click's onset stands this many times above that level
const FLOOR = 0.02; // and above this absolute level (full scale 1): silence and noise are not clicks
const SETTLE_S = 0.015; // the burst (6 ms) and codec smear after it
const CONFIRM_S = 0.045; // until here the sound must be back down
const REFRACTORY_S = 0.1; // no second onset this soon after one

class ClickOnsetProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.peaks = new Float32Array(HISTORY_BLOCKS);
    this.sorted = new Float32Array(HISTORY_BLOCKS);
    this.filled = 0;
    this.next = 0;
    this.candidate = null; // {frame, peak, after}
    this.quietUntil = 0; // sample frame before which no new onset is looked for
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.stopped = true;
    };
  }

  level() {
    if (this.filled === 0) return 0;
    const sorted = this.sorted.subarray(0, this.filled);
    sorted.set(this.peaks.subarray(0, this.filled));
    sorted.sort();
    return sorted[this.filled >> 1];
  }

  remember(peak) {
    this.peaks[this.next] = peak;
    this.next = (this.next + 1) % HISTORY_BLOCKS;
    if (this.filled < HISTORY_BLOCKS) this.filled += 1;
  }

  /** Follows a candidate onset through the blocks after it; posts it once it proves a click. */
  follow(samples, first) {
    const c = this.candidate;
    const settle = c.frame + Math.round(SETTLE_S * sampleRate);
    const confirm = c.frame + Math.round(CONFIRM_S * sampleRate);
    for (let i = 0; i < samples.length; i++) {
      const frame = first + i;
      const value = Math.abs(samples[i]);
      if (frame < settle) {
        if (value > c.peak) c.peak = value;
      } else if (frame < confirm) {
        if (value > c.after) c.after = value;
      }
    }
    if (first + samples.length < confirm) return;
    if (c.after < c.peak / 2) this.port.postMessage({ frame: c.frame, peak: c.peak });
    this.candidate = null;
  }

  process(inputs, outputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    const samples = input && input[0];
    if (!samples) return true; // nothing connected yet
    const first = currentFrame;
    if (this.candidate) this.follow(samples, first);
    let peak = 0;
    for (let i = 0; i < samples.length; i++) {
      const value = Math.abs(samples[i]);
      if (value > peak) peak = value;
    }
    const threshold = Math.max(FLOOR, RATIO * this.level());
    // Every block counts towards the level: a click's few blocks cannot move the median.
    this.remember(peak);
    if (this.candidate || first + samples.length <= this.quietUntil || peak <= threshold) return true;
    for (let i = 0; i < samples.length; i++) {
      if (first + i >= this.quietUntil && Math.abs(samples[i]) > threshold) {
        this.candidate = { frame: first + i, peak: 0, after: 0 };
        this.quietUntil = first + i + Math.round(REFRACTORY_S * sampleRate);
        this.follow(samples.subarray(i), first + i);
        break;
      }
    }
    return true;
  }
}

registerProcessor("click-onsets", ClickOnsetProcessor);
