"""In-process fragmented-MP4 (fMP4) H.264 encoding on PyAV for the WebSocket / MSE transport.

Each segment is self-contained: an init segment (``ftyp`` + ``moov``, codec config only) followed by
``moof`` + ``mdat`` fragments, the first sample being an IDR frame. Successive segments of one
:class:`Fmp4Encoder` continue a single timeline (each fragment's ``tfdt`` carries the absolute decode
time), so a Media Source Extensions client can append init + fragments, segment after segment,
without gaps. Every PyAV detail stays in this module; its failures surface as
:class:`MediaEncodeError`.

Timeline continuation: a segment's frames get pts ``start_frame .. start_frame + N - 1`` in a
``1/fps`` time base, and the muxer is told to keep them (``movflags=frag_discont`` makes the first
``tfdt`` the first packet's dts, ``use_editlist=0`` keeps that offset out of an edit list, and
``avoid_negative_ts=make_non_negative`` stops libavformat from shifting the start back to zero,
which it otherwise does for fragmented output without edit lists).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType
from typing import Final, Self, cast

import av
import numpy as np
from av.codec.codec import UnknownCodecError
from av.codec.context import CodecContext, Flags
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import (
    ColorPrimaries,
    ColorRange,
    Colorspace,
    ColorTrc,
    Interpolation,
    VideoReformatter,
)

__all__ = [
    "H264_PROFILES",
    "X264_PRESETS",
    "Fmp4Encoder",
    "Fmp4Segment",
    "Fmp4SegmentStream",
    "MediaEncodeError",
    "codec_string_from_init",
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
_US_PER_S: Final = 1_000_000
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
        "skip_trailer",  # no mfra index at the end: MSE ignores it, it only adds bytes
    )
)


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

    @property
    def mime(self) -> str:
        """MIME type for ``MediaSource.isTypeSupported`` / ``addSourceBuffer``."""
        return _mime(self.codec_string)


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

    Made by :meth:`Fmp4Encoder.encode_segment_iter`. Iterating does the encoding (blocking CPU
    work): one thread at a time may iterate it. Closing it early releases the encoder.
    """

    def __init__(
        self,
        *,
        config: _X264Config,
        frames: np.ndarray,
        start_frame: int,
        frames_per_fragment: int,
        codec_string: str,
    ) -> None:
        self._num_frames = int(frames.shape[0])
        self._fps = config.fps
        self._start_frame = start_frame
        self._codec_string = codec_string
        self._media_chunks = 0
        self._started = False
        self._done = False
        self._chunks = _encode_chunks(
            config=config,
            frames=frames,
            start_frame=start_frame,
            frames_per_fragment=frames_per_fragment,
            expected_codec_string=codec_string,
        )

    @property
    def num_frames(self) -> int:
        """Frames in this segment."""
        return self._num_frames

    @property
    def pts_base_ms(self) -> float:
        """Presentation time of the segment's first frame on the encoder's timeline (ms)."""
        return self._start_frame * _MS_PER_S / self._fps

    @property
    def duration_ms(self) -> float:
        """Duration of the segment (ms): ``num_frames / fps``."""
        return self._num_frames * _MS_PER_S / self._fps

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec string of the stream, e.g. ``avc1.42C01E``."""
        return self._codec_string

    @property
    def mime(self) -> str:
        """MIME type with codecs parameter, for the ``media_init`` message."""
        return _mime(self._codec_string)

    @property
    def media_chunks(self) -> int:
        """Fragments yielded so far (the init chunk is not counted)."""
        return self._media_chunks

    @property
    def done(self) -> bool:
        """True once every chunk has been yielded."""
        return self._done

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._done = True
            raise
        if self._started:
            self._media_chunks += 1
        self._started = True
        return chunk

    def close(self) -> None:
        """Stop encoding early and release the encoder; the rest of the segment is dropped."""
        self._chunks.close()

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

    Thread safety: each segment gets its own libx264 context and muxer, so the only shared state is
    the timeline position, guarded by a lock; segments are placed on the timeline in the order
    :meth:`encode_segment` / :meth:`encode_segment_iter` are called. A given
    :class:`Fmp4SegmentStream` must be iterated by one thread at a time (e.g. an executor worker).
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
    ) -> None:
        """Validate the settings and open libx264 once to learn the codec string.

        ``bitrate`` (bit/s) selects capped average-bitrate mode and takes precedence over ``crf``;
        with neither, x264's default rate control applies. ``frames_per_fragment`` frames go into
        each moof+mdat (1 gives the lowest latency). ``threads`` is libx264's (0 = automatic).
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
        self._lock = threading.Lock()
        self._next_frame = 0
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
    def mime(self) -> str:
        """``video/mp4; codecs="..."`` for this encoder's streams."""
        return _mime(self._codec_string)

    @property
    def next_pts_ms(self) -> float:
        """Where the next segment will start on the timeline (ms)."""
        with self._lock:
            return self._next_frame * _MS_PER_S / self._config.fps

    def encode_segment_iter(self, frames: np.ndarray) -> Fmp4SegmentStream:
        """Validate ``frames`` (N,H,W,3 uint8 RGB), reserve their place on the timeline, encode lazily.

        The returned stream yields the init first, then each fragment as soon as it is muxed, so the
        first bytes can go out before the segment is encoded. ``frames`` is read while iterating:
        do not modify it until the stream is exhausted.
        """
        num_frames = _validate_frames(frames, self._config.width, self._config.height)
        with self._lock:
            start_frame = self._next_frame
            self._next_frame += num_frames
        return Fmp4SegmentStream(
            config=self._config,
            frames=frames,
            start_frame=start_frame,
            frames_per_fragment=self._frames_per_fragment,
            codec_string=self._codec_string,
        )

    def encode_segment(self, frames: np.ndarray) -> Fmp4Segment:
        """Encode ``frames`` (N,H,W,3 uint8 RGB) into one complete, independently appendable segment."""
        with self.encode_segment_iter(frames) as stream:
            chunks = list(stream)
        init = chunks[0]
        return Fmp4Segment(
            init=init,
            fragments=chunks[1:],
            duration_ms=stream.duration_ms,
            pts_base_ms=stream.pts_base_ms,
            codec_string=codec_string_from_init(init),
        )


def codec_string_from_init(init: bytes) -> str:
    """RFC 6381 ``avc1.PPCCLL`` string from the avcC box of an init segment (ftyp+moov)."""
    avcc = _find_box(init, (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1", b"avcC"))
    if avcc is None or len(avcc) < 4:
        raise MediaEncodeError("init segment has no avcC box")
    # AVCDecoderConfigurationRecord: configurationVersion, then profile, constraints, level.
    return _avc1_string(avcc[1], avcc[2], avcc[3])


def _mime(codec_string: str) -> str:
    return f'video/mp4; codecs="{codec_string}"'


def _avc1_string(profile_idc: int, constraint_flags: int, level_idc: int) -> str:
    return f"avc1.{profile_idc:02X}{constraint_flags:02X}{level_idc:02X}"


def _validate_frames(frames: np.ndarray, width: int, height: int) -> int:
    """Check shape (N,H,W,3) and dtype uint8 (ValueError; TypeError if not an array); return N."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(
            f"frames must be a numpy array of shape (N, {height}, {width}, 3), got {type(frames).__name__}"
        )
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must have dtype uint8 (RGB), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise ValueError(f"frames must have shape (N, {height}, {width}, 3) RGB, got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames must hold at least one frame")
    return int(frames.shape[0])


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


class _ChunkAssembler:
    """Groups top-level boxes into chunks: ftyp..moov is the init, then each run ending in mdat."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._init_done = False

    def add(self, box_type: bytes, box: bytes) -> bytes | None:
        """Add one box; return a finished chunk when this box completes one."""
        if not self._init_done and box_type in (b"moof", b"mdat"):
            raise MediaEncodeError("muxer wrote media before the moov")
        self._parts.append(box)
        if box_type == (b"mdat" if self._init_done else b"moov"):
            self._init_done = True
            chunk = b"".join(self._parts)
            self._parts.clear()
            return chunk
        return None

    @property
    def pending(self) -> bool:
        """True if boxes are waiting for the box that completes their chunk."""
        return bool(self._parts)


def _encode_chunks(
    *,
    config: _X264Config,
    frames: np.ndarray,
    start_frame: int,
    frames_per_fragment: int,
    expected_codec_string: str,
) -> Generator[bytes, None, None]:
    """Encode and mux ``frames``, yielding the init and then each fragment as soon as it is complete."""
    output = _OutputBuffer()
    assembler = _ChunkAssembler()
    time_base = Fraction(1, config.fps)
    first_chunk = True

    def ready_chunks() -> Iterator[bytes]:
        nonlocal first_chunk
        for box_type, box in output.take_boxes():
            chunk = assembler.add(box_type, box)
            if chunk is None:
                continue
            if first_chunk:
                first_chunk = False
                actual = codec_string_from_init(chunk)
                if actual != expected_codec_string:
                    # media_init may already have announced the probed string; a mismatch would
                    # make the browser reject or misconfigure its SourceBuffer.
                    raise MediaEncodeError(
                        f"init codec {actual} differs from the probed {expected_codec_string}"
                    )
            yield chunk

    # The muxer cuts a fragment before a packet once the fragment spans at least this long. Rounded
    # down so that 1/fps not being a whole number of microseconds cannot push the cut a frame later.
    max_fragment_us = frames_per_fragment * _US_PER_S // config.fps
    mux_options = {
        "movflags": _MOVFLAGS,
        "frag_duration": str(max_fragment_us),
        "use_editlist": "0",
        "avoid_negative_ts": "make_non_negative",
        "flush_packets": "1",  # hand each fragment to us as soon as it is written
    }
    reformatter = VideoReformatter()  # reused: keeps one swscale context for the segment
    container = None
    try:
        container = av.open(output, mode="w", format=_CONTAINER_FORMAT, options=mux_options)
        stream = container.add_stream(_ENCODER_NAME, rate=config.fps)
        config.apply(cast(VideoCodecContext, stream.codec_context))
        stream.time_base = time_base
        # Writes the header now: with empty_moov that is the whole init, out before any frame.
        container.start_encoding()
        yield from ready_chunks()
        for index in range(frames.shape[0]):
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[index]), format=_INPUT_PIX_FMT)
            frame = reformatter.reformat(
                rgb,
                format=_ENCODE_PIX_FMT,
                src_colorspace=Colorspace.DEFAULT,
                dst_colorspace=_COLORSPACE,
                src_color_range=ColorRange.JPEG,  # RGB input is full range
                dst_color_range=_COLOR_RANGE,
                interpolation=_CONVERT_INTERPOLATION,
                threads=_CONVERT_THREADS,
            )
            frame.pts = start_frame + index
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
            yield from ready_chunks()
        for packet in stream.encode(None):
            container.mux(packet)
        closing, container = container, None
        closing.close()  # writes the last fragment
        yield from ready_chunks()
    except (av.FFmpegError, UnknownCodecError) as exc:
        raise MediaEncodeError(f"fMP4 encoding failed: {exc}") from exc
    finally:
        if container is not None:
            # Abandoned or failed midway: release the encoder; the output is discarded.
            try:
                container.close()
            except av.FFmpegError:
                logger.debug("closing an abandoned fMP4 muxer failed", exc_info=True)
    if assembler.pending or output.pending:
        raise MediaEncodeError("muxer output ended with an incomplete fragment")
