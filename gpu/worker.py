"""The worker process of SubprocessGpuPool: one generator, one GPU, jobs over a pipe.

Messages are small dicts. Server to worker: ``job``, ``release`` (a frame slot is
free again), ``stop``. Worker to server: ``ready`` / ``boot_failed`` once, then per
job ``started``, ``step``..., and ``result`` (frames in a shared-memory slot) or
``failed``. Nothing here may import torch before CUDA_VISIBLE_DEVICES is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["request_from_wire", "request_to_wire", "worker_main"]

_PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent dies


def request_to_wire(request: Any) -> dict[str, Any]:
    """A SegmentRequest as a plain dict (its continuation as ``{kind, payload}``)."""
    wire = asdict(request)
    if request.continuation is not None:
        wire["continuation"] = request.continuation.to_wire()
    return wire


def request_from_wire(wire: dict[str, Any]) -> Any:
    from gpu.generator import ContinuationState, SegmentRequest

    fields = dict(wire)
    state = fields.pop("continuation", None)
    continuation = ContinuationState(state["kind"], state["payload"]) if state else None
    return SegmentRequest(**fields, continuation=continuation)


def _die_with_parent() -> None:
    # Linux only: if the server is SIGKILLed, the kernel kills its workers too, so no GPU
    # process is ever orphaned. Elsewhere the closed pipe ends the worker instead.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Worker:
    def __init__(self, conn: Connection, slots: Any) -> None:
        self._conn = conn
        self._slots = slots
        self._free = set(range(slots.count))
        self._backlog: deque[dict[str, Any]] = deque()
        self._generator: Any = None

    def boot(self, backend: str, options: dict[str, Any], warmup_request: dict[str, Any] | None) -> None:
        from gpu.factory import build_generator

        started = time.perf_counter()
        self._generator = build_generator(backend, options)
        warmup_ms = None
        if warmup_request is not None:
            # Two segments, the second continuing the first: both code paths get compiled/cached.
            warm_started = time.perf_counter()
            first = self._generator.generate(request_from_wire(warmup_request))
            second_request = request_from_wire({**warmup_request, "segment_idx": 1})
            self._generator.generate(replace(second_request, continuation=first.continuation))
            warmup_ms = (time.perf_counter() - warm_started) * 1000.0
        self._conn.send(
            {"op": "ready", "boot_ms": (time.perf_counter() - started) * 1000.0, "warmup_ms": warmup_ms, "pid": os.getpid()}
        )

    def serve(self) -> None:
        while True:
            message = self._backlog.popleft() if self._backlog else self._conn.recv()
            op = message.get("op")
            if op == "stop":
                return
            if op == "release":
                self._free.add(message["slot"])
            elif op == "job":
                self._run_job(message)
            elif op == "check":
                self._check_state(message)

    def _take_slot(self) -> int:
        while not self._free:
            message = self._conn.recv()
            if message.get("op") == "release":
                self._free.add(message["slot"])
            else:
                self._backlog.append(message)
        return self._free.pop()

    def _run_job(self, message: dict[str, Any]) -> None:
        from gpu.generator import IncompatibleStateError

        job = message["job"]
        self._conn.send({"op": "started", "job": job})
        started = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            self._conn.send({"op": "step", "job": job, "step": step, "total": total})

        try:
            result = self._generator.generate(request_from_wire(message["request"]), on_step)
            slot = self._take_slot()
            ref = self._slots.write(slot, result.frames)
        except IncompatibleStateError as exc:
            self._conn.send({"op": "failed", "job": job, "error": str(exc), "incompatible": True})
            return
        except Exception as exc:
            self._conn.send(
                {"op": "failed", "job": job, "error": f"{type(exc).__name__}: {exc}", "incompatible": False}
            )
            return
        self._conn.send(
            {
                "op": "result",
                "job": job,
                "slot": ref.index,
                "shape": ref.shape,
                "state": result.continuation.to_wire(),
                "generation_ms": (time.perf_counter() - started) * 1000.0,
            }
        )

    def _check_state(self, message: dict[str, Any]) -> None:
        from gpu.generator import ContinuationState, IncompatibleStateError

        state = message["state"]
        try:
            self._generator.check_state(ContinuationState(state["kind"], state["payload"]))
        except IncompatibleStateError as exc:
            self._conn.send({"op": "failed", "job": message["job"], "error": str(exc), "incompatible": True})
            return
        except Exception as exc:
            self._conn.send(
                {"op": "failed", "job": message["job"], "error": f"{type(exc).__name__}: {exc}", "incompatible": False}
            )
            return
        self._conn.send({"op": "checked", "job": message["job"]})


def worker_main(
    conn: Connection,
    *,
    gpu_id: int,
    backend: str,
    options: dict[str, Any],
    warmup_request: dict[str, Any] | None,
    slot_names: list[str],
) -> None:
    """Entry point of a worker process (started with the ``spawn`` method)."""
    # Before anything can import torch: this worker sees exactly one GPU, as device 0.
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_id)
    _die_with_parent()
    # The server handles SIGINT for the whole process group; a worker stops when told to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gpu.frame_slots import FrameSlots

    slots = FrameSlots.attach(slot_names)
    worker = _Worker(conn, slots)
    try:
        try:
            worker.boot(backend, options, warmup_request)
        except Exception as exc:
            conn.send({"op": "boot_failed", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
            return
        worker.serve()
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the server went away or asked us to stop
    finally:
        slots.close()
        with contextlib.suppress(OSError):
            conn.close()
