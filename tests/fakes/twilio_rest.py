"""A tiny stand-in for ``https://api.twilio.com`` on a real loopback HTTP socket.

``FakeTwilioRest`` records every request (method, path, headers, Basic auth, parsed form body,
loop time) and answers the Call resource (``/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}
.json``) the way Twilio does: 200 with the call's JSON, or a scripted status with Twilio's error
body shape ``{"code", "message", "more_info", "status"}``.  Only the stdlib asyncio server is
used (HTTP/1.1 with keep-alive, Content-Length and chunked bodies), so it works equally for
twilio-python's sync ``requests`` client and its aiohttp-based async client.

Calls can be linked to a ``FakeTwilioCall`` with ``register_call``: a successful update that
ends or redirects the call (``Status=completed|canceled``, ``Twiml``, ``Url``) then ends that
media stream (``stop`` + close) like Twilio does.

Outbound calls: ``POST .../Calls.json`` validates ``To``/``From`` (E.164) and ``Twiml``/``Url``,
answers 201 with the Call JSON (or what ``script_create`` scripts), then plays the call as
``tests.fakes.twilio_outbound`` describes: signed status and AMD callbacks, and for an
answered call the TwiML's ``<Connect><Stream>`` opened as a ``FakeTwilioCall``
(``await rest.wait_for_outbound_call()``). Drive it with ``script_outbound(OutboundScript(...))``
or ``rest.outbound.default_script``; ``route(public_base, local_base)`` says where the public
callback and stream URLs really are.
"""

# Waiting helpers take ``timeout=`` on purpose: tests read better as ``wait_for_x(timeout=5)``.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tests.fakes.twilio_caller import FakeTwilioCall

from tests.fakes.twilio_outbound import (
    Callback,
    OutboundCall,
    OutboundEngine,
    OutboundScript,
    create_error,
    validate_create,
)

CALLS_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>AC[0-9a-fA-F]{32})/Calls\.json$")
CALL_PATH = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>AC[0-9a-fA-F]{32})/Calls/(?P<call>CA[0-9a-fA-F]{32})\.json$"
)

TWILIO_ERROR_CODES: dict[int, tuple[int, str]] = {
    400: (20001, "Invalid parameter"),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    404: (20404, "The requested resource was not found"),
    405: (20004, "Method not allowed"),
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
    503: (20503, "Service is unavailable. Please try again"),
}


@dataclass
class RestReply:
    """A scripted answer: HTTP ``status``, optional JSON ``body`` and a real-time ``delay``.

    ``code``: a Twilio error code (``CREATE_ERRORS``) whose status and body Twilio would send
    (``RestReply(code=21211)``; the status follows the code when left at 200). ``drop``: after
    ``delay``, close the connection without any answer.
    """

    status: int = 200
    body: dict[str, Any] | None = None
    delay: float = 0.0
    code: int | None = None
    drop: bool = False


@dataclass
class RestRequest:
    """One recorded HTTP request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes
    form: dict[str, str]
    """Form fields (last value wins); see ``form_lists`` for repeated fields."""
    form_lists: dict[str, list[str]]
    auth: tuple[str, str] | None
    """``(username, password)`` from HTTP Basic auth, if any."""
    time: float
    """Loop time when the request was fully read."""
    account_sid: str | None = None
    call_sid: str | None = None
    status: int = 0
    """The HTTP status the fake answered with."""
    response: dict[str, Any] = field(default_factory=dict)


class FakeTwilioRest:
    """Fake Twilio REST API; ``async with FakeTwilioRest() as rest`` and use ``rest.base_url``.

    ``statuses`` scripts the answers in order (ints or ``RestReply``), then 200s follow.
    ``expected_auth`` (username, password) makes other credentials get 401 (code 20003).
    """

    def __init__(
        self,
        statuses: list[int | RestReply] | None = None,
        *,
        expected_auth: tuple[str, str] | None = None,
        auth_token: str | None = None,
    ) -> None:
        self.replies: deque[RestReply] = deque(
            r if isinstance(r, RestReply) else RestReply(r) for r in statuses or []
        )
        self.expected_auth = expected_auth
        self.auth_token = auth_token
        """Signs outbound calls' callbacks and stream upgrades (default: the Basic password)."""
        self.create_replies: deque[RestReply] = deque()
        self.outbound = OutboundEngine(self._signing_token, self.register_call, self._spawn)
        self._last_password: str | None = None
        self.requests: list[RestRequest] = []
        self.calls: dict[str, FakeTwilioCall] = {}
        self.on_call_update: Callable[[RestRequest], Awaitable[None] | None] | None = None
        """Hook run after a successful call update has been answered."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._cond: asyncio.Condition | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: use as ``TWILIO_API_BASE_URL`` / ``client.api.base_url``."""
        return f"http://127.0.0.1:{self.port}"

    def script(self, *statuses: int | RestReply) -> None:
        """Append scripted replies."""
        self.replies.extend(r if isinstance(r, RestReply) else RestReply(r) for r in statuses)

    def script_create(self, *replies: int | RestReply) -> None:
        """Append scripted answers for ``Calls.json`` creates (then: validate and 201)."""
        self.create_replies.extend(r if isinstance(r, RestReply) else RestReply(r) for r in replies)

    def script_outbound(self, *scripts: OutboundScript) -> None:
        """How the next created calls go, in order (then ``outbound.default_script``)."""
        self.outbound.scripts.extend(scripts)

    def route(self, public_base: str, local_base: str, *, streams_to: str | None = None) -> None:
        """Deliver callbacks for ``public_base`` (and streams for its ``wss://`` twin) to
        ``local_base`` (streams to ``streams_to`` when given); signatures stay over the
        public URLs, as Twilio signs them."""
        self.outbound.route(public_base, local_base, streams_to=streams_to)

    @property
    def outbound_calls(self) -> dict[str, OutboundCall]:
        return self.outbound.calls

    @property
    def callbacks(self) -> list[Callback]:
        """Every webhook sent (status, amd, twiml), in the order sent."""
        return self.outbound.callbacks

    async def wait_for_outbound_call(
        self, timeout: float = 5.0, *, count: int = 1
    ) -> FakeTwilioCall:
        """The ``count``-th outbound call's media stream, once it has sent ``start``."""

        def nth() -> FakeTwilioCall | None:
            streams = [c.stream for c in self.outbound.calls.values() if c.stream is not None]
            return streams[count - 1] if len(streams) >= count else None

        return await self.outbound.watch.wait(nth, timeout, f"outbound stream #{count}")

    async def wait_for_callback(
        self,
        timeout: float = 5.0,
        *,
        count: int = 1,
        predicate: Callable[[Callback], bool] | None = None,
    ) -> Callback:
        """The ``count``-th sent webhook (matching ``predicate``), once it has been answered."""

        def nth() -> Callback | None:
            hits = [c for c in self.outbound.callbacks if predicate is None or predicate(c)]
            return hits[count - 1] if len(hits) >= count else None

        return await self.outbound.watch.wait(nth, timeout, f"callback #{count}")

    async def wait_for_outbound_end(self, call_sid: str, timeout: float = 5.0) -> OutboundCall:
        """Wait until the call's flow is over (its final callback has been answered)."""
        return await self.outbound.watch.wait(
            lambda: (c := self.outbound.calls.get(call_sid)) is not None and c.done.is_set() and c,
            timeout,
            f"end of outbound call {call_sid}",
        )

    def _signing_token(self) -> str | None:
        if self.auth_token is not None:
            return self.auth_token
        if self.expected_auth is not None:
            return self.expected_auth[1]
        return self._last_password

    def _spawn(self, aw: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def register_call(self, call: FakeTwilioCall) -> None:
        """Let a successful update of this call end its media stream, like Twilio."""
        self.calls[call.call_sid] = call

    async def __aenter__(self) -> FakeTwilioRest:
        self._cond = asyncio.Condition()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close keep-alive connections and finish background work."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)
        for ob in self.outbound.calls.values():
            if ob.stream is not None and not ob.stream.closed.is_set():
                await ob.stream.close()
        await self.outbound.aclose()
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for_request(
        self,
        timeout: float = 5.0,
        *,
        count: int = 1,
        predicate: Callable[[RestRequest], bool] | None = None,
    ) -> RestRequest:
        """Return the ``count``-th recorded request (matching ``predicate``), waiting for it."""
        assert self._cond is not None

        def matching() -> list[RestRequest]:
            return [r for r in self.requests if predicate is None or predicate(r)]

        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(lambda: len(matching()) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for REST request #{count} "
                f"(have {len(matching())})"
            ) from None
        return matching()[count - 1]

    # ------------------------------------------------------------------ HTTP plumbing

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, target, _version = request_line.decode("latin-1").rstrip().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = (await reader.readline()).decode("latin-1")
                    if line in ("\r\n", "\n", ""):
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await self._read_body(reader, headers)
                keep_alive = headers.get("connection", "").lower() != "close"
                answered = await self._handle(method, target, headers, body, writer, keep_alive)
                if not keep_alive or not answered:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            if me is not None:
                self._handlers.discard(me)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body.extend(await reader.readexactly(size))
                await reader.readline()
        length = int(headers.get("content-length", "0") or 0)
        return await reader.readexactly(length) if length else b""

    async def _handle(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        """Answer one request; False when a scripted ``drop`` left it unanswered."""
        split = urlsplit(target)
        form_lists: dict[str, list[str]] = {}
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form_lists = parse_qs(body.decode(), keep_blank_values=True)
        req = RestRequest(
            method=method,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body,
            form={k: v[-1] for k, v in form_lists.items()},
            form_lists=form_lists,
            auth=_basic_auth(headers.get("authorization")),
            time=asyncio.get_running_loop().time(),
        )
        match = CALL_PATH.match(split.path)
        if match:
            req.account_sid, req.call_sid = match["account"], match["call"]
        created: OutboundCall | None = None
        drop = False
        create = CALLS_PATH.match(split.path)
        if create and method == "POST":
            req.account_sid = create["account"]
            status, payload, reply_delay, drop = self._decide_create(req)
            if status == 201:
                events = [e for v in form_lists.get("StatusCallbackEvent", []) for e in v.split()]
                created = self.outbound.create(req.account_sid, req.form, events or ["completed"])
                req.call_sid = created.sid
                payload = created.resource(split.path)
        else:
            status, payload, reply_delay = self._decide(req, match is not None)
        req.status, req.response = status, payload
        self.requests.append(req)
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()
        if reply_delay:
            await asyncio.sleep(reply_delay)
        if drop:
            req.status, req.response = 0, {}
            return False
        data = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            "Twilio-Request-Id: RQ" + "0" * 32 + "\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + data)
        await writer.drain()
        if created is not None:
            self.outbound.start(created)
        if match and 200 <= status < 300 and method == "POST":
            self._after_update(req)
        return True

    def _decide_create(self, req: RestRequest) -> tuple[int, dict[str, Any], float, bool]:
        """Status, JSON body, reply delay and drop for ``POST .../Calls.json`` (201: create)."""
        if req.auth is None or (self.expected_auth is not None and req.auth != self.expected_auth):
            return 401, _error_body(401, more="Authentication failed"), 0.0, False
        self._last_password = req.auth[1]
        reply = self.create_replies.popleft() if self.create_replies else None
        if reply is not None and reply.drop:
            return 0, {}, reply.delay, True
        if reply is not None and reply.code is not None:
            status, body = create_error(reply.code, req.form)
            if reply.status != 200:
                status = body["status"] = reply.status
            return status, reply.body or body, reply.delay, False
        if reply is not None and reply.status >= 400:
            return reply.status, reply.body or _error_body(reply.status), reply.delay, False
        code = validate_create(req.form)
        if code is not None:
            status, body = create_error(code, req.form)
            return status, body, reply.delay if reply else 0.0, False
        return 201, {}, reply.delay if reply else 0.0, False

    def _decide(self, req: RestRequest, is_call: bool) -> tuple[int, dict[str, Any], float]:
        """The status, JSON body and reply delay for ``req``."""
        if req.auth is None or (self.expected_auth is not None and req.auth != self.expected_auth):
            return 401, _error_body(401, more="Authentication failed"), 0.0
        if not is_call:
            more = f"The requested resource {req.path} was not found"
            return 404, _error_body(404, more=more), 0.0
        reply = self.replies.popleft() if self.replies else RestReply(200)
        if reply.status >= 400:
            return reply.status, reply.body or _error_body(reply.status), reply.delay
        if req.method not in ("GET", "POST"):
            return 405, _error_body(405), reply.delay
        return reply.status, reply.body or self._call_resource(req), reply.delay

    def _call_resource(self, req: RestRequest) -> dict[str, Any]:
        """A Call resource JSON as Twilio returns it after fetch/update."""
        outbound = self.outbound.calls.get(req.call_sid or "")
        if outbound is not None:
            resource = outbound.resource(req.path)
            if req.form.get("Status"):
                resource["status"] = req.form["Status"]
            return resource
        status = req.form.get("Status") or "in-progress"
        uri = req.path
        return {
            "sid": req.call_sid,
            "account_sid": req.account_sid,
            "status": status,
            "direction": "inbound",
            "from": "+15550001111",
            "to": "+15550002222",
            "api_version": "2010-04-01",
            "date_updated": formatdate(usegmt=True),
            "uri": uri,
            "subresource_uris": {},
        }

    def _after_update(self, req: RestRequest) -> None:
        """Run the update hook and end a registered call's media stream when appropriate."""
        tasks: list[Awaitable[Any]] = []
        if self.on_call_update is not None:
            result = self.on_call_update(req)
            if result is not None:
                tasks.append(result)
        outbound = self.outbound.calls.get(req.call_sid or "")
        if outbound is not None:
            self.outbound.on_update(outbound, req.form)
        call = self.calls.get(req.call_sid or "")
        ends_stream = req.form.get("Status") in ("completed", "canceled") or any(
            k in req.form for k in ("Twiml", "Url")
        )
        if call is not None and ends_stream and not call.closed.is_set():
            tasks.append(call.hangup())
        for aw in tasks:
            self._spawn(aw)


def _basic_auth(value: str | None) -> tuple[str, str] | None:
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
    except ValueError:
        return None
    return user, password


def _error_body(status: int, more: str | None = None) -> dict[str, Any]:
    code, message = TWILIO_ERROR_CODES.get(status, (20000 + status, HTTPStatus(status).phrase))
    return {
        "code": code,
        "message": more or message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
