"""Browser fixtures for the page tests: Debian's Chromium, headless, driven by Playwright.

The system Chromium (Debian package) is used, never a downloaded browser; a missing one fails the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.web_client.pagekit import CHROMIUM, CHROMIUM_ARGS, playwright_api


@pytest.fixture
async def launch() -> AsyncIterator[Callable[..., Any]]:
    """Launch the system Chromium headless (extra arguments appended); closed at the end of the test."""
    # Browser tests are part of the suite: a missing browser is a failure, never a skip.
    assert playwright_api is not None, "playwright is not installed (pip install -e '.[test]')"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)"
    async with playwright_api.async_playwright() as playwright:
        browsers: list[Any] = []

        async def start(*extra_args: str) -> Any:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*CHROMIUM_ARGS, *extra_args],
            )
            browsers.append(browser)
            return browser

        try:
            yield start
        finally:
            for browser in browsers:
                await browser.close()
