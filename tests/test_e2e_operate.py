"""Operating it, end to end: metrics, call records and the operator API over loopback.

The real app, the fake Twilio side playing audio in real time and echoing marks, the
scripted fake Realtime service, and a real database (SQLite file, or the PostgreSQL server
the test session runs). What is checked is what an operator would look at: a barge-in moves
the counters and observes a reaction time, the heard latency comes from mark echoes (so it
includes at least the first chunk's playing time), a finished call is listed with what was
heard, and a database that goes away never touches a call.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH_TOKEN, AppFactory, RunningApp
from tests.fakes.audio import speech
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse
from tests.pg import PgServer
from tests.test_e2e_call import twilio_post

pytestmark = pytest.mark.e2e

KEY = "operator-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {KEY}"}
DELTA_MS = 100
LONG = (
    "Our opening hours are nine to six on weekdays, and ten to four on Saturdays. "
    "We are closed on Sundays."
)
SHORT = "Sure, what would you like to know?"
QUESTION = "When are you open?"


def script(*texts: str) -> list[ScriptedResponse]:
    return [ScriptedResponse(audio=speech(t), transcript=t, delta_ms=DELTA_MS) for t in texts]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: RunningApp, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of `/metrics`, by (name, sorted labels)."""
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{app.http_url}/metrics", headers=headers or BEARER)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def get(app: RunningApp, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{app.http_url}{path}", **kwargs)


async def eventually(probe: Callable[[], Any], within: float = 20.0, what: str = "") -> Any:
    """Poll `probe` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(within):
        while True:
            result = probe()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.05)


async def record_of(app: RunningApp, call_sid: str, within: float = 20.0) -> dict[str, Any]:
    """The call's record once the store has it (written in the background)."""

    async def probe() -> dict[str, Any] | None:
        reply = await get(app, f"/calls/{call_sid}", headers=BEARER)
        return reply.json() if reply.status_code == 200 else None

    return await eventually(probe, within, f"the record of {call_sid}")  # type: ignore[no-any-return]


async def short_call(app: RunningApp, realtime: FakeRealtime, **kwargs: Any) -> str:
    """A call that starts, has its session configured, and hangs up; its CallSid once the
    app has torn it down."""
    async with app.call(**kwargs) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update", timeout=10)
        await call.hangup()
        await conn.wait_closed()
    await app.wait_idle()
    return call.call_sid


async def barge_in_call(app: RunningApp, realtime: FakeRealtime) -> str:
    """A call where the caller cuts the bot off 1.5 s into a long answer, then hangs up
    after the next answer; its CallSid."""
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await call.wait_for_heard(1500 * 8, timeout=30)
        await call.say(speech("Sorry, can I ask something else?"))
        await call.wait_for_clear(timeout=10)
        at_clear = call.heard_bytes_at_clear[0]
        await call.wait_for_heard(at_clear + len(speech(SHORT)), timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        await call.hangup()
        await conn.wait_closed()
    await app.wait_idle()
    return call.call_sid


async def test_a_barge_in_moves_the_counters_and_the_call_lands_in_the_store(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    realtime.add_responses(*script(LONG, SHORT))
    app = await app_with(operator_api_key=KEY)
    before = await scrape(app)
    assert value(before, "bridge_barge_ins_total") == 0
    assert value(before, "bridge_calls_active") == 0
    call_sid = await barge_in_call(app, realtime)

    after = await scrape(app)
    assert value(after, "bridge_barge_ins_total") == 1
    assert value(after, "bridge_barge_in_reaction_seconds_count") == 1
    assert value(after, "bridge_barge_in_reaction_seconds_bucket", le="0.005") == 1  # at once
    assert value(after, "bridge_truncated_audio_seconds_total") > 0
    assert value(after, "bridge_calls_total", outcome="caller_hung_up") == 1
    assert value(after, "bridge_call_duration_seconds_count") == 1
    assert value(after, "bridge_calls_active") == 0

    record = await record_of(app, call_sid)
    assert record["call_sid"] == call_sid and record["direction"] == "inbound"
    assert record["outcome"] == "caller_hung_up" and record["barge_ins"] == 1
    assert record["barge_in_reaction_ms"] == [0]
    bot = [t for t in record["turns"] if t["who"] == "bot"]
    assert bot[0]["interrupted"] and bot[0]["text"] == LONG
    assert 1500 <= bot[0]["heard_ms"] < bot[0]["sent_ms"]
    assert LONG.startswith(bot[0]["heard_text"]) and bot[0]["heard_text"] != LONG
    assert not bot[1]["interrupted"] and bot[1]["heard_ms"] == bot[1]["sent_ms"]
    assert bot[1]["heard_text"] == SHORT
    assert any(t["who"] == "caller" and t["text"] for t in record["turns"])
    assert record["started_at"] < record["ended_at"] and record["started_at"].endswith("Z")
    listed = (await get(app, "/calls", headers=BEARER)).json()
    assert listed == {"calls": [record], "next": None}
    assert value(await scrape(app), "bridge_call_records_written_total") == 1


async def test_heard_latency_is_observed_from_the_answers_first_mark_echo(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    realtime.add_responses(*script(SHORT, SHORT))
    app = await app_with(operator_api_key=KEY)
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        greeting = len(speech(SHORT))
        await call.wait_for_heard(greeting, timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        # The greeting was never an answer: nothing is observed for it.
        assert value(await scrape(app), "bridge_response_latency_seconds_count") == 0
        await call.say(speech(QUESTION))
        await call.wait_for_heard(2 * greeting, timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        await call.hangup()
        await conn.wait_closed()
    await app.wait_idle()
    samples = await scrape(app)
    assert value(samples, "bridge_response_latency_seconds_count") == 1
    latency = value(samples, "bridge_response_latency_seconds_sum")
    # Heard, not sent: the first mark is echoed once its 100 ms chunk has played.
    assert latency >= DELTA_MS / 1000
    record = await record_of(app, call.call_sid)
    assert record["response_latency_ms"] == [round(latency * 1000)]
    assert record["heard_latency_ms"] == round(latency * 1000)


async def test_the_operator_api_wants_its_key_and_answers_in_json(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(operator_api_key=KEY)
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
        for path in ("/calls", "/calls/CA123", "/metrics", "/openapi.json", "/docs"):
            reply = await get(app, path, headers=headers)
            assert reply.status_code == 401, (path, headers)
            assert reply.json()["error"] == "unauthorized"
            assert "www-authenticate" in reply.headers
    # Without the key nothing is said about the request, not even that it is malformed.
    assert (await get(app, "/calls", params={"limit": 0})).status_code == 401
    missing = await get(app, "/calls/CA" + "0" * 32, headers=BEARER)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    bad = await get(app, "/calls", params={"limit": 201, "since": "yesterday"}, headers=BEARER)
    assert bad.status_code == 422
    assert {f["field"] for f in bad.json()["fields"]} == {"limit", "since"}
    cursor = await get(app, "/calls", params={"before": "not-a-cursor"}, headers=BEARER)
    assert cursor.status_code == 422 and cursor.json()["fields"][0]["field"] == "before"
    empty = await get(app, "/calls", headers=BEARER)
    assert empty.json() == {"calls": [], "next": None}

    # The docs: for a browser with the key as Basic auth's password, and the API only.
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{KEY}".encode()).decode()}
    docs = await get(app, "/docs", headers=basic)
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert 'Basic realm="operator"' in (await get(app, "/docs")).headers["www-authenticate"]
    schema = (await get(app, "/openapi.json", headers=basic)).json()
    assert set(schema["paths"]) == {"/calls", "/calls/{call_sid}"}
    assert {p["name"] for p in schema["paths"]["/calls"]["get"]["parameters"]} >= {
        "limit", "before", "outcome", "number", "from", "to", "since", "until"
    }  # fmt: skip


async def test_without_a_key_the_api_is_off_and_metrics_are_open(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with()
    for path in ("/calls", "/calls/CA123", "/docs", "/openapi.json", "/redoc"):
        assert (await get(app, path)).status_code == 404, path
    samples = await scrape(app, headers={})
    assert value(samples, "bridge_ready") == 1
    assert ("bridge_calls_active", ()) in samples


async def test_calls_are_filtered_and_paged_newest_first(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(operator_api_key=KEY, bot_greeting="")
    sids = []
    for caller in ("+15550001", "+15550002", "+15550001"):
        numbers = {"From": caller, "To": "+15559999"}
        sids.append(await short_call(app, realtime, custom_parameters=numbers))
        await record_of(app, sids[-1])
    page = (await get(app, "/calls", params={"limit": 2}, headers=BEARER)).json()
    assert [c["call_sid"] for c in page["calls"]] == [sids[2], sids[1]]
    rest = (await get(app, "/calls", params={"before": page["next"]}, headers=BEARER)).json()
    assert [c["call_sid"] for c in rest["calls"]] == [sids[0]] and rest["next"] is None
    mine = (await get(app, "/calls", params={"number": "+15550001"}, headers=BEARER)).json()
    assert [c["call_sid"] for c in mine["calls"]] == [sids[2], sids[0]]
    assert mine["calls"][0]["from"] == "+15550001" and mine["calls"][0]["to"] == "+15559999"
    since = page["calls"][1]["started_at"]
    newer = (await get(app, "/calls", params={"since": since}, headers=BEARER)).json()
    assert [c["call_sid"] for c in newer["calls"]] == [sids[2], sids[1]]
    none = (await get(app, "/calls", params={"outcome": "transferred"}, headers=BEARER)).json()
    assert none["calls"] == []


async def test_without_transcripts_a_record_keeps_only_timings(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    realtime.add_responses(*script(LONG, SHORT))
    app = await app_with(operator_api_key=KEY, store_transcripts=False)
    call_sid = await barge_in_call(app, realtime)
    record = await record_of(app, call_sid)
    assert record["turns"] and all("text" not in t for t in record["turns"])
    assert all("heard_text" not in t for t in record["turns"])
    assert record["turns"][0]["heard_ms"] > 0


async def test_a_database_down_mid_call_leaves_the_call_unharmed_and_the_record_arrives(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    pg = PgServer()
    await asyncio.to_thread(pg.start)
    try:
        realtime.add_responses(*script(LONG, SHORT))
        app = await app_with(operator_api_key=KEY, database_url=pg.url)
        assert (await get(app, "/calls", headers=BEARER)).status_code == 200
        long = speech(LONG)
        async with app.call() as first:
            await first.start()
            await realtime.wait_connection()
            await first.wait_for_heard(500 * 8, timeout=30)
            await asyncio.to_thread(pg.stop)  # the database goes away while the bot talks
            async with app.call() as second:  # a call that ends while it is away
                await second.start()
                await second.wait_for_heard(len(speech(SHORT)), timeout=30)
                await second.hangup()
            await eventually(
                lambda: scrape_value(app, "bridge_call_record_write_errors_total"), what="a retry"
            )
            # The writer failed and retried while the first call was still being heard...
            assert len(first.heard) < len(long)
            unavailable = await get(app, "/calls", headers=BEARER)
            assert unavailable.status_code == 503
            assert unavailable.json()["error"] == "store_unavailable"
            # ...and the first call never noticed: every byte of its answer was heard.
            await first.wait_for_heard(len(long), timeout=30)
            await first.wait_for_playout_idle(timeout=10)
            assert bytes(first.heard[: len(long)]) == long
            await first.hangup()
        await app.wait_idle()
        assert first.violations == [] and second.violations == []
        assert realtime.invalid_events == []
        assert value(await scrape(app), "bridge_call_records_pending") == 2

        await asyncio.to_thread(pg.start)  # back: both records arrive, once each
        for call in (first, second):
            record = await record_of(app, call.call_sid, within=30)
            assert record["outcome"] == "caller_hung_up"
        samples = await scrape(app)
        assert value(samples, "bridge_call_records_written_total") == 2
        assert value(samples, "bridge_call_records_failed_total") == 0
        assert value(samples, "bridge_call_records_pending") == 0
    finally:
        await asyncio.to_thread(pg.close)


async def scrape_value(app: RunningApp, name: str) -> float:
    return value(await scrape(app), name)


async def test_a_record_that_cannot_be_written_in_time_is_logged_lost_once(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pg = PgServer()
    await asyncio.to_thread(pg.start)
    try:
        app = await app_with(
            operator_api_key=KEY, database_url=pg.url, call_records_retry_seconds=1
        )
        assert (await get(app, "/calls", headers=BEARER)).status_code == 200  # migrated
        await asyncio.to_thread(pg.stop)
        call_sid = await short_call(app, realtime)
        await eventually(lambda: scrape_value(app, "bridge_call_records_failed_total"))
        lost = [r for r in caplog.records if r.getMessage() == "store.record_lost"]
        assert len(lost) == 1 and lost[0].levelno == logging.ERROR
        assert lost[0].call_sid == call_sid  # type: ignore[attr-defined]
        assert value(await scrape(app), "bridge_call_records_pending") == 0
    finally:
        await asyncio.to_thread(pg.close)


async def test_the_start_and_summary_lines_carry_what_ops_search_by(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_with(bot_greeting="")
    numbers = {"From": "+15550001", "To": "+15559999"}
    async with app.call(custom_parameters=numbers) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update", timeout=10)
        await call.hangup()
        await conn.wait_closed()
    await app.wait_idle()
    (started,) = [r for r in caplog.records if r.getMessage() == "call.started"]
    assert started.call_sid == call.call_sid  # type: ignore[attr-defined]
    assert started.stream_sid == call.stream_sid  # type: ignore[attr-defined]
    (summary,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    fields = summary.fields  # type: ignore[attr-defined]
    assert (fields["from"], fields["to"]) == ("+15550001", "+15559999")
    assert fields["agent"] == "default" and fields["model"] == "gpt-realtime"
    opened = datetime.fromisoformat(fields["started_at"])
    assert opened.tzinfo is not None and abs(datetime.now(UTC) - opened) < timedelta(minutes=1)


async def test_a_call_turned_away_as_busy_has_a_record_too(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(operator_api_key=KEY, max_concurrent_calls=1, bot_greeting="")
    async with app.call() as live:
        await live.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update", timeout=10)
        params = {"CallSid": "CA" + "7" * 32, "From": "+15550003", "To": "+15559999"}
        request = twilio_post(app.http_url, app.public_base, params, AUTH_TOKEN)
        async with httpx.AsyncClient() as client:
            busy = await client.send(request)
        assert "<Reject" in busy.text
        record = await record_of(app, params["CallSid"])
        assert (record["outcome"], record["end_detail"]) == ("busy", "at_capacity")
        assert (record["from"], record["to"], record["turns"]) == ("+15550003", "+15559999", [])
        samples = await scrape(app)
        assert value(samples, "bridge_calls_total", outcome="busy") == 1
        assert value(samples, "bridge_webhook_requests_total", result="busy") == 1
        await live.hangup()
        await conn.wait_closed()


async def test_a_real_call_that_lost_the_last_slot_at_its_start_has_a_record(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    """Both upgrades came while a slot was free; the second `start` finds it taken. That
    call is real (its stream token checks out) and heard the fallback: it is on record."""
    app = await app_with(operator_api_key=KEY, max_concurrent_calls=1, bot_greeting="")
    async with app.call() as first, app.call() as second:
        await first.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update", timeout=10)
        await second.start()
        await second.wait_closed(timeout=10)
        record = await record_of(app, second.call_sid)
        assert (record["outcome"], record["end_detail"]) == ("failure", "at_capacity")
        samples = await scrape(app)
        assert value(samples, "bridge_streams_refused_total", reason="at_capacity") == 1
        assert value(samples, "bridge_call_failures_total", detail="at_capacity") == 1
        await first.hangup()
