"""Load-test results: per-session figures, a summary, JSON and a PNG plot. Pure numbers, except the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rtc_server.loadtest.runner import LoadSettings, SessionRecord

__all__ = ["build_report", "write_plot"]

STALL_INTERVALS = 2.0  # a gap longer than this many frame intervals is a stall
# aiortc's receiver hands a video frame on only when the first packet of the next frame
# arrives (jitterbuffer._remove_frame), so its clients see every frame one interval late;
# browsers use the RTP marker bit and do not. The report shows the latency both ways.


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        "max": round(ordered[-1], 2),
    }


def _fps_series(record: SessionRecord) -> list[int]:
    """Frames received in each whole second after the session started (a last partial second is left out)."""
    end = record.ended_at or (record.frame_times[-1] if record.frame_times else record.started_at)
    series = [0] * int(end - record.started_at)
    for at in record.frame_times:
        second = int(at - record.started_at)
        if 0 <= second < len(series):
            series[second] += 1
    return series


def _stalls(record: SessionRecord) -> int:
    if not record.fps or len(record.frame_times) < 2:
        return 0
    limit = STALL_INTERVALS / record.fps
    return sum(1 for a, b in zip(record.frame_times, record.frame_times[1:], strict=False) if b - a > limit)


def _latencies_ms(record: SessionRecord) -> list[float]:
    out = []
    for number, received in zip(record.frame_numbers, record.frame_unix_ms, strict=False):
        released = record.release_unix_ms.get(number) if number is not None else None
        if released is not None:
            out.append(received - released)
    return out


def _session(record: SessionRecord) -> dict[str, Any]:
    ttff = None if record.first_frame_at is None else (record.first_frame_at - record.started_at) * 1000.0
    window = (record.ended_at or record.started_at) - (record.first_frame_at or record.started_at)
    latencies = _latencies_ms(record)
    return {
        "index": record.index,
        "session_id": record.session_id,
        "frames": len(record.frame_times),
        "ttff_ms": None if ttff is None else round(ttff, 1),
        "delivered_fps": round(len(record.frame_times) / window, 2) if window > 0 and record.frame_times else 0.0,
        "target_fps": record.fps,
        "fps_series": _fps_series(record),
        "stalls": _stalls(record),
        "frame_latency_ms": _quantiles(latencies),
        "latency_samples": len(latencies),
        "prompts_sent": record.prompts_sent,
        "prompt_to_pixels_ms": _quantiles([s * 1000.0 for s in record.prompts.latencies_s]),
        "prompts_superseded": record.prompts.superseded,
        "errors": dict(record.errors),
    }


def _target_fps(records: list[SessionRecord]) -> float | None:
    return next((r.fps for r in records if r.fps), None)


def build_report(settings: LoadSettings, records: list[SessionRecord]) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    sessions = [_session(r) for r in records]
    errors: dict[str, int] = {}
    for record in records:
        for code, count in record.errors.items():
            errors[code] = errors.get(code, 0) + count
    all_latencies = [value for r in records for value in _latencies_ms(r)]
    return {
        "settings": {
            "url": settings.url,
            "sessions": settings.sessions,
            "duration_s": settings.duration_s,
            "transport": settings.transport,
            "ramp_s": settings.ramp_s,
            "prompt_interval_s": settings.prompt_interval_s,
            "viewers": settings.viewers,
        },
        "summary": {
            "sessions": len(records),
            "sessions_with_frames": sum(1 for s in sessions if s["frames"] > 0),
            "ttff_ms": _quantiles([s["ttff_ms"] for s in sessions if s["ttff_ms"] is not None]),
            "delivered_fps": _quantiles([s["delivered_fps"] for s in sessions if s["frames"]]),
            "frame_latency_ms": _quantiles(all_latencies),
            "receiver_hold_ms": round(1000.0 / fps, 2) if (fps := _target_fps(records)) else None,
            "frame_latency_ms_without_receiver_hold": _quantiles(
                [value - 1000.0 / fps for value in all_latencies] if fps and settings.transport == "webrtc" else []
            ),
            "prompt_to_pixels_ms": _quantiles(
                [latency * 1000.0 for r in records for latency in r.prompts.latencies_s]
            ),
            "prompt_to_pixels_samples": sum(len(r.prompts.latencies_s) for r in records),
            "stalls": sum(s["stalls"] for s in sessions),
            "errors": errors,
            "viewers": _viewers_summary(records),
        },
        "sessions": sessions,
    }


def _viewers_summary(records: list[SessionRecord]) -> dict[str, Any]:
    """WHEP viewers over all sessions: how many got frames, their time to first frame and delivered fps."""
    viewers = [v for r in records for v in r.viewers]
    ttff = [1000.0 * (v.first_frame_at - v.joined_at) for v in viewers if v.first_frame_at is not None]
    fps = []
    for viewer in viewers:
        if viewer.first_frame_at is not None and viewer.left_at is not None and viewer.left_at > viewer.first_frame_at:
            fps.append(len(viewer.frame_times) / (viewer.left_at - viewer.first_frame_at))
    errors: dict[str, int] = {}
    for viewer in viewers:
        if viewer.error is not None:
            errors[viewer.error] = errors.get(viewer.error, 0) + 1
    return {
        "viewers": len(viewers),
        "viewers_with_frames": sum(1 for v in viewers if v.frame_times),
        "ttff_ms": _quantiles(ttff),
        "delivered_fps": _quantiles(fps),
        "min_delivered_fps": round(min(fps), 2) if fps else None,
        "errors": errors,
    }


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Four panels: time to first frame, fps per session over time, frame latency, stalls and errors."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sessions = report["sessions"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    ttff = [s["ttff_ms"] for s in sessions if s["ttff_ms"] is not None]
    axes[0][0].hist(ttff or [0], bins=20, color="#3b7dd8")
    axes[0][0].set(title="Time to first frame", xlabel="ms", ylabel="sessions")
    for s in sessions:
        axes[0][1].plot(range(len(s["fps_series"])), s["fps_series"], linewidth=1)
    axes[0][1].set(title="Delivered fps per session", xlabel="s since session start", ylabel="frames/s")
    latencies = [s["frame_latency_ms"]["median"] for s in sessions if s["frame_latency_ms"]["median"] is not None]
    axes[1][0].hist(latencies or [0], bins=20, color="#2f9e44")
    axes[1][0].set(title="Frame latency (median per session)", xlabel="ms", ylabel="sessions")
    errors = report["summary"]["errors"]
    labels = ["stalls", *errors.keys()]
    values = [report["summary"]["stalls"], *errors.values()]
    axes[1][1].bar(labels, values, color="#e8590c")
    axes[1][1].set(title="Stalls and errors", ylabel="count")
    settings = report["settings"]
    fig.suptitle(f"{settings['sessions']} x {settings['transport']} sessions, {settings['duration_s']:.0f} s")
    fig.savefig(path, dpi=90)
    plt.close(fig)
