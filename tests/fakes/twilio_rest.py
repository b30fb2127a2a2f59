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
    """A scripted answer: HTTP ``status``, optional JSON ``body`` and a real-time ``delay``."""

    status: int = 200
    body: dict[str, Any] | None = None
    delay: float = 0.0


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
    ) -> None:
        self.replies: deque[RestReply] = deque(
            r if isinstance(r, RestReply) else RestReply(r) for r in statuses or []
        )
        self.expected_auth = expected_auth
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
                await self._handle(method, target, headers, body, writer, keep_alive)
                if not keep_alive:
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
    ) -> None:
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
        status, payload, reply_delay = self._decide(req, match is not None)
        req.status, req.response = status, payload
        self.requests.append(req)
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()
        if reply_delay:
            await asyncio.sleep(reply_delay)
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
        if match and 200 <= status < 300 and method == "POST":
            self._after_update(req)

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
        call = self.calls.get(req.call_sid or "")
        ends_stream = req.form.get("Status") in ("completed", "canceled") or any(
            k in req.form for k in ("Twiml", "Url")
        )
        if call is not None and ends_stream and not call.closed.is_set():
            tasks.append(call.hangup())
        for aw in tasks:
            task = asyncio.ensure_future(aw)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


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
