"""What the driver's own code costs per audio frame: `python -m bench.frame_cost`.

The load benchmark (`bench.run`, `../shared/perf`) measures a whole process, websocket
layers and system calls included, and its figures drift with the machine by more than
the bridge's own code costs. This isolates that code: one live call in-process (the real
app and bridge, both sockets replaced by sinks), then the best of five rounds of handing
the driver a Twilio `media` frame (parse, caller-audio limit, core, append) and a
Realtime audio delta (parse, core, `media` + `mark`). Run it in two checkouts to compare.
The driver's handlers are called directly (private, on purpose: nothing else is timed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from app.main import create_app
from app.settings import load_settings
from tests.core import b64, delta, media_msg, response_created, start_msg
from tests.fakes.realtime_transport import AsgiWebsocket, MockTransport

ROUNDS = 5


def _best_us(handle: Any, arg: Any, n: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            handle(*arg)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


async def measure(frames: int = 200_000, deltas: int = 20_000) -> tuple[float, float]:
    """(us per caller frame, us per bot delta), each the best of ROUNDS rounds."""
    settings = load_settings(
        _env_file=None,
        openai_api_key="sk-bench",
        bot_greeting="",
        silence_reprompt_seconds=0,
        max_call_seconds=0,
    )
    transport, ws = MockTransport(), AsgiWebsocket()
    app = create_app(settings, transport=transport)
    logging.disable(logging.CRITICAL)
    task = asyncio.create_task(app(ws.scope, ws.receive, ws.send))
    ws.client_send(start_msg())
    link = await transport.link()
    link.push({"type": "session.updated", "session": {}})
    await ws.handled()
    (bridge,) = app.state.bridge.calls
    sent = {"appends": 0, "frames": 0}

    def append(data: bytes) -> bool:
        sent["appends"] += 1
        return True

    async def to_twilio(message: dict[str, Any]) -> None:
        sent["frames"] += message["type"] == "websocket.send"

    link.send = lambda data: None  # type: ignore[method-assign]
    link.send_audio = append  # type: ignore[method-assign]
    bridge._allowance = bridge._most = float("inf")  # the limit's arithmetic runs, never drops
    frame = orjson.dumps(media_msg(b64(160))).decode()
    caller = _best_us(bridge._twilio_frame, (frame,), frames)
    link.push(response_created("resp_1"))
    bridge.twilio._send = to_twilio  # the ASGI server's send, as the socket calls it
    bot = _best_us(bridge._realtime_frame, (orjson.dumps(delta("item_a")), True), deltas)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    logging.disable(logging.NOTSET)
    # Every frame took the whole path (a figure for a short cut would mean nothing).
    if sent != {"appends": ROUNDS * frames, "frames": ROUNDS * deltas * 2}:
        raise RuntimeError(f"not every frame took the audio path: {sent}")
    return caller, bot


def main() -> None:
    caller, bot = asyncio.run(measure())
    print(f"caller media frame: {caller:.2f} us   bot delta (100 ms): {bot:.2f} us")


if __name__ == "__main__":
    main()
