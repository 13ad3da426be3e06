"""One persistent AAC-LC encoder for a whole stream's audio, cut at video fragment boundaries.

The fMP4 transport sends each segment with an init of its own and a fresh H.264 encoder, but audio
cannot restart per segment without a gap: every AAC encoder start costs a priming frame, and its end
pads the last 1024-sample frame with silence. So one :class:`AacTrack` encodes the stream's audio
from start to end; each video fragment carries the AAC packets that became complete while its
frames' audio was fed, and samples short of a whole 1024-sample frame wait for the next fragment
(and, at a segment's end, for the next segment).

Timeline: a packet's pts is the stream sample its decoded audio starts at (time base
``1/sample_rate``), on the same zero as the video (frame ``n`` of the stream owns samples from
``frame_sample_offset(n, fps, rate)``).

Stream start: an AAC packet decodes right only after the packet before it (the MDCT blocks
overlap), and libavcodec's encoder makes one priming packet before the first (pts -1024), which
cannot go on a timeline starting at 0. So a stream with sound starts its video :func:`lead_frames`
frames in (one frame at 48 kHz and 24 fps) and its audio at 0 with that much silence: the priming
packet then covers only silence and is dropped, every packet of real audio has its predecessor, and
the first segment's audio is no more than one frame shorter than its video despite the encoder's
delay (below). Before each
segment :meth:`AacTrack.align` pads silence (a segment that ended early left a hole in the video
timeline) or drops samples (sub-sample rounding at rates that are no multiple of the fps), so the
two tracks never drift apart by more than a sample.

Latency: libavcodec's AAC encoder looks one frame ahead and delays by the priming frame, so the
audio of a fragment trails its video by 2048 to 3071 samples (43-64 ms at 48 kHz); the rest follows
in the next fragments (and at a segment's end, in the next segment). Every PyAV detail of the audio
lives here.
"""

from __future__ import annotations

import logging
import math
import threading
from fractions import Fraction
from typing import Final, cast

import av
import numpy as np
from av.audio.stream import AudioStream
from av.codec.codec import UnknownCodecError
from av.container import OutputContainer
from av.packet import Packet

from gpu.audio import AudioFormat, frame_sample_offset

__all__ = [
    "AAC_CODEC_STRING",
    "AAC_FRAME_SAMPLES",
    "DEFAULT_AAC_BITRATE_PER_CHANNEL",
    "ENCODER_DELAY_SAMPLES",
    "AacTrack",
    "AudioEncodeError",
    "lead_frames",
]

logger = logging.getLogger(__name__)

AAC_CODEC_STRING: Final = "mp4a.40.2"  # RFC 6381: MPEG-4 audio, object type 2 (AAC-LC)
AAC_FRAME_SAMPLES: Final = 1024  # samples per AAC-LC frame (per channel)
DEFAULT_AAC_BITRATE_PER_CHANNEL: Final = 64_000  # 64 kbit/s per channel: transparent for tones and speech
# Samples fed beyond a packet's end before libavcodec hands it out: one frame of MDCT overlap plus
# one of psychoacoustic look-ahead (the encoder's output lags its input by this plus what waits for
# a whole frame).
ENCODER_DELAY_SAMPLES: Final = 2 * AAC_FRAME_SAMPLES
_AAC_OBJECT_TYPE_LC: Final = 2
_ENCODER_NAME: Final = "aac"  # libavcodec's native encoder: in every build, LGPL
_SAMPLE_FORMAT: Final = "fltp"  # what the native encoder takes
_LAYOUTS: Final = {1: "mono", 2: "stereo"}
_TEMPLATE_FORMAT: Final = "mp4"
# Fragmented, so the header is written without seeking back (the sink is not seekable).
_TEMPLATE_OPTIONS: Final = {"movflags": "empty_moov+frag_custom"}


class AudioEncodeError(RuntimeError):
    """Opening or running the AAC encoder failed inside the media library."""


def lead_frames(fps: int, sample_rate: int) -> int:
    """Video frames a stream with sound starts into its timeline (its audio starts at 0, silent).

    At least one AAC frame of lead, so the priming packet covers only silence; and enough that the
    first segment's audio, cut short by the encoder's delay, ends within one video frame of its video.
    """
    samples_per_frame = sample_rate / fps
    longest_lag = ENCODER_DELAY_SAMPLES + AAC_FRAME_SAMPLES  # delay + what waits for a whole frame
    return max(math.ceil(AAC_FRAME_SAMPLES / samples_per_frame), math.ceil(longest_lag / samples_per_frame) - 1, 1)


class _Discard:
    """Write-only sink for the template muxer's header, which nobody reads."""

    def write(self, data: bytes) -> int:
        return len(data)


class AacTrack:
    """The stream's AAC encoder and its position on the timeline; one per :class:`Fmp4Encoder`.

    Thread safety: calls are serialised by a lock, but the audio is one continuous signal, so
    segments must feed it one after another, in timeline order (the WebSocket sink does).
    """

    def __init__(self, audio_format: AudioFormat, *, fps: int, bitrate: int | None = None) -> None:
        self._format = audio_format
        self._fps = fps
        self._rate = audio_format.sample_rate
        self._lock = threading.Lock()
        self._fed = 0  # samples handed to the encoder (pts of the next AAC frame in)
        self._pending = np.zeros((0, audio_format.channels), np.float32)  # < one AAC frame, waiting
        self._position = 0  # stream samples received (fed + pending + dropped - padded), for align
        self._drop = 0  # samples still to drop from what arrives next
        self._outbox: list[Packet] = []  # complete packets no fragment has taken yet
        self._container: OutputContainer | None = None
        self._stream: AudioStream | None = None
        try:
            # The encoder lives in a muxer that never gets a packet: fragment muxers copy their
            # audio stream from it (add_stream_from_template), which needs a stream, not a context.
            container = self._container = av.open(
                _Discard(), mode="w", format=_TEMPLATE_FORMAT, options=_TEMPLATE_OPTIONS
            )
            stream = cast(AudioStream, container.add_stream(_ENCODER_NAME, rate=self._rate))
            ctx = stream.codec_context
            ctx.layout = _LAYOUTS[audio_format.channels]
            ctx.format = _SAMPLE_FORMAT
            ctx.time_base = Fraction(1, self._rate)
            ctx.bit_rate = bitrate if bitrate is not None else DEFAULT_AAC_BITRATE_PER_CHANNEL * audio_format.channels
            stream.time_base = Fraction(1, self._rate)
            container.start_encoding()  # opens the encoder: extradata (AudioSpecificConfig) exists now
        except (av.FFmpegError, UnknownCodecError) as exc:
            raise AudioEncodeError(f"cannot open the {_ENCODER_NAME} encoder: {exc}") from exc
        self._stream = stream
        config = bytes(ctx.extradata or b"")
        if not config or config[0] >> 3 != _AAC_OBJECT_TYPE_LC:
            raise AudioEncodeError(f"{_ENCODER_NAME} did not make AAC-LC (AudioSpecificConfig {config.hex()})")
        if ctx.frame_size != AAC_FRAME_SAMPLES:
            raise AudioEncodeError(f"{_ENCODER_NAME} frames hold {ctx.frame_size} samples, not {AAC_FRAME_SAMPLES}")

    @property
    def audio_format(self) -> AudioFormat:
        return self._format

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec string, ``mp4a.40.2``."""
        return AAC_CODEC_STRING

    @property
    def template(self) -> AudioStream:
        """The encoder's stream, for ``add_stream_from_template`` in each muxer."""
        return self._open_stream()

    def _open_stream(self) -> AudioStream:
        if self._stream is None:
            raise AudioEncodeError("the AAC encoder is closed")
        return self._stream

    def samples_for(self, first: int, count: int) -> int:
        """Samples a segment's frames ``first .. first + count - 1`` own."""
        return frame_sample_offset(first + count, self._fps, self._rate) - frame_sample_offset(first, self._fps, self._rate)

    def align(self, stream_frame: int) -> None:
        """Put the audio position at stream frame ``stream_frame``'s first sample (a segment starts there).

        A hole (a segment that ended early, or one never encoded) is filled with silence; audio
        ahead of the position (rounding, or segments fed out of order) is dropped from what comes
        next.
        """
        with self._lock:
            target = frame_sample_offset(stream_frame, self._fps, self._rate)
            gap = target - self._position
            if gap < 0:
                self._drop = -gap
            elif gap > 0:
                logger.debug("AAC: %d samples of silence before stream frame %d", gap, stream_frame)
                self._encode_locked(np.zeros((gap, self._format.channels), np.float32))
            self._position = target

    def feed(self, pcm: np.ndarray) -> None:
        """Feed ``(samples, channels)`` float32 PCM, the stream's next samples."""
        with self._lock:
            if self._drop:
                dropped = min(self._drop, len(pcm))
                self._drop -= dropped
                pcm = pcm[dropped:]
            self._position += len(pcm)
            self._encode_locked(pcm)

    def take(self) -> list[Packet]:
        """The AAC packets completed since the last call (pts in samples), oldest first."""
        with self._lock:
            packets, self._outbox = self._outbox, []
            return packets

    def close(self) -> None:
        """Release the encoder (its last samples are never sent: the stream has ended); idempotent.

        The template muxer and its stream refer to each other, and PyAV's resampler in the codec
        context holds a filter graph with a thread per core: dropping both references here frees
        them now rather than at the next garbage collection."""
        with self._lock:
            container, self._container = self._container, None
            self._stream = None
            self._outbox = []
            if container is None:
                return
            try:
                container.close()
            except av.FFmpegError:
                logger.debug("closing the AAC template muxer failed", exc_info=True)

    def _encode_locked(self, pcm: np.ndarray) -> None:
        buffered = np.concatenate((self._pending, pcm)) if len(self._pending) else pcm
        whole = len(buffered) - len(buffered) % AAC_FRAME_SAMPLES
        try:
            for start in range(0, whole, AAC_FRAME_SAMPLES):
                planar = np.ascontiguousarray(buffered[start : start + AAC_FRAME_SAMPLES].T)
                frame = av.AudioFrame.from_ndarray(planar, format=_SAMPLE_FORMAT, layout=_LAYOUTS[self._format.channels])
                frame.sample_rate = self._rate
                frame.pts = self._fed
                frame.time_base = Fraction(1, self._rate)
                self._fed += AAC_FRAME_SAMPLES
                # The priming packet (pts < 0) decodes to nothing of ours: dropped, once, at the start.
                self._outbox += [p for p in self._open_stream().encode(frame) if p.pts is not None and p.pts >= 0]
        except av.FFmpegError as exc:
            raise AudioEncodeError(f"AAC encoding failed: {exc}") from exc
        self._pending = np.array(buffered[whole:], dtype=np.float32, copy=True)
