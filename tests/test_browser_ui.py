"""The call viewer (`/ui/`) in a real browser: login, the calls list and its filters, a
call's transcript, timeline and audio, the keyboard, a phone-sized screen.

One app for the module, its call store seeded with the fixture library (replayed into
records, as `python -m app.replay --store` does) and RECORD_DIR a copy of the library, so
the viewer finds each record's recording. Each test gets a fresh browser context
(`page`: no cookie carried over) and leaves screenshots in its `tmp_path`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from app.recording_lines import AUDIO
from app.replay import load
from app.replay.store import record_of
from tests.browser import BROWSER_LOOP
from tests.conftest import API_KEY, RunningApp, make_settings, serve

pytestmark = BROWSER_LOOP

LIBRARY = Path(__file__).parent / "fixtures" / "calls"
OPERATOR_KEY = "op-test-key-0123456789abcdef"
BARGE_IN = "barge_in.jsonl"
#: The barge-in call again, its audio kept (the library keeps lengths only): see
#: `with_kept_audio`.
WITH_AUDIO = "barge_in_with_audio.jsonl"
#: Caller numbers given to some records (the library's calls carry none), to filter by.
NUMBERS = {BARGE_IN: "+15550100001", "transfer.jsonl": "+15550100002"}


@dataclass
class Viewer:
    app: RunningApp
    records: dict[str, dict[str, Any]]  # by fixture file name

    def url(self, path: str) -> str:
        return self.app.http_url + path

    def sid(self, fixture: str) -> str:
        return str(self.records[fixture]["call_sid"])


def with_kept_audio(source: Path, target: Path, call_sid: str) -> None:
    """`source` (a fixture with audio as lengths) as a fixture that kept its audio, under
    another CallSid: each `{"_audio_bytes": N}` becomes N bytes of μ-law (a square wave
    at 400 Hz, so the WAV is not silence), base64 as on the wire."""
    old_sid = load(source).header["call_sid"]
    tone = bytes([0x8F] * 10 + [0x0F] * 10)  # μ-law ±~0.25 full scale, 8 kHz / 20

    def kept(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {AUDIO} and isinstance(node[AUDIO], int):
                count = node[AUDIO]
                pcm = (tone * (count // len(tone) + 1))[:count]
                return base64.b64encode(pcm).decode()
            return {key: kept(value) for key, value in node.items()}
        if isinstance(node, list):
            return [kept(value) for value in node]
        return node

    lines = source.read_text(encoding="utf-8").replace(old_sid, call_sid).splitlines()
    head = json.loads(lines[0])
    head["audio"] = "kept"
    out = [json.dumps(head)] + [json.dumps(kept(json.loads(line))) for line in lines[1:]]
    target.write_text("\n".join(out) + "\n", encoding="utf-8")


async def stored(app: RunningApp, count: int, within: float = 20.0) -> None:
    """Wait until the store lists `count` records (its writer works in the background)."""
    async with asyncio.timeout(within):
        while True:
            rows, _ = await app.state.store.list_calls(limit=500)
            if len(rows) >= count:
                return
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def viewer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Viewer]:
    recordings = tmp_path_factory.mktemp("recordings")
    for path in LIBRARY.glob("*.jsonl"):
        shutil.copy(path, recordings / path.name)
    with_kept_audio(recordings / BARGE_IN, recordings / WITH_AUDIO, "CA" + "a0" * 16)
    settings = make_settings(
        openai_api_key=API_KEY, operator_api_key=OPERATOR_KEY, record_dir=recordings
    )
    quiet = logging.getLogger("app.call")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the replayed calls' own warnings are not news
    try:
        records = {}
        for path in sorted(recordings.glob("*.jsonl")):
            record, note = record_of(load(path))
            assert record is not None, f"{path.name}: {note}"
            record["from"] = NUMBERS.get(path.name, record["from"])
            records[path.name] = record
    finally:
        quiet.setLevel(level)
    async with serve(settings) as app:
        for record in records.values():
            assert app.state.store.submit(record)
        await stored(app, len(records))
        yield Viewer(app, records)


async def log_in(page: Any, viewer: Viewer, key: str = OPERATOR_KEY) -> None:
    """Through the login form, as a person would; ends on the calls list."""
    await page.goto(viewer.url("/ui/login"))
    await page.get_by_label("key", exact=False).fill(key)
    async with page.expect_navigation():
        await page.locator("form button[type=submit], form [type=submit]").first.click()


async def fetch(page: Any, url: str, redirect: str = "manual") -> dict[str, Any]:
    """`url` fetched by the page's own script (its cookies, its origin)."""
    return await page.evaluate(  # type: ignore[no-any-return]
        """async ([url, redirect]) => {
            const r = await fetch(url, {redirect, credentials: "same-origin"});
            const body = r.type === "opaqueredirect" ? "" : await r.text();
            return {status: r.status, type: r.type, url: r.url, body: body.slice(0, 4096),
                    contentType: r.headers.get("content-type")};
        }""",
        [url, redirect],
    )


def refused(reply: dict[str, Any]) -> bool:
    """A 401/403, or a redirect (to the login), never the thing asked for."""
    return reply["status"] in (401, 403) or reply["type"] == "opaqueredirect"


# --- Login ---------------------------------------------------------------------------------


async def test_without_a_login_nothing_but_the_login_form(page: Any, viewer: Viewer) -> None:
    await page.goto(viewer.url("/ui/"))
    assert "/ui/login" in page.url
    key = page.locator("input#key")
    await key.wait_for()
    assert await key.get_attribute("type") == "password"
    assert await key.get_attribute("name") == "key"
    assert await page.locator("label[for=key]").count() == 1
    await page.shots.take(page, "login")

    sid = viewer.sid(WITH_AUDIO)
    for path in (f"/ui/calls/{sid}", f"/ui/calls/{sid}/audio.wav", "/ui/"):
        reply = await fetch(page, viewer.url(path))
        assert refused(reply), (path, reply)
        followed = await fetch(page, viewer.url(path), redirect="follow")
        assert 'id="transcript"' not in followed["body"], path
        assert not (followed["contentType"] or "").startswith("audio/"), path

    await page.goto(viewer.url(f"/ui/calls/{sid}"))
    assert "/ui/login" in page.url
    assert await page.locator("#transcript, audio, #timeline").count() == 0
    assert await page.context.cookies() == []


async def test_a_wrong_key_is_refused_with_a_message(page: Any, viewer: Viewer) -> None:
    await page.goto(viewer.url("/ui/login"))
    await page.locator("#key").fill("not-the-key")
    await page.locator("form [type=submit]").first.click()
    await page.locator("[role=alert], .error").first.wait_for()
    assert "/ui/login" in page.url
    assert await page.locator("#key").count() == 1
    assert await page.context.cookies() == []
    await page.shots.take(page, "wrong-key")


async def test_the_login_cookie(page: Any, viewer: Viewer) -> None:
    await log_in(page, viewer)
    assert page.url == viewer.url("/ui/")
    (cookie,) = await page.context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui"
    # Secure unless plain http to a loopback host (a browser would never send it back).
    assert cookie["secure"] is False
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
    await page.shots.take(page, "logged-in")


# --- The calls list ------------------------------------------------------------------------


async def rows(page: Any) -> list[str]:
    return [
        await row.get_attribute("data-call-sid")
        for row in await page.locator("table tr[data-call-sid]").all()
    ]


async def search(page: Any, **fields: str) -> None:
    """Fill the search form's fields (a `<select>` by value) and submit it."""
    form = page.locator("form[role=search]")
    for name, value in fields.items():
        field = form.locator(f"[name={name}]")
        if await field.evaluate("e => e.tagName") == "SELECT":
            await field.select_option(value)
        else:
            await field.fill(value)
    async with page.expect_navigation():
        await form.locator("[type=submit]").first.click()


async def test_the_list_shows_every_call_and_the_filters_narrow_it(
    page: Any, viewer: Viewer
) -> None:
    await log_in(page, viewer)
    await page.locator("table tr[data-call-sid]").first.wait_for()
    listed = await rows(page)
    assert sorted(listed) == sorted(r["call_sid"] for r in viewer.records.values())
    sid = viewer.sid(BARGE_IN)
    link = page.locator(f'tr[data-call-sid="{sid}"] a[href$="/ui/calls/{sid}"]')
    assert await link.count() >= 1
    await page.shots.take(page, "list")

    await search(page, number=NUMBERS[BARGE_IN])
    assert await rows(page) == [sid]
    await page.shots.take(page, "by-number")

    await search(page, number="", outcome="transferred")
    assert await rows(page) == [viewer.sid("transfer.jsonl")]
    await page.shots.take(page, "by-outcome")

    await search(page, outcome="caller_hung_up")
    hung_up = [r["call_sid"] for r in viewer.records.values() if r["outcome"] == "caller_hung_up"]
    assert sorted(await rows(page)) == sorted(hung_up)

    async with page.expect_navigation():
        await link.first.click()
    assert page.url.endswith(f"/ui/calls/{sid}")


async def test_the_list_pages_through_every_call(
    page: Any, viewer: Viewer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.ui.app.PAGE_SIZE", 5)
    await log_in(page, viewer)
    seen: list[str] = []
    for number in range(1, 10):
        listed = await rows(page)
        assert 0 < len(listed) <= 5
        seen += listed
        older = page.locator("a[rel=next]")
        if await older.count() == 0:
            break
        await page.shots.take(page, f"page-{number}")
        async with page.expect_navigation():
            await older.click()
    assert len(seen) == len(set(seen)) == len(viewer.records)  # each call once, none lost


# --- A call --------------------------------------------------------------------------------


async def test_the_barge_in_call_shows_what_was_not_heard_and_where_it_was_cut(
    page: Any, viewer: Viewer
) -> None:
    record = viewer.records[BARGE_IN]
    await log_in(page, viewer)
    await page.goto(viewer.url(f"/ui/calls/{viewer.sid(BARGE_IN)}"))
    turn = page.locator("#transcript li.turn.bot.interrupted").first
    await turn.wait_for()
    heard = await turn.locator("span.heard").inner_text()
    unheard = turn.locator("del.unheard")
    assert heard.strip() and (await unheard.inner_text()).strip()
    decoration = await unheard.evaluate("e => getComputedStyle(e).textDecorationLine")
    assert "line-through" in decoration
    interrupted = [t for t in record["turns"] if t.get("interrupted")]
    assert await page.locator("#transcript li.turn.bot.interrupted").count() == len(interrupted)
    await page.locator("#timeline").scroll_into_view_if_needed()
    await page.shots.take(page, "barge-in")

    svg = page.locator("figure#timeline svg").first
    clears = await svg.locator("line.clear").evaluate_all(
        "ls => ls.map(l => ({ms: +l.dataset.ms, x: +l.getAttribute('x1')}))"
    )
    assert len(clears) == record["barge_ins"] == 1
    bars = await svg.locator("rect.played").evaluate_all(
        """rs => rs.map(r => ({item: r.dataset.item, cut: r.classList.contains("cut"),
            start: +r.dataset.startMs, end: +r.dataset.endMs,
            x: +r.getAttribute("x"), width: +r.getAttribute("width")}))"""
    )
    assert bars, "no played bars"
    # The SVG's own scale: its time axis's ticks (`line.tick[data-s]`, one a second) give
    # x = x0 + ms * k; every tick, every played bar and the clear must sit on it.
    ticks = await svg.locator("line.tick[data-s]").evaluate_all(
        "ts => ts.map(t => ({ms: 1000 * +t.dataset.s, x: +t.getAttribute('x1')}))"
    )
    assert len(ticks) >= 2, ticks
    first, last = min(ticks, key=lambda t: t["ms"]), max(ticks, key=lambda t: t["ms"])
    k = (last["x"] - first["x"]) / (last["ms"] - first["ms"])
    x0 = first["x"] - first["ms"] * k
    assert k > 0, ticks
    for tick in ticks:
        assert abs(x0 + tick["ms"] * k - tick["x"]) < 0.5, tick
    for bar in bars:
        assert abs(x0 + bar["start"] * k - bar["x"]) < 0.5, bar
        assert abs(x0 + bar["end"] * k - (bar["x"] + bar["width"])) < 0.5, bar
    (clear,) = clears
    assert abs(x0 + clear["ms"] * k - clear["x"]) < 0.5, (clear, x0, k)
    cut = [b for b in bars if b["cut"]]
    assert len(cut) == 1, bars
    assert abs(cut[0]["x"] + cut[0]["width"] - clear["x"]) < 0.5, (cut, clear)

    # The library keeps audio as lengths only: no player, but the fixture to download.
    assert await page.locator("audio").count() == 0
    download = page.locator("a#fixture[download]")
    assert await download.count() == 1
    reply = await fetch(page, await download.get_attribute("href"))
    assert reply["status"] == 200 and reply["body"].startswith('{"fixture":1')


async def test_every_call_draws_one_clear_per_barge_in(page: Any, viewer: Viewer) -> None:
    await log_in(page, viewer)
    for name, record in sorted(viewer.records.items()):
        await page.goto(viewer.url(f"/ui/calls/{record['call_sid']}"))
        svg = page.locator("figure#timeline svg").first
        await svg.wait_for()
        assert await svg.locator("line.clear").count() == record["barge_ins"], name
        interrupted = sum(1 for t in record["turns"] if t.get("interrupted"))
        shown = page.locator("#transcript li.turn.bot.interrupted")
        assert await shown.count() == interrupted, name


async def test_a_call_that_kept_its_audio_has_a_player(page: Any, viewer: Viewer) -> None:
    await log_in(page, viewer)
    await page.goto(viewer.url(f"/ui/calls/{viewer.sid(WITH_AUDIO)}"))
    player = page.locator("audio[controls]")
    await player.wait_for()
    src = await player.get_attribute("src")
    assert src and src.endswith("/audio.wav")
    reply = await page.request.get(await player.evaluate("a => a.src"))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("audio/")
    assert (await reply.body())[:4] == b"RIFF"
    # The browser itself takes it as audio it can play (its duration is known).
    duration = await player.evaluate(
        """a => new Promise((ok, fail) => {
            if (a.readyState >= 1) return ok(a.duration);
            a.addEventListener("loadedmetadata", () => ok(a.duration), {once: true});
            a.addEventListener("error", () => fail(new Error("audio error")), {once: true});
            a.preload = "metadata";  // the page says "none": nothing fetched unasked
            a.load();
        })"""
    )
    assert duration > 1.0
    await page.shots.take(page, "audio")


# --- Keyboard and small screens -------------------------------------------------------------


async def tab_stops(page: Any, count: int) -> list[dict[str, Any]]:
    """Where `count` presses of Tab move the focus, in order."""
    stops = []
    for _ in range(count):
        await page.keyboard.press("Tab")
        stops.append(
            await page.evaluate(
                """() => { const e = document.activeElement;
                    return {tag: e.tagName, name: e.getAttribute("name"),
                            inTimeline: !!e.closest("#timeline")}; }"""
            )
        )
    return stops


async def test_the_keyboard_reaches_the_filters_and_the_timeline(page: Any, viewer: Viewer) -> None:
    await log_in(page, viewer)
    stops = await tab_stops(page, 30)
    names = [stop["name"] for stop in stops]
    for field in ("number", "outcome", "since", "until"):
        assert field in names, (field, stops)
    await page.shots.take(page, "list-focus")

    await page.goto(viewer.url(f"/ui/calls/{viewer.sid(BARGE_IN)}"))
    stops = await tab_stops(page, 40)
    assert any(stop["inTimeline"] for stop in stops), stops
    await page.shots.take(page, "timeline-focus")


@pytest.mark.parametrize("page", ["phone"], indirect=True)
async def test_the_pages_fit_a_phone(page: Any, viewer: Viewer) -> None:
    await log_in(page, viewer)
    await page.locator("table tr[data-call-sid]").first.wait_for()
    await fits_the_screen(page)
    await page.shots.take(page, "phone-list")
    await page.goto(viewer.url(f"/ui/calls/{viewer.sid(BARGE_IN)}"))
    await page.locator("figure#timeline svg").first.wait_for()
    await fits_the_screen(page)  # the timeline scrolls in its own container
    await page.shots.take(page, "phone-call")


async def fits_the_screen(page: Any) -> None:
    """The page body is no wider than the viewport: no sideways scrolling of the page."""
    widths = await page.evaluate(
        """() => ({view: window.innerWidth, doc: document.documentElement.scrollWidth,
                   body: document.body.scrollWidth})"""
    )
    assert widths["doc"] <= widths["view"] and widths["body"] <= widths["view"], widths
