"""The owner page's recording control in Chromium against a real server that records (streaming.recording_dir):
REC shown, stop and start again (two files), and after the session the files listed and downloadable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import ARTIFACTS, SEGMENT_S, open_page, unlabelled_controls, wait_until

pytestmark = pytest.mark.slow


async def recording_state(page: Any) -> dict[str, Any]:
    return dict(
        await page.evaluate(
            """() => {
                const $ = (id) => document.getElementById(id);
                return {
                    hidden: $("recording").hidden,
                    state: $("recording").dataset.state || null,
                    text: $("recording-state").textContent,
                    button: $("recording-toggle").textContent,
                    pressed: $("recording-toggle").getAttribute("aria-pressed"),
                    disabled: $("recording-toggle").disabled,
                    files: [...document.querySelectorAll("#recording-files li")].map((li) => ({
                        state: li.dataset.state,
                        text: li.textContent,
                        href: li.querySelector("a") ? li.querySelector("a").href : null,
                    })),
                };
            }"""
        )
    )


async def test_owner_page_records_stops_starts_again_and_downloads_the_files(
    start_server: Callable[..., Any], launch: Callable[..., Any], tmp_path: Path
) -> None:
    server: RunningServer = await start_server(make_config(streaming={"recording_dir": str(tmp_path / "rec")}))
    browser = await launch()
    page, log = await open_page(browser, f"{server.url}/?transport=ws")

    # The server records from the start: the page says so.
    await wait_until(page, log, "() => document.getElementById('recording').dataset.state === 'on'")
    state = await recording_state(page)
    assert (state["text"], state["button"], state["pressed"]) == ("● Recording", "Stop recording", "true"), state
    assert await unlabelled_controls(page) == []

    # Stop, then record again a segment later: the server's echo drives the control each time.
    await page.wait_for_timeout(int(1.5 * SEGMENT_S * 1000))
    await page.click("#recording-toggle")
    await wait_until(page, log, "() => document.getElementById('recording').dataset.state === 'off'")
    assert (await recording_state(page))["button"] == "Record"
    await page.wait_for_timeout(int(SEGMENT_S * 1000))
    await page.click("#recording-toggle")
    await wait_until(page, log, "() => document.getElementById('recording').dataset.state === 'on'")
    await page.wait_for_timeout(int(1.5 * SEGMENT_S * 1000))

    # The session ends; the list (with the owner's resume token) shows both files, finalised.
    await page.click("#stop")
    await wait_until(page, log, "() => document.getElementById('recording-toggle').disabled")
    await page.click("#recording-list")
    await wait_until(
        page,
        log,
        """() => {
            const items = [...document.querySelectorAll('#recording-files li')];
            return items.length === 2 && items.every((li) => li.dataset.state === 'ready');
        }""",
    )
    state = await recording_state(page)
    assert all(f["href"] and "token=" in f["href"] for f in state["files"]), state
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_recording.png"))

    # Each link downloads its MP4 (the token rides in the link: a download sends no header).
    for file in state["files"]:
        fetched = await page.evaluate(
            """async (href) => {
                const response = await fetch(href);
                const bytes = new Uint8Array(await response.arrayBuffer());
                return {status: response.status, type: response.headers.get("content-type"),
                        ftyp: String.fromCharCode(...bytes.slice(4, 8)), size: bytes.length};
            }""",
            file["href"],
        )
        assert fetched["status"] == 200 and fetched["type"] == "video/mp4" and fetched["ftyp"] == "ftyp", fetched
        assert fetched["size"] > 1000, fetched
    assert log.page_errors == [], str(log)
