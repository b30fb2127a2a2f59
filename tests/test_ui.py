"""The call viewer (`/ui/`, `app.ui`) over loopback with the real app: login and its
cookie, CSRF, what a page shows without the key, the list's filters and pages, a call's
transcript (heard and unheard, escaped), its recording (path traversal refused), headers.

The DOM contract checked here (ids, classes, attributes) is the one the browser tests
(`tests/test_browser_ui.py`) rely on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from app.ui.session import SESSION_SECONDS, SessionSigner, safe_next, same_origin
from app.ui.views import turn_view, usage
from tests.conftest import RunningApp, make_settings, serve

KEY = "op-ui-test-key-0123456789abcdef"
LIBRARY = Path(__file__).parent / "fixtures" / "calls"
BASE = datetime(2026, 11, 21, 14, 0, 0, tzinfo=UTC)
SCRIPT = "<script>alert('x')</script>"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def record(n: int, **overrides: Any) -> dict[str, Any]:
    """The record of call number `n` (started n minutes after BASE), shaped like
    `app.records.call_record`'s."""
    started = BASE + timedelta(minutes=n)
    body: dict[str, Any] = {
        "call_sid": f"CA{n:032x}",
        "stream_sid": f"MZ{n:032x}",
        "direction": "inbound",
        "from": f"+1555010{n:04d}",
        "to": "+15550009999",
        "agent": "default",
        "model": "gpt-realtime",
        "started_at": iso(started),
        "ended_at": iso(started + timedelta(seconds=65)),
        "duration_s": 65.0,
        "outcome": "caller_hung_up" if n % 2 else "bot_ended",
        "end_detail": "stop",
        "barge_ins": 1,
        "barge_in_reaction_ms": [180],
        "response_latency_ms": [600, 700, 800],
        "heard_latency_ms": 700,
        "turns": [
            {"who": "caller", "text": "What are your opening hours?"},
            {
                "who": "bot",
                "text": "We open at nine and close at five on weekdays.",
                "heard_text": "We open at nine",
                "sent_ms": 3000,
                "heard_ms": 1100,
                "interrupted": True,
            },
            {
                "who": "bot",
                "text": "Anything else?",
                "heard_text": "Anything else?",
                "sent_ms": 900,
                "heard_ms": 900,
                "interrupted": False,
            },
        ],
        "usage": {"input_tokens": 120, "output_tokens": 340, "total_tokens": 460},
        "tool_calls": [],
        "rest_actions": [],
        "answered_by": None,
        "recording": None,
    }
    body.update(overrides)
    return body


async def stored(app: RunningApp, count: int) -> None:
    """Wait until the store lists `count` records (its writer works in the background)."""
    async with asyncio.timeout(20):
        while True:  # the database's state, not an event: poll it
            if len((await app.state.store.list_calls(limit=500))[0]) >= count:
                return
            await asyncio.sleep(0.02)


@dataclass
class Viewer:
    app: RunningApp
    client: httpx.AsyncClient
    record_dir: Path

    @property
    def origin(self) -> dict[str, str]:
        return {"Origin": self.app.http_url}

    async def log_in(self, key: str = KEY, next_: str = "/ui/") -> httpx.Response:
        return await self.client.post(
            "/ui/login", data={"key": key, "next": next_}, headers=self.origin
        )

    async def seed(self, *records: dict[str, Any]) -> None:
        before = len((await self.app.state.store.list_calls(limit=500))[0])
        for item in records:
            assert self.app.state.store.submit(item)
        await stored(self.app, before + len(records))


async def _viewer(tmp_path: Path, **overrides: Any) -> AsyncIterator[Viewer]:
    record_dir = tmp_path / "recordings"
    record_dir.mkdir()
    settings = make_settings(operator_api_key=KEY, record_dir=record_dir, **overrides)
    async with (
        serve(settings) as app,
        httpx.AsyncClient(base_url=app.http_url, follow_redirects=False) as client,
    ):
        yield Viewer(app, client, record_dir)


@pytest.fixture
async def viewer(tmp_path: Path) -> AsyncIterator[Viewer]:
    async for running in _viewer(tmp_path):
        yield running


@pytest.fixture
async def signed_in(viewer: Viewer) -> Viewer:
    reply = await viewer.log_in()
    assert reply.status_code == 303, reply.text
    return viewer


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- Mounting and headers ---------------------------------------------------------------


async def test_without_an_operator_key_there_is_no_viewer(tmp_path: Path) -> None:
    async with (
        serve(make_settings()) as app,
        httpx.AsyncClient(base_url=app.http_url) as client,
    ):
        for path in ("/ui/", "/ui/login", "/ui/calls/CA1", "/ui/static/ui.css"):
            assert (await client.get(path)).status_code == 404, path
        reply = await client.post("/ui/login", data={"key": "x"})
        assert reply.status_code == 404


async def test_every_response_carries_the_security_headers(viewer: Viewer) -> None:
    replies = [
        await viewer.client.get("/ui/login"),
        await viewer.client.get("/ui/"),  # a redirect
        await viewer.client.get("/ui/calls/CA1/audio.wav"),  # a 401
        await viewer.client.get("/ui/no-such-page"),  # a 404
        await viewer.client.get("/ui/static/ui.css"),
        await viewer.client.post("/ui/login", data={"key": KEY}),  # a 403
        await viewer.client.get("/ui"),
    ]
    for reply in replies:
        headers = reply.headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'none'" in csp and "media-src 'self'" in csp
        assert "unsafe-inline" not in csp and "data:" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["cache-control"] == "no-store"
    assert replies[-1].status_code == 308 and replies[-1].headers["location"] == "/ui/"


async def test_the_pages_are_accessible_html(signed_in: Viewer) -> None:
    await signed_in.seed(record(1))
    for path in ("/ui/login", "/ui/", f"/ui/calls/{record(1)['call_sid']}"):
        html = (await signed_in.client.get(path)).text
        assert '<html lang="en">' in html
        assert 'name="viewport"' in html
        assert '<a class="skip" href="#main">' in html and '<main id="main"' in html
        assert html.count("<h1") == 1, path
        assert '<link rel="stylesheet" href="/ui/static/ui.css">' in html
    css = await signed_in.client.get("/ui/static/ui.css")
    assert css.headers["content-type"].startswith("text/css")
    assert ":focus-visible" in css.text


# --- Login ------------------------------------------------------------------------------


async def test_the_login_form(viewer: Viewer) -> None:
    reply = await viewer.client.get("/ui/login?next=/ui/calls/CA1")
    assert reply.status_code == 200
    html = reply.text
    assert '<label for="key">Operator key</label>' in html
    assert re.search(
        r'<input id="key" name="key" type="password" autocomplete="current-password" required',
        html,
    )
    assert '<button type="submit">' in html
    assert 'name="next" value="/ui/calls/CA1"' in html


async def test_a_login_sets_a_strict_httponly_session_cookie(viewer: Viewer) -> None:
    reply = await viewer.log_in(next_="/ui/calls/CA1?x=1")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/ui/calls/CA1?x=1"
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("ui_session=")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/ui" in attributes
    assert f"max-age={SESSION_SECONDS}" in attributes
    # Plain http to 127.0.0.1 (a dev machine): no Secure, or the browser would drop it.
    assert "secure" not in attributes
    # The cookie opens the pages.
    assert (await viewer.client.get("/ui/")).status_code == 200


async def test_the_cookie_is_secure_unless_plain_http_to_loopback(viewer: Viewer) -> None:
    # Seen through a proxy: the Host header names a public host.
    headers = {"Origin": "http://bridge.example.com", "Host": "bridge.example.com"}
    reply = await viewer.client.post("/ui/login", data={"key": KEY}, headers=headers)
    assert reply.status_code == 303
    attributes = [part.strip().lower() for part in reply.headers["set-cookie"].split(";")]
    assert "secure" in attributes and "httponly" in attributes


async def test_a_wrong_key_gets_the_form_again_with_401_and_is_logged(
    viewer: Viewer, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await viewer.log_in(key="not-the-key")
    assert reply.status_code == 401
    assert "set-cookie" not in reply.headers
    assert 'role="alert"' in reply.text and 'id="key"' in reply.text
    assert "not-the-key" not in reply.text
    assert any("operator.unauthorized" in r.getMessage() for r in caplog.records)

    assert (await viewer.client.get("/ui/")).status_code == 303  # still not signed in


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/ui/", "/\\evil.example", "/calls", "javascript:x"],
)
async def test_a_login_goes_only_to_a_relative_next(viewer: Viewer, target: str) -> None:
    reply = await viewer.log_in(next_=target)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/ui/"


def test_safe_next() -> None:
    assert safe_next("/ui/calls/CA1?before=x") == "/ui/calls/CA1?before=x"
    for bad in (None, "", "/ui", "http://x/ui/", "/ui//x", "/ui/\\x", "/ui/\nx", "/ui/ x"):
        assert safe_next(bad) == "/ui/", bad


def test_sessions_expire_and_need_the_key() -> None:
    now = [1_800_000_000.0]
    signer = SessionSigner(KEY, clock=lambda: now[0])
    value = signer.issue()
    assert signer.valid(value)
    assert not SessionSigner("another-key", clock=lambda: now[0]).valid(value)
    issued, _, mac = value.partition(".")
    assert not signer.valid(f"{int(issued) + 1}.{mac}")  # a changed time breaks the MAC
    assert not signer.valid("garbage") and not signer.valid("") and not signer.valid(None)
    now[0] += SESSION_SECONDS - 1
    assert signer.valid(value)
    now[0] += 2
    assert not signer.valid(value)


async def test_a_forged_or_stale_cookie_is_no_session(viewer: Viewer) -> None:
    stale = SessionSigner(KEY, clock=lambda: 1_000_000.0).issue()
    for value in (stale, "1.abc", SessionSigner("wrong").issue()):
        viewer.client.cookies.set("ui_session", value, path="/ui")
        assert (await viewer.client.get("/ui/")).status_code == 303
        viewer.client.cookies.clear()


async def test_logout_clears_the_cookie(signed_in: Viewer) -> None:
    reply = await signed_in.client.post("/ui/logout", headers=signed_in.origin)
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
    cookie = reply.headers["set-cookie"].lower()
    assert cookie.startswith("ui_session=") and "max-age=0" in cookie and "path=/ui" in cookie
    assert (await signed_in.client.get("/ui/")).status_code == 303


async def test_the_operator_api_header_opens_the_pages(viewer: Viewer) -> None:
    assert (await viewer.client.get("/ui/", headers=bearer())).status_code == 200
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    reply = await viewer.client.get("/ui/", headers={"Authorization": f"Basic {basic}"})
    assert reply.status_code == 200
    assert (await viewer.client.get("/ui/", headers=bearer("nope"))).status_code == 303


# --- CSRF -------------------------------------------------------------------------------


async def test_a_post_from_another_origin_is_refused(viewer: Viewer) -> None:
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/ui/login"},
        {},  # neither header: refused too
    ):
        reply = await viewer.client.post("/ui/login", data={"key": KEY}, headers=headers)
        assert reply.status_code == 403, headers
        assert "set-cookie" not in reply.headers
        reply = await viewer.client.post("/ui/logout", headers=headers)
        assert reply.status_code == 403, headers
    referer = {"Referer": f"{viewer.app.http_url}/ui/login"}
    reply = await viewer.client.post("/ui/login", data={"key": KEY}, headers=referer)
    assert reply.status_code == 303


def test_same_origin_accepts_the_public_base_url() -> None:
    def request(**headers: str) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})

    behind_proxy = request(Host="10.0.0.5:8000", Origin="https://bridge.example.com")
    assert not same_origin(behind_proxy)
    assert same_origin(behind_proxy, "https://bridge.example.com")
    assert not same_origin(request(Host="a.example", Origin="https://a.example.evil.com"))


def _request(scheme: str = "http", client: str = "127.0.0.1", **headers: str) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/ui/login",
        "scheme": scheme,
        "headers": raw,
        "client": (client, 50000),
        "server": ("127.0.0.1", 8000),
    }
    return Request(scope)


def test_secure_follows_public_base_url_and_loopback() -> None:
    from app.ui.session import secure_wanted

    demo = _request(Host="127.0.0.1:8000")
    assert not secure_wanted(demo)
    assert not secure_wanted(_request(client="::1", Host="[::1]:8000"))
    assert not secure_wanted(_request(Host="localhost:8000"))
    # PUBLIC_BASE_URL set: always Secure, even for a loopback request over plain http.
    assert secure_wanted(demo, "https://bridge.example.com")
    # A loopback Host from a client elsewhere (a proxy passing Host through, a rebind).
    assert secure_wanted(_request(client="203.0.113.9", Host="127.0.0.1:8000"))
    # A public Host from a loopback client (a local reverse proxy).
    assert secure_wanted(_request(Host="bridge.example.com"))
    assert secure_wanted(_request(scheme="https", Host="127.0.0.1:8000"))


async def test_the_cookie_is_secure_behind_an_https_public_base_url(tmp_path: Path) -> None:
    async for viewer in _viewer(tmp_path, public_base_url="https://bridge.example.com"):
        reply = await viewer.client.post(
            "/ui/login", data={"key": KEY}, headers={"Origin": "https://bridge.example.com"}
        )
        assert reply.status_code == 303
        attributes = [part.strip().lower() for part in reply.headers["set-cookie"].split(";")]
        assert "secure" in attributes
        # The request's own host is not the site's origin when PUBLIC_BASE_URL is set.
        reply = await viewer.client.post("/ui/login", data={"key": KEY}, headers=viewer.origin)
        assert reply.status_code == 403


def test_same_origin_compares_scheme_and_host() -> None:
    public = "https://bridge.example.com"
    assert same_origin(_request(Host="10.0.0.5", Origin="https://bridge.example.com"), public)
    assert same_origin(_request(Host="x", Origin="https://bridge.example.com:443"), public)
    assert same_origin(_request(Referer="https://bridge.example.com/ui/login"), public)
    # Same host, other scheme: not this site.
    assert not same_origin(_request(Origin="http://bridge.example.com"), public)
    assert not same_origin(_request(Origin="https://bridge.example.com:8443"), public)
    assert not same_origin(_request(Origin="https://evil.example"), public)
    # Neither header: refused.
    assert not same_origin(_request(Host="bridge.example.com"), public)
    assert not same_origin(_request(Host="127.0.0.1:8000"))
    # Without PUBLIC_BASE_URL: the request's own scheme and Host.
    assert same_origin(_request(Host="127.0.0.1:8000", Origin="http://127.0.0.1:8000"))
    assert not same_origin(_request(Host="127.0.0.1:8000", Origin="https://127.0.0.1:8000"))
    assert not same_origin(
        _request(scheme="https", Host="a.example", Origin="http://a.example"), None
    )
    assert not same_origin(_request(Host="a.example", Origin="http://a.example.evil.com"))


async def test_failed_logins_are_limited_per_client(viewer: Viewer) -> None:
    for _ in range(5):
        assert (await viewer.log_in(key="wrong")).status_code == 401
    reply = await viewer.log_in()  # even the right key waits now
    assert reply.status_code == 429 and "set-cookie" not in reply.headers
    assert 1 <= int(reply.headers["retry-after"]) <= 300


def test_the_login_limiter_window_reset_and_bound() -> None:
    from app.ui.session import LoginLimiter

    now = [1000.0]
    limiter = LoginLimiter(attempts=5, window_s=300, max_clients=3, clock=lambda: now[0])
    for _ in range(4):
        limiter.failed("a")
    assert limiter.retry_after("a") is None
    limiter.succeeded("a")  # a success: the count starts again
    for _ in range(4):
        limiter.failed("a")
    assert limiter.retry_after("a") is None
    now[0] += 10
    limiter.failed("a")
    assert limiter.retry_after("a") == 290
    now[0] += 289.5
    assert limiter.retry_after("a") == 1
    now[0] += 1  # the first four are out of the window
    assert limiter.retry_after("a") is None
    for client in ("b", "c", "d"):
        limiter.failed(client)
    assert len(limiter) == 3  # "a", the oldest, is forgotten


# --- Without a session ------------------------------------------------------------------


async def test_without_a_session_pages_redirect_and_data_is_401(viewer: Viewer) -> None:
    sid = record(1, recording="greeting.jsonl")["call_sid"]
    shutil.copy(LIBRARY / "greeting.jsonl", viewer.record_dir / "greeting.jsonl")
    await viewer.seed(record(1, recording="greeting.jsonl"))
    reply = await viewer.client.get("/ui/?outcome=bot_ended")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/ui/login?next=/ui/%3Foutcome%3Dbot_ended"
    reply = await viewer.client.get(f"/ui/calls/{sid}")
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/ui/login?next=/ui/calls/{sid}"
    for tail in ("audio.wav", "timeline.svg", "fixture.jsonl"):
        reply = await viewer.client.get(f"/ui/calls/{sid}/{tail}")
        assert reply.status_code == 401, tail
        assert "fixture" not in reply.text and "opening hours" not in reply.text
    reply = await viewer.client.get(f"/ui/calls/{sid}/fixture.jsonl", headers=bearer())
    assert reply.status_code == 200


# --- The list ---------------------------------------------------------------------------


def _sids(html: str) -> list[str]:
    return re.findall(r'<tr data-call-sid="([^"]+)">', html)


async def test_the_list_is_empty_at_first(signed_in: Viewer) -> None:
    html = (await signed_in.client.get("/ui/")).text
    assert "No calls yet" in html and "<table" not in html
    assert 'rel="next"' not in html


async def test_the_list_newest_first_with_its_columns(signed_in: Viewer) -> None:
    await signed_in.seed(record(1), record(2), record(3, **{"from": None}))
    html = (await signed_in.client.get("/ui/")).text
    assert _sids(html) == [record(n)["call_sid"] for n in (3, 2, 1)]
    assert "<caption" in html
    headers = re.findall(r'<th scope="col">([^<]+)</th>', html)
    assert headers == [
        "Time",
        "From",
        "To",
        "Agent",
        "Duration",
        "Outcome",
        "Barge-ins",
        "Heard latency",
    ]
    sid = record(2)["call_sid"]
    assert f'<a href="/ui/calls/{sid}">' in html
    assert "2026-11-21 14:02:00 UTC" in html and "1 min 05 s" in html and "700 ms" in html
    assert 'role="search"' in html and 'method="get"' in html
    for name in ("number", "outcome", "since", "until"):
        assert f'<label for="{name}">' in html and f'id="{name}" name="{name}"' in html


async def test_the_list_filters(signed_in: Viewer) -> None:
    await signed_in.seed(*(record(n) for n in range(1, 7)))
    get = signed_in.client.get
    html = (await get("/ui/", params={"number": record(4)["from"]})).text
    assert _sids(html) == [record(4)["call_sid"]]
    html = (await get("/ui/", params={"outcome": "caller_hung_up"})).text
    assert _sids(html) == [record(n)["call_sid"] for n in (5, 3, 1)]
    # datetime-local values (no offset: UTC), since inclusive, until exclusive.
    html = (
        await get("/ui/", params={"since": "2026-11-21T14:02", "until": "2026-11-21T14:05"})
    ).text
    assert _sids(html) == [record(n)["call_sid"] for n in (4, 3, 2)]
    assert 'value="2026-11-21T14:02"' in html  # the form keeps what was asked
    html = (await get("/ui/", params={"outcome": "nothing_like_this"})).text
    assert _sids(html) == [] and "No calls match" in html
    reply = await get("/ui/", params={"since": "yesterday"})
    assert reply.status_code == 400 and 'role="alert"' in reply.text


async def test_the_list_pages_with_the_stores_cursor(signed_in: Viewer) -> None:
    await signed_in.seed(*(record(n, outcome="bot_ended") for n in range(1, 56)))
    html = (await signed_in.client.get("/ui/", params={"outcome": "bot_ended"})).text
    first = _sids(html)
    assert len(first) == 50 and first[0] == record(55)["call_sid"]
    link = re.search(r'<a rel="next" href="([^"]+)">Older calls</a>', html)
    assert link is not None
    href = link.group(1).replace("&amp;", "&")
    assert href.startswith("/ui/?outcome=bot_ended&before=")
    html = (await signed_in.client.get(href)).text
    assert _sids(html) == [record(n)["call_sid"] for n in range(5, 0, -1)]
    assert 'rel="next"' not in html
    reply = await signed_in.client.get("/ui/", params={"before": "not-a-cursor"})
    assert reply.status_code == 400


async def test_an_overlong_cursor_is_refused_before_the_store(
    signed_in: Viewer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[object] = []
    store = signed_in.app.state.store
    original = store.list_calls

    async def spy(**kwargs: Any) -> Any:
        asked.append(kwargs.get("before"))
        return await original(**kwargs)

    monkeypatch.setattr(store, "list_calls", spy)
    reply = await signed_in.client.get("/ui/", params={"before": "x" * 513})
    assert reply.status_code == 400 and asked == []


async def test_call_links_quote_the_call_sid_as_one_segment(signed_in: Viewer) -> None:
    await signed_in.seed(record(1, call_sid="CA1/../x?y#z"))
    html = (await signed_in.client.get("/ui/")).text
    assert 'href="/ui/calls/CA1%2F..%2Fx%3Fy%23z"' in html


# --- A call -----------------------------------------------------------------------------


async def test_an_unknown_call_is_a_404_page(signed_in: Viewer) -> None:
    reply = await signed_in.client.get("/ui/calls/CA0000")
    assert reply.status_code == 404 and "No such call" in reply.text
    assert reply.headers["content-type"].startswith("text/html")
    for tail in ("audio.wav", "timeline.svg", "fixture.jsonl"):
        assert (await signed_in.client.get(f"/ui/calls/CA0000/{tail}")).status_code == 404


async def test_the_call_page_summary_and_transcript(signed_in: Viewer) -> None:
    await signed_in.seed(record(1))
    html = (await signed_in.client.get(f"/ui/calls/{record(1)['call_sid']}")).text
    summary = html[html.index("<dl") : html.index("</dl>")]
    for label, value in (
        ("Outcome", "caller_hung_up"),
        ("End detail", "stop"),
        ("Duration", "1 min 05 s"),
        ("From", "+15550100001"),
        ("Model", "gpt-realtime"),
        ("Barge-ins", "1"),
        ("Heard latency (median)", "700 ms"),
        ("Usage (tokens)", "input 120, output 340, total 460"),
    ):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in summary, label
    transcript = html[html.index('<section id="transcript"') :]
    transcript = transcript[: transcript.index("</section>")]
    assert "<ol>" in transcript
    items = re.findall(r'<li class="([^"]+)">', transcript)
    assert items == ["turn caller", "turn bot interrupted", "turn bot"]
    assert (
        '<span class="heard">We open at nine</span>'
        '<del class="unheard"> and close at five on weekdays.</del>'
    ) in transcript
    assert '<span class="heard">Anything else?</span></p>' in transcript  # all heard
    assert transcript.count("interrupted</strong>") == 1  # a badge in words, not colour
    assert "sent 3000 ms, heard 1100 ms" in transcript
    # No recording: no timeline, no audio, no download.
    assert 'id="timeline"' not in html and "<audio" not in html and 'id="fixture"' not in html


async def test_what_callers_said_is_shown_as_text(signed_in: Viewer) -> None:
    turns = [
        {"who": "caller", "text": SCRIPT},
        {
            "who": "bot",
            "text": f"You said {SCRIPT}",
            "heard_text": "You said",
            "sent_ms": 10,
            "heard_ms": 5,
            "interrupted": True,
        },
    ]
    await signed_in.seed(record(1, turns=turns, agent='"><img src=x onerror=alert(1)>'))
    html = (await signed_in.client.get(f"/ui/calls/{record(1)['call_sid']}")).text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    listing = (await signed_in.client.get("/ui/")).text
    assert "<img src=x" not in listing and "&lt;img src=x" in listing


async def test_without_stored_transcripts_only_timings_show(signed_in: Viewer) -> None:
    turns = [
        {"who": "caller"},
        {"who": "bot", "sent_ms": 2400, "heard_ms": 1200, "interrupted": True},
    ]
    await signed_in.seed(record(1, turns=turns))
    html = (await signed_in.client.get(f"/ui/calls/{record(1)['call_sid']}")).text
    transcript = html[html.index('<section id="transcript"') :]
    assert (
        'class="heard"' not in transcript
        and 'class="unheard">' not in transcript.split("</p>", 1)[1]
    )
    assert "sent 2400 ms, heard 1200 ms" in transcript
    assert "STORE_TRANSCRIPTS=false" in transcript
    assert '<li class="turn bot interrupted">' in transcript


def test_usage_shows_the_counts() -> None:
    assert usage({"input_tokens": 1, "output_tokens": 2, "audio": {"in_s": 1.5}}) == (
        "input 1, output 2"
    )
    assert usage({}) == usage(None) == "\u2014"


async def test_an_oversized_login_form_is_refused(viewer: Viewer) -> None:
    reply = await viewer.client.post("/ui/login", data={"key": "k" * 10_000}, headers=viewer.origin)
    assert reply.status_code == 413 and "set-cookie" not in reply.headers


def test_turn_view_splits_at_the_heard_prefix() -> None:
    bot = {"who": "bot", "text": "one two three", "heard_text": "one", "interrupted": True}
    view = turn_view(bot)
    assert (view.heard, view.unheard, view.css) == ("one", " two three", "turn bot interrupted")
    nothing = turn_view({**bot, "heard_text": ""})
    assert (nothing.heard, nothing.unheard) == ("", "one two three")
    odd = turn_view({**bot, "heard_text": "something else"})  # not a prefix: all of it
    assert (odd.heard, odd.unheard) == ("one two three", "")
    caller = turn_view({"who": "caller", "text": "hi", "interrupted": True})
    assert (caller.css, caller.heard, caller.unheard) == ("turn caller", "hi", "")


# --- Recordings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../secret.jsonl", "/etc/passwd", "sub/greeting.jsonl", "..", ".", "a\\b.jsonl", "link.jsonl"],
)
async def test_a_recording_outside_record_dir_is_refused(
    signed_in: Viewer, tmp_path: Path, name: str
) -> None:
    secret = tmp_path / "secret.jsonl"
    shutil.copy(LIBRARY / "greeting.jsonl", secret)
    (signed_in.record_dir / "sub").mkdir()
    shutil.copy(LIBRARY / "greeting.jsonl", signed_in.record_dir / "sub" / "greeting.jsonl")
    (signed_in.record_dir / "link.jsonl").symlink_to(secret)
    await signed_in.seed(record(1, recording=name))
    sid = record(1)["call_sid"]
    html = (await signed_in.client.get(f"/ui/calls/{sid}")).text
    assert 'id="fixture"' not in html and 'id="timeline"' not in html
    for tail in ("fixture.jsonl", "timeline.svg", "audio.wav"):
        reply = await signed_in.client.get(f"/ui/calls/{sid}/{tail}")
        assert reply.status_code == 404, (name, tail)


async def test_a_missing_recording_file_shows_nothing(signed_in: Viewer) -> None:
    await signed_in.seed(record(1, recording="gone.jsonl"))
    html = (await signed_in.client.get(f"/ui/calls/{record(1)['call_sid']}")).text
    assert 'id="fixture"' not in html and 'id="recording"' not in html


async def test_a_recorded_call_offers_its_fixture(signed_in: Viewer) -> None:
    shutil.copy(LIBRARY / "barge_in.jsonl", signed_in.record_dir / "barge_in.jsonl")
    await signed_in.seed(record(1, recording="barge_in.jsonl"))
    sid = record(1)["call_sid"]
    html = (await signed_in.client.get(f"/ui/calls/{sid}")).text
    assert f'<a id="fixture" download href="/ui/calls/{sid}/fixture.jsonl">' in html
    reply = await signed_in.client.get(f"/ui/calls/{sid}/fixture.jsonl")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    assert reply.headers["content-disposition"].startswith("attachment")
    assert reply.content == (LIBRARY / "barge_in.jsonl").read_bytes()


async def test_a_recorded_call_shows_its_timeline(signed_in: Viewer) -> None:
    shutil.copy(LIBRARY / "barge_in.jsonl", signed_in.record_dir / "barge_in.jsonl")
    await signed_in.seed(record(1, recording="barge_in.jsonl"))
    sid = record(1)["call_sid"]
    html = (await signed_in.client.get(f"/ui/calls/{sid}")).text
    figure = html[html.index('<figure id="timeline">') : html.index("</figure>")]
    assert 'tabindex="0"' in figure and "<svg" in figure and "<figcaption>" in figure
    svg = await signed_in.client.get(f"/ui/calls/{sid}/timeline.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    # The library keeps audio lengths only: no player, and no WAV.
    assert "<audio" not in html
    assert (await signed_in.client.get(f"/ui/calls/{sid}/audio.wav")).status_code == 404


def _kept_copy(source: Path, target: Path) -> None:
    """`source` with its header saying the audio was kept."""
    lines = source.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["audio"] = "kept"
    target.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))


async def test_a_recording_with_audio_gets_a_player(
    signed_in: Viewer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The player shows when the fixture's header says the audio was kept (the page does
    not build the WAV); `audio.wav` is the viewer's WAV, served with byte ranges."""
    import app.viewer.wav

    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 2
    calls: list[object] = []

    def fake_wav(fixture: object) -> bytes:
        calls.append(fixture)
        return wav

    monkeypatch.setattr(app.viewer.wav, "render_wav", fake_wav)
    _kept_copy(LIBRARY / "greeting.jsonl", signed_in.record_dir / "greeting.jsonl")
    await signed_in.seed(record(1, recording="greeting.jsonl"))
    sid = record(1)["call_sid"]
    html = (await signed_in.client.get(f"/ui/calls/{sid}")).text
    assert f'<audio controls preload="none" src="/ui/calls/{sid}/audio.wav">' in html
    assert calls == []  # decided from the header alone
    reply = await signed_in.client.get(f"/ui/calls/{sid}/audio.wav")
    assert reply.status_code == 200 and reply.content == wav
    assert reply.headers["content-type"] == "audio/wav"
    assert reply.headers["cache-control"] == "no-store"
    ranged = await signed_in.client.get(
        f"/ui/calls/{sid}/audio.wav", headers={"Range": "bytes=0-99"}
    )
    assert ranged.status_code == 206 and ranged.content == wav[:100]
    assert ranged.headers["content-range"] == f"bytes 0-99/{len(wav)}"
    assert ranged.headers["cache-control"] == "no-store"
    assert len(calls) == 1  # rendered once, then from the cache
    signed_in.client.cookies.clear()
    refused = await signed_in.client.get(
        f"/ui/calls/{sid}/audio.wav", headers={"Range": "bytes=0-99"}
    )
    assert refused.status_code == 401


async def test_a_too_long_recording_is_not_rendered(
    signed_in: Viewer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.ui.recordings

    size = (LIBRARY / "barge_in.jsonl").stat().st_size
    monkeypatch.setattr(app.ui.recordings, "MAX_RENDER_BYTES", size - 1)
    monkeypatch.setattr(app.ui.recordings, "_render_svg", _never)
    monkeypatch.setattr(app.ui.recordings, "_render_wav", _never)
    _kept_copy(LIBRARY / "barge_in.jsonl", signed_in.record_dir / "barge_in.jsonl")
    await signed_in.seed(record(1, recording="barge_in.jsonl"))
    sid = record(1)["call_sid"]
    html = (await signed_in.client.get(f"/ui/calls/{sid}")).text
    assert "This recording is too long to draw here; use" in html
    assert "python -m app.replay --svg/--wav" in html
    assert "<svg" not in html and "<audio" not in html and 'id="fixture"' in html
    for tail in ("timeline.svg", "audio.wav"):
        reply = await signed_in.client.get(f"/ui/calls/{sid}/{tail}")
        assert reply.status_code == 413, tail


def _never(*_args: object) -> Any:
    raise AssertionError("rendered")


async def test_renders_run_one_at_a_time_and_identical_ones_are_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    import app.ui.recordings as recordings

    running = 0
    most = 0
    guard = threading.Lock()

    def slow(path: Path) -> recordings.Rendered:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return recordings.Rendered(svg=f"<svg>{path.name}</svg>")

    monkeypatch.setattr(recordings, "_render_svg", slow)
    paths = []
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("{}\n")
        paths.append(tmp_path / name)
    renderer = recordings.Renderer()
    results = await asyncio.gather(*(renderer.svg(p) for p in [*paths, *paths, paths[0]]))
    assert [r.svg for r in results] == [f"<svg>{p.name}</svg>" for p in [*paths, *paths, paths[0]]]
    assert renderer.renders == 2 and most == 1
    renderer.close()


async def test_the_render_cache_keeps_to_its_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.ui.recordings as recordings

    monkeypatch.setattr(recordings, "_render_svg", lambda path: recordings.Rendered(svg="x" * 600))
    renderer = recordings.Renderer(budget_bytes=1000)
    paths = []
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("{}\n")
        paths.append(tmp_path / name)
    await renderer.svg(paths[0])
    await renderer.svg(paths[0])
    assert renderer.renders == 1
    await renderer.svg(paths[1])  # over the budget: the first is dropped
    await renderer.svg(paths[0])
    assert renderer.renders == 3
    renderer.close()


async def test_with_no_writable_temp_dir_the_audio_is_a_clear_503_not_a_crash(
    signed_in: Viewer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image run `--read-only` without a /tmp mount: the audio can't be stored; the
    answer says what to mount, and nothing is kept (the next request tries again)."""
    import tempfile

    import app.viewer.wav

    monkeypatch.setattr(app.viewer.wav, "render_wav", lambda fixture: b"RIFF" + bytes(64))
    _kept_copy(LIBRARY / "greeting.jsonl", signed_in.record_dir / "greeting.jsonl")
    await signed_in.seed(record(1, recording="greeting.jsonl"))
    sid = record(1)["call_sid"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "read-only-root" / "tmp"))
    reply = await signed_in.client.get(f"/ui/calls/{sid}/audio.wav")
    assert reply.status_code == 503 and "mount one at /tmp" in reply.text
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # /tmp mounted
    reply = await signed_in.client.get(f"/ui/calls/{sid}/audio.wav")
    assert reply.status_code == 200 and reply.content == b"RIFF" + bytes(64)


async def test_an_unreadable_recording_has_no_audio_and_says_no_more(
    signed_in: Viewer,
) -> None:
    """The recording's own fault: 404, and the reader's error (a server path) stays in."""
    (signed_in.record_dir / "broken.jsonl").write_text('{"audio": "kept"}\nnot json\n')
    await signed_in.seed(record(1, recording="broken.jsonl"))
    sid = record(1)["call_sid"]
    reply = await signed_in.client.get(f"/ui/calls/{sid}/audio.wav")
    assert reply.status_code == 404 and reply.text == "no audio in this recording\n"


async def test_a_wav_too_big_for_the_cache_is_served_then_removed_at_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not kept, but not left on disk either: /tmp (a small volume in a read-only pod)
    holds the cache's budget plus at most one such file."""
    import app.ui.recordings as recordings

    def render(path: Path, target: Path) -> recordings.Rendered:
        target.write_bytes(b"x" * 2000)
        return recordings.Rendered(wav=target, wav_bytes=2000)

    monkeypatch.setattr(recordings, "_render_wav", render)
    renderer = recordings.Renderer(budget_bytes=1000)
    paths = []
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("{}\n")
        paths.append(tmp_path / name)
    first = await renderer.wav(paths[0])
    assert first.wav is not None and first.wav.exists()  # served
    second = await renderer.wav(paths[1])
    assert second.wav is not None and second.wav.exists()
    assert not first.wav.exists()  # the one before is gone
    again = await renderer.wav(paths[1])  # not cached: rendered again, the same file kept
    assert again.wav == second.wav and second.wav.exists() and renderer.renders == 3
    renderer.close()
