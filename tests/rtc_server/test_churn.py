"""Churn against real server processes: sessions opened and left, half abruptly (peers that just go
silent, sockets dropped), over both transports and both pools. Nothing piles up, without asking the
server to collect garbage."""

from __future__ import annotations

import pytest

from bench.churn import run

CYCLES = 200
RSS_GROWTH_PER_100_CYCLES_MB = 30.0  # a plateau; before, each silent peer kept ~23 MB until a GC pass


@pytest.mark.slow
def test_two_hundred_cycles_leave_no_sessions_threads_fds_or_children_and_memory_plateaus() -> None:
    result = run(CYCLES, concurrency=8, checkpoint=CYCLES // 2)
    for pool, (start, middle, end) in result["servers"].items():
        # Sessions: run() waits at each checkpoint until /health reports none.
        assert end["fds"] == middle["fds"] == start["fds"], (pool, start, end)
        assert end["children"] == middle["children"] == start["children"], (pool, start, end)
        # Executor threads start on demand and stay (bounded pools); nothing per session.
        assert end["threads"] <= middle["threads"] + 1, (pool, middle, end)
        assert end["rss_mb"] - middle["rss_mb"] < RSS_GROWTH_PER_100_CYCLES_MB, (pool, middle, end)
