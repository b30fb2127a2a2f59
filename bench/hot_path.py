"""Cost of the audio hot path per frame, as the bridge runs it (parse -> core -> serialise).

Run: `make bench` (or `.venv/bin/python -m bench.hot_path`). Prints microseconds per frame
for both directions and what share of one core a call's audio takes, plus the same path
with a per-frame base64 decode and a pydantic validation for comparison (what the design
avoids). No network: this measures our code, not the sockets.
"""

from __future__ import annotations

import base64
import json
import time
import typing
from collections.abc import Callable
from typing import Annotated, Any, Union

from app.call.actions import ToRealtime, ToTwilio
from app.call.config import CallConfig
from app.call.session import CallSession
from app.protocol import realtime as rt
from app.protocol import twilio as tw

FRAME_IN = 160  # Twilio: 20 ms of mu-law
DELTA_OUT = 2400  # Realtime: a 300 ms delta
STREAM, CALL = "MZ" + "0" * 32, "CA" + "1" * 32


def _live_session() -> CallSession:
    s = CallSession(CallConfig(greeting=""))
    s.twilio_message(
        0,
        {
            "event": "start",
            "streamSid": STREAM,
            "start": {"streamSid": STREAM, "callSid": CALL, "accountSid": "AC", "tracks": []},
        },
    )
    s.realtime_open(1)
    return s


def _timeit(fn: Callable[[int], None], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def main() -> None:
    session = _live_session()
    payload_in = base64.b64encode(bytes(range(256))[:FRAME_IN]).decode()
    frame = json.dumps(
        {
            "event": "media",
            "sequenceNumber": "3",
            "streamSid": STREAM,
            "media": {"track": "inbound", "chunk": "2", "timestamp": "40", "payload": payload_in},
        }
    )
    delta_text = json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "event_1",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(bytes(DELTA_OUT)).decode(),
        }
    )
    dumps, loads = json.dumps, json.loads

    def inbound(i: int) -> None:
        for action in session.twilio_message(i, loads(frame)):
            assert isinstance(action, ToRealtime)
            rt.encode(action.msg)

    def outbound(i: int) -> None:
        for action in session.realtime_message(i, loads(delta_text)):
            assert isinstance(action, ToTwilio)
            tw.encode(action.msg)
        session.playback.clear()  # keep the pending-mark queue from growing unboundedly

    def outbound_naive(i: int) -> None:
        for action in session.realtime_message(i, loads(delta_text)):
            dumps(action.msg)  # type: ignore[union-attr]
        session.playback.clear()

    from openai.types.realtime import RealtimeServerEvent
    from pydantic import Field, TypeAdapter

    members = typing.get_args(typing.get_args(RealtimeServerEvent)[0])
    server_ta: TypeAdapter[Any] = TypeAdapter(
        Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007
    )

    def outbound_heavy(i: int) -> None:
        event = server_ta.validate_json(delta_text)
        base64.b64decode(event.delta)
        outbound(i)

    n = 20000
    t_in = _timeit(inbound, n)
    t_out = _timeit(outbound, n // 4)
    t_naive = _timeit(outbound_naive, n // 4)
    t_heavy = _timeit(outbound_heavy, n // 4)
    per_second = 1000 / 20 * t_in + 1000 / 300 * t_out  # us of work per second of call
    print(f"inbound  Twilio media 20 ms  -> append : {t_in:6.2f} us/frame")
    print(f"outbound delta 300 ms -> media+mark    : {t_out:6.2f} us/delta")
    print(f"outbound with json.dumps for media     : {t_naive:6.2f} us/delta (avoided)")
    print(f"outbound with pydantic + b64decode     : {t_heavy:6.2f} us/delta (avoided)")
    print(f"one call, both directions              : {per_second / 1e4:6.3f} % of one core")
    print(f"calls per core (audio path only)       : {1e6 / per_second:8.0f}")


if __name__ == "__main__":
    main()
