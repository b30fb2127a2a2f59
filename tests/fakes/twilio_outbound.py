"""Twilio's side of an outbound call, for ``FakeTwilioRest``'s ``Calls.json`` resource.

After a successful ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` the fake plays the
call the way Twilio does, driven by an ``OutboundScript``:

* status callbacks: signed ``application/x-www-form-urlencoded`` requests to
  ``StatusCallback`` (``StatusCallbackMethod``, POST by default) for the events listed in
  ``StatusCallbackEvent`` (``initiated``, ``ringing``, ``answered``, ``completed``; only
  ``completed`` when none is listed), with ``CallStatus`` ``initiated`` / ``ringing`` /
  ``in-progress`` and a final ``completed`` | ``busy`` | ``no-answer`` | ``failed`` |
  ``canceled`` (the ``completed`` event), ``SequenceNumber`` from 0, ``CallbackSource``
  ``call-progress-events``, an RFC 2822 ``Timestamp`` and, on the final one, ``CallDuration``;
* answering-machine detection: with ``MachineDetection`` (``Enable`` | ``DetectMessageEnd``)
  and ``AsyncAmd=true``, a signed POST to ``AsyncAmdStatusCallback`` with ``AnsweredBy`` and
  ``MachineDetectionDuration`` (ms); ``MachineDetectionTimeout`` (s, default 30) turns a
  slower verdict into ``unknown``. Synchronous detection delays the TwiML until the verdict;
  the status callbacks after it then carry ``AnsweredBy`` [UNVERIFIED for callbacks];
* an answered call runs its TwiML (``Twiml``, or fetched with a signed POST to ``Url``): the
  ``<Connect><Stream url>`` is opened as a ``FakeTwilioCall`` (signed upgrade over the public
  ``wss://`` URL, ``start.customParameters`` = the ``<Parameter>``s), exactly like an inbound
  stream; when that stream ends (the bridge closes it, the callee hangs up, or a REST update
  ends it) the call completes and the final callback follows.

Public URLs (``https://bridge.example.com/...``) are what Twilio signs; ``route()`` maps them
to the loopback server that really answers (``https`` -> ``http``, ``wss`` -> ``ws``).
"""

# Waiting helpers take ``timeout=`` on purpose: tests read better as ``wait_for_x(timeout=5)``.

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.watch import Watch

E164 = re.compile(r"^\+[1-9]\d{1,14}$")

CREATE_ERRORS: dict[int, tuple[int, str]] = {
    # code: (HTTP status, message template; {to} / {from_} are the request's values)
    20003: (401, "Authenticate"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service is unavailable. Please try again"),
    21201: (400, "No 'To' number is specified"),
    21205: (400, "Either Url, Twiml or ApplicationSid is required"),
    21210: (
        400,
        "The source phone number provided, {from_}, is not yet verified for your account. "
        "You may only make calls from phone numbers that you've verified or purchased "
        "from Twilio.",
    ),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21212: (
        400,
        "The 'From' number {from_} is not a valid phone number, shortcode, or alphanumeric "
        "sender ID.",
    ),
    21213: (400, "No 'From' number is specified"),
    21215: (
        400,
        "Account not authorized to call {to}. Perhaps you need to enable some international "
        "permissions: https://www.twilio.com/console/voice/calls/geo-permissions/low-risk",
    ),
    21216: (400, "Account not allowed to call {to}"),
}
"""Twilio error codes a ``Calls.json`` create can answer with (``RestReply(code=...)``)."""

OUTCOMES = ("human", "machine", "fax", "no-answer", "busy", "failed")
FINAL_STATUSES = ("completed", "busy", "no-answer", "failed", "canceled")
EVENT_OF_STATUS = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}


@dataclass
class OutboundScript:
    """How one outbound call goes (all times in seconds of real time).

    ``outcome``: ``human`` | ``machine`` | ``fax`` (answered) or ``no-answer`` | ``busy`` |
    ``failed`` (never answered, no stream). ``answered_by`` overrides the AMD verdict
    (default: ``human``; ``machine_start`` under ``Enable``, ``machine_end_beep`` under
    ``DetectMessageEnd``; ``fax``), ``amd_after`` is when it is reached after the answer
    (``message_end_after`` for a ``machine_end_*`` verdict). ``greeting`` is callee audio the
    fake plays into the stream as soon as it starts (``"Hello?"``, or a voicemail greeting
    and beep); ``callee_hangup_after`` makes the callee hang up that long after the answer.
    """

    outcome: str = "human"
    queue_time: float = 0.0
    ring_after: float = 0.01
    """From ``initiated`` to ``ringing``."""
    ring_time: float = 0.05
    """From ``ringing`` to the answer (or to ``no-answer``)."""
    answered_by: str | None = None
    amd_after: float = 0.05
    message_end_after: float = 0.3
    greeting: bytes | None = None
    callee_hangup_after: float | None = None
    stream_audio: bool = True
    """False: the stream sends ``connected`` + ``start`` but no ``media`` frames."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")


@dataclass
class Callback:
    """One webhook request the fake sent (to the public ``url``, delivered to ``delivered_to``)."""

    kind: str
    """``status`` | ``amd`` | ``twiml``."""
    call_sid: str
    url: str
    delivered_to: str
    method: str
    params: dict[str, str]
    signature: str
    time: float
    status: int = 0
    """The receiver's HTTP status (0: no answer)."""
    body: str = ""
    error: str = ""

    @property
    def event(self) -> str | None:
        """For a status callback, the ``StatusCallbackEvent`` it reports."""
        if self.kind != "status":
            return None
        status = self.params.get("CallStatus", "")
        return EVENT_OF_STATUS.get(status, "completed")


@dataclass
class OutboundCall:
    """The fake's state for one created call."""

    sid: str
    account_sid: str
    to: str
    from_: str
    form: dict[str, str]
    events: list[str]
    """Subscribed ``StatusCallbackEvent``s."""
    script: OutboundScript
    status: str = "queued"
    answered_by: str | None = None
    created_at: float = 0.0
    answered_at: float | None = None
    ended_at: float | None = None
    duration: int | None = None
    twiml: str | None = None
    stream_url: str | None = None
    stream_parameters: dict[str, str] = field(default_factory=dict)
    verbs_after_stream: list[str] = field(default_factory=list)
    stream: FakeTwilioCall | None = None
    stream_error: str = ""
    ended_by_rest: str | None = None
    """The ``Status`` of a REST update that ended the call, if one did."""
    redirected: bool = False
    seq: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    update: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def amd(self) -> str | None:
        return self.form.get("MachineDetection") or None

    @property
    def async_amd(self) -> bool:
        return self.form.get("AsyncAmd", "").lower() == "true"

    def resource(self, path: str) -> dict[str, Any]:
        """The Call resource JSON, as Twilio answers a create, fetch or update."""
        base = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.sid}"
        subresources = (
            "notifications",
            "recordings",
            "payments",
            "events",
            "siprec",
            "streams",
            "transcriptions",
            "user_defined_message_subscriptions",
            "user_defined_messages",
        )
        now = formatdate(usegmt=True)
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": self.answered_by,
            "api_version": "2010-04-01",
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "duration": None if self.duration is None else str(self.duration),
            "end_time": None,
            "forwarded_from": None,
            "from": self.from_,
            "from_formatted": self.from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": "PN" + "0" * 32,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": self.sid,
            "start_time": None,
            "status": self.status,
            "subresource_uris": {name: f"{base}/{name}.json" for name in subresources},
            "to": self.to,
            "to_formatted": self.to,
            "trunk_sid": None,
            "uri": f"{base}.json",
        }


def create_error(code: int, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """HTTP status and Twilio's error body for ``code`` on a create with ``form``."""
    status, template = CREATE_ERRORS.get(code, (400, "Invalid parameter"))
    message = template.format(to=form.get("To", ""), from_=form.get("From", ""))
    return status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def validate_create(form: dict[str, str]) -> int | None:
    """The Twilio error code for an invalid create request, or None."""
    to, from_ = form.get("To"), form.get("From")
    if not to:
        return 21201
    if not from_:
        return 21213
    if not E164.match(to):
        return 21211
    if not E164.match(from_):
        return 21212
    if not any(form.get(k) for k in ("Twiml", "Url", "ApplicationSid")):
        return 21205
    return None


def parse_stream_twiml(twiml: str) -> tuple[str | None, dict[str, str], list[str]]:
    """``(stream url, <Parameter>s, verbs after </Connect>)`` of a ``<Connect><Stream>``."""
    root = ET.fromstring(twiml.strip())
    url: str | None = None
    params: dict[str, str] = {}
    after: list[str] = []
    seen_connect = False
    for verb in root:
        if verb.tag == "Connect" and not seen_connect:
            seen_connect = True
            stream = verb.find("Stream")
            if stream is not None:
                url = stream.get("url")
                for p in stream.findall("Parameter"):
                    params[p.get("name", "")] = p.get("value", "")
        elif seen_connect:
            after.append(verb.tag)
    return url, params, after


def rfc2822_now() -> str:
    return datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


class OutboundEngine:
    """Runs created calls' flows; owned by ``FakeTwilioRest`` (``rest.outbound``)."""

    def __init__(
        self,
        token: Callable[[], str | None],
        register: Callable[[FakeTwilioCall], None],
        spawn: Callable[[Any], asyncio.Task[Any]],
    ) -> None:
        self._token = token
        self._register = register
        self._spawn = spawn
        self.calls: dict[str, OutboundCall] = {}
        self.callbacks: list[Callback] = []
        self.scripts: list[OutboundScript] = []
        self.default_script = OutboundScript()
        self.routes: list[tuple[str, str]] = []
        self.stream_headers: dict[str, str] = {}
        self.watch = Watch()
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ configuration

    def route(self, public_base: str, local_base: str, *, streams_to: str | None = None) -> None:
        """Deliver requests for ``public_base`` (https) to ``local_base`` (http), and open
        streams for its ``wss://`` twin at the ``ws://`` twin of ``local_base``. Routing a
        public base again replaces its route (a load balancer now picking another replica);
        ``streams_to`` sends the streams to another server than the callbacks."""
        public_base, local_base = public_base.rstrip("/"), local_base.rstrip("/")
        stream_base = (streams_to or local_base).rstrip("/")
        new = [(public_base, local_base)]
        for secure, plain in (("https://", "wss://"), ("http://", "ws://")):
            if public_base.startswith(secure):
                ws_public = plain + public_base[len(secure) :]
                ws_local = stream_base.replace("https://", "wss://").replace("http://", "ws://")
                new.append((ws_public, ws_local))
        replaced = {public for public, _ in new}
        self.routes[:] = [r for r in self.routes if r[0] not in replaced] + new

    def local(self, url: str) -> str:
        """Where a public URL really is: the longest routed prefix wins."""
        hits = [
            (public, local)
            for public, local in self.routes
            if url == public or url.startswith((public + "/", public + "?"))
        ]
        if not hits:
            return url
        public, local = max(hits, key=lambda h: len(h[0]))
        return local + url[len(public) :]

    # ------------------------------------------------------------------ create

    def create(self, account_sid: str, form: dict[str, str], events: list[str]) -> OutboundCall:
        script = self.scripts.pop(0) if self.scripts else self.default_script
        call = OutboundCall(
            sid="CA" + secrets.token_hex(16),
            account_sid=account_sid,
            to=form["To"],
            from_=form["From"],
            form=dict(form),
            events=events,
            script=script,
            created_at=asyncio.get_running_loop().time(),
        )
        self.calls[call.sid] = call
        self.watch.notify()
        return call

    def start(self, call: OutboundCall) -> None:
        """Run the call's flow (after the 201 has been written)."""
        self._spawn(self._flow(call))

    def on_update(self, call: OutboundCall, form: dict[str, str]) -> None:
        """A successful REST update of an outbound call."""
        if call.done.is_set():
            return
        if form.get("Status") in ("completed", "canceled"):
            call.ended_by_rest = form["Status"]
        elif "Twiml" in form or "Url" in form:
            call.redirected = True
        call.update.set()

    # ------------------------------------------------------------------ the flow

    async def _wait_update(self, call: OutboundCall, seconds: float) -> bool:
        """Wait ``seconds`` unless a REST update ends the call first (True then)."""
        if call.ended_by_rest:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.update.wait(), seconds)
        call.update.clear()
        return call.ended_by_rest is not None

    async def _flow(self, call: OutboundCall) -> None:
        s = call.script
        loop = asyncio.get_running_loop()
        try:
            if await self._wait_update(call, s.queue_time):
                return await self._finish(call, "canceled")
            await self._status(call, "initiated")
            if s.outcome == "failed":
                return await self._finish(call, "failed")
            if await self._wait_update(call, s.ring_after):
                return await self._finish(call, "canceled")
            if s.outcome == "busy":
                return await self._finish(call, "busy")
            await self._status(call, "ringing")
            if await self._wait_update(call, s.ring_time):
                return await self._finish(call, "canceled")
            if s.outcome == "no-answer":
                return await self._finish(call, "no-answer")
            call.answered_at = loop.time()
            await self._status(call, "in-progress")
            if call.amd and call.form.get("AsyncAmd", "").lower() != "true":
                # Synchronous detection: the TwiML waits for the verdict.
                verdict, after = self._verdict(call)
                if await self._wait_update(call, after):
                    return await self._finish(call, "completed")
                call.answered_by = verdict
                self.watch.notify()
            elif call.amd:
                self._spawn(self._async_amd(call))
            await self._run_twiml(call)
            await self._finish(call, "completed")
        finally:
            if call.stream is not None and not call.stream.closed.is_set():
                await call.stream.close()
            if not call.done.is_set():
                call.done.set()
                self.watch.notify()

    async def _run_twiml(self, call: OutboundCall) -> None:
        twiml = call.form.get("Twiml")
        if not twiml and call.form.get("Url"):
            fetched = await self._send(
                call, "twiml", call.form["Url"], call.form.get("Method", "POST"), self._base(call)
            )
            twiml = fetched.body if 200 <= fetched.status < 300 else None
        call.twiml = twiml
        if not twiml:
            call.stream_error = "no TwiML"
            return
        try:
            url, params, after = parse_stream_twiml(twiml)
        except ET.ParseError as exc:
            call.stream_error = f"TwiML is not XML: {exc}"
            return
        call.stream_url, call.stream_parameters, call.verbs_after_stream = url, params, after
        if not url:
            call.stream_error = "no <Connect><Stream url>"
            return
        token = self._token()
        signature = RequestValidator(token).compute_signature(url, {}) if token else ""
        stream = FakeTwilioCall(
            self.local(url),
            call_sid=call.sid,
            account_sid=call.account_sid,
            custom_parameters=params,
            headers={"X-Twilio-Signature": signature, **self.stream_headers},
        )
        try:
            await stream.connect()
            await stream.start(stream_audio=call.script.stream_audio)
        except Exception as exc:  # a refused upgrade: Twilio's error 31920 and the call goes on
            call.stream_error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await stream.close()
            return
        call.stream = stream
        self._register(stream)
        self.watch.notify()
        if call.script.greeting and call.script.stream_audio:
            self._spawn(self._say(stream, call.script.greeting))
        if call.script.callee_hangup_after is not None:
            self._spawn(self._callee_hangup(call, stream, call.script.callee_hangup_after))
        await stream.closed.wait()

    @staticmethod
    async def _say(stream: FakeTwilioCall, audio: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stream.say(audio)

    @staticmethod
    async def _callee_hangup(call: OutboundCall, stream: FakeTwilioCall, after: float) -> None:
        assert call.answered_at is not None
        delay = call.answered_at + after - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, delay))
        if not stream.closed.is_set():
            await stream.hangup()

    def _verdict(self, call: OutboundCall) -> tuple[str, float]:
        """``(AnsweredBy, seconds after the answer)`` for this call's detection."""
        s = call.script
        if s.answered_by is not None:
            verdict = s.answered_by
        elif s.outcome == "fax":
            verdict = "fax"
        elif s.outcome == "machine":
            verdict = "machine_end_beep" if call.amd == "DetectMessageEnd" else "machine_start"
        else:
            verdict = "human"
        after = s.message_end_after if verdict.startswith("machine_end") else s.amd_after
        limit = float(call.form.get("MachineDetectionTimeout") or 30)
        if after > limit:
            return "unknown", limit
        return verdict, after

    async def _async_amd(self, call: OutboundCall) -> None:
        verdict, after = self._verdict(call)
        assert call.answered_at is not None
        delay = call.answered_at + after - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        if call.done.is_set() or call.status != "in-progress":
            return
        call.answered_by = verdict
        url = call.form.get("AsyncAmdStatusCallback")
        if url:
            params = {
                "AccountSid": call.account_sid,
                "CallSid": call.sid,
                "AnsweredBy": verdict,
                "MachineDetectionDuration": str(round(after * 1000)),
            }
            await self._send(
                call, "amd", url, call.form.get("AsyncAmdStatusCallbackMethod", "POST"), params
            )
        self.watch.notify()

    async def _finish(self, call: OutboundCall, status: str) -> None:
        if call.stream is not None and not call.stream.closed.is_set():
            await call.stream.close()
        loop = asyncio.get_running_loop()
        call.ended_at = loop.time()
        if call.answered_at is not None and status == "completed":
            call.duration = max(1, math.ceil(call.ended_at - call.answered_at))
        else:
            call.duration = 0
        await self._status(call, status)

    async def _status(self, call: OutboundCall, status: str) -> None:
        call.status = status
        self.watch.notify()
        url = call.form.get("StatusCallback")
        event = EVENT_OF_STATUS.get(status, "completed")
        if not url or event not in call.events:
            return
        params = {
            **self._base(call),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call.seq),
            "Timestamp": rfc2822_now(),
        }
        call.seq += 1
        if status in FINAL_STATUSES:
            params["CallDuration"] = str(call.duration or 0)
        if call.answered_by and not call.async_amd:
            params["AnsweredBy"] = call.answered_by
        await self._send(call, "status", url, call.form.get("StatusCallbackMethod", "POST"), params)

    def _base(self, call: OutboundCall) -> dict[str, str]:
        """The parameters Twilio sends with every request about a call."""
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call.sid,
            "CallStatus": call.status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }

    async def _send(
        self, call: OutboundCall, kind: str, url: str, method: str, params: dict[str, str]
    ) -> Callback:
        """Send one signed webhook (one at a time per call, in order) and record it."""
        method = method.upper()
        signed_url = url
        if method == "GET":
            joiner = "&" if urlsplit(url).query else "?"
            signed_url = url + joiner + urlencode(params)
        token = self._token()
        validator = RequestValidator(token) if token else None
        signature = ""
        if validator is not None:
            signature = validator.compute_signature(signed_url, {} if method == "GET" else params)
        record = Callback(
            kind=kind,
            call_sid=call.sid,
            url=url,
            delivered_to=self.local(signed_url),
            method=method,
            params=params,
            signature=signature,
            time=asyncio.get_running_loop().time(),
        )
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}
        async with call.lock:
            try:
                if method == "GET":
                    reply = await self._http.get(record.delivered_to, headers=headers)
                else:
                    reply = await self._http.post(record.delivered_to, data=params, headers=headers)
                record.status, record.body = reply.status_code, reply.text
            except httpx.HTTPError as exc:  # Twilio logs 11200 and goes on
                record.error = f"{type(exc).__name__}: {exc}"
            self.callbacks.append(record)
        self.watch.notify()
        return record

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
