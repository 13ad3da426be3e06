"""Look-ahead bookkeeping and the frame feed across retries: plain code over recording outputs."""

from __future__ import annotations

import numpy as np

from gpu.audio import AudioFormat, frame_sample_offset
from gpu.generator import ContinuationState
from rtc_server.lookahead import Lookahead
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin
from rtc_server.segment_feed import SegmentFeed

CHOICE = PromptChoice(text="a fox", origin=PromptOrigin.USER)


class Output:
    """A SegmentOutput that records frames; ``delivered`` is set by the test as playback would."""

    def __init__(self) -> None:
        self.delivered = False
        self.frames: list[int] = []
        self.audio: list[np.ndarray] = []
        self.retracted = False

    def put_frames(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        self.frames.extend(int(f[0, 0, 0]) for f in frames)
        if audio is not None:
            self.audio.append(audio)

    async def finish(self) -> None:
        return None

    def retract(self) -> bool:
        if self.delivered:
            return False
        self.retracted = True
        return True


def state(n: int) -> ContinuationState:
    return ContinuationState("synthetic.v1", {"segment_idx": n})


def test_take_back_retracts_every_undelivered_segment_and_reports_the_oldest_first() -> None:
    lookahead = Lookahead()
    playing, queued, making = Output(), Output(), Output()
    lookahead.add(3, state(3), playing, CHOICE)
    lookahead.add(4, state(4), queued, CHOICE)
    lookahead.add(5, state(5), making, CHOICE)
    playing.delivered = True
    taken = lookahead.take_back()
    assert [p.idx for p in taken] == [4, 5] and all(p.retracted for p in taken)
    assert taken[0].state_before == state(4)
    assert (playing.retracted, queued.retracted, making.retracted) == (False, True, True)
    assert len(lookahead) == 0  # the delivered one is no longer tracked either


def test_nothing_is_taken_back_once_the_newest_segment_is_delivered() -> None:
    lookahead = Lookahead()
    older, newest = Output(), Output()
    lookahead.add(0, None, older, CHOICE)
    lookahead.add(1, state(1), newest, CHOICE)
    older.delivered = newest.delivered = True
    assert lookahead.take_back() == []
    assert not newest.retracted


def frames(*values: int) -> np.ndarray:
    return np.stack([np.full((2, 2, 3), v, dtype=np.uint8) for v in values])


def test_a_retry_skips_the_frames_the_output_already_has() -> None:
    output = Output()
    feed = SegmentFeed(output)
    feed.restart()
    feed.put(frames(0, 1))
    feed.put(frames(2))
    feed.restart()  # the worker died: the segment is made again from its first frame
    feed.put(frames(0))
    feed.put(frames(1, 2, 3))
    feed.put(frames(4, 5))
    assert output.frames == [0, 1, 2, 3, 4, 5] and feed.frames_put == 6


def test_a_retry_skips_the_audio_of_the_frames_the_output_already_has() -> None:
    # 44.1 kHz at 24 fps: frames own 1837 or 1838 samples, so the cut must use the frames' offsets.
    rate, fps = 44_100, 24
    segment_audio = np.arange(frame_sample_offset(6, fps, rate), dtype=np.float32)[:, None]

    def chunk(first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(frame_sample_offset(first, fps, rate), frame_sample_offset(first + count, fps, rate))
        return frames(*range(first, first + count)), segment_audio[span]

    output = Output()
    feed = SegmentFeed(output, fps=fps, audio_format=AudioFormat(rate, 1))
    feed.restart()
    feed.put(*chunk(0, 3))
    feed.restart()
    feed.put(*chunk(0, 2))
    feed.put(*chunk(2, 3))  # frame 2 was already put: only 3 and 4 (and their audio) are fresh
    feed.put(*chunk(5, 1))
    assert output.frames == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(np.concatenate(output.audio), segment_audio)
