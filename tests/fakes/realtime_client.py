"""A test's side of a socket to the fake Realtime service: connect with the test key,
send, and read events, each checked against the GA server-event union (everything the
fake sends must be a valid GA server event)."""

from __future__ import annotations

import asyncio
import json
import typing
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter
from websockets.asyncio.client import ClientConnection, connect

from tests.fakes.realtime_server import FakeRealtime

_SERVER_MEMBERS = typing.get_args(typing.get_args(RealtimeServerEvent)[0])
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[_SERVER_MEMBERS], Field(discriminator="type")]  # noqa: UP007
)
API_KEY = "sk-test-key"


async def connect_to(fake: FakeRealtime, **headers: str) -> ClientConnection:
    return await connect(
        fake.url, additional_headers={"Authorization": f"Bearer {API_KEY}", **headers}
    )


async def recv(ws: ClientConnection) -> dict[str, Any]:
    ev: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    SERVER_EVENT.validate_python(ev)
    return ev


async def recv_until(ws: ClientConnection, event_type: str) -> list[dict[str, Any]]:
    """Events up to and including the first of `event_type`."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != event_type:
        events.append(await recv(ws))
    return events


async def send(ws: ClientConnection, ev: dict[str, Any]) -> None:
    await ws.send(json.dumps(ev))
