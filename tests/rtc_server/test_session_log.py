"""Per-session JSONL logs written by one background thread, in the original system's line shape."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtc_server.session_log import (
    ORIGINAL_EVENT_NAMES,
    LogLimits,
    SessionLogEvent,
    SessionLogger,
    log_file_name,
    validate_session_id,
)

WRITER_THREAD = "session-log-writer"
LINE_KEYS = ["session_id", "event", "ts", "payload"]  # FastVideo's SessionLogEvent, in its order


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def session_logger(log_dir: Path) -> Iterator[SessionLogger]:
    session_logger = SessionLogger(log_dir)
    yield session_logger
    session_logger.close()


def log_path(log_dir: Path, session_id: str) -> Path:
    return log_dir / f"session-{session_id}.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The file's lines, each checked to have exactly the original's keys and their types."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for record in records:
        assert list(record) == LINE_KEYS, record
        assert isinstance(record["session_id"], str) and isinstance(record["event"], str)
        assert isinstance(record["ts"], float) and isinstance(record["payload"], dict)
    return records


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
    session_logger.event("abc123", "tick", segment_idx=0, where=Path("/x/y"))
    session_logger.event("abc123", "tick", segment_idx=1, extra={"nested": [1, 2]})
    assert session_logger.flush(timeout=5)

    records = read_records(log_path(log_dir, "abc123"))
    assert [record["event"] for record in records] == ["start", "tick", "tick"]
    assert all(record["session_id"] == "abc123" for record in records)
    assert records[0]["payload"]["preset"] == "fast" and records[0]["payload"]["width"] == 256
    assert records[1]["payload"]["where"] == "/x/y"  # not JSON-serialisable: written with str()
    assert records[2]["payload"]["extra"] == {"nested": [1, 2]}
    timestamps = [record["ts"] for record in records]
    assert timestamps == sorted(timestamps)
    assert all(abs(ts - time.time()) < 60 for ts in timestamps)  # seconds since the epoch, like time.time()
    assert [list(record) for record in records] == [LINE_KEYS] * 3


def test_lines_have_exactly_the_original_shape_and_file_name(session_logger: SessionLogger, log_dir: Path) -> None:
    before = time.time()
    session_logger.event("shape-1", "queue", position=1, queue_depth=2)
    session_logger.event("shape-1", "end")
    assert session_logger.flush(timeout=5)
    after = time.time()
    assert [path.name for path in log_dir.iterdir()] == ["session-shape-1.jsonl"] == [log_file_name("shape-1")]
    text = log_path(log_dir, "shape-1").read_text(encoding="utf-8")
    first = json.loads(text.splitlines()[0])
    assert first == {
        "session_id": "shape-1",
        "event": "queue",
        "ts": first["ts"],
        "payload": {"position": 1, "queue_depth": 2},
    }
    assert before <= first["ts"] <= after
    assert json.loads(text.splitlines()[1])["payload"] == {}  # an event without fields: an empty payload


def test_the_originals_event_names_replace_ours_where_it_logs_the_same_thing(
    session_logger: SessionLogger, log_dir: Path
) -> None:
    ours = ["init", "segment", "prompt_received", "prompt_rejected", "rewrite_failed", "queue", "gpu_assigned", "end"]
    for name in ours:
        session_logger.event("names", name)
    assert session_logger.flush(timeout=5)
    assert [record["event"] for record in read_records(log_path(log_dir, "names"))] == [
        "ws_session_start",
        "segment_complete",
        "append_prompt",
        "prompt_blocked",
        "rewrite_exception",
        "queue",  # the original does not log admission: ours
        "gpu_assigned",  # the same name in both
        "end",
    ]
    assert set(ORIGINAL_EVENT_NAMES) < set(ours)


def test_log_takes_the_originals_session_log_event(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.log(SessionLogEvent("orig", "segment_start", {"segment_idx": 3}, ts=1700000000.5))
    session_logger.log(SessionLogEvent(session_id="orig", event="ws_stream_complete"))
    assert session_logger.flush(timeout=5)
    first, second = read_records(log_path(log_dir, "orig"))
    assert first == {"session_id": "orig", "event": "segment_start", "ts": 1700000000.5, "payload": {"segment_idx": 3}}
    assert (second["event"], second["payload"]) == ("ws_stream_complete", {})


def test_each_session_gets_its_own_file(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.event("one", "start")
    session_logger.event("two", "start")
    session_logger.event("one", "end")
    session_logger.flush()
    assert sorted(path.name for path in log_dir.iterdir()) == ["session-one.jsonl", "session-two.jsonl"]
    assert [record["event"] for record in read_records(log_path(log_dir, "one"))] == ["start", "end"]


def test_end_event_closes_the_file(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.event("s1", "start")
    session_logger.flush()
    path = (log_path(log_dir, "s1")).resolve()
    assert path in open_paths()

    session_logger.event("s1", "end", reason="stop_requested")
    session_logger.flush()
    assert path not in open_paths()
    last = read_records(path)[-1]
    assert (last["event"], last["payload"]["reason"]) == ("end", "stop_requested")


def test_close_flushes_everything_and_stops_the_writer(log_dir: Path) -> None:
    threads_before = writer_threads()
    session_logger = SessionLogger(log_dir)
    for index in range(500):
        session_logger.event("bulk", "tick", index=index)
    assert writer_threads() == threads_before + 1

    session_logger.close()
    assert writer_threads() == threads_before
    assert [record["payload"]["index"] for record in read_records(log_path(log_dir, "bulk"))] == list(range(500))
    assert (log_path(log_dir, "bulk")).resolve() not in open_paths()


def test_close_is_idempotent_and_later_events_are_dropped(log_dir: Path) -> None:
    session_logger = SessionLogger(log_dir)
    session_logger.event("s1", "start")
    session_logger.close()
    session_logger.close()
    session_logger.event("s1", "late")
    assert session_logger.flush(timeout=1)
    assert [record["event"] for record in read_records(log_path(log_dir, "s1"))] == ["start"]
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
    assert len(read_records(log_path(log_dir, "race"))) == 200


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


def test_fields_named_like_the_line_keys_stay_in_the_payload(session_logger: SessionLogger, log_dir: Path) -> None:
    session_logger.event("s1", "start", ts="client's", payload=[1])
    assert session_logger.flush(timeout=5)
    [record] = read_records(log_path(log_dir, "s1"))
    assert record["payload"] == {"ts": "client's", "payload": [1]}


def test_many_threads_keep_lines_whole(log_dir: Path) -> None:
    writers, events_each = 8, 200
    blob = "x" * 4096  # long lines make torn writes visible
    with SessionLogger(log_dir, limits=LogLimits(max_string_chars=len(blob))) as session_logger:
        _write_from_threads(session_logger, writers, events_each, blob)
    shared = read_records(log_path(log_dir, "shared"))
    assert len(shared) == writers * events_each
    assert all(record["payload"]["blob"] == blob for record in shared)
    for worker in range(writers):
        seqs = [record["payload"]["seq"] for record in shared if record["payload"]["worker"] == worker]
        assert seqs == list(range(events_each))
        own = read_records(log_path(log_dir, f"own-{worker}"))
        assert [record["payload"]["seq"] for record in own] == list(range(events_each))


def _write_from_threads(session_logger: SessionLogger, writers: int, events_each: int, blob: str) -> None:
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


def test_more_sessions_than_open_files_are_all_written(log_dir: Path) -> None:
    with SessionLogger(log_dir, max_open_files=2) as session_logger:
        for index in range(5):
            for session in ("a", "b", "c"):
                session_logger.event(session, "tick", index=index)
    for session in ("a", "b", "c"):
        assert [record["payload"]["index"] for record in read_records(log_path(log_dir, session))] == list(range(5))


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
    assert [record["event"] for record in read_records(log_path(log_dir, "s1"))] == ["good"]
    assert "cannot be serialised" in caplog.text


async def test_event_from_the_event_loop_and_close_in_a_thread(log_dir: Path) -> None:
    session_logger = SessionLogger(log_dir)
    session_logger.event("s1", "start")
    await asyncio.sleep(0)
    session_logger.event("s1", "end")
    await asyncio.to_thread(session_logger.close)
    assert [record["event"] for record in read_records(log_path(log_dir, "s1"))] == ["start", "end"]


# -- what clients sent is bounded ------------------------------------------------------------

MEGABYTE = 1 << 20


def test_forty_one_megabyte_values_do_not_write_forty_megabytes(session_logger: SessionLogger, log_dir: Path) -> None:
    for index in range(40):
        session_logger.event("flood", "error", code="invalid_message", message=chr(ord("a") + index % 26) * MEGABYTE)
    assert session_logger.flush(timeout=10)

    path = log_path(log_dir, "flood")
    assert path.stat().st_size < 40 * 2 * 1024  # each line: 1 KB of the value and a little more
    records = read_records(path)
    assert len(records) == 40
    first = records[0]["payload"]["message"]
    assert first.startswith("a" * 1024) and not first.startswith("a" * 1025)
    assert first.endswith(f"<cut: {MEGABYTE} chars>")
    assert records[0]["payload"]["code"] == "invalid_message"  # short fields are written whole


def test_one_record_with_many_large_fields_is_bounded_as_a_whole(session_logger: SessionLogger, log_dir: Path) -> None:
    fields = {f"field{index}": "x" * MEGABYTE for index in range(40)}
    session_logger.event("wide", "init", **fields)
    assert session_logger.flush(timeout=10)
    path = log_path(log_dir, "wide")
    assert path.stat().st_size < 64 * 1024
    [record] = read_records(path)
    assert set(fields) <= set(record["payload"])  # every field is named, even when its value is cut to nothing
    assert all(record["payload"][name].endswith(f"<cut: {MEGABYTE} chars>") for name in fields)


def test_long_lists_and_dicts_keep_their_first_items_and_say_how_many_were_cut(
    session_logger: SessionLogger, log_dir: Path
) -> None:
    session_logger.event(
        "lists", "init", curated=[f"p{i}" for i in range(1000)], headers={f"h{i}": i for i in range(100)}, pair=(1, 2)
    )
    assert session_logger.flush(timeout=5)
    [record] = read_records(log_path(log_dir, "lists"))
    assert record["payload"]["curated"] == [f"p{i}" for i in range(64)] + ["<cut: 936 more items>"]
    assert list(record["payload"]["headers"])[:64] == [f"h{i}" for i in range(64)]
    assert record["payload"]["headers"]["<cut>"] == "36 more entries"
    assert record["payload"]["pair"] == [1, 2]


def test_deep_nesting_and_huge_numbers_are_cut(session_logger: SessionLogger, log_dir: Path) -> None:
    deep: Any = "bottom"
    for _ in range(10_000):
        deep = [deep]
    session_logger.event("deep", "invalid", nested=deep, big=10**5000, small=2**64, ratio=0.5)
    assert session_logger.flush(timeout=5)
    [record] = read_records(log_path(log_dir, "deep"))
    value = record["payload"]["nested"]
    for _ in range(8):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == "<list nested deeper than 8 levels>"
    assert record["payload"]["big"] == f"<int of {(10**5000).bit_length()} bits>"
    assert (record["payload"]["small"], record["payload"]["ratio"]) == (2**64, 0.5)


def test_a_record_of_many_small_values_is_bounded(session_logger: SessionLogger, log_dir: Path) -> None:
    wide = [[[f"v{i}-{j}-{k}" for k in range(64)] for j in range(64)] for i in range(64)]  # 262 144 strings
    session_logger.event("many", "invalid", wide=wide)
    assert session_logger.flush(timeout=5)
    path = log_path(log_dir, "many")
    assert path.stat().st_size < 128 * 1024
    [record] = read_records(path)
    assert record["payload"]["wide"][0][0][:3] == ["v0-0-0", "v0-0-1", "v0-0-2"]


def test_values_json_cannot_write_are_written_as_bounded_text(session_logger: SessionLogger, log_dir: Path) -> None:
    class Huge:
        def __str__(self) -> str:
            return "h" * MEGABYTE

    session_logger.event("objs", "tick", obj=Huge(), raw=b"\x00\x01", where=Path("/x/y"))
    assert session_logger.flush(timeout=5)
    [record] = read_records(log_path(log_dir, "objs"))
    assert record["payload"]["obj"].endswith(f"<cut: {MEGABYTE} chars>") and len(record["payload"]["obj"]) < 1100
    assert (record["payload"]["raw"], record["payload"]["where"]) == ("b'\\x00\\x01'", "/x/y")


def test_limits_are_configurable(log_dir: Path) -> None:
    with SessionLogger(log_dir, limits=LogLimits(max_string_chars=4, max_items=2)) as session_logger:
        session_logger.event("small", "tick", text="abcdefgh", items=[1, 2, 3])
    [record] = read_records(log_path(log_dir, "small"))
    assert (record["payload"]["text"], record["payload"]["items"]) == (
        "abcd...<cut: 8 chars>",
        [1, 2, "<cut: 1 more items>"],
    )


@pytest.mark.parametrize("field", ["max_string_chars", "max_items", "max_depth", "max_values", "max_record_chars"])
@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_limits_must_be_positive_ints(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"LogLimits.{field}"):
        LogLimits(**{field: value})


# -- files are private ------------------------------------------------------------------------


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=["umask-000", "umask-022", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under each umask: none must widen or narrow the modes the logger sets."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_the_directories_the_logger_makes_are_owner_only(tmp_path: Path, umask: int) -> None:
    log_dir = tmp_path / "var" / "logs"
    with SessionLogger(log_dir) as session_logger:
        session_logger.event("s1", "start")
        session_logger.event("s2", "start")
    assert mode_of(tmp_path / "var") == 0o700
    assert mode_of(log_dir) == 0o700
    assert mode_of(log_path(log_dir, "s1")) == mode_of(log_path(log_dir, "s2")) == 0o600
    assert [record["event"] for record in read_records(log_path(log_dir, "s1"))] == ["start"]


def test_an_existing_directory_is_left_alone_and_an_existing_file_is_narrowed(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    os.chmod(log_dir, 0o755)
    old = log_path(log_dir, "s1")
    old.write_text('{"session_id": "s1", "event": "earlier", "ts": 1.0, "payload": {}}\n', encoding="utf-8")
    os.chmod(old, 0o644)
    with SessionLogger(log_dir) as session_logger:
        session_logger.event("s1", "start")
    assert mode_of(log_dir) == 0o755  # the operator's choice
    assert mode_of(old) == 0o600
    assert [record["event"] for record in read_records(old)] == ["earlier", "start"]


def test_a_symlink_in_place_of_a_log_file_is_not_followed(
    tmp_path: Path, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n", encoding="utf-8")
    os.chmod(target, 0o644)
    log_dir.mkdir()
    (log_path(log_dir, "s1")).symlink_to(target)
    caplog.set_level(logging.WARNING, logger="rtc_server.session_log")
    with SessionLogger(log_dir) as session_logger:
        session_logger.event("s1", "start")
    assert target.read_text(encoding="utf-8") == "precious\n"
    assert mode_of(target) == 0o644
    assert "cannot write session log" in caplog.text
