"""The playout buffer: segments tagged in order, taken back whole until their first frame leaves."""

from __future__ import annotations

import numpy as np

from rtc_server.media.track import PlayoutBuffer


def _frame(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


def test_playout_buffer_takes_back_a_segment_until_its_first_frame_is_released() -> None:
    buffer = PlayoutBuffer()
    playing, queued = buffer.new_tag(), buffer.new_tag()
    buffer.put(playing, [_frame(1), _frame(2)])
    buffer.put(queued, [_frame(3), _frame(4)])
    popped = buffer.pop()
    assert popped is not None and popped.pixels[0, 0, 0] == 1
    assert buffer.released(playing) and not buffer.released(queued)
    assert buffer.drop_from(queued) == 2
    later = buffer.new_tag()
    buffer.put(later, [_frame(5)])
    rest = []
    while (frame := buffer.pop()) is not None:
        rest.append(int(frame.pixels[0, 0, 0]))
    assert rest == [2, 5]
    assert buffer.released(later) and buffer.released(queued)  # a later tag was released
