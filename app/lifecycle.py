"""Graceful shutdown: drain live calls on SIGTERM before the server goes away.

uvicorn's own SIGTERM handling closes every open websocket at once (close code 1012), which
on a rolling deploy would cut every live call mid-sentence. So while the app runs, SIGTERM
is ours:

1. stop being ready (`/readyz` answers 503, so the load balancer sends new calls elsewhere;
   calls that still arrive are served);
2. let live calls finish, for up to SHUTDOWN_DRAIN_SECONDS;
3. end the calls still open through their media stream (Twilio then plays the fallback
   TwiML, which can dial FALLBACK_NUMBER), wait briefly for them to tear down;
4. ask uvicorn to exit: its `should_exit` flag when the server is uvicorn's (then the
   process exits 0), else the handler that was installed before ours.

A second SIGTERM skips the wait. Signals can only be handled in the main thread; elsewhere
(tests, embedded servers) nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Collection
from typing import Any, Protocol

from app.observability import log_event

logger = logging.getLogger("app.lifecycle")

#: After ending the remaining calls, how long their teardown may take.
_TEARDOWN_S = 5.0


class Call(Protocol):
    def shutdown(self) -> None:
        """End the call now, through its media stream."""


class Calls(Protocol):
    """What draining needs of the app's state (`app.main.AppState`)."""

    @property
    def calls(self) -> Collection[Call]: ...

    idle: asyncio.Event  # set whenever no call is live
    draining: bool


class Drain:
    """Owns SIGTERM for the life of the app."""

    def __init__(self, state: Calls, drain_seconds: float) -> None:
        self.state = state
        self.drain_seconds = drain_seconds
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return True

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.start)

    def start(self) -> None:
        """Begin draining (idempotent: a second call ends the remaining calls at once)."""
        if self._task is not None:
            log_event(logger, logging.WARNING, "shutdown.hurry", calls=len(self.state.calls))
            self._hurry.set()
            return
        self.state.draining = True
        log_event(
            logger,
            logging.INFO,
            "shutdown.draining",
            calls=len(self.state.calls),
            drain_seconds=self.drain_seconds,
        )
        self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        waits = [asyncio.ensure_future(self.state.idle.wait())]
        waits.append(asyncio.ensure_future(self._hurry.wait()))
        await asyncio.wait(waits, timeout=self.drain_seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if self.state.calls:
            log_event(logger, logging.WARNING, "shutdown.ending_calls", calls=len(self.state.calls))
            for bridge in list(self.state.calls):
                bridge.shutdown()
            try:
                async with asyncio.timeout(_TEARDOWN_S):
                    await self.state.idle.wait()
            except TimeoutError:
                log_event(logger, logging.ERROR, "shutdown.teardown_timeout")
        log_event(logger, logging.INFO, "shutdown.drained")
        self._exit()

    def _exit(self) -> None:
        previous = self._previous
        server = getattr(previous, "__self__", None)
        if server is not None and hasattr(server, "should_exit"):
            server.should_exit = True  # uvicorn.Server: a normal exit, code 0
        elif callable(previous):
            handler: Callable[[int, Any], Any] = previous
            handler(signal.SIGTERM, None)
        else:
            signal.raise_signal(signal.SIGTERM)
