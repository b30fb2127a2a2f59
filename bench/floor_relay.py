"""Floor relay: the cheapest correct Python pass-through between a Twilio media stream and
the OpenAI Realtime API (GA, audio/pcmu both ways). The yardstick the product is held to.

A bare `websockets` server and client on uvloop with orjson: no ASGI, no webhook, no
signature check, no bookkeeping, no logging. Per Twilio stream it opens one Realtime
socket, sends one session.update, then forwards each `media` payload as
`input_audio_buffer.append`, each `response.output_audio.delta` as a Twilio `media` plus a
`mark`, and each `input_audio_buffer.speech_started` as a Twilio `clear`. Anything the
product spends beyond this is what its features cost.

    OPENAI_REALTIME_URL=ws://127.0.0.1:9000/v1/realtime?model=gpt-realtime \\
    OPENAI_API_KEY=sk-x python -m bench.floor_relay --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SESSION_UPDATE = orjson.dumps(
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {
                        "type": "server_vad",
                        "interrupt_response": True,
                        "create_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcmu"}},
            },
        },
    }
)


async def caller_to_realtime(twilio: ServerConnection, oai: ClientConnection, sid: list[str]):
    """Twilio -> Realtime until `stop`; remembers the streamSid from `start`."""
    loads, dumps = orjson.loads, orjson.dumps
    while True:
        msg = loads(await twilio.recv(decode=False))
        event = msg["event"]
        if event == "media":
            append = {"type": "input_audio_buffer.append", "audio": msg["media"]["payload"]}
            await oai.send(dumps(append), text=True)
        elif event == "start":
            sid.append(msg["start"]["streamSid"])
        elif event == "stop":
            return


async def realtime_to_caller(twilio: ServerConnection, oai: ClientConnection, sid: list[str]):
    """Realtime -> Twilio: audio as media + mark, speech_started as clear."""
    loads, dumps = orjson.loads, orjson.dumps
    while True:
        ev = loads(await oai.recv(decode=False))
        kind = ev["type"]
        if not sid:
            continue
        if kind == "response.output_audio.delta":
            media = {"event": "media", "streamSid": sid[0], "media": {"payload": ev["delta"]}}
            mark = {"event": "mark", "streamSid": sid[0], "mark": {"name": ev["item_id"]}}
            await twilio.send(dumps(media), text=True)
            await twilio.send(dumps(mark), text=True)
        elif kind == "input_audio_buffer.speech_started":
            await twilio.send(dumps({"event": "clear", "streamSid": sid[0]}), text=True)


async def relay(twilio: ServerConnection) -> None:
    """One call: runs both directions until either ends, then closes the Realtime socket."""
    url = os.environ["OPENAI_REALTIME_URL"]
    headers = {"Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "")}
    async with connect(url, additional_headers=headers, compression=None, max_size=None) as oai:
        await oai.send(SESSION_UPDATE, text=True)
        sid: list[str] = []
        tasks = [
            asyncio.create_task(caller_to_realtime(twilio, oai, sid)),
            asyncio.create_task(realtime_to_caller(twilio, oai, sid)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:  # collect ConnectionClosed so nothing is logged as unhandled
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task


async def serve_forever(host: str, port: int) -> None:
    """Serve until the process is signalled."""
    async with serve(relay, host, port, compression=None, max_size=None) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
