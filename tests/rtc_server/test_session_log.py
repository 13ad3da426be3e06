"""Per-session JSONL logs written by one background thread."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtc_server.session_log import SessionLogger, validate_session_id

WRITER_THREAD = "session-log-writer"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def session_logger(log_dir: Path) -> Iterator[SessionLogger]:
    session_logger = SessionLogger(log_dir)
    yield session_logger
    session_logger.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def writer_threads() -> int:
    return sum(thread.name == WRITER_THREAD for thread in threading.enumerate())


def open_paths() -> set[Path]:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc/self/fd to see which files are open")
    paths = set()
    for entry in fd_dir.iterdir():
        try:
            paths.add(Path(os.readlink(entry)))
        except OSError:  # the fd closed while listing
            continue
    return paths


def test_lines_are_json_in_order(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.event("abc123", "start", preset="fast", width=256)
    session_logger.event("abc123", "segment", segment_idx=0, where=Path("/x/y"))
    session_logger.event("abc123", "segment", segment_idx=1, extra={"nested": [1, 2]})
    assert session_logger.flush(timeout=5)

    records = read_records(log_dir / "abc123.jsonl")
    assert [record["event"] for record in records] == ["start", "segment", "segment"]
    assert all(record["session_id"] == "abc123" for record in records)
    assert records[0]["preset"] == "fast" and records[0]["width"] == 256
    assert records[1]["where"] == "/x/y"  # not JSON-serialisable: written with str()
    assert records[2]["extra"] == {"nested": [1, 2]}
    timestamps = [record["ts"] for record in records]
    assert all(isinstance(ts, float) for ts in timestamps)
    assert timestamps == sorted(timestamps)
    assert list(records[0])[:3] == ["ts", "session_id", "event"]


def test_each_session_gets_its_own_file(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.event("one", "start")
    session_logger.event("two", "start")
    session_logger.event("one", "end")
    session_logger.flush()
    assert sorted(path.name for path in log_dir.iterdir()) == ["one.jsonl", "two.jsonl"]
    assert [record["event"] for record in read_records(log_dir / "one.jsonl")] == ["start", "end"]


def test_end_event_closes_the_file(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.event("s1", "start")
    session_logger.flush()
    path = (log_dir / "s1.jsonl").resolve()
    assert path in open_paths()

    session_logger.event("s1", "end", reason="stop_requested")
    session_logger.flush()
    assert path not in open_paths()
    last = read_records(path)[-1]
    assert (last["event"], last["reason"]) == ("end", "stop_requested")


def test_close_flushes_everything_and_stops_the_writer(log_dir: Path) -> None:
    threads_before = writer_threads()
    session_logger = SessionLogger(log_dir)
    for index in range(500):
        session_logger.event("bulk", "tick", index=index)
    assert writer_threads() == threads_before + 1

    session_logger.close()
    assert writer_threads() == threads_before
    assert [record["index"] for record in read_records(log_dir / "bulk.jsonl")] == list(range(500))
    assert (log_dir / "bulk.jsonl").resolve() not in open_paths()


def test_close_is_idempotent_and_later_events_are_dropped(log_dir: Path) -> None:
    session_logger = SessionLogger(log_dir)
    session_logger.event("s1", "start")
    session_logger.close()
    session_logger.close()
    session_logger.event("s1", "late")
    assert session_logger.flush(timeout=1)
    assert [record["event"] for record in read_records(log_dir / "s1.jsonl")] == ["start"]
    with pytest.raises(RuntimeError, match="closed"):
        session_logger.start()


def test_racing_closers_both_return_after_the_writer_stops(log_dir: Path) -> None:
    threads_before = writer_threads()
    session_logger = SessionLogger(log_dir)
    session_logger.start()
    for index in range(200):
        session_logger.event("race", "tick", index=index)
    closers = [threading.Thread(target=session_logger.close) for _ in range(4)]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(timeout=10)
    assert writer_threads() == threads_before
    assert len(read_records(log_dir / "race.jsonl")) == 200


def test_none_directory_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    threads_before = writer_threads()
    session_logger = SessionLogger(None)
    assert not session_logger.enabled and session_logger.log_dir is None
    session_logger.start()
    session_logger.event("s1", "start", anything=object())
    session_logger.event("any id at all, not validated", "end")
    assert session_logger.flush()
    assert writer_threads() == threads_before
    session_logger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "session_id",
    ["", "../escape", "a/b", "a\\b", "a.b", "..", "x" * 65, "caf\u00e9", "id\n", "nul\x00", 42, None],
)
def test_bad_session_ids_are_refused(session_logger: SessionLogger, log_dir: Path, session_id: Any) -> None:
    with pytest.raises(ValueError, match="session id"):
        session_logger.event(session_id, "start")
    session_logger.flush()
    assert not log_dir.exists()


@pytest.mark.parametrize("session_id", ["a", "x" * 64, "0f8fad5b-d9cb-469f-a165-70867728950e", "A_b-9"])
def test_good_session_ids_are_accepted(session_id: str) -> None:
    assert validate_session_id(session_id) == session_id


def test_ts_is_a_reserved_field(session_logger: SessionLogger) -> None:
    with pytest.raises(ValueError, match="reserved"):
        session_logger.event("s1", "start", ts=1.0)


def test_many_threads_keep_lines_whole(session_logger: SessionLogger, log_dir: Path) -> None:
    writers, events_each = 8, 200
    blob = "x" * 4096  # long lines make torn writes visible
    start = threading.Barrier(writers)

    def write(worker: int) -> None:
        start.wait()
        for seq in range(events_each):
            session_logger.event("shared", "tick", worker=worker, seq=seq, blob=blob)
            session_logger.event(f"own-{worker}", "tick", seq=seq)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert session_logger.flush(timeout=30)

    shared = read_records(log_dir / "shared.jsonl")
    assert len(shared) == writers * events_each
    assert all(record["blob"] == blob for record in shared)
    for worker in range(writers):
        seqs = [record["seq"] for record in shared if record["worker"] == worker]
        assert seqs == list(range(events_each))
        own = read_records(log_dir / f"own-{worker}.jsonl")
        assert [record["seq"] for record in own] == list(range(events_each))


def test_more_sessions_than_open_files_are_all_written(log_dir: Path) -> None:
    with SessionLogger(log_dir, max_open_files=2) as session_logger:
        for index in range(5):
            for session in ("a", "b", "c"):
                session_logger.event(session, "tick", index=index)
    for session in ("a", "b", "c"):
        assert [record["index"] for record in read_records(log_dir / f"{session}.jsonl")] == list(range(5))


def test_unwritable_directory_logs_once_per_session(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    caplog.set_level(logging.WARNING, logger="rtc_server.session_log")
    with SessionLogger(not_a_directory / "logs") as session_logger:
        for _ in range(3):
            session_logger.event("s1", "tick")
            session_logger.event("s2", "tick")
        session_logger.event("s1", "end")
        assert session_logger.flush(timeout=5)

    warnings = [record for record in caplog.records if record.name == "rtc_server.session_log"]
    assert len(warnings) == 2
    assert {record.getMessage().split(":")[0] for record in warnings} == {"session s1", "session s2"}
    assert all("cannot write session log" in record.getMessage() for record in warnings)


def test_unserialisable_record_is_dropped_with_a_warning(
    session_logger: SessionLogger, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop: list[Any] = []
    loop.append(loop)
    session_logger.event("s1", "bad", loop=loop)
    session_logger.event("s1", "good")
    session_logger.flush()
    assert [record["event"] for record in read_records(log_dir / "s1.jsonl")] == ["good"]
    assert "cannot be serialised" in caplog.text


async def test_event_from_the_event_loop_and_close_in_a_thread(log_dir: Path) -> None:
    session_logger = SessionLogger(log_dir)
    session_logger.event("s1", "start")
    await asyncio.sleep(0)
    session_logger.event("s1", "end")
    await asyncio.to_thread(session_logger.close)
    assert [record["event"] for record in read_records(log_dir / "s1.jsonl")] == ["start", "end"]
