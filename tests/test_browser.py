"""The browser harness itself (tests/browser.py): Debian's chromium, driven by Playwright,
against the real app on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.browser import BROWSER_LOOP, VIEWPORTS
from tests.conftest import serve

pytestmark = BROWSER_LOOP

FORM = """<!doctype html><html><body>
<form id="f" onsubmit="event.preventDefault();
  document.getElementById('out').textContent = 'hello ' + this.elements.who.value;">
  <label for="who">Who</label> <input id="who" name="who">
  <button type="submit">Greet</button>
</form><p id="out"></p></body></html>"""


async def test_the_browser_loads_the_real_app(page: Any, tmp_path: Path) -> None:
    from tests.conftest import make_settings

    async with serve(make_settings(openai_api_key="sk-test-key-0123456789")) as app:
        reply = await page.goto(f"{app.http_url}/healthz")
        assert reply is not None and reply.status == 200
        body = await page.locator("body").inner_text()
        assert json.loads(body) == {"status": "ok"}
        shot = await page.shots.take(page, "healthz")
    assert shot.exists() and shot.stat().st_size > 0
    assert shot.parent == tmp_path


async def test_a_form_takes_typing_and_a_submit(page: Any) -> None:
    await page.goto("data:text/html," + quote(FORM))
    await page.get_by_label("Who").fill("caller")
    await page.get_by_role("button", name="Greet").click()
    await page.locator("#out", has_text="hello caller").wait_for()
    await page.shots.take(page, "form")


@pytest.mark.parametrize("page", ["phone"], indirect=True)
async def test_a_phone_sized_page(page: Any) -> None:
    await page.goto("data:text/html," + quote("<meta name=viewport content='width=device-width'>"))
    width = await page.evaluate("window.innerWidth")
    assert width == VIEWPORTS["phone"]["width"]
    await page.shots.take(page, "phone")
