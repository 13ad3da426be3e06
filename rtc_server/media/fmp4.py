"""In-process fragmented-MP4 (fMP4) H.264 encoding on PyAV for the WebSocket / MSE transport.

Each segment is self-contained: an init segment (``ftyp`` + ``moov``, codec config only) followed by
``moof`` + ``mdat`` fragments, the first sample being an IDR frame. Successive segments of one
:class:`Fmp4Encoder` continue a single timeline (each fragment's ``tfdt`` carries the absolute decode
time), so a Media Source Extensions client can append init + fragments, segment after segment,
without gaps. Every PyAV detail stays in this module; its failures surface as
:class:`MediaEncodeError`.

Frames may arrive as the generator makes them (:meth:`Fmp4Encoder.encode_stream`): the init goes out
before the first frame exists and each fragment as soon as its last frame is encoded.

Timeline continuation: a segment's frames get pts ``start_frame .. start_frame + N - 1`` in a
``1/fps`` time base, and the muxer is told to keep them (``movflags=frag_discont`` makes the first
``tfdt`` the first packet's dts, ``use_editlist=0`` keeps that offset out of an edit list, and
``avoid_negative_ts=make_non_negative`` stops libavformat from shifting the start back to zero,
which it otherwise does for fragmented output without edit lists).

Sound (optional, ``audio_format``): an AAC-LC track next to the video, in the same init and the
same fragments. One :class:`~rtc_server.media.aac.AacTrack` encodes the whole stream's audio (no
priming or padding at segment seams); each fragment carries the AAC packets completed by its frames'
audio, so the audio trails its video by the encoder's delay (see aac.py) and both tracks' ``tfdt``
continue across segments. Items of a stream are then ``(frames, audio)`` pairs, the audio owning
exactly those frames (gpu/audio.py); a bare frames array gets silence. Segments must be encoded one
after another, in the order they were placed on the timeline. The timeline of a stream with sound
starts ``lead_frames`` frames in (aac.py: the audio starts at 0 with that much silence, which
absorbs the encoder's priming). Without ``audio_format`` the output is video only, starting at 0.

Fragment cutting: libavformat's mp4 muxer closes a fragment only when the packet after it arrives
or the file ends, which would hold every fragment back by one frame, and the last frame of each
chunk a generator hands over until its next chunk exists. So one encoder serves the whole segment
but each fragment is muxed by a short-lived muxer of its own (``fragment_index`` keeps the ``mfhd``
sequence numbers counting up), closed as soon as the fragment's frames are encoded.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType
from typing import Final, Self, cast

import av
import numpy as np
from av.codec.codec import UnknownCodecError
from av.codec.context import CodecContext, Flags
from av.container import OutputContainer
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import (
    ColorPrimaries,
    ColorRange,
    Colorspace,
    ColorTrc,
    Interpolation,
    VideoReformatter,
)
from av.video.stream import VideoStream

from gpu.audio import AudioFormat, as_pcm
from rtc_server.media.aac import AacTrack, AudioEncodeError, lead_frames

__all__ = [
    "H264_PROFILES",
    "X264_PRESETS",
    "Fmp4Encoder",
    "Fmp4Segment",
    "Fmp4SegmentStream",
    "MediaEncodeError",
    "codec_string_from_init",
    "mime_type",
]

logger = logging.getLogger(__name__)

X264_PRESETS: Final = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)
# Both are decodable by every MSE implementation; "high" would bring 8x8 transforms some older
# hardware decoders lack, and baseline/main are what the design allows.
H264_PROFILES: Final = ("baseline", "main")

_ENCODER_NAME: Final = "libx264"
_CONTAINER_FORMAT: Final = "mp4"
_ENCODE_PIX_FMT: Final = "yuv420p"
_INPUT_PIX_FMT: Final = "rgb24"
_CRF_MIN: Final = 1  # 0 means lossless, which needs High 4:4:4, not baseline/main
_CRF_MAX: Final = 51  # x264's CRF range for 8-bit output
_MS_PER_S: Final = 1000.0
_VBV_BUFFER_S: Final = 1.0  # bitrate mode: VBV buffer of one second of video, bounds bursts
_NAL_TYPE_SPS: Final = 7
# RGB -> YUV conversion on the calling thread: per-call swscale worker threads cost more than they
# save at these sizes (measured ~1 ms/frame vs ~3 ms/frame at 512x512 on 2 cores), and the server
# runs many sessions' encoders side by side anyway.
_CONVERT_THREADS: Final = 1
# Chroma is downsampled with the filter the ffmpeg command line uses by default; same cost here as
# bilinear, smoother chroma, fewer bits.
_CONVERT_INTERPOLATION: Final = Interpolation.BICUBIC

# Generator frames are sRGB; BT.709 shares its primaries. Converting with the BT.709 matrix and
# tagging the stream with it (VUI) lets browsers and ffmpeg agree on the colours instead of each
# guessing for an untagged stream.
_COLORSPACE: Final = Colorspace.ITU709
_COLOR_RANGE: Final = ColorRange.MPEG  # limited ("TV") range, what H.264 players expect
_COLOR_PRIMARIES: Final = ColorPrimaries.BT709
_COLOR_TRC: Final = ColorTrc.BT709

_MOVFLAGS: Final = "+".join(  # noqa: FLY002 - one flag per line, each with its reason
    (
        "empty_moov",  # ftyp+moov with no samples first: the init segment MSE needs
        "default_base_moof",  # offsets relative to each moof, no absolute base_data_offset (MSE, CMAF)
        "frag_discont",  # first tfdt = first packet's dts: the timeline continues across segments
        "frag_custom",  # no cuts of the muxer's own: each fragment has a muxer, which it ends by closing
        "skip_trailer",  # no mfra index at the end: MSE ignores it, it only adds bytes
    )
)


_MUX_OPTIONS: Final = {
    "movflags": _MOVFLAGS,
    "use_editlist": "0",
    "avoid_negative_ts": "make_non_negative",
    "flush_packets": "1",  # hand what the muxer writes to us at once (the init before any frame)
}
_INIT_BOXES: Final = (b"ftyp", b"moov")
_FRAGMENT_BOXES: Final = (b"moof", b"mdat")


class MediaEncodeError(RuntimeError):
    """Encoding or muxing failed inside the media library."""


@dataclass(frozen=True)
class Fmp4Segment:
    """One self-contained fMP4 segment: init (ftyp+moov) and moof+mdat fragments."""

    init: bytes
    fragments: list[bytes]
    duration_ms: float
    pts_base_ms: float
    codec_string: str
    audio_codec_string: str | None = None  # mp4a.40.2 when the segment has sound

    @property
    def mime(self) -> str:
        """MIME type for ``MediaSource.isTypeSupported`` / ``addSourceBuffer``."""
        return mime_type(self.codec_string, self.audio_codec_string)


@dataclass(frozen=True)
class _X264Config:
    """Everything that shapes the bitstream; identical configs give identical init segments."""

    width: int
    height: int
    fps: int
    bitrate: int | None
    crf: int | None
    preset: str
    profile: str
    threads: int

    def apply(self, ctx: VideoCodecContext) -> None:
        """Configure an unopened libx264 context (shared by the probe and the real encoder)."""
        ctx.width = self.width
        ctx.height = self.height
        ctx.pix_fmt = _ENCODE_PIX_FMT
        ctx.time_base = Fraction(1, self.fps)
        ctx.framerate = Fraction(self.fps, 1)
        ctx.colorspace = int(_COLORSPACE)
        ctx.color_range = int(_COLOR_RANGE)
        ctx.color_primaries = int(_COLOR_PRIMARIES)
        ctx.color_trc = int(_COLOR_TRC)
        ctx.max_b_frames = 0
        options = {
            "preset": self.preset,
            "tune": "zerolatency",  # no lookahead, no frame delay: one packet out per frame in
            "profile": self.profile,
            "x264-params": "bframes=0",  # MSE and the design want pts == dts
            "threads": str(self.threads),
        }
        if self.bitrate is not None:
            ctx.bit_rate = self.bitrate
            options["maxrate"] = str(self.bitrate)
            options["bufsize"] = str(int(self.bitrate * _VBV_BUFFER_S))
        elif self.crf is not None:
            options["crf"] = str(self.crf)
        ctx.options = options


class Fmp4SegmentStream(Iterator[bytes]):
    """The chunks of one segment as they are produced: the init first, then moof+mdat fragments.

    Made by :meth:`Fmp4Encoder.encode_stream` (and :meth:`Fmp4Encoder.encode_segment_iter`).
    Iterating does the encoding (blocking CPU work) and pulls the frames from their producer: one
    thread at a time may iterate it, and :meth:`close` belongs to that thread too. The stream has
    *ended* once it is exhausted, closed, or has raised; ending releases the encoder and closes the
    producer's iterator (if it has ``close``).

    While the stream runs, :attr:`num_frames` and :attr:`duration_ms` describe the segment as
    declared. Once it has ended they describe what was delivered, the frames in the fragments
    yielded: fewer than declared if the producer stopped early or the stream was abandoned. The
    declared span stays reserved on the timeline either way (:attr:`reserved_frames`).
    """

    def __init__(
        self,
        *,
        config: _X264Config,
        frames: Iterator[object],
        num_frames: int,
        start_frame: int,
        frames_per_fragment: int,
        codec_string: str,
        audio: AacTrack | None = None,
    ) -> None:
        self._reserved_frames = num_frames
        self._fps = config.fps
        self._start_frame = start_frame
        self._codec_string = codec_string
        self._audio_codec_string = audio.codec_string if audio is not None else None
        self._media_chunks = 0
        self._delivered_frames = 0
        self._done = False
        self._frames = frames
        self._chunks = _encode_chunks(
            config=config,
            frames=frames,
            num_frames=num_frames,
            start_frame=start_frame,
            frames_per_fragment=frames_per_fragment,
            expected_codec_string=codec_string,
            audio=audio,
        )

    @property
    def num_frames(self) -> int:
        """Frames in this segment: as declared until the stream has ended, then as delivered."""
        return self._delivered_frames if self.ended else self._reserved_frames

    @property
    def reserved_frames(self) -> int:
        """Frames this segment's place on the timeline spans (the declared ``num_frames``)."""
        return self._reserved_frames

    @property
    def pts_base_ms(self) -> float:
        """Presentation time of the segment's first frame on the encoder's timeline (ms)."""
        return self._start_frame * _MS_PER_S / self._fps

    @property
    def duration_ms(self) -> float:
        """Duration of the segment (ms): ``num_frames / fps``."""
        return self.num_frames * _MS_PER_S / self._fps

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec string of the stream, e.g. ``avc1.42C01E``."""
        return self._codec_string

    @property
    def audio_codec_string(self) -> str | None:
        """RFC 6381 codec string of the audio track (``mp4a.40.2``), None without sound."""
        return self._audio_codec_string

    @property
    def mime(self) -> str:
        """MIME type with codecs parameter (video, then audio if any), for the ``media_init`` message."""
        return mime_type(self._codec_string, self._audio_codec_string)

    @property
    def media_chunks(self) -> int:
        """Fragments yielded so far (the init chunk is not counted)."""
        return self._media_chunks

    @property
    def done(self) -> bool:
        """True once every chunk has been yielded (the stream ran to its end, short or not)."""
        return self._done

    @property
    def ended(self) -> bool:
        """True once the stream is exhausted, closed or has raised: nothing more will come."""
        return inspect.getgeneratorstate(self._chunks) == inspect.GEN_CLOSED

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        try:
            chunk, frames = next(self._chunks)
        except StopIteration:
            self._done = True
            raise
        if frames:
            self._media_chunks += 1
            self._delivered_frames += frames
        return chunk

    def close(self) -> None:
        """Stop encoding early, release the encoder and close the producer; the rest is dropped."""
        started = inspect.getgeneratorstate(self._chunks) != inspect.GEN_CREATED
        self._chunks.close()
        if not started:
            _close_producer(self._frames)  # the encoder loop never ran, so it cannot have

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Fmp4Encoder:
    """H.264 (libx264, no B-frames) fMP4 encoder producing MSE-appendable segments on one timeline.

    Thread safety: each segment gets its own libx264 context and muxers, so the only shared state is
    the timeline position, guarded by a lock; segments are placed on the timeline in the order
    :meth:`encode_stream` / :meth:`encode_segment_iter` / :meth:`encode_segment` are called, each
    reserving its declared frames at once. A given :class:`Fmp4SegmentStream` must be iterated by
    one thread at a time (e.g. an executor worker). With sound, the stream's one AAC encoder is
    shared too: segments must then be encoded one after another, in the order they were placed.
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        fps: int,
        bitrate: int | None = None,
        crf: int | None = 23,
        preset: str = "ultrafast",
        profile: str = "baseline",
        frames_per_fragment: int = 1,
        threads: int = 0,
        audio_format: AudioFormat | None = None,
        audio_bitrate: int | None = None,
    ) -> None:
        """Validate the settings and open libx264 once to learn the codec string.

        ``bitrate`` (bit/s) selects capped average-bitrate mode and takes precedence over ``crf``;
        with neither, x264's default rate control applies. ``frames_per_fragment`` frames go into
        each moof+mdat (1 gives the lowest latency). ``threads`` is libx264's (0 = automatic).
        ``audio_format`` adds an AAC-LC track (``audio_bitrate`` bit/s, default 64 kbit/s per
        channel); None keeps the output video only.
        """
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % 2:
                raise ValueError(f"{name} must be positive and even for {_ENCODE_PIX_FMT}, got {value}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if bitrate is not None and bitrate <= 0:
            raise ValueError(f"bitrate must be positive (bit/s), got {bitrate}")
        if crf is not None and not _CRF_MIN <= crf <= _CRF_MAX:
            raise ValueError(f"crf must be in [{_CRF_MIN}, {_CRF_MAX}], got {crf}")
        if preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}; got {preset!r}")
        if profile not in H264_PROFILES:
            raise ValueError(f"profile must be one of {', '.join(H264_PROFILES)}; got {profile!r}")
        if frames_per_fragment < 1:
            raise ValueError(f"frames_per_fragment must be >= 1, got {frames_per_fragment}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        if audio_bitrate is not None and audio_bitrate <= 0:
            raise ValueError(f"audio_bitrate must be positive (bit/s), got {audio_bitrate}")
        self._config = _X264Config(
            width=width,
            height=height,
            fps=fps,
            bitrate=bitrate,
            crf=crf,
            preset=preset,
            profile=profile,
            threads=threads,
        )
        self._frames_per_fragment = frames_per_fragment
        self._codec_string = _probe_codec_string(self._config)
        self._audio: AacTrack | None = None
        if audio_format is not None:
            try:
                self._audio = AacTrack(audio_format, fps=fps, bitrate=audio_bitrate)
            except AudioEncodeError as exc:
                raise MediaEncodeError(str(exc)) from exc
        self._lock = threading.Lock()
        # With sound, the first frame goes one lead in: the audio before it absorbs the AAC priming.
        self._next_frame = lead_frames(fps, audio_format.sample_rate) if audio_format is not None else 0
        logger.debug(
            "fMP4 encoder %dx%d@%d %s (%s)", width, height, fps, self._codec_string, preset
        )

    @property
    def width(self) -> int:
        """Frame width (px)."""
        return self._config.width

    @property
    def height(self) -> int:
        """Frame height (px)."""
        return self._config.height

    @property
    def fps(self) -> int:
        """Frame rate (frames/s)."""
        return self._config.fps

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec string read from the SPS libx264 produces, e.g. ``avc1.42C01E``."""
        return self._codec_string

    @property
    def audio_format(self) -> AudioFormat | None:
        """The format of the audio track; None for video only."""
        return self._audio.audio_format if self._audio is not None else None

    @property
    def audio_codec_string(self) -> str | None:
        """``mp4a.40.2`` with an audio track, else None."""
        return self._audio.codec_string if self._audio is not None else None

    @property
    def mime(self) -> str:
        """``video/mp4; codecs="..."`` for this encoder's streams (both codecs with sound)."""
        return mime_type(self._codec_string, self.audio_codec_string)

    def close(self) -> None:
        """Release the audio encoder (nothing to do for video only). No segment may be encoded after."""
        if self._audio is not None:
            self._audio.close()

    @property
    def next_pts_ms(self) -> float:
        """Where the next segment will start on the timeline (ms)."""
        with self._lock:
            return self._next_frame * _MS_PER_S / self._config.fps

    def encode_stream(self, frames: Iterable[object], *, num_frames: int) -> Fmp4SegmentStream:
        """Reserve ``num_frames`` frames on the timeline and encode frames as ``frames`` produces them.

        ``frames`` yields uint8 RGB frames ``(H, W, 3)`` or chunks of them ``(n, H, W, 3)``, or
        ``(chunk, audio)`` pairs whose audio (``(samples, channels)``, None for silence) owns exactly
        those frames (gpu/audio.py; a wrong length is a ValueError); it is
        pulled lazily by the thread iterating the returned stream, which yields the init before
        pulling the first frame, then each fragment as soon as its frames are encoded. Each item
        is checked as it arrives: a non-array raises TypeError, a wrong dtype or shape ValueError,
        as does an item that takes the segment past ``num_frames``; the stream then ends (encoder
        released, producer closed) and the segment keeps its place. If ``frames`` ends early, the
        segment ends with the frames encoded. Exceptions raised by ``frames`` itself pass through
        unchanged; failures of the media library raise :class:`MediaEncodeError`. Each array is
        read while its frames are encoded: do not modify it before the next item is pulled.
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        source = iter(frames)  # not iterable: TypeError now, before a place is reserved
        return self._open_stream(source, num_frames)

    def encode_segment_iter(self, frames: np.ndarray) -> Fmp4SegmentStream:
        """Validate ``frames`` (N,H,W,3 uint8 RGB), reserve their place on the timeline, encode lazily.

        The whole-array form of :meth:`encode_stream`: the returned stream yields the init first,
        then each fragment as soon as it is muxed, so the first bytes can go out before the
        segment is encoded. ``frames`` is read while iterating: do not modify it until the stream
        is exhausted.
        """
        num_frames = _validate_frames(frames, self._config.width, self._config.height)
        return self._open_stream(iter((frames,)), num_frames)

    def _open_stream(self, source: Iterator[object], num_frames: int) -> Fmp4SegmentStream:
        with self._lock:
            start_frame = self._next_frame
            self._next_frame += num_frames
        return Fmp4SegmentStream(
            config=self._config,
            frames=source,
            num_frames=num_frames,
            start_frame=start_frame,
            frames_per_fragment=self._frames_per_fragment,
            codec_string=self._codec_string,
            audio=self._audio,
        )

    def encode_segment(self, frames: np.ndarray, audio: np.ndarray | None = None) -> Fmp4Segment:
        """Encode ``frames`` (N,H,W,3 uint8 RGB), with the ``audio`` they own if the encoder has sound,
        into one complete, independently appendable segment."""
        if audio is None:
            stream = self.encode_segment_iter(frames)
        else:
            num_frames = _validate_frames(frames, self._config.width, self._config.height)
            stream = self._open_stream(iter(((frames, audio),)), num_frames)
        with stream:
            chunks = list(stream)
        init = chunks[0]
        return Fmp4Segment(
            init=init,
            fragments=chunks[1:],
            duration_ms=stream.duration_ms,
            pts_base_ms=stream.pts_base_ms,
            codec_string=codec_string_from_init(init),
            audio_codec_string=stream.audio_codec_string,
        )


def codec_string_from_init(init: bytes) -> str:
    """RFC 6381 ``avc1.PPCCLL`` string from the avcC box of an init segment (ftyp+moov)."""
    avcc = _find_box(init, (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1", b"avcC"))
    if avcc is None or len(avcc) < 4:
        raise MediaEncodeError("init segment has no avcC box")
    # AVCDecoderConfigurationRecord: configurationVersion, then profile, constraints, level.
    return _avc1_string(avcc[1], avcc[2], avcc[3])


def mime_type(video_codec: str, audio_codec: str | None = None) -> str:
    """``video/mp4; codecs="avc1.42C01E"``, or with sound ``video/mp4; codecs="avc1.42C01E, mp4a.40.2"``."""
    codecs = video_codec if audio_codec is None else f"{video_codec}, {audio_codec}"
    return f'video/mp4; codecs="{codecs}"'


def _avc1_string(profile_idc: int, constraint_flags: int, level_idc: int) -> str:
    return f"avc1.{profile_idc:02X}{constraint_flags:02X}{level_idc:02X}"


def _validate_frames(frames: np.ndarray, width: int, height: int) -> int:
    """Check shape (N,H,W,3) and dtype uint8 (ValueError; TypeError if not an array); return N."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(
            f"frames must be a numpy array of shape (N, {height}, {width}, 3), got {type(frames).__name__}"
        )
    _check_dtype(frames)
    if frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise ValueError(f"frames must have shape (N, {height}, {width}, 3) RGB, got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames must hold at least one frame")
    return int(frames.shape[0])


def _as_chunk(item: object, width: int, height: int) -> np.ndarray:
    """One produced item, a frame (H,W,3) or a chunk (n,H,W,3) of uint8 RGB, as (n,H,W,3).

    TypeError if it is not an array, ValueError for a wrong dtype or shape.
    """
    if not isinstance(item, np.ndarray):
        raise TypeError(
            f"frames must yield numpy arrays of shape ({height}, {width}, 3) or (n, {height}, {width}, 3),"
            f" got {type(item).__name__}"
        )
    _check_dtype(item)
    if item.shape == (height, width, 3):
        return item[np.newaxis]
    if item.ndim == 4 and item.shape[1:] == (height, width, 3):
        return item
    raise ValueError(
        f"frames must have shape ({height}, {width}, 3) or (n, {height}, {width}, 3) RGB, got {item.shape}"
    )


def _check_dtype(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must have dtype uint8 (RGB), got {frames.dtype}")


def _probe_codec_string(config: _X264Config) -> str:
    """Open a libx264 context with ``config`` and read profile/constraints/level from its SPS."""
    try:
        ctx = cast(VideoCodecContext, CodecContext.create(_ENCODER_NAME, "w"))
        config.apply(ctx)
        ctx.flags |= Flags.global_header  # SPS/PPS in extradata, as the mp4 muxer asks for
        ctx.open()
        extradata = bytes(ctx.extradata or b"")
    except (av.FFmpegError, UnknownCodecError) as exc:
        raise MediaEncodeError(f"cannot open {_ENCODER_NAME}: {exc}") from exc
    sps = _find_sps(extradata)
    if sps is None or len(sps) < 4:
        raise MediaEncodeError(f"{_ENCODER_NAME} produced no SPS in its extradata")
    return _avc1_string(sps[1], sps[2], sps[3])


def _find_sps(extradata: bytes) -> bytes | None:
    """The first SPS NAL unit (header byte included) in Annex B or avcC extradata."""
    if extradata[:1] == b"\x01":  # already an AVCDecoderConfigurationRecord
        if len(extradata) < 8:
            return None
        sps_len = int.from_bytes(extradata[6:8], "big")
        return extradata[8 : 8 + sps_len]
    for nal in extradata.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01"):
        if nal and nal[0] & 0x1F == _NAL_TYPE_SPS:
            return nal
    return None


# Bytes between a box's header and its first child, for the container boxes we walk through.
_CHILD_OFFSETS: Final = {
    b"stsd": 8,  # FullBox version/flags + entry_count
    b"avc1": 78,  # VisualSampleEntry fields
}


def _find_box(data: bytes, path: tuple[bytes, ...]) -> bytes | None:
    """Payload of the box at ``path`` (types from the top level down), or None."""
    payload = data
    for box_type in path:
        found = None
        for child_type, child in _iter_boxes(payload):
            if child_type == box_type:
                found = child[_CHILD_OFFSETS.get(box_type, 0) :]
                break
        if found is None:
            return None
        payload = found
    return payload


def _iter_boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each complete box in ``data``."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        box_type = data[offset + 4 : offset + 8]
        header = 8
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif size == 0:
            size = len(data) - offset
        if size < header or offset + size > len(data):
            return
        yield box_type, data[offset + header : offset + size]
        offset += size


class _OutputBuffer:
    """Write-only file object the muxer writes into; not seekable, so the muxer never seeks back."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take_boxes(self) -> list[tuple[bytes, bytes]]:
        """Remove and return the complete top-level boxes written so far as (type, whole box)."""
        boxes: list[tuple[bytes, bytes]] = []
        buf = self._data
        offset = 0
        while len(buf) - offset >= 8:
            size = int.from_bytes(buf[offset : offset + 4], "big")
            header = 8
            if size == 1:
                if len(buf) - offset < 16:
                    break
                size = int.from_bytes(buf[offset + 8 : offset + 16], "big")
                header = 16
            elif size == 0:
                raise MediaEncodeError("muxer wrote a box of unbounded size into fragmented output")
            if size < header:
                raise MediaEncodeError(f"muxer wrote a malformed box (size {size})")
            if len(buf) - offset < size:
                break
            boxes.append((bytes(buf[offset + 4 : offset + 8]), bytes(buf[offset : offset + size])))
            offset += size
        del buf[:offset]
        return boxes

    @property
    def pending(self) -> int:
        """Bytes written that do not yet form a complete box."""
        return len(self._data)


def _take_boxes(output: _OutputBuffer, expected: tuple[bytes, ...]) -> list[bytes]:
    """All the muxer wrote so far, checked to be exactly the boxes ``expected``, in order."""
    boxes = output.take_boxes()
    types = tuple(box_type for box_type, _ in boxes)
    if types != expected or output.pending:
        raise MediaEncodeError(f"muxer wrote boxes {types} ({output.pending} bytes pending), expected {expected}")
    return [box for _, box in boxes]


class _SegmentMuxer:
    """One segment's libx264 encoder, the muxer that writes its init, and one muxer per fragment.

    The init muxer owns the encoder's stream but never gets a packet; each fragment's packets go
    to a muxer made from that stream's parameters, and closing it writes the fragment at once.
    With sound, every muxer also gets an audio stream copied from the stream's AAC encoder (track 2).
    """

    def __init__(self, config: _X264Config, audio: AacTrack | None = None) -> None:
        self._config = config
        self._audio = audio
        self._time_base = Fraction(1, config.fps)
        self._reformatter = VideoReformatter()  # reused: keeps one swscale context for the segment
        self._init_muxer: OutputContainer | None = None
        self._stream: VideoStream | None = None
        self._fragments = 0
        self._flushed = False

    def open(self) -> bytes:
        """Open the encoder and return the init (ftyp+moov); it needs no frame."""
        output = _OutputBuffer()
        self._init_muxer = av.open(output, mode="w", format=_CONTAINER_FORMAT, options=_MUX_OPTIONS)
        stream = cast(VideoStream, self._init_muxer.add_stream(_ENCODER_NAME, rate=self._config.fps))
        self._config.apply(stream.codec_context)
        stream.time_base = self._time_base
        if self._audio is not None:
            self._init_muxer.add_stream_from_template(self._audio.template)
        self._init_muxer.start_encoding()  # opens libx264 and writes the header: with empty_moov, the init
        self._stream = stream
        return b"".join(_take_boxes(output, _INIT_BOXES))

    def encode(self, pixels: np.ndarray, pts: int) -> list[Packet]:
        """Encode one (H,W,3) RGB frame at ``pts`` (in frames); returns the packets it completes."""
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=_INPUT_PIX_FMT)
        frame = self._reformatter.reformat(
            rgb,
            format=_ENCODE_PIX_FMT,
            src_colorspace=Colorspace.DEFAULT,
            dst_colorspace=_COLORSPACE,
            src_color_range=ColorRange.JPEG,  # RGB input is full range
            dst_color_range=_COLOR_RANGE,
            interpolation=_CONVERT_INTERPOLATION,
            threads=_CONVERT_THREADS,
        )
        frame.pts = pts
        frame.time_base = self._time_base
        return self._opened_stream().encode(frame)

    def flush(self) -> list[Packet]:
        """Drain the encoder (no more frames follow); later calls return nothing."""
        if self._flushed:
            return []
        self._flushed = True
        return self._opened_stream().encode(None)

    def fragment(self, packets: list[Packet], audio_packets: list[Packet] = []) -> bytes:  # noqa: B006 - read only
        """Mux ``packets`` (video) and ``audio_packets`` into the next moof+mdat fragment and return it."""
        self._fragments += 1
        output = _OutputBuffer()
        options = {**_MUX_OPTIONS, "fragment_index": str(self._fragments)}
        muxer = av.open(output, mode="w", format=_CONTAINER_FORMAT, options=options)
        muxed = False
        try:
            stream = muxer.add_stream_from_template(self._opened_stream())
            audio_stream = muxer.add_stream_from_template(self._audio.template) if self._audio is not None else None
            muxer.start_encoding()
            for packet in packets:
                packet.stream = stream
                muxer.mux(packet)
            if audio_stream is not None:
                for packet in audio_packets:
                    packet.stream = audio_stream
                    muxer.mux(packet)
            muxed = True
        finally:
            if not muxed:
                _close_abandoned(muxer)
        muxer.close()  # writes the fragment
        # The header it wrote first is the init again (same stream parameters): dropped.
        boxes = _take_boxes(output, _INIT_BOXES + _FRAGMENT_BOXES)
        return b"".join(boxes[len(_INIT_BOXES) :])

    def close(self) -> None:
        """Release the encoder. The init muxer never got a packet, so closing it writes nothing."""
        muxer, self._init_muxer = self._init_muxer, None
        if muxer is not None:
            _close_abandoned(muxer)

    def _opened_stream(self) -> VideoStream:
        if self._stream is None:
            raise MediaEncodeError("the segment's encoder is not open")
        return self._stream


def _close_abandoned(muxer: OutputContainer) -> None:
    """Close a muxer whose output no longer matters; a failure there is only worth a debug line."""
    try:
        muxer.close()
    except av.FFmpegError:
        logger.debug("closing an fMP4 muxer failed", exc_info=True)


def _encode_chunks(
    *,
    config: _X264Config,
    frames: Iterator[object],
    num_frames: int,
    start_frame: int,
    frames_per_fragment: int,
    expected_codec_string: str,
    audio: AacTrack | None = None,
) -> Generator[tuple[bytes, int], None, None]:
    """Encode frames as they are pulled from ``frames``; yield the init, then each fragment when done.

    Yields ``(chunk, frames in it)``: ``(init, 0)`` first, then ``(moof+mdat, n)``. However the
    stream ends, the encoder is released and ``frames`` is closed (if it can be). With ``audio``,
    each fragment's frames' audio is fed to the stream's AAC encoder just before the fragment is
    muxed, and the fragment takes every AAC packet completed so far.
    """
    muxer = _SegmentMuxer(config, audio)
    sound = _SegmentSound(audio) if audio is not None else None
    try:
        init = muxer.open()
        actual = codec_string_from_init(init)
        if actual != expected_codec_string:
            # media_init may already have announced the probed string; a mismatch would make the
            # browser reject or misconfigure its SourceBuffer.
            raise MediaEncodeError(f"init codec {actual} differs from the probed {expected_codec_string}")
        yield init, 0
        if sound is not None:
            sound.start(start_frame)
        encoded = 0
        pending: list[Packet] = []
        for item in frames:  # pulls the producer: may wait for the generator's next frames
            item, pcm = _split_item(item)
            chunk = _as_chunk(item, config.width, config.height)
            if encoded + len(chunk) > num_frames:
                raise ValueError(
                    f"frames produced more than the declared num_frames={num_frames}"
                    f" ({encoded} encoded, then a chunk of {len(chunk)})"
                )
            if sound is not None:
                sound.add_chunk(encoded, len(chunk), pcm)
            for pixels in chunk:
                pending += muxer.encode(pixels, start_frame + encoded)
                encoded += 1
                complete = encoded == num_frames
                if complete:
                    # The last fragment leaves now, not when the producer gets round to stopping.
                    pending += muxer.flush()
                if pending and (complete or len(pending) >= frames_per_fragment):
                    audio_packets = sound.take_until(encoded) if sound is not None else []
                    yield muxer.fragment(pending, audio_packets), len(pending)
                    pending = []
        pending += muxer.flush()  # the producer stopped early: the segment ends with what it made
        if pending:
            audio_packets = sound.take_until(encoded) if sound is not None else []
            yield muxer.fragment(pending, audio_packets), len(pending)
    except (av.FFmpegError, UnknownCodecError, AudioEncodeError) as exc:
        raise MediaEncodeError(f"fMP4 encoding failed: {exc}") from exc
    finally:
        muxer.close()
        _close_producer(frames)


class _SegmentSound:
    """One segment's audio on its way into the stream's AAC track, frame by frame.

    Chunks' audio is checked when it arrives and held until the fragment with its frames is cut;
    audio of frames whose fragment never leaves (the stream was abandoned) is never fed, and the
    next segment's :meth:`AacTrack.align` fills the hole with silence.
    """

    def __init__(self, track: AacTrack) -> None:
        self._track = track
        self._held: list[tuple[int, int, np.ndarray]] = []  # (first frame, frames, pcm), in order
        self._fed_frames = 0

    def start(self, start_frame: int) -> None:
        self._track.align(start_frame)

    def add_chunk(self, first: int, count: int, pcm: object) -> None:
        """The audio of the segment's frames ``first .. first + count - 1`` (None: silence)."""
        samples = self._track.samples_for(first, count)
        audio_format = self._track.audio_format
        if pcm is None:
            array = np.zeros((samples, audio_format.channels), np.float32)
        else:
            array = as_pcm(pcm, audio_format, expected=samples)  # AudioFormatError is a ValueError
        self._held.append((first, count, array))

    def take_until(self, frame: int) -> list[Packet]:
        """Feed the audio of the segment's frames before ``frame``; the AAC packets now complete."""
        while self._held and self._fed_frames < frame:
            first, count, pcm = self._held[0]
            stop = min(first + count, frame)
            start_sample = self._track.samples_for(first, self._fed_frames - first)
            stop_sample = self._track.samples_for(first, stop - first)
            self._track.feed(pcm[start_sample:stop_sample])
            self._fed_frames = stop
            if stop == first + count:
                self._held.pop(0)
        return self._track.take()


def _split_item(item: object) -> tuple[object, object]:
    """A produced item as (frames, audio): a ``(frames, audio)`` pair, or bare frames with no audio."""
    if isinstance(item, tuple) and len(item) == 2:
        return item[0], item[1]
    return item, None


def _close_producer(frames: Iterator[object]) -> None:
    """Close the frames iterator if it can be closed: an abandoned segment tells its producer to stop."""
    close = getattr(frames, "close", None)
    if callable(close):
        close()
