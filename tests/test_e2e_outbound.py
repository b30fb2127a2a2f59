"""Outbound calls end to end: `POST /calls` through the real app over loopback, the fake
Twilio REST server creating the call the way Twilio does (its answer shape and errors, the
signed status and answering-machine callbacks, the media stream opened from our TwiML and
playing the callee in real time), the scripted fake Realtime service, and a real database.

What is checked is what the callee hears and what the operator sees: the greeting after
the callee's hello, never over it; a voicemail said after the beep and hung up after its
last word; calls that never connected in the history with their outcome; the toll-fraud
guard, the in-flight limit and Twilio's refusals as answers; and a stream landing on a
second process sharing the PostgreSQL store getting its call's own instructions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH_TOKEN, AppFactory, RunningApp
from tests.fakes.audio import BYTES_PER_MS, silence, speech, tone
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse
from tests.fakes.twilio_outbound import OutboundScript
from tests.fakes.twilio_rest import FakeTwilioRest, RestReply
from tests.test_e2e_operate import eventually, scrape, value

pytestmark = pytest.mark.e2e

ACCOUNT_SID = "AC" + "b" * 32
KEY = "operator-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {KEY}"}
FROM, TO = "+14155550100", "+14155550123"
HELLO = "Hello?"
GREETING = "Hi Ada, this is Example Clinic calling about your appointment tomorrow."
MESSAGE = "Hi Ada, this is Example Clinic. Your appointment is tomorrow at nine. Goodbye."
MACHINE = "Hi, you have reached Ada. Please leave a message after the tone."


@pytest.fixture
async def rest() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(expected_auth=(ACCOUNT_SID, AUTH_TOKEN)) as fake:
        yield fake


async def start(app_with: AppFactory, rest: FakeTwilioRest, **overrides: Any) -> RunningApp:
    app: RunningApp = await app_with(
        twilio_account_sid=ACCOUNT_SID,
        twilio_api_base_url=rest.base_url,
        operator_api_key=KEY,
        twilio_from_number=FROM,
        **overrides,
    )
    rest.route(app.public_base, app.http_url)
    return app


async def place(app: RunningApp, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{app.http_url}/calls", json=body, headers={**BEARER, **headers}, timeout=20
        )


async def record_of(app: RunningApp, call_sid: str, within: float = 20.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{app.http_url}/calls/{call_sid}", headers=BEARER)
        return reply.json() if reply.status_code == 200 else None

    return await eventually(probe, within, f"the record of {call_sid}")  # type: ignore[no-any-return]


def said(text: str) -> ScriptedResponse:
    return ScriptedResponse(audio=speech(text), transcript=text, delta_ms=100)


def _update(request: Any) -> bool:
    """A REST update of a live call (a hang-up), not a create."""
    return not request.path.endswith("/Calls.json")


def first_media_at(events: list[tuple[float, str, dict[str, Any]]]) -> float:
    return next(t for t, kind, _ in events if kind == "media")


# -- who answers ---------------------------------------------------------------------------


async def test_a_human_answers_and_is_greeted_after_their_hello(
    app_with: AppFactory, realtime: FakeRealtime, rest: FakeTwilioRest
) -> None:
    realtime.add_responses(said(GREETING))
    hello = speech(HELLO)
    rest.script_outbound(OutboundScript(outcome="human", greeting=silence(300) + hello))
    app = await start(app_with, rest)
    reply = await place(
        app,
        {
            "to": TO,
            "instructions": "You call {name} about the appointment on {day}.",
            "greeting": "Greet {name} and remind them of {day}.",
            "context": {"name": "Ada", "day": "Thursday"},
        },
    )
    assert reply.status_code == 201, reply.text
    body = reply.json()
    call_sid = body["call_sid"]
    assert body["status"] == "queued" and body["to"] == TO and body["from"] == FROM
    [created] = rest.outbound_calls.values()
    assert created.sid == call_sid and created.form["To"] == TO and created.form["From"] == FROM
    assert "MachineDetection" not in created.form
    assert created.events == ["initiated", "ringing", "answered", "completed"]

    stream = await rest.wait_for_outbound_call(timeout=10)
    conn = await realtime.wait_connection(timeout=10)
    update = await conn.wait_for("session.update", timeout=10)
    assert (
        'You call "Ada" about the appointment on "Thursday".' in update["session"]["instructions"]
    )
    create = await conn.wait_for("response.create", timeout=15)
    assert '"Ada"' in create["response"]["instructions"]
    assert "Thursday" in create["response"]["instructions"]
    await stream.wait_for_heard(len(speech(GREETING)), timeout=20)
    say_at = next(t for t, kind, _ in stream.events if kind == "say")
    hello_end = say_at + (300 + len(hello) / BYTES_PER_MS) / 1000
    assert first_media_at(stream.events) > hello_end  # never over their hello
    await stream.hangup()
    await rest.wait_for_outbound_end(call_sid, timeout=10)
    record = await record_of(app, call_sid)
    assert record["direction"] == "outbound"
    assert (record["from"], record["to"]) == (FROM, TO)
    assert record["outcome"] == "caller_hung_up"
    assert record["answered_by"] is None
    assert [t["who"] for t in record["turns"]][:2] == ["caller", "bot"]
    statuses = [c.params["CallStatus"] for c in rest.callbacks if c.kind == "status"]
    assert statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert {c.status for c in rest.callbacks} == {204}
    samples = await scrape(app, BEARER)
    assert value(samples, "bridge_outbound_calls_total", result="created") == 1
    assert value(samples, "bridge_outbound_results_total", status="completed") == 1
    assert value(samples, "bridge_outbound_answer_seconds_count") == 1
    assert realtime.invalid_events == [] and stream.violations == []


async def test_detection_a_human_is_greeted_once_twilio_says_so(
    app_with: AppFactory, realtime: FakeRealtime, rest: FakeTwilioRest
) -> None:
    realtime.add_responses(said(GREETING))
    rest.script_outbound(OutboundScript(outcome="human", greeting=speech(HELLO), amd_after=2.5))
    app = await start(app_with, rest)
    reply = await place(app, {"to": TO, "machine_detection": "hangup"})
    assert reply.status_code == 201, reply.text
    [created] = rest.outbound_calls.values()
    assert created.form["MachineDetection"] == "Enable" and created.form["AsyncAmd"] == "true"
    assert created.form["AsyncAmdStatusCallback"].startswith(f"{app.public_base}/call-status")
    stream = await rest.wait_for_outbound_call(timeout=10)
    amd = await rest.wait_for_callback(predicate=lambda c: c.kind == "amd", timeout=10)
    assert amd.status == 204
    await stream.wait_for_heard(len(speech(GREETING)), timeout=20)
    assert first_media_at(stream.events) > amd.time  # the greeting waited for the verdict
    await stream.hangup()
    record = await record_of(app, created.sid)
    assert record["answered_by"] == "human"
    samples = await scrape(app, BEARER)
    assert value(samples, "bridge_outbound_answered_by_total", answered_by="human") == 1


async def test_a_machine_gets_the_voicemail_after_the_beep_and_the_hang_up_after_it(
    app_with: AppFactory, realtime: FakeRealtime, rest: FakeTwilioRest
) -> None:
    realtime.add_responses(said(MESSAGE))
    greeting = speech(MACHINE) + silence(200) + tone(400, 1000) + silence(300)
    seconds = len(greeting) / BYTES_PER_MS / 1000
    rest.script_outbound(
        OutboundScript(outcome="machine", greeting=greeting, message_end_after=seconds)
    )
    app = await start(app_with, rest)
    reply = await place(
        app, {"to": TO, "machine_detection": "voicemail", "voicemail_message": MESSAGE}
    )
    assert reply.status_code == 201, reply.text
    call_sid = reply.json()["call_sid"]
    assert rest.outbound_calls[call_sid].form["MachineDetection"] == "DetectMessageEnd"
    stream = await rest.wait_for_outbound_call(timeout=10)
    conn = await realtime.wait_connection(timeout=10)
    amd = await rest.wait_for_callback(predicate=lambda c: c.kind == "amd", timeout=20)
    assert amd.params["AnsweredBy"] == "machine_end_beep"
    create = await conn.wait_for("response.create", timeout=10)
    assert MESSAGE in create["response"]["instructions"]
    # Nothing was said to the machine's greeting: the only response is the voicemail.
    assert [e["type"] for e in conn.events].count("response.create") == 1
    hangup = await rest.wait_for_request(timeout=30, predicate=_update)
    assert hangup.form == {"Status": "completed"}
    message = len(speech(MESSAGE))
    assert len(stream.heard) == message  # every word of it, and nothing else
    heard_all = next(t for t, k, d in stream.events if k == "played" and d["heard"] >= message)
    assert first_media_at(stream.events) > amd.time  # after the beep
    assert hangup.time >= heard_all + app.settings.hangup_tail_ms / 1000  # after its last word
    await rest.wait_for_outbound_end(call_sid, timeout=10)
    record = await record_of(app, call_sid)
    assert record["outcome"] == "voicemail" and record["answered_by"] == "machine_end_beep"
    assert record["direction"] == "outbound"


async def test_a_machine_under_hangup_is_hung_up_on_without_a_word(
    app_with: AppFactory, realtime: FakeRealtime, rest: FakeTwilioRest
) -> None:
    rest.script_outbound(OutboundScript(outcome="machine", greeting=speech(MACHINE), amd_after=1.0))
    app = await start(app_with, rest)
    reply = await place(app, {"to": TO, "machine_detection": "hangup"})
    call_sid = reply.json()["call_sid"]
    stream = await rest.wait_for_outbound_call(timeout=10)
    hangup = await rest.wait_for_request(timeout=15, predicate=_update)
    assert hangup.form == {"Status": "completed"}
    await rest.wait_for_outbound_end(call_sid, timeout=10)
    assert stream.heard == b""
    record = await record_of(app, call_sid)
    assert record["outcome"] == "machine" and record["answered_by"] == "machine_start"
    conn = realtime.connections[0]
    assert "response.create" not in [e["type"] for e in conn.events]


@pytest.mark.parametrize(("outcome", "recorded"), [("no-answer", "no_answer"), ("busy", "busy")])
async def test_a_call_that_never_connects_is_in_the_history_with_its_outcome(
    app_with: AppFactory, rest: FakeTwilioRest, outcome: str, recorded: str
) -> None:
    rest.script_outbound(OutboundScript(outcome=outcome))
    app = await start(app_with, rest)
    reply = await place(app, {"to": TO, "agent": "default"})
    assert reply.status_code == 201, reply.text
    call_sid = reply.json()["call_sid"]
    await rest.wait_for_outbound_end(call_sid, timeout=10)
    record = await record_of(app, call_sid)
    assert record["outcome"] == recorded and record["direction"] == "outbound"
    assert (record["from"], record["to"], record["turns"]) == (FROM, TO, [])
    # Twilio's final callback again (a retry, or another replica's copy): counted once.
    final = [c for c in rest.callbacks if c.kind == "status"][-1]
    async with httpx.AsyncClient() as client:
        again = await client.post(
            final.delivered_to, data=final.params, headers={"X-Twilio-Signature": final.signature}
        )
    assert again.status_code == 204
    samples = await scrape(app, BEARER)
    assert value(samples, "bridge_outbound_results_total", status=outcome) == 1
    assert value(samples, "bridge_calls_total", outcome=recorded) == 1
    listed = (await _get(app, f"/calls?direction=outbound&outcome={recorded}")).json()["calls"]
    assert [c["call_sid"] for c in listed] == [call_sid]


# -- refusals ------------------------------------------------------------------------------


async def test_a_destination_outside_the_allowed_prefixes_is_refused(
    app_with: AppFactory, rest: FakeTwilioRest
) -> None:
    app = await start(app_with, rest)
    for to in ("+447700900123", "+18765550123", "+19005550123"):  # abroad, Jamaica, premium
        reply = await place(app, {"to": to})
        assert reply.status_code == 403, (to, reply.text)
        assert reply.json()["error"] == "forbidden_destination"
    assert rest.outbound_calls == {}  # Twilio was never asked
    other = await start(app_with, rest, outbound_allowed_prefixes="+44")
    assert (await place(other, {"to": TO})).status_code == 403
    assert (await place(other, {"to": "+447700900123"})).status_code == 201


async def test_over_the_limit_is_429_until_a_call_ends(
    app_with: AppFactory, rest: FakeTwilioRest
) -> None:
    rest.script_outbound(OutboundScript(outcome="no-answer", ring_time=1.5))
    app = await start(app_with, rest, max_outbound_calls=1)
    first = await place(app, {"to": TO})
    assert first.status_code == 201
    second = await place(app, {"to": TO})
    assert second.status_code == 429 and second.json()["error"] == "too_many_calls"
    assert second.headers["retry-after"] == "30"
    assert len(rest.outbound_calls) == 1
    await rest.wait_for_outbound_end(first.json()["call_sid"], timeout=10)
    await eventually(lambda: _in_flight_zero(app), 10, "the slot back")
    third = await place(app, {"to": TO})
    assert third.status_code == 201, third.text


async def _in_flight_zero(app: RunningApp) -> bool:
    since = datetime.now(UTC) - timedelta(hours=3)
    return await app.state.store.outbound_in_flight(since) == 0  # type: ignore[no-any-return]


async def test_twilio_refusing_is_502_with_its_code_and_frees_the_slot(
    app_with: AppFactory, rest: FakeTwilioRest
) -> None:
    rest.script_create(RestReply(code=21215))  # Geo permissions: not allowed to call it
    app = await start(app_with, rest, max_outbound_calls=1)
    reply = await place(app, {"to": TO})
    assert reply.status_code == 502, reply.text
    body = reply.json()
    assert body["error"] == "twilio_refused" and body["twilio_code"] == 21215
    assert (await place(app, {"to": TO})).status_code == 201  # no slot was kept
    samples = await scrape(app, BEARER)
    assert value(samples, "bridge_outbound_calls_total", result="twilio_refused") == 1


async def test_the_create_is_retried_only_where_no_call_can_exist(
    app_with: AppFactory, rest: FakeTwilioRest
) -> None:
    app = await start(app_with, rest)
    rest.script_create(RestReply(code=20429))  # too many requests: nothing created
    reply = await place(app, {"to": TO})
    assert reply.status_code == 201, reply.text
    assert len([r for r in rest.requests if r.path.endswith("/Calls.json")]) == 2
    rest.script_create(RestReply(drop=True))  # read, then no answer: it may exist
    reply = await place(app, {"to": TO})
    assert reply.status_code == 502 and reply.json()["error"] == "twilio_unreachable"
    assert len([r for r in rest.requests if r.path.endswith("/Calls.json")]) == 3  # not again
    rest.script_create(RestReply(code=20500))  # a 5xx: the call may exist all the same
    reply = await place(app, {"to": TO})
    assert reply.status_code == 502, reply.text
    body = reply.json()
    assert body["error"] == "twilio_unreachable" and body["outbound_id"].startswith("OB")
    assert body["twilio_status"] == 500
    assert len([r for r in rest.requests if r.path.endswith("/Calls.json")]) == 4  # not again
    # Its slot stays taken until its status callbacks (if any) tell: no second dial.
    assert not await _in_flight_zero(app)


async def test_no_public_base_url_no_outbound_calls(
    app_with: AppFactory, rest: FakeTwilioRest
) -> None:
    app = await start(app_with, rest, public_base_url=None)
    reply = await place(app, {"to": TO})
    assert reply.status_code == 503 and reply.json()["error"] == "outbound_unavailable"
    assert "PUBLIC_BASE_URL" in reply.json()["detail"]
    assert rest.outbound_calls == {}


async def test_each_bad_field_is_named(app_with: AppFactory, rest: FakeTwilioRest) -> None:
    app = await start(app_with, rest)
    reply = await place(
        app,
        {
            "to": "4155550123",
            "from": "me",
            "agent": "nobody",
            "machine_detection": "maybe",
            "context": {"caller_number": "x", "ok": [1]},
            "instructions": "Hi {unknown}",
            "color": "red",
        },
    )
    assert reply.status_code == 422
    fields = {f["field"] for f in reply.json()["fields"]}
    assert fields == {
        "to",
        "from",
        "agent",
        "machine_detection",
        "context.caller_number",
        "context.ok",
        "instructions",
        "color",
    }
    reply = await place(app, {"to": TO, "machine_detection": "voicemail"})
    assert [f["field"] for f in reply.json()["fields"]] == ["voicemail_message"]
    async with httpx.AsyncClient() as client:
        reply = await client.post(f"{app.http_url}/calls", json={"to": TO})
    assert reply.status_code == 401
    assert rest.outbound_calls == {}


async def test_unsigned_status_callbacks_are_refused(
    app_with: AppFactory, rest: FakeTwilioRest, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start(app_with, rest)
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{app.http_url}/call-status?outbound=OBx",
            data={"CallSid": "CA" + "1" * 32, "CallStatus": "completed"},
        )
    assert reply.status_code == 403
    assert any(r.getMessage() == "webhook.bad_signature" for r in caplog.records)


# -- replicas ------------------------------------------------------------------------------


async def test_the_stream_on_another_process_gets_its_calls_settings(
    app_with: AppFactory, realtime: FakeRealtime, rest: FakeTwilioRest, pg_url: str
) -> None:
    """Two app processes share the PostgreSQL store; the call is placed through the first,
    Twilio opens its stream on the second and sends its callbacks (the verdict too) to the
    first: the settings and the verdict reach the stream through the store alone."""
    realtime.add_responses(said(GREETING))
    placing = await start(app_with, rest, database_url=pg_url)
    serving = await start(app_with, rest, database_url=pg_url)
    rest.route(placing.public_base, placing.http_url, streams_to=serving.http_url)
    rest.script_outbound(OutboundScript(outcome="human", greeting=speech(HELLO), amd_after=1.5))
    reply = await place(
        placing,
        {
            "to": TO,
            "instructions": "You are calling {name} for Example Clinic.",
            "context": {"name": "Grace"},
            "machine_detection": "hangup",
        },
    )
    assert reply.status_code == 201, reply.text
    call_sid = reply.json()["call_sid"]
    stream = await rest.wait_for_outbound_call(timeout=10)
    conn = await realtime.wait_connection(timeout=10)
    update = await conn.wait_for("session.update", timeout=10)
    assert 'You are calling "Grace" for Example Clinic.' in update["session"]["instructions"]
    amd = await rest.wait_for_callback(predicate=lambda c: c.kind == "amd", timeout=10)
    await stream.wait_for_heard(len(speech(GREETING)), timeout=20)
    assert first_media_at(stream.events) > amd.time  # the verdict crossed over first
    await stream.hangup()
    record = await record_of(placing, call_sid)  # written by the second, read by the first
    assert record["direction"] == "outbound" and record["answered_by"] == "human"
    # The second process bridged it; the first never had the stream.
    served = await scrape(serving, BEARER)
    placed = await scrape(placing, BEARER)
    assert value(served, "bridge_calls_total", outcome="caller_hung_up") == 1
    assert value(placed, "bridge_calls_total", outcome="caller_hung_up") == 0
    assert value(placed, "bridge_outbound_calls_total", result="created") == 1
    delivered = {c.delivered_to.split("/call-status")[0] for c in rest.callbacks}
    assert delivered == {placing.http_url}
    assert value(placed, "bridge_outbound_answered_by_total", answered_by="human") == 1


async def _get(app: RunningApp, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{app.http_url}{path}", headers=BEARER)
