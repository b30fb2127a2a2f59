"""A real browser for the tests: Debian's chromium, driven by Playwright's async API.

Playwright never downloads a browser here (no `playwright install`): it launches the
system's `chromium` (`make test` installs it when it is missing). One browser serves the
whole session; each test gets a fresh context (no cookies or storage shared between
tests) and a page in it, with a phone-sized or a desktop viewport.

Why the async API on a session-wide event loop: the app under test runs on the test's own
event loop (`tests.conftest.serve`), and Playwright's sync API refuses to run inside a
running loop. An async Playwright object belongs to the loop it was started on (its driver
is a subprocess talking over that loop's pipes), so sharing one browser across tests means
sharing one loop: the browser fixtures and the browser tests run on pytest-asyncio's
session loop (`pytestmark = BROWSER_LOOP`). Launching chromium costs about a second; one
launch per session keeps the browser suite fast.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

#: The marker of every browser test: run on the session's loop, where the browser lives.
BROWSER_LOOP: Final = pytest.mark.asyncio(loop_scope="session")

#: Viewports by name (CSS pixels): an iPhone SE-sized phone, and a laptop.
VIEWPORTS: Final = {
    "phone": {"width": 375, "height": 667},
    "desktop": {"width": 1280, "height": 800},
}

#: What a page may take to do one thing (navigate, find an element) before the test fails.
TIMEOUT_MS: Final = 10_000

#: Chromium flags for a root user on a machine with a closed network: no sandbox (root),
#: no GPU, /tmp instead of a small /dev/shm, and nothing that phones home at start
#: (which would only log connection errors).
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


class BrowserMissing(RuntimeError):
    """No chromium on this machine."""


def chromium_path() -> str:
    """The system's chromium, or BrowserMissing saying how to get it."""
    found = shutil.which("chromium")
    if found is None:
        raise BrowserMissing(
            "the browser tests need Debian's chromium, and there is none on PATH: "
            "`make test` installs it (or: apt-get install chromium)"
        )
    return found


@asynccontextmanager
async def launched() -> AsyncIterator[Any]:
    """A headless chromium (Playwright `Browser`) with a profile of its own in a fresh
    temporary directory, removed when the block ends."""
    from playwright.async_api import async_playwright

    executable = chromium_path()
    profile = Path(tempfile.mkdtemp(prefix="bridge-test-chromium-"))
    try:
        async with async_playwright() as pw:
            # Playwright's `launch` gives chromium a fresh --user-data-dir of its own in
            # the temp directory (and refuses one in `args`); what chromium writes beside
            # it (crash dumps, ~/.config, ~/.cache) lands in `profile`, never in root's home.
            browser = await pw.chromium.launch(
                executable_path=executable,
                headless=True,
                chromium_sandbox=False,
                args=[*CHROMIUM_ARGS, f"--crash-dumps-dir={profile / 'crashes'}"],
                env={**os.environ, "HOME": str(profile)},
                timeout=30_000,
            )
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Shots:
    """Screenshots of one test, into its `tmp_path` (numbered in the order taken)."""

    directory: Path
    taken: list[Path] = field(default_factory=list)

    async def take(self, page: Any, name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "shot"
        path = self.directory / f"{len(self.taken) + 1:02d}-{safe}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@asynccontextmanager
async def opened_page(browser: Any, viewport: str, shots: Shots) -> AsyncIterator[Any]:
    """A page in a fresh context of `browser`; uncaught page errors are collected on
    `page.errors` (a list of str)."""
    if viewport not in VIEWPORTS:
        raise ValueError(f"viewport {viewport!r}: not one of {sorted(VIEWPORTS)}")
    context = await browser.new_context(
        viewport=VIEWPORTS[viewport],
        is_mobile=viewport == "phone",
        has_touch=viewport == "phone",
        accept_downloads=True,
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        page.shots = shots
        yield page
    finally:
        await context.close()
