"""Helpers for the call core's unit tests: configs from the real defaults, wire messages,
and a few verbs that drive a `CallSession` the way a driver does (no I/O, made-up times).

Configs come from the settings' own defaults (`config()`), so a unit test never runs with
defaults of its own that production doesn't have. Every client event a test collects with
`to_realtime` is validated against the `openai` package's GA union.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any, Final

from app.call.actions import Action, ToRealtime, ToTwilio
from app.call.config import CallConfig
from app.call.outbox import Outbox, Timer
from app.call.session import CallSession
from app.call.setup import session_update
from app.replay import default_config
from tests.fakes.realtime_server import CLIENT_EVENT_ADAPTER

STREAM, CALL = "MZ" + "0" * 32, "CA" + "1" * 32


def config(**overrides: Any) -> CallConfig:
    """The production defaults, with `overrides` (field names of `CallConfig`)."""
    return replace(default_config(), **overrides)


#: The turn-taking of `INTERRUPT_MODE=cancel`: any speech over the bot interrupts at once,
#: and the hang-up goes out at the last mark echo. The core's older scenario tests are
#: about exactly that, so `quiet()` (and `greeted()`) ask for it; resume mode, the default,
#: and the hang-up tail have their own scenarios (tests/test_resume.py) with `RESUME`.
CANCEL: Final = {"interrupt_mode": "cancel", "hangup_tail_ms": 0}
#: The production defaults of turn-taking (resume mode, the hang-up tail).
RESUME: Final = {
    "interrupt_mode": "resume",
    "hangup_tail_ms": default_config().hangup_tail_ms,
}


#: The quietest config: no greeting, no silence reprompts, no time limit, cancel mode.
def quiet(**overrides: Any) -> CallConfig:
    return config(
        **{"greeting": "", "silence_reprompt_ms": 0, "max_call_ms": 0, **CANCEL, **overrides}
    )


def greeted(**overrides: Any) -> CallConfig:
    """`quiet()`, but the bot greets first (the default greeting): the bridge asks for the
    first response itself."""
    return quiet(**{"greeting": default_config().greeting, **overrides})


def outbox(connect_buffer_ms: int | None = None) -> Outbox:
    """An outbox whose Realtime socket is open (client events go out at once), for testing
    a component on its own."""
    out = Outbox(
        default_config().connect_buffer_ms if connect_buffer_ms is None else connect_buffer_ms
    )
    out.open_realtime(session_update(default_config()))
    out.take()
    return out


# -- wire messages ------------------------------------------------------------------------


def b64(n: int, byte: int = 0x55) -> str:
    return base64.b64encode(bytes([byte]) * n).decode()


def start_msg(call_sid: str = CALL, **params: str) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM,
        "start": {
            "streamSid": STREAM,
            "callSid": call_sid,
            "accountSid": "AC" + "2" * 32,
            "tracks": ["inbound"],
            "customParameters": {"CallSid": call_sid, "From": "+15550001111", **params},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }


def media_msg(payload: str) -> dict[str, Any]:
    return {
        "event": "media",
        "streamSid": STREAM,
        "media": {"track": "inbound", "payload": payload},
    }


def mark_msg(name: str) -> dict[str, Any]:
    return {"event": "mark", "streamSid": STREAM, "mark": {"name": name}}


def dtmf_msg(digit: object) -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": STREAM,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


def stop_msg() -> dict[str, Any]:
    return {"event": "stop", "streamSid": STREAM, "stop": {"accountSid": "AC", "callSid": CALL}}


def delta(item: str, n: int = 800, response: str = "resp_1") -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": b64(n),
    }


def speech_started(item: str = "u1", audio_start_ms: int = 0) -> dict[str, Any]:
    return {
        "type": "input_audio_buffer.speech_started",
        "item_id": item,
        "audio_start_ms": audio_start_ms,
    }


def speech_stopped(item: str = "u1", audio_end_ms: int = 0) -> dict[str, Any]:
    return {
        "type": "input_audio_buffer.speech_stopped",
        "item_id": item,
        "audio_end_ms": audio_end_ms,
    }


def response_created(rid: str, metadata: object = None) -> dict[str, Any]:
    return {"type": "response.created", "response": {"id": rid, "metadata": metadata}}


def response_done(rid: str, status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": rid, "status": status, **fields}}


def function_call(
    name: str, call_id: str = "call_1", status: str = "completed", **kw: Any
) -> dict[str, Any]:
    item = {"type": "function_call", "name": name, "call_id": call_id, "status": status}
    item["arguments"] = kw.pop("arguments", '{"reason": "done"}')
    return {
        "type": "response.output_item.done",
        "response_id": kw.pop("response_id", "resp_1"),
        "item": item,
    }


# -- driving a session -----------------------------------------------------------------------


def twilio(s: CallSession, now: float, msg: dict[str, Any]) -> list[Action]:
    return s.feed(now, "from_twilio", msg)


def realtime(s: CallSession, now: float, ev: dict[str, Any]) -> list[Action]:
    return s.feed(now, "from_openai", ev)


def socket(s: CallSession, now: float, side: str, event: str, **fields: Any) -> list[Action]:
    """A socket event: `side` is "twilio" or "openai", `event` open/failed/closed/stalled."""
    direction = "from_twilio" if side == "twilio" else "from_openai"
    return s.feed(now, direction, {"_socket": event, **fields})


def rest(
    s: CallSession, now: float, status: int, code: int | None = None, error: str = ""
) -> list[Action]:
    """The answer to a `RestRequest` (status 0: no answer at all)."""
    return s.feed(now, "rest", {"response": {"status": status, "code": code, "error": error}})


def fire(s: CallSession, timer: Timer) -> list[Action]:
    """Advance the session to `timer`'s deadline (every timer due by then fires)."""
    at = s.out.timers[timer]
    return s.advance(at)


def to_realtime(actions: list[Action]) -> list[dict[str, Any]]:
    events = [a.msg for a in actions if isinstance(a, ToRealtime)]
    for event in events:
        CLIENT_EVENT_ADAPTER.validate_python(event)  # every client event is valid GA
    return events


def to_twilio(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.msg for a in actions if isinstance(a, ToTwilio)]


def connecting(
    cfg: CallConfig | None = None, session: type[CallSession] = CallSession
) -> CallSession:
    """A call whose stream has started and whose Realtime socket is still opening
    (`session`: the class to build it with)."""
    s = session(cfg or quiet())
    s.opened(0)
    twilio(s, 0, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
    twilio(s, 1, start_msg())
    return s


def live(cfg: CallConfig | None = None, session: type[CallSession] = CallSession) -> CallSession:
    """A call that is live, its session ready, and the greeting's response `resp_1` started
    (`session`: the class to build it with)."""
    s = connecting(cfg, session)
    socket(s, 50, "openai", "open")
    realtime(s, 60, {"type": "session.updated", "session": {}})
    realtime(s, 70, {"type": "response.created", "response": {"id": "resp_1"}})
    return s


def play(s: CallSession, now: float, item: str, chunks: int, response: str = "resp_1") -> list[str]:
    """Send `chunks` 100 ms deltas; return the mark names the core asked Twilio to echo."""
    names = []
    for _ in range(chunks):
        out = to_twilio(realtime(s, now, delta(item, response=response)))
        assert [m["event"] for m in out] == ["media", "mark"]
        names.append(out[1]["mark"]["name"])
    return names


def hear(s: CallSession, now: float, names: list[str], step_ms: float = 100) -> float:
    """Echo `names` as Twilio would while playing them, `step_ms` apart; returns the time."""
    for name in names:
        now += step_ms
        twilio(s, now, mark_msg(name))
    return now
