"""Self-tests of the fake Twilio's outbound calls (``Calls.json`` + the call's flow).

Real loopback sockets only: twilio-python creates the calls, a tiny stdlib HTTP receiver
takes the callbacks and checks their signatures with twilio's ``RequestValidator``, and a
tiny websockets server plays the bridge's ``/media-stream``. No test here touches the app.
"""

# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse
from websockets.asyncio.server import ServerConnection, serve

from tests.fakes.audio import tone
from tests.fakes.twilio_outbound import OutboundScript
from tests.fakes.twilio_rest import FakeTwilioRest, RestReply
from tests.fakes.watch import Watch

ACCOUNT_SID = "AC" + "1" * 32
TOKEN = "outbound-auth-token"
PUBLIC = "https://bridge.example.com"
TO, FROM = "+15005550006", "+15005550001"


@dataclass
class Received:
    method: str
    path: str
    params: dict[str, str]
    signature: str
    valid: bool


class Receiver:
    """The app's webhook side: records each request and whether its signature is valid."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.watch = Watch()
        self.port = 0
        self.twiml = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        validator = RequestValidator(TOKEN)
        self._writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while line := await reader.readline():
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := (await reader.readline()).decode()) not in ("\r\n", "\n", ""):
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = (await reader.readexactly(length)).decode() if length else ""
                params = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
                signature = headers.get("x-twilio-signature", "")
                valid = validator.validate(PUBLIC + target, params, signature)
                if method == "GET":  # signed over the URL with its query, no body
                    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
                    params = {k: v[-1] for k, v in query.items()}
                self.requests.append(
                    Received(method, urlsplit(target).path, params, signature, valid)
                )
                self.watch.notify()
                reply = (self.twiml or "<Response/>").encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                    + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        self._writers.discard(writer)
        writer.close()

    async def wait(self, count: int, path: str | None = None, timeout: float = 5) -> Received:
        def nth() -> Received | None:
            hits = [r for r in self.requests if path is None or r.path == path]
            return hits[count - 1] if len(hits) >= count else None

        return await self.watch.wait(nth, timeout, f"webhook #{count} to {path}")

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


class StreamEndpoint:
    """The bridge's ``/media-stream``: records upgrades and messages; can close the socket."""

    def __init__(self) -> None:
        self.upgrades: list[dict[str, str]] = []
        self.messages: list[dict[str, Any]] = []
        self.sockets: list[ServerConnection] = []
        self.watch = Watch()
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.upgrades.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.sockets.append(ws)
        self.watch.notify()
        with contextlib.suppress(Exception):
            async for message in ws:
                self.messages.append(json.loads(message))
                self.watch.notify()

    async def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        def nth() -> dict[str, Any] | None:
            hits = [m for m in self.messages if m.get("event") == event]
            return hits[count - 1] if len(hits) >= count else None

        return await self.watch.wait(nth, 5, f"stream message {event!r} #{count}")

    def audio(self) -> bytes:
        return b"".join(
            base64.b64decode(m["media"]["payload"]) for m in self.messages if m["event"] == "media"
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
async def endpoint() -> AsyncIterator[StreamEndpoint]:
    ep = StreamEndpoint()
    async with serve(ep.handler, "127.0.0.1", 0) as server:
        ep.port = next(iter(server.sockets)).getsockname()[1]
        yield ep


@pytest.fixture
async def rest(receiver: Receiver, endpoint: StreamEndpoint) -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(expected_auth=(ACCOUNT_SID, TOKEN)) as fake:
        fake.route(PUBLIC, receiver.url)  # callbacks
        fake.route("wss://bridge.example.com/media-stream", f"ws://127.0.0.1:{endpoint.port}")
        yield fake


def _client(rest: FakeTwilioRest, token: str = TOKEN) -> Client:
    client = Client(ACCOUNT_SID, token)
    client.api.base_url = rest.base_url
    return client


def _twiml(**params: str) -> str:
    response = VoiceResponse()
    stream = response.connect().stream(url="wss://bridge.example.com/media-stream")
    for name, value in params.items():
        stream.parameter(name=name, value=value)
    response.say("Sorry, something went wrong.")
    return str(response)


ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]


async def _create(rest: FakeTwilioRest, **kwargs: Any) -> Any:
    values: dict[str, Any] = {
        "to": TO,
        "from_": FROM,
        "twiml": _twiml(agent="sales", CallKind="outbound"),
        "status_callback": f"{PUBLIC}/call-status",
        "status_callback_event": ALL_EVENTS,
    }
    values.update(kwargs)
    client = _client(rest)
    return await asyncio.to_thread(lambda: client.calls.create(**values))


def _statuses(receiver: Receiver) -> list[tuple[str, str]]:
    """``(SequenceNumber, CallStatus)`` of the status callbacks received, in arrival order."""
    return [
        (r.params["SequenceNumber"], r.params["CallStatus"]) for r in receiver.on("/call-status")
    ]


# ---------------------------------------------------------------------------- create


async def test_create_answers_twilios_call_json(rest: FakeTwilioRest) -> None:
    rest.script_outbound(OutboundScript(outcome="no-answer"))
    call = await _create(rest, machine_detection="Enable", async_amd="true")
    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert call.status == "queued" and call.direction == "outbound-api"
    assert call.to == TO and call._from == FROM and call.account_sid == ACCOUNT_SID
    assert call.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call.sid}.json"
    assert call.api_version == "2010-04-01" and call.answered_by is None
    req = await rest.wait_for_request()
    assert req.status == 201 and req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert req.auth == (ACCOUNT_SID, TOKEN) and req.call_sid == call.sid
    assert req.form_lists["StatusCallbackEvent"] == ALL_EVENTS
    assert req.form["MachineDetection"] == "Enable" and req.form["AsyncAmd"] == "true"
    assert '<Stream url="wss://bridge.example.com/media-stream">' in req.form["Twiml"]
    # Fetching it later gives its current state, with the same shape.
    ended = await rest.wait_for_outbound_end(call.sid)
    client = _client(rest)
    fetched = await asyncio.to_thread(lambda: client.calls(call.sid).fetch())
    assert fetched.status == "no-answer" == ended.status and fetched.direction == "outbound-api"


@pytest.mark.parametrize(
    ("kwargs", "script", "status", "code", "text"),
    [
        ({"to": "5551234"}, None, 400, 21211, "The 'To' number 5551234 is not a valid phone"),
        ({"from_": "+0123"}, None, 400, 21212, "The 'From' number +0123 is not a valid phone"),
        ({"twiml": None}, None, 400, 21205, "Url, Twiml or ApplicationSid"),
        ({}, RestReply(code=21215), 400, 21215, f"Account not authorized to call {TO}"),
        ({}, RestReply(code=21216), 400, 21216, f"Account not allowed to call {TO}"),
        ({}, RestReply(code=21210), 400, 21210, f"source phone number provided, {FROM}"),
        ({}, RestReply(code=20429), 429, 20429, "Too Many Requests"),
        ({}, RestReply(503), 503, 20503, "Service is unavailable"),
    ],
)
async def test_create_errors_are_shaped_like_twilios(
    rest: FakeTwilioRest,
    receiver: Receiver,
    kwargs: dict[str, Any],
    script: RestReply | None,
    status: int,
    code: int,
    text: str,
) -> None:
    if script is not None:
        rest.script_create(script)
    with pytest.raises(TwilioRestException) as failed:
        await _create(rest, **kwargs)
    assert failed.value.status == status and failed.value.code == code
    assert text in str(failed.value.msg)
    req = rest.requests[-1]
    assert req.response == {
        "code": code,
        "message": req.response["message"],
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    assert rest.outbound_calls == {} and receiver.requests == []


async def test_create_with_wrong_auth_is_20003(rest: FakeTwilioRest) -> None:
    client = _client(rest, token="wrong")
    with pytest.raises(TwilioRestException) as denied:
        await asyncio.to_thread(lambda: client.calls.create(to=TO, from_=FROM, twiml=_twiml()))
    assert denied.value.status == 401 and denied.value.code == 20003
    assert rest.outbound_calls == {}


async def test_create_slow_and_unanswered(rest: FakeTwilioRest) -> None:
    rest.script_outbound(OutboundScript(outcome="busy"), OutboundScript(outcome="busy"))
    rest.script_create(RestReply(delay=0.3), RestReply(drop=True, delay=0.05))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    slow = await _create(rest)
    assert loop.time() - t0 >= 0.3 and slow.status == "queued"
    with pytest.raises(requests.exceptions.ConnectionError):
        await _create(rest)
    assert [r.status for r in rest.requests] == [201, 0]
    assert len(rest.outbound_calls) == 1  # a dropped request created no call


# ---------------------------------------------------------------------------- the call's flow


async def test_answered_call_sends_signed_callbacks_and_opens_the_stream(
    rest: FakeTwilioRest, receiver: Receiver, endpoint: StreamEndpoint
) -> None:
    hello = tone(200)
    rest.script_outbound(OutboundScript(outcome="human", greeting=hello, amd_after=0.1))
    call = await _create(
        rest,
        machine_detection="Enable",
        async_amd="true",
        async_amd_status_callback=f"{PUBLIC}/call-status",
    )
    stream = await rest.wait_for_outbound_call()
    assert stream.call_sid == call.sid and stream.account_sid == ACCOUNT_SID
    start = await endpoint.wait_for("start")
    assert start["start"]["callSid"] == call.sid
    assert start["start"]["accountSid"] == ACCOUNT_SID
    assert start["start"]["customParameters"] == {"agent": "sales", "CallKind": "outbound"}
    assert start["start"]["tracks"] == ["inbound"]
    # The upgrade is signed over the public wss:// URL, with no parameters, as Twilio does.
    signature = endpoint.upgrades[0]["x-twilio-signature"]
    assert RequestValidator(TOKEN).validate("wss://bridge.example.com/media-stream", {}, signature)
    # The callee's "Hello?" reaches the bridge in the stream's media.
    await stream.wait_for_event("say_done")
    await endpoint.wait_for("media", count=len(stream.sent_audio) // 160)
    assert hello in endpoint.audio()
    sent = await rest.wait_for_callback(predicate=lambda c: c.kind == "amd")
    amd = next(r for r in receiver.on("/call-status") if "AnsweredBy" in r.params)
    assert sent.status == 200 and sent.params == amd.params
    assert amd.valid and amd.params["AnsweredBy"] == "human"
    assert amd.params["CallSid"] == call.sid and amd.params["AccountSid"] == ACCOUNT_SID
    assert int(amd.params["MachineDetectionDuration"]) == 100
    # The bridge hangs up through the call-update resource: stop, close, completed.
    client = _client(rest)
    updated = await asyncio.to_thread(lambda: client.calls(call.sid).update(status="completed"))
    assert updated.status == "completed" and updated.direction == "outbound-api"
    stop = await endpoint.wait_for("stop")
    assert stop["stop"] == {"accountSid": ACCOUNT_SID, "callSid": call.sid}
    ended = await rest.wait_for_outbound_end(call.sid)
    assert ended.status == "completed" and ended.ended_by_rest == "completed"
    assert ended.verbs_after_stream == ["Say"]
    status = [r for r in receiver.on("/call-status") if "AnsweredBy" not in r.params]
    assert [(r.params["SequenceNumber"], r.params["CallStatus"]) for r in status] == [
        ("0", "initiated"),
        ("1", "ringing"),
        ("2", "in-progress"),
        ("3", "completed"),
    ]
    assert all(r.valid for r in receiver.requests), [r for r in receiver.requests if not r.valid]
    first, final = status[0].params, status[-1].params
    assert {k: first[k] for k in ("CallSid", "AccountSid", "From", "To", "Direction")} == {
        "CallSid": call.sid,
        "AccountSid": ACCOUNT_SID,
        "From": FROM,
        "To": TO,
        "Direction": "outbound-api",
    }
    assert first["CallbackSource"] == "call-progress-events"
    assert first["Timestamp"].endswith("+0000") and "CallDuration" not in first
    assert int(final["CallDuration"]) >= 1
    assert [c.kind for c in rest.callbacks].count("amd") == 1


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("no-answer", [("0", "initiated"), ("1", "ringing"), ("2", "no-answer")]),
        ("busy", [("0", "initiated"), ("1", "busy")]),
        ("failed", [("0", "initiated"), ("1", "failed")]),
    ],
)
async def test_unanswered_calls_send_no_stream(
    rest: FakeTwilioRest,
    receiver: Receiver,
    endpoint: StreamEndpoint,
    outcome: str,
    expected: list[tuple[str, str]],
) -> None:
    rest.script_outbound(OutboundScript(outcome=outcome))
    call = await _create(
        rest,
        machine_detection="Enable",
        async_amd="true",
        async_amd_status_callback=f"{PUBLIC}/amd",
    )
    ended = await rest.wait_for_outbound_end(call.sid)
    assert ended.status == outcome and ended.stream is None
    assert _statuses(receiver) == expected
    assert receiver.requests[-1].params["CallDuration"] == "0"
    assert all(r.valid for r in receiver.requests)
    assert endpoint.upgrades == [] and receiver.on("/amd") == []


async def test_only_completed_without_events_and_bridge_close_ends_the_call(
    rest: FakeTwilioRest, receiver: Receiver, endpoint: StreamEndpoint
) -> None:
    call = await _create(rest, status_callback_event=None)
    await rest.wait_for_outbound_call()
    await endpoint.wait_for("start")
    await endpoint.sockets[0].close(1000, "bye")  # the bridge ends the stream itself
    ended = await rest.wait_for_outbound_end(call.sid)
    assert ended.status == "completed" and ended.ended_by_rest is None
    assert _statuses(receiver) == [("0", "completed")]
    assert receiver.requests[0].valid


async def test_voicemail_detect_message_end(
    rest: FakeTwilioRest, receiver: Receiver, endpoint: StreamEndpoint
) -> None:
    rest.script_outbound(
        OutboundScript(outcome="machine", message_end_after=0.2, greeting=tone(150))
    )
    call = await _create(
        rest,
        machine_detection="DetectMessageEnd",
        async_amd="true",
        async_amd_status_callback=f"{PUBLIC}/amd",
        status_callback_event=["completed"],
    )
    await rest.wait_for_outbound_call()
    amd = await receiver.wait(1, "/amd")
    assert amd.valid and amd.params["AnsweredBy"] == "machine_end_beep"
    assert amd.params["MachineDetectionDuration"] == "200"
    assert rest.outbound_calls[call.sid].answered_by == "machine_end_beep"
    await endpoint.wait_for("start")
    await endpoint.sockets[0].close()
    await rest.wait_for_outbound_end(call.sid)
    assert _statuses(receiver) == [("0", "completed")]


async def test_detection_timeout_gives_unknown(rest: FakeTwilioRest, receiver: Receiver) -> None:
    rest.script_outbound(OutboundScript(outcome="machine", message_end_after=5.0))
    await _create(
        rest,
        machine_detection="DetectMessageEnd",
        machine_detection_timeout=1,
        async_amd="true",
        async_amd_status_callback=f"{PUBLIC}/amd",
    )
    amd = await receiver.wait(1, "/amd", timeout=5)
    assert (
        amd.params["AnsweredBy"] == "unknown" and amd.params["MachineDetectionDuration"] == "1000"
    )


async def test_cancel_while_ringing(
    rest: FakeTwilioRest, receiver: Receiver, endpoint: StreamEndpoint
) -> None:
    rest.script_outbound(OutboundScript(ring_time=10.0))
    call = await _create(rest)
    await receiver.wait(2, "/call-status")  # initiated, ringing
    client = _client(rest)
    await asyncio.to_thread(lambda: client.calls(call.sid).update(status="canceled"))
    ended = await rest.wait_for_outbound_end(call.sid)
    assert ended.status == "canceled" and ended.stream is None
    assert _statuses(receiver) == [("0", "initiated"), ("1", "ringing"), ("2", "canceled")]
    assert endpoint.upgrades == []


async def test_callee_hangs_up(
    rest: FakeTwilioRest, receiver: Receiver, endpoint: StreamEndpoint
) -> None:
    rest.script_outbound(OutboundScript(callee_hangup_after=0.2))
    call = await _create(rest, status_callback_method="GET")
    await endpoint.wait_for("stop")
    ended = await rest.wait_for_outbound_end(call.sid)
    assert ended.status == "completed"
    assert [r.method for r in receiver.requests] == ["GET"] * 4
    assert all(r.valid for r in receiver.requests)
