"""Connection limits the ASGI interface can't express, applied to the uvicorn server the app
runs in.

An ASGI app only sees a connection once a request's headers are complete, and uvicorn by
itself keeps a socket that never sends them forever (one idle socket per file descriptor
until the process can accept no more calls), takes 16 MiB websocket frames, and has no
connection cap. So when the app starts under uvicorn (`uvicorn app.main:app`, the
contract's command, or the tests' in-process server), its lifespan finds the server's
`Config` (the lifespan's `receive` is a bound method of uvicorn's lifespan object, which
holds it) before any connection is accepted, and:

- sets `ws_max_size` to TWILIO_MAX_FRAME_BYTES (checked by the websocket library while a
  frame arrives, so an oversized frame is refused with 1009 before it is buffered);
- wraps the HTTP protocol class so each connection is closed when it makes no progress for
  REQUEST_TIMEOUT_SECONDS (no request, a request whose headers or body trickle in, a
  keep-alive socket fed byte by byte) unless it became a websocket, and so a connection
  past MAX_CONNECTIONS gets `503` and is closed at once;
- bounds uvicorn's own shutdown wait (after the drain has ended the calls) to 5 s;
- raises the soft open-files limit to the hard one (each call holds two sockets).

Under another ASGI server none of this applies, and a start-up warning says so.

It also finds the uvicorn `Server` itself (`uvicorn_server`, through the SIGTERM handler it
installs) so that the app can say it is ready only once the port is bound
(`wait_listening`): uvicorn runs the lifespan's startup before it binds, and a port in use
would otherwise give `startup.ready` followed by `Errno 98` and an exit.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import threading
from typing import Any

from app.limits import LimitHits
from app.observability import log_event

logger = logging.getLogger("app.server_guard")

#: uvicorn's HTTP protocols whose internals the guard relies on (`connections`, `cycle`,
#: `timeout_keep_alive_task`, `handle_websocket_upgrade`), checked by the loopback tests.
GUARDABLE = frozenset({"H11Protocol", "HttpToolsProtocol"})

#: uvicorn's own shutdown wait, after the drain: bounded, whatever the peers do.
SHUTDOWN_GRACE_S = 5

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 20\r\nconnection: close\r\n\r\ntoo many connections"
)


def uvicorn_config(receive: Any) -> Any | None:
    """The `uvicorn.Config` the app starts in, or None under another server.

    Found through the lifespan's `receive` (a bound method of uvicorn's lifespan object,
    which holds the config) or, where a middleware wraps it (`--log-level trace`), through
    the SIGTERM handler uvicorn installs in the main thread (a bound method of its
    `Server`)."""
    for owner in (getattr(receive, "__self__", None), _signal_owner()):
        config = getattr(owner, "config", None)
        if config is not None and type(config).__module__ == "uvicorn.config":
            return config
    return None


def uvicorn_server() -> Any | None:
    """The `uvicorn.Server` the app runs in, or None (another server, not the main thread).

    uvicorn installs a bound method of its `Server` as the SIGTERM handler before it starts
    the lifespan. Call this before `app.lifecycle.Drain.install` replaces that handler."""
    owner = _signal_owner()
    if type(owner).__module__ == "uvicorn.server" and hasattr(owner, "started"):
        return owner
    return None


#: `wait_listening` polls `Server.started` (uvicorn has no event for it) from this delay,
#: doubling up to the next: a few checks in the milliseconds the bind takes, then 20 a second.
_FIRST_POLL_S = 0.002
_MAX_POLL_S = 0.05


async def wait_listening(server: Any) -> dict[str, object]:
    """Return once `server` (a `uvicorn.Server`) listens, with where: `host` and `port` of
    its first socket (the port actually bound, also for `--port 0` or `--fd`), `socket` for
    a Unix socket, nothing if it has none.

    uvicorn sets `started` right after its sockets are listening and it has logged
    `Uvicorn running on ...`; when the bind fails it never does (it shuts the lifespan down
    and exits), so the caller's task is cancelled and never returns."""
    delay = _FIRST_POLL_S
    while not server.started:
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_POLL_S)
    for listener in getattr(server, "servers", None) or ():
        for sock in listener.sockets or ():
            name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                return {"host": name[0], "port": name[1]}
            return {"socket": name if isinstance(name, str) else repr(name)}
    return {}


def _signal_owner() -> object:
    if threading.current_thread() is not threading.main_thread():
        return None
    return getattr(signal.getsignal(signal.SIGTERM), "__self__", None)


def guard(
    config: Any,
    *,
    max_connections: int,
    max_calls: int,
    request_timeout_s: float,
    max_frame_bytes: int,
    hits: LimitHits,
) -> None:
    """Apply the limits to uvicorn's `config` (before it creates its server)."""
    config.ws_max_size = max_frame_bytes
    if config.timeout_graceful_shutdown is None:
        # After our drain (`app.lifecycle`) has ended every call, whatever is still open
        # (a peer that never completes a close) must not hold the exit.
        config.timeout_graceful_shutdown = SHUTDOWN_GRACE_S
    base = config.http_protocol_class
    if getattr(base, "__name__", "") in GUARDABLE:
        config.http_protocol_class = guarded_protocol(
            base, max_connections, request_timeout_s, hits
        )
    elif not getattr(base, "_bridge_guarded", False):
        log_event(
            logger,
            logging.WARNING,
            "startup.warning",
            detail=f"uvicorn's HTTP protocol {getattr(base, '__name__', base)!r} is not one "
            "the connection guard knows: MAX_CONNECTIONS and REQUEST_TIMEOUT_SECONDS are "
            "not applied (use --http h11 or httptools)",
        )
    files = raise_open_files_limit()
    need = max_connections + max_calls + 64  # connections, Realtime sockets, files
    if 0 < files < need:
        log_event(
            logger,
            logging.WARNING,
            "startup.warning",
            detail=f"the open-files limit ({files}) is below what MAX_CONNECTIONS and "
            f"MAX_CONCURRENT_CALLS need ({need}): raise it (ulimit -n) or lower them",
        )
    log_event(
        logger,
        logging.INFO,
        "startup.limits",
        max_connections=max_connections,
        request_timeout_s=request_timeout_s,
        ws_max_size=max_frame_bytes,
        open_files=files,
    )


def guarded_protocol(
    base: type[asyncio.Protocol], max_connections: int, timeout_s: float, hits: LimitHits
) -> type[asyncio.Protocol]:
    """`base` (uvicorn's h11 or httptools protocol) with a connection cap and a progress
    timeout. Both implementations keep the set of live connections in `self.connections`
    and the current request in `self.cycle` (a new object for each request)."""

    class Guarded(base):  # type: ignore[valid-type,misc]
        _bridge_guarded = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                hits.hit("connections", limit_value=max_connections)
                transport.write(_BUSY)  # type: ignore[attr-defined]
                transport.close()
                return
            self._seen: object = self.cycle
            self._watch: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
                timeout_s, self._check
            )

        def _check(self) -> None:
            self._watch = None
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # closed, or upgraded: a websocket's own timers take over
            cycle = self.cycle
            if cycle is self._seen and self.timeout_keep_alive_task is None:
                # No new request, and not a quiet keep-alive socket either (uvicorn's own
                # idle timer is armed only while no byte has come since the response).
                hits.hit("request_timeout", timeout_s=timeout_s)
                transport.close()
                return
            self._seen = cycle
            self._watch = asyncio.get_running_loop().call_later(timeout_s, self._check)

        def handle_websocket_upgrade(self, *args: Any) -> None:
            # The websocket protocol takes the transport over: this object is done with,
            # and a pending check would keep it (its parser and buffers) alive for nothing.
            self._unwatch()
            super().handle_websocket_upgrade(*args)

        def connection_lost(self, exc: Exception | None) -> None:
            self._unwatch()
            super().connection_lost(exc)

        def _unwatch(self) -> None:
            watch = getattr(self, "_watch", None)
            if watch is not None:
                watch.cancel()
                self._watch = None

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        return int(soft)
    except (ValueError, OSError):
        return -1
