"""A business tool's endpoint on a real loopback HTTP socket, for the tool runner's tests.

``ToolServer`` is a small ASGI app served by uvicorn on ``127.0.0.1`` (port 0, the socket
bound before uvicorn starts, as ``tests.conftest.serve`` does: its port is known at once and
an early client waits in the kernel's backlog). Use it as ``async with ToolServer(secret=
"s3cret") as server`` and point tools at ``server.url("/order")``.

With a ``secret``, every request's ``X-Bridge-Signature`` is checked with
``app.tools.signing.verify`` (a bad or missing one is answered 401). Every request is
recorded in ``server.requests`` (``ToolRequest``: path, query, headers, raw and parsed body,
``signature_ok``, loop time received, the client's address (one per connection), and events
for "the client went away" and "handled");
``await server.wait_requests(n)`` waits on a condition, never by polling.

Routes (query parameters in brackets):

* ``/order`` [``delay_ms``]: ``{"order_id": <arguments.order_id>, "status": "shipped"}``;
* ``/slow`` [``ms``]: waits ``ms``, then ``{"slept_ms": ms}``;
* ``/fail`` [``status``, default 503; ``body``: ``text`` (default), ``json``, ``big``,
  ``stall``]: that status, with a plain-text error body, a small JSON one, a JSON one of
  5000 bytes, or a small JSON one that stops after its first bytes and never finishes;
* ``/huge`` [``bytes``, ``chunked=1``, ``stall=1``]: a JSON string of ``bytes`` bytes, with
  a ``Content-Length`` or chunked; ``stall`` sends the head (and, chunked, the whole string
  as one chunk) and then never finishes, so only a client that stops early returns;
* ``/badjson``: 200 with ``not json``;
* ``/redirect``: 302 to ``/order``;
* ``/hang``: never answers (until the client goes away or the server closes);
* ``/trickle`` [``every_ms``, default 100; ``bytes``, default 100]: the head (with a
  ``Content-Length``) at once, then a JSON string of ``bytes`` bytes one byte every
  ``every_ms``: each read is prompt, the whole reply is slow.

JSON answers are written compact (``{"status":"shipped"}``), which is how the bridge passes
them on: it hands the model a reply as written.

``server.script(path, status=..., json=..., delay_ms=..., gate=...)`` replaces a path's
answer; a ``gate`` (an ``asyncio.Event``) holds every answer until it is set, which lets a
test see several requests in flight at once without sleeping.
"""

# Waiting helpers take ``timeout=`` on purpose: ``wait_requests(2, timeout=5)`` reads well.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from app.tools.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CHUNK = 16 * 1024
_UNSET: Any = object()


@dataclass
class ToolRequest:
    """One recorded request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased (the last value of a repeated header)."""
    body: bytes
    json: Any
    """The parsed body, or None when it is not JSON."""
    signature_ok: bool | None
    """The signature check's verdict; None when the server has no secret."""
    time: float
    """Loop time when the request was fully read."""
    client: tuple[str, int] | None = None
    """The client's (host, port): requests sent over one connection share it."""
    status: int = 0
    """The status answered (0 while none has been)."""
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client went away before the answer was complete."""
    handled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server is done with the request (answered or abandoned)."""


@dataclass
class Scripted:
    """A scripted answer for one path."""

    status: int = 200
    json: Any = _UNSET
    body: bytes | None = None
    delay_ms: float = 0.0
    gate: asyncio.Event | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ToolServer:
    """A fake tool endpoint; see the module docstring."""

    def __init__(self, secret: str | None = None, *, tolerance_s: float = 300.0) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.requests: list[ToolRequest] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        """Every task that has handled a request (for tests that check for leftovers)."""
        self.port = 0
        self._scripts: dict[str, Scripted] = {}
        self._cond = asyncio.Condition()
        self._closing = asyncio.Event()
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT<path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def script(
        self,
        path: str,
        *,
        status: int = 200,
        json: Any = _UNSET,
        body: bytes | None = None,
        delay_ms: float = 0.0,
        gate: asyncio.Event | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``path`` with ``status`` and ``json`` (or raw ``body``) from now on, after
        ``delay_ms`` and once ``gate`` (if any) is set."""
        self._scripts[path] = Scripted(status, json, body, delay_ms, gate, headers or {})

    async def wait_requests(self, n: int, timeout: float = 10.0) -> list[ToolRequest]:
        """The first ``n`` requests, waiting until that many have been fully read."""
        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(lambda: len(self.requests) >= n)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {n} tool requests "
                f"(have {len(self.requests)})"
            ) from None
        return self.requests[:n]

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ToolServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self._sock, self.port = sock, sock.getsockname()[1]
        config = uvicorn.Config(self, log_config=None, lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing.set()  # every held answer gives up at once
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, timeout=10)
        if self._sock is not None:
            self._sock.close()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        me = asyncio.current_task()
        if me is not None:
            self.tasks.add(me)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        req = await self._record(scope, bytes(body))
        watcher = asyncio.create_task(self._watch(req, receive))
        try:
            await self._respond(req, send)
        finally:
            req.handled.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _record(self, scope: Scope, body: bytes) -> ToolRequest:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        signature_ok = None
        if self.secret is not None:
            signature_ok = verify(
                self.secret,
                headers.get(TIMESTAMP_HEADER.lower()),
                headers.get(SIGNATURE_HEADER.lower()),
                body,
                now=time.time(),
                tolerance_s=self.tolerance_s,
            )
        req = ToolRequest(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
            headers=headers,
            body=body,
            json=parsed,
            signature_ok=signature_ok,
            time=asyncio.get_running_loop().time(),
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        async with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        return req

    async def _watch(self, req: ToolRequest, receive: Receive) -> None:
        """Set ``req.disconnected`` if the client goes away before the answer is complete
        (uvicorn's ``receive`` then yields ``http.disconnect``)."""
        message = await receive()
        if message["type"] == "http.disconnect" and not req.handled.is_set():
            req.disconnected.set()

    async def _hold(
        self, req: ToolRequest, seconds: float | None, gate: asyncio.Event | None = None
    ) -> bool:
        """Wait ``seconds``, then for ``gate`` (neither given: for ever). False when the
        client went away or the server began closing first: there is nobody to answer."""

        async def ready() -> None:
            if seconds is not None:
                await asyncio.sleep(seconds)  # the endpoint's simulated work, not a sync
            if gate is not None:
                await gate.wait()
            if seconds is None and gate is None:
                await asyncio.get_running_loop().create_future()

        go = asyncio.ensure_future(ready())
        stops = {
            asyncio.ensure_future(req.disconnected.wait()),
            asyncio.ensure_future(self._closing.wait()),
        }
        try:
            await asyncio.wait({go, *stops}, return_when=asyncio.FIRST_COMPLETED)
            return go.done() and not any(stop.done() for stop in stops)
        finally:
            for future in (go, *stops):
                future.cancel()
            await asyncio.gather(go, *stops, return_exceptions=True)

    async def _respond(self, req: ToolRequest, send: Send) -> None:
        query = req.query
        if req.signature_ok is False:
            await self._answer(req, send, 401, {"error": "bad signature"})
            return
        scripted = self._scripts.get(req.path)
        if scripted is not None:
            if not await self._hold(req, scripted.delay_ms / 1000, scripted.gate):
                return
            own = scripted.headers
            if scripted.body is not None:
                await self._answer(req, send, scripted.status, raw=scripted.body, headers=own)
            else:
                payload = None if scripted.json is _UNSET else scripted.json
                await self._answer(req, send, scripted.status, payload, headers=own)
            return
        if req.path == "/order":
            delay = float(query.get("delay_ms", 0)) / 1000
            if delay and not await self._hold(req, delay):
                return
            arguments = (req.json or {}).get("arguments") or {}
            order = {"order_id": arguments.get("order_id"), "status": "shipped"}
            await self._answer(req, send, 200, order)
        elif req.path == "/slow":
            ms = float(query.get("ms", 1000))
            if await self._hold(req, ms / 1000):
                await self._answer(req, send, 200, {"slept_ms": ms})
        elif req.path == "/fail":
            status = int(query.get("status", 503))
            kind = query.get("body", "text")
            if kind == "json":
                await self._answer(req, send, status, {"error": "failed on purpose"})
            elif kind == "big":
                await self._answer(req, send, status, {"error": "x" * (5000 - 13)})
            elif kind == "stall":
                head = [(b"content-type", b"application/json"), (b"content-length", b"100")]
                req.status = status
                await send({"type": "http.response.start", "status": status, "headers": head})
                await send({"type": "http.response.body", "body": b'{"error"', "more_body": True})
                await self._hold(req, None)
            else:
                failed = b"failed on purpose"
                await self._answer(req, send, status, raw=failed, content_type="text/plain")
        elif req.path == "/huge":
            await self._huge(req, send, int(query.get("bytes", 1 << 20)))
        elif req.path == "/badjson":
            await self._answer(req, send, 200, raw=b"not json", content_type="text/plain")
        elif req.path == "/redirect":
            location = {"location": self.url("/order")}
            await self._answer(req, send, 302, {"moved": True}, headers=location)
        elif req.path == "/hang":
            await self._hold(req, None)
        elif req.path == "/trickle":
            every = float(query.get("every_ms", 100)) / 1000
            await self._trickle(req, send, int(query.get("bytes", 100)), every)
        else:
            await self._answer(req, send, 404, {"error": "no such route"})

    async def _huge(self, req: ToolRequest, send: Send, size: int) -> None:
        data = b'"' + b"x" * max(0, size - 2) + b'"'
        chunked = req.query.get("chunked") == "1"
        stall = req.query.get("stall") == "1"
        head = [(b"content-type", b"application/json")]
        if not chunked:
            head.append((b"content-length", str(len(data)).encode()))
        req.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": head})
        if stall:
            if chunked:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await self._hold(req, None)
            return
        for start in range(0, len(data), _CHUNK):
            await asyncio.sleep(0)  # let the disconnect watcher run between chunks
            if req.disconnected.is_set():
                return
            piece = data[start : start + _CHUNK]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _trickle(self, req: ToolRequest, send: Send, size: int, every_s: float) -> None:
        data = b'"' + b"x" * max(0, size - 2) + b'"'
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        req.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": head})
        for i in range(len(data)):
            if i and not await self._hold(req, every_s):
                return  # the client went away (or the server is closing)
            more = i < len(data) - 1
            await send({"type": "http.response.body", "body": data[i : i + 1], "more_body": more})

    @staticmethod
    async def _answer(
        req: ToolRequest,
        send: Send,
        status: int,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        head = [(b"content-length", b"%d" % len(data))]
        if not any(k == b"content-type" for k, _ in extra):  # a script's own wins
            head.append((b"content-type", content_type.encode()))
        head += extra
        req.status = status
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": data, "more_body": False})
