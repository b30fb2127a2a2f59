"""Bridge plumbing that the end-to-end tests can't pin down: stale timer expiries."""

from __future__ import annotations

from typing import Any

from app.bridge import Bridge
from app.call.config import CallConfig
from app.call.session import READY_TIMER, CallSession
from app.realtime_socket import RealtimeEndpoint
from tests.test_session import start_msg


async def test_an_expiry_that_was_cancelled_or_re_armed_meanwhile_is_dropped() -> None:
    session = CallSession(CallConfig())
    bridge = Bridge(object(), session, RealtimeEndpoint("ws://unused", "k"))  # type: ignore[arg-type]
    session.twilio_message(0, start_msg())
    bridge._set_timer(READY_TIMER, 10_000)
    _, first = bridge._timers[READY_TIMER]
    # It expired (its entry is queued in the inbox) and was re-armed before being handled.
    bridge._set_timer(READY_TIMER, 20_000)
    assert bridge._dispatch("timer", (READY_TIMER, first), 10_000) == []
    assert not session.done
    # The current one still counts.
    _, current = bridge._timers[READY_TIMER]
    actions: list[Any] = bridge._dispatch("timer", (READY_TIMER, current), 20_000)
    assert session.done and actions
    for handle, _ in bridge._timers.values():
        handle.cancel()
