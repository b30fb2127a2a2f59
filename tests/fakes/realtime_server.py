"""A scripted fake of the OpenAI Realtime API (GA protocol) over a real loopback WebSocket.

``FakeRealtime`` listens on ``127.0.0.1`` (port 0) and speaks the GA wire protocol the way the
real service does (the public OpenAI Realtime API reference,
https://platform.openai.com/docs/api-reference/realtime, and the event models in the
``openai`` package, ``openai.types.realtime``):

* the upgrade needs ``Authorization: Bearer <key>``; an ``OpenAI-Beta`` header gets the
  ``beta_api_shape_disabled`` error and close code 4000, like the live service since 2026-05;
* every client event is validated against ``openai.types.realtime.RealtimeClientEvent``
  (fast discriminated union) *and* checked for unknown parameters, because the real service
  rejects those even though the SDK models allow extra fields; failures are recorded in
  ``invalid_events`` and answered with an ``error`` event;
* responses follow a script of ``ScriptedResponse`` and emit the GA event sequence, generating
  audio faster than real time (``generation_speed``) so the bridge's buffering is exercised;
* ``response.cancel``/``response.create``/``conversation.item.truncate`` reproduce the real
  errors (``response_cancel_not_active``, ``conversation_already_has_active_response``,
  ``Audio content of Nms is already shorter than Mms``);
* an energy VAD over the appended caller audio, driven by audio time (bytes appended), emits
  ``speech_started``/``speech_stopped``/``committed`` and auto-cancels/auto-creates responses
  according to the session's ``turn_detection``;
* tools: scripted (parallel) function calls, cut off ``incomplete`` by a cancel, and the MCP
  listings, calls and approval requests the service makes itself (``tests.fakes.realtime_mcp``);
  the connection records function outputs, MCP server entries and approval responses.

Tests drive it with ``rt.connections[i]`` records (``wait_for``, ``send``, ``drop``...).
"""

# Waiting helpers take ``timeout=`` on purpose: tests read better as ``wait_for(x, timeout=5)``.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import http
import json
import logging
import secrets
import time
import traceback
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Union
from urllib.parse import parse_qs, urlsplit

from openai.types.realtime import RealtimeClientEvent
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes import realtime_mcp
from tests.fakes.audio import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, is_speech, tone
from tests.fakes.watch import Watch

_CLIENT_MEMBERS = typing.get_args(typing.get_args(RealtimeClientEvent)[0])
CLIENT_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[_CLIENT_MEMBERS], Field(discriminator="type")]  # noqa: UP007
)
"""Strict, fast validator for GA client events (PROTOCOL.md 3.8)."""

BETA_DISABLED_ERROR: dict[str, Any] = {
    "type": "invalid_request_error",
    "code": "beta_api_shape_disabled",
    "message": (
        "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
    ),
    "param": None,
}
MAX_EVENT_BYTES = 15 * 1024 * 1024

_WS_LOGGER = logging.getLogger("tests.fakes.realtime_server.websockets")
# websockets logs full handshake headers (the caller's Authorization bearer key) at DEBUG;
# the fake must never put a secret in the logs that tests scan, so it logs warnings only.
_WS_LOGGER.setLevel(logging.WARNING)


def new_id(prefix: str) -> str:
    """An id shaped like the service's (``event_…``, ``resp_…``, ``item_…``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def _unknown_params(value: Any, path: str = "") -> list[str]:
    """Dotted paths of fields the SDK models accepted only as extras (unknown to the API)."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            found.append(f"{path}.{name}" if path else name)
        for name in type(value).model_fields:
            found.extend(_unknown_params(getattr(value, name), f"{path}.{name}" if path else name))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(_unknown_params(v, f"{path}[{i}]"))
    return found


_MERGED_PATHS = {"audio", "audio.input", "audio.output"}


def _deep_merge(base: dict[str, Any], update: dict[str, Any], path: str = "") -> None:
    """Partial ``session.update``: only the ``audio`` containers merge; every other field
    (``format``, ``turn_detection``, ``transcription``, ``tools``...) is replaced whole, so a
    new ``{"type": "audio/pcmu"}`` format does not inherit the old format's ``rate``."""
    for key, value in update.items():
        sub = f"{path}.{key}" if path else key
        if sub in _MERGED_PATHS and isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, sub)
        else:
            base[key] = copy.deepcopy(value)


def default_session(model: str) -> dict[str, Any]:
    """The GA session the service reports in ``session.created`` (its documented defaults)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10. You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
    }


@dataclass
class ScriptedResponse:
    """One model turn: mu-law ``audio`` with its ``transcript``, sent in ``delta_ms`` chunks.

    ``function_call`` (``{"name": ..., "arguments": dict | str, "call_id": optional}``) adds a
    function_call output item after the audio, as the model does when it speaks then calls
    a tool.  ``audio=b""`` with a function_call gives a tool call with no speech.
    ``function_calls`` adds several such items (parallel tool calls), after ``function_call``
    if both are set, each with its own added/arguments/done sequence.

    ``function_call_delay_ms`` pauses (wall clock, not scaled by ``generation_speed``) between
    the two argument deltas of each function call, so a test can cancel the response while
    the arguments are being written: that item then ends ``incomplete`` with truncated
    arguments, like the real service.

    ``mcp_calls`` are MCP calls the *service* makes in this response (see
    ``tests.fakes.realtime_mcp.run_call``), each ``{"server_label", "name", "arguments":
    dict | str, "output": str | None, "error": dict | None, "duration_ms": int, "approval":
    bool}``; they come before the audio message, or after it with ``mcp_after_audio``.
    ``approval: True`` emits an ``mcp_approval_request`` item instead; once the client
    approves it (an ``mcp_approval_response`` item), the call runs at the start of the next
    response.  A response whose ``tool_choice`` is ``"none"`` (``response.create`` or the
    session) makes no function or MCP calls, whatever the script says.
    """

    audio: bytes = b""
    transcript: str = ""
    delta_ms: int = 100
    function_call: dict[str, Any] | None = None
    function_calls: list[dict[str, Any]] = field(default_factory=list)
    function_call_delay_ms: int = 0
    mcp_calls: list[dict[str, Any]] = field(default_factory=list)
    mcp_after_audio: bool = False

    def all_function_calls(self) -> list[dict[str, Any]]:
        """``function_call`` (if set) then ``function_calls``, in emission order."""
        first = [self.function_call] if self.function_call else []
        return first + list(self.function_calls)


def default_response() -> ScriptedResponse:
    """What the fake says when the script is exhausted: a short tone with a transcript."""
    return ScriptedResponse(audio=tone(400), transcript="(default response)")


@dataclass
class FakeResponse:
    """A response as run by the fake: ids, status and how much audio it produced."""

    id: str
    script: ScriptedResponse
    trigger: str  # "client" (response.create), "vad" (server VAD) or "test" (start_response)
    item_id: str | None = None
    function_item_id: str | None = None
    """The first function_call item's id (see ``function_item_ids`` for all of them)."""
    function_item_ids: list[str] = field(default_factory=list)
    mcp_item_ids: list[str] = field(default_factory=list)
    """Ids of the ``mcp_call`` and ``mcp_approval_request`` items, in output order."""
    tool_choice: Any = "auto"
    """The effective ``tool_choice``: the ``response.create``'s, else the session's."""
    status: str = "in_progress"
    reason: str | None = None
    audio_bytes_sent: int = 0
    transcript_sent: str = ""
    create_event: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_reason: str | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def audio_ms_sent(self) -> int:
        return self.audio_bytes_sent // BYTES_PER_MS


class RealtimeConnection:
    """Server side of one client connection: records, session state, VAD and responses."""

    def __init__(self, server: FakeRealtime, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.stalled = False
        request = ws.request
        assert request is not None
        self.headers: Headers = request.headers
        self.path: str = request.path
        self.model: str = parse_qs(urlsplit(request.path).query).get("model", [""])[0]
        self.events: list[dict[str, Any]] = []
        """Valid client events, in arrival order."""
        self.sent: list[dict[str, Any]] = []
        """Every server event sent on this connection, in order."""
        self.appended_audio = bytearray()
        """Concatenation of all ``input_audio_buffer.append`` audio."""
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.session: dict[str, Any] = default_session(self.model or "gpt-realtime")
        self.responses: list[FakeResponse] = []
        self.active_response: FakeResponse | None = None
        self.items: dict[str, dict[str, Any]] = {}
        self.item_order: list[str] = []
        self.audio_produced = False
        self.function_outputs: list[dict[str, Any]] = []
        """``{"call_id", "output"}`` of each ``function_call_output`` item the client created,
        in arrival order (the items themselves stay in the conversation, ``items``)."""
        self.mcp_servers: list[dict[str, Any]] = []
        """Every ``{"type": "mcp", ...}`` tool received in a ``session.update``, exactly as
        received (``headers``, ``authorization``...), in arrival order."""
        self.approval_responses: list[dict[str, Any]] = []
        """Every ``mcp_approval_response`` item the client created, exactly as received."""
        self.approval_requests: dict[str, dict[str, Any]] = {}
        """``mcp_approval_request`` item id -> the scripted MCP call it asks approval for."""
        self.approved_calls: deque[tuple[str, dict[str, Any]]] = deque()
        """Approved ``(approval_request_id, call)``s, run at the start of the next response."""
        self.script: deque[ScriptedResponse] | None = None
        """When set, this connection's own responses (instead of the server's shared
        ``script``): concurrent calls each follow their own script."""
        self.caller_transcripts: deque[str] | None = None
        """When set, this connection's own caller transcripts (instead of the server's)."""
        self._watch = Watch()
        # Input buffer and VAD state, all in audio time (bytes appended).
        self._uncommitted = 0
        self._vad_pending = bytearray()
        self._vad_pos = 0
        self._in_speech = False
        self._silence_ms = 0
        self._speech_item_id: str | None = None

    # ------------------------------------------------------------------ waiting helpers

    async def wait_for(
        self,
        event_type: str,
        timeout: float = 5.0,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        count: int = 1,
    ) -> dict[str, Any]:
        """Return the ``count``-th valid client event of ``event_type`` (waiting if needed)."""
        return await self._wait_list(self.events, "client", event_type, timeout, predicate, count)

    async def wait_sent(
        self,
        event_type: str,
        timeout: float = 5.0,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        count: int = 1,
    ) -> dict[str, Any]:
        """Return the ``count``-th server event of ``event_type`` this fake has sent."""
        return await self._wait_list(self.sent, "server", event_type, timeout, predicate, count)

    async def _wait_list(
        self,
        events: list[dict[str, Any]],
        side: str,
        event_type: str,
        timeout: float,
        predicate: Callable[[dict[str, Any]], bool] | None,
        count: int,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            n = 0
            for ev in events:
                if ev.get("type") == event_type and (predicate is None or predicate(ev)):
                    n += 1
                    if n == count:
                        return ev
            return None

        return await self._watch.wait(check, timeout, f"{side} event {event_type!r} #{count}")

    async def wait_until(self, pred: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``pred()`` is not None/False; re-checked on every event."""
        return await self._watch.wait(pred, timeout, "condition")

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the connection is closed; return the close code."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"realtime connection not closed after {timeout}s") from None
        return self.close_code

    def types(self) -> list[str]:
        """Types of the valid client events received so far."""
        return [e["type"] for e in self.events]

    def sent_types(self) -> list[str]:
        """Types of the server events sent so far."""
        return [e["type"] for e in self.sent]

    # ------------------------------------------------------------------ test controls

    async def send(self, event: dict[str, Any]) -> None:
        """Inject a server event (an ``event_id`` is added when missing); works when silent."""
        await self._send(dict(event), force=True)

    async def send_raw(self, data: str | bytes) -> None:
        """Send a raw frame, e.g. non-JSON garbage."""
        await self.ws.send(data)

    async def start_response(self, script: ScriptedResponse | None = None) -> FakeResponse:
        """Start a response as if the model decided to speak (uses the script if None)."""
        return await self._start_response("test", script=script)

    async def cancel_response(self, reason: str = "turn_detected") -> None:
        """Cancel the active response from the server side (as server VAD would)."""
        if self.active_response is not None:
            await self._stop_response(self.active_response, reason)

    async def drop(self, code: int | None = None, reason: str = "") -> None:
        """End the connection: abruptly at TCP level (``code=None``) or with a close frame."""
        if code is None:
            self.ws.transport.abort()
        else:
            await self.ws.close(code, reason)

    def stall(self) -> None:
        """Become a black hole: stop reading the socket (no pongs, no close handshake) and
        stop sending, like a half-open TCP connection or a partitioned service."""
        self.stalled = True
        self.ws.transport.pause_reading()

    # ------------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        self._watch.notify()
        self.server._watch.notify()

    async def _send(self, event: dict[str, Any], *, force: bool = False) -> None:
        if (self.server.silent and not force) or self.stalled:
            return
        event.setdefault("event_id", new_id("event"))
        self.sent.append(event)
        self._notify()
        await self.ws.send(json.dumps(event))

    async def _error(
        self,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        await self._send(
            {
                "type": "error",
                "error": {
                    "type": error_type,
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": event_id,
                },
            }
        )

    def _input_format(self) -> str | None:
        fmt = (self.session.get("audio") or {}).get("input", {}).get("format") or {}
        return fmt.get("type")

    def _output_format(self) -> str | None:
        fmt = (self.session.get("audio") or {}).get("output", {}).get("format") or {}
        return fmt.get("type")

    def _turn_detection(self) -> dict[str, Any] | None:
        return (self.session.get("audio") or {}).get("input", {}).get("turn_detection")

    def _add_item(self, item: dict[str, Any]) -> str | None:
        previous = self.item_order[-1] if self.item_order else None
        self.items[item["id"]] = item
        self.item_order.append(item["id"])
        return previous

    async def _run(self) -> None:
        """Connection lifetime: greet, then process client frames in order."""
        await self._send({"type": "session.created", "session": copy.deepcopy(self.session)})
        async for message in self.ws:
            await self._on_message(message)

    async def _on_message(self, message: str | bytes) -> None:
        srv = self.server
        if isinstance(message, bytes):
            srv._record_invalid(self, message, "binary frame")
            await self._error("invalid_json", "Binary frames are not supported; send JSON text.")
            return
        try:
            data = json.loads(message)
        except ValueError as exc:
            srv._record_invalid(self, message, f"invalid JSON: {exc}")
            await self._error(
                "invalid_json",
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly...)",
            )
            return
        event_id = data.get("event_id") if isinstance(data, dict) else None
        try:
            model = CLIENT_EVENT_ADAPTER.validate_python(data)
        except ValidationError as exc:
            srv._record_invalid(self, data, str(exc))
            err = exc.errors()[0]
            loc = [str(p) for p in err["loc"][1:] if not str(p)[:1].isupper()]
            param = ".".join(loc) or None
            if err["type"] == "missing":
                code, msg = "missing_required_parameter", f"Missing required parameter: '{param}'."
            else:
                code, msg = "invalid_value", f"Invalid value at '{param}': {err['msg']}"
            await self._error(code, msg, param=param, event_id=event_id)
            return
        unknown = _unknown_params(model)
        if unknown:
            srv._record_invalid(self, data, f"unknown parameter(s): {unknown}")
            await self._error(
                "unknown_parameter",
                f"Unknown parameter: '{unknown[0]}'.",
                param=unknown[0],
                event_id=event_id,
            )
            return
        self.events.append(data)
        self._notify()
        if srv.silent and data["type"] != "input_audio_buffer.append":
            return  # a hung service: it takes the event and never acts on it
        handler = getattr(self, "_on_" + data["type"].replace(".", "_"), None)
        if handler is not None:
            await handler(data)

    # ------------------------------------------------------------------ client events

    async def _on_session_update(self, ev: dict[str, Any]) -> None:
        update = ev["session"]
        new_voice = ((update.get("audio") or {}).get("output") or {}).get("voice")
        old_voice = self.session["audio"]["output"].get("voice")
        if new_voice is not None and new_voice != old_voice and self.audio_produced:
            await self._error(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                param="session.audio.output.voice",
                event_id=ev.get("event_id"),
            )
            return
        if update.get("type", "realtime") != "realtime":
            await self._error(
                "invalid_value",
                "Cannot change the session type of an existing session.",
                param="session.type",
                event_id=ev.get("event_id"),
            )
            return
        _deep_merge(self.session, {k: v for k, v in update.items() if k != "model"})
        await self._send({"type": "session.updated", "session": copy.deepcopy(self.session)})
        servers = [t for t in update.get("tools") or [] if t.get("type") == "mcp"]
        if servers:
            await realtime_mcp.list_tools(self, servers)

    async def _on_input_audio_buffer_append(self, ev: dict[str, Any]) -> None:
        try:
            audio = base64.b64decode(ev["audio"], validate=True)
        except (binascii.Error, ValueError):
            await self._error(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                param="audio",
                event_id=ev.get("event_id"),
            )
            return
        if self._input_format() != "audio/pcmu":
            self.server.problems.append(
                f"caller audio appended while session input format is {self._input_format()!r}"
            )
        self.appended_audio.extend(audio)
        self._uncommitted += len(audio)
        self._notify()
        if self.server.silent:
            return
        await self._vad_feed(audio)

    async def _on_input_audio_buffer_commit(self, ev: dict[str, Any]) -> None:
        if self._uncommitted < 100 * BYTES_PER_MS:
            await self._error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {self._uncommitted / BYTES_PER_MS:.2f}ms of audio.",
                param=None,
                event_id=ev.get("event_id"),
            )
            return
        item_id = self._speech_item_id or new_id("item")
        self._in_speech = False
        self._speech_item_id = None
        self._silence_ms = 0
        await self._commit(item_id)

    async def _on_input_audio_buffer_clear(self, ev: dict[str, Any]) -> None:
        self._uncommitted = 0
        self._in_speech = False
        self._speech_item_id = None
        self._silence_ms = 0
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_conversation_item_create(self, ev: dict[str, Any]) -> None:
        item = copy.deepcopy(ev["item"])
        prev = ev.get("previous_item_id")
        if prev is not None and prev != "root" and prev not in self.items:
            await self._error(
                "invalid_value",
                f"Previous item with id '{prev}' not found.",
                param="previous_item_id",
                event_id=ev.get("event_id"),
            )
            return
        item.setdefault("id", new_id("item"))
        item["object"] = "realtime.item"
        item["status"] = "completed"
        if item["id"] in self.items:
            await self._error(
                "invalid_value",
                f"Item with id '{item['id']}' already exists.",
                param="item.id",
                event_id=ev.get("event_id"),
            )
            return
        previous = self._add_item(item)
        if item["type"] == "function_call_output":
            self.function_outputs.append({"call_id": item["call_id"], "output": item["output"]})
        elif item["type"] == "mcp_approval_response":
            realtime_mcp.record_approval_response(self, ev["item"])
        self._notify()
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )

    async def _on_conversation_item_delete(self, ev: dict[str, Any]) -> None:
        item_id = ev["item_id"]
        if item_id not in self.items:
            await self._error(
                "item_delete_invalid_item_id",
                f"Error deleting item: the item with id '{item_id}' does not exist.",
                param="item_id",
                event_id=ev.get("event_id"),
            )
            return
        del self.items[item_id]
        self.item_order.remove(item_id)
        await self._send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _on_conversation_item_retrieve(self, ev: dict[str, Any]) -> None:
        item = self.items.get(ev["item_id"])
        if item is None:
            await self._error(
                "item_retrieve_invalid_item_id",
                f"Error retrieving item: the item with id '{ev['item_id']}' does not exist.",
                param="item_id",
                event_id=ev.get("event_id"),
            )
            return
        await self._send({"type": "conversation.item.retrieved", "item": item})

    async def _on_conversation_item_truncate(self, ev: dict[str, Any]) -> None:
        srv = self.server
        item_id, end_ms = ev["item_id"], ev["audio_end_ms"]
        item = self.items.get(item_id)
        if item is None:
            srv.rejected_truncates.append({**ev, "reason": "unknown item"})
            await self._error(
                "item_truncate_invalid_item_id",
                f"Error truncating item: the item with id '{item_id}' does not exist.",
                param="item_id",
                event_id=ev.get("event_id"),
            )
            return
        audio_ms = item.get("_audio_ms")
        if item.get("role") != "assistant" or not audio_ms:
            srv.rejected_truncates.append({**ev, "reason": "not assistant audio"})
            await self._error(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                param=None,
                event_id=ev.get("event_id"),
            )
            return
        if end_ms > audio_ms:
            srv.rejected_truncates.append({**ev, "reason": "too long", "item_audio_ms": audio_ms})
            await self._error(
                "invalid_value",
                f"Audio content of {audio_ms}ms is already shorter than {end_ms}ms",
                param="audio_end_ms",
                event_id=ev.get("event_id"),
            )
            return
        item["_audio_ms"] = end_ms
        srv.truncates.append({**ev, "item_audio_ms": audio_ms})
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": ev["content_index"],
                "audio_end_ms": end_ms,
            }
        )

    async def _on_response_create(self, ev: dict[str, Any]) -> None:
        active = self.active_response
        if active is not None:
            await self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. Wait "
                "until the response is finished before creating a new one.",
                event_id=ev.get("event_id"),
            )
            return
        await self._start_response("client", create_event=ev)

    async def _on_response_cancel(self, ev: dict[str, Any]) -> None:
        active = self.active_response
        wanted = ev.get("response_id")
        if active is None or (wanted is not None and wanted != active.id):
            self.server.cancels_not_active += 1
            await self._error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                event_id=ev.get("event_id"),
            )
            return
        await self._stop_response(active, "client_cancelled")

    async def _on_output_audio_buffer_clear(self, ev: dict[str, Any]) -> None:
        self.server.problems.append("output_audio_buffer.clear sent on a WebSocket session")
        await self._error(  # the exact live error text is unknown; the shape is the real one
            "unsupported_event",
            "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
            event_id=ev.get("event_id"),
        )

    # ------------------------------------------------------------------ VAD

    async def _vad_feed(self, audio: bytes) -> None:
        """Run the energy VAD over new audio, one 20 ms frame at a time (audio time)."""
        self._vad_pending.extend(audio)
        while len(self._vad_pending) >= FRAME_BYTES:
            frame = bytes(self._vad_pending[:FRAME_BYTES])
            del self._vad_pending[:FRAME_BYTES]
            frame_start_ms = self._vad_pos // BYTES_PER_MS
            self._vad_pos += FRAME_BYTES
            td = self._turn_detection()
            if td is None:
                continue
            semantic = td.get("type") == "semantic_vad"
            silence_ms = 500 if semantic else td.get("silence_duration_ms") or 500
            prefix_ms = 300 if semantic else td.get("prefix_padding_ms") or 0
            speaking = is_speech(frame)
            if not self._in_speech:
                if speaking:
                    self._in_speech = True
                    self._silence_ms = 0
                    self._speech_item_id = new_id("item")
                    await self._send(
                        {
                            "type": "input_audio_buffer.speech_started",
                            "audio_start_ms": max(0, frame_start_ms - prefix_ms),
                            "item_id": self._speech_item_id,
                        }
                    )
                    interrupt = td.get("interrupt_response")
                    if (interrupt is None or interrupt) and self.active_response is not None:
                        await self._stop_response(self.active_response, "turn_detected")
            elif speaking:
                self._silence_ms = 0
            else:
                self._silence_ms += FRAME_MS
                if self._silence_ms >= silence_ms:
                    item_id = self._speech_item_id or new_id("item")
                    self._in_speech = False
                    self._speech_item_id = None
                    self._silence_ms = 0
                    await self._send(
                        {
                            "type": "input_audio_buffer.speech_stopped",
                            "audio_end_ms": self._vad_pos // BYTES_PER_MS,
                            "item_id": item_id,
                        }
                    )
                    await self._commit(item_id)
                    create = td.get("create_response")
                    if (create is None or create) and self.active_response is None:
                        await self._start_response("vad")

    async def _commit(self, item_id: str) -> None:
        """Commit the input buffer as a user item (and transcribe it if configured)."""
        committed_ms = self._uncommitted // BYTES_PER_MS
        self._uncommitted = 0
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self._add_item(item)
        await self._send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )
        if (self.session.get("audio") or {}).get("input", {}).get("transcription"):
            srv = self.server
            own = self.caller_transcripts
            queue = own if own is not None else srv.caller_transcripts
            transcript = queue.popleft() if queue else None
            if transcript is None or (transcript == "" and own is None):
                transcript = srv.default_caller_transcript
            completed = {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": committed_ms / 1000},
            }
            if srv.transcription_delay_ms > 0:
                task = asyncio.create_task(
                    self._transcribed_later(srv.transcription_delay_ms, item, completed),
                    name=f"fake-realtime-transcribe-{item_id}",
                )
                srv._tasks.add(task)
                task.add_done_callback(srv._tasks.discard)
            else:
                item["content"][0]["transcript"] = transcript
                await self._send(completed)

    async def _transcribed_later(
        self, delay_ms: int, item: dict[str, Any], completed: dict[str, Any]
    ) -> None:
        """The transcript, ``delay_ms`` after the commit (as the service's runs late)."""
        await asyncio.sleep(delay_ms / 1000)
        item["content"][0]["transcript"] = completed["transcript"]
        with contextlib.suppress(ConnectionClosed):
            await self._send(completed)

    # ------------------------------------------------------------------ responses

    async def _start_response(
        self,
        trigger: str,
        *,
        script: ScriptedResponse | None = None,
        create_event: dict[str, Any] | None = None,
    ) -> FakeResponse:
        if self.active_response is not None:
            raise RuntimeError(f"response {self.active_response.id} is still active")
        srv = self.server
        if script is None:
            queue = self.script if self.script is not None else srv.script
            script = queue.popleft() if queue else default_response()
        resp = FakeResponse(
            id=new_id("resp"), script=script, trigger=trigger, create_event=create_event
        )
        requested = (create_event or {}).get("response") or {}
        resp.tool_choice = requested.get("tool_choice", self.session.get("tool_choice", "auto"))
        # Like the service, echo the request's metadata in the response object.
        resp.metadata = ((create_event or {}).get("response") or {}).get("metadata")
        self.responses.append(resp)
        self.active_response = resp
        if self._output_format() != "audio/pcmu" and script.audio:
            srv.problems.append(
                f"response generated while session output format is {self._output_format()!r}"
            )
        await self._send(
            {
                "type": "response.created",
                "response": {
                    "id": resp.id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "status_details": None,
                    "output": [],
                    "conversation_id": "conv_" + self.session["id"][5:],
                    "output_modalities": self.session.get("output_modalities") or ["audio"],
                    "max_output_tokens": "inf",
                    "audio": {"output": copy.deepcopy(self.session["audio"]["output"])},
                    "usage": None,
                    "metadata": resp.metadata,
                },
            }
        )
        resp._task = asyncio.create_task(self._generate(resp), name=f"fake-realtime-{resp.id}")
        srv._tasks.add(resp._task)
        resp._task.add_done_callback(srv._tasks.discard)
        return resp

    async def _stop_response(self, resp: FakeResponse, reason: str) -> None:
        """Interrupt generation and wait until its closing events (response.done) are sent."""
        if resp._stop_reason is None:
            resp._stop_reason = reason
        resp._wake.set()
        await resp.done.wait()

    async def _generate(self, resp: FakeResponse) -> None:
        """Emit the GA event sequence of one response, faster than real time."""
        script = resp.script
        outputs: list[dict[str, Any]] = []
        tools_allowed = resp.tool_choice != "none"
        calls = script.all_function_calls() if tools_allowed else []
        mcp_calls = script.mcp_calls if tools_allowed else []
        try:
            while self.approved_calls and resp._stop_reason is None:
                request_id, call = self.approved_calls.popleft()
                outputs.append(
                    await realtime_mcp.run_call(
                        self, resp, len(outputs), call, approval_request_id=request_id
                    )
                )
            if not script.mcp_after_audio:
                await realtime_mcp.run_calls(self, resp, outputs, mcp_calls)
            if (script.audio or script.transcript or not (calls or mcp_calls)) and (
                resp._stop_reason is None or not outputs
            ):
                outputs.append(await self._generate_message(resp, len(outputs)))
            if script.mcp_after_audio:
                await realtime_mcp.run_calls(self, resp, outputs, mcp_calls)
            for call in calls:
                if resp._stop_reason is not None:
                    break
                outputs.append(await self._generate_function_call(resp, len(outputs), call))
            if resp._stop_reason is None:
                status, details = "completed", None
            else:
                status = "cancelled"
                details = {"type": "cancelled", "reason": resp._stop_reason}
            resp.status, resp.reason = status, resp._stop_reason
            self.active_response = None
            audio_tokens = resp.audio_ms_sent // 50
            text_tokens = len(resp.transcript_sent.split())
            await self._send(
                {
                    "type": "response.done",
                    "response": {
                        "id": resp.id,
                        "object": "realtime.response",
                        "status": status,
                        "status_details": details,
                        "output": [_public_item(o) for o in outputs],
                        "conversation_id": "conv_" + self.session["id"][5:],
                        "output_modalities": self.session.get("output_modalities") or ["audio"],
                        "max_output_tokens": "inf",
                        "audio": {"output": copy.deepcopy(self.session["audio"]["output"])},
                        "usage": {
                            "total_tokens": 120 + audio_tokens + text_tokens,
                            "input_tokens": 120,
                            "output_tokens": audio_tokens + text_tokens,
                            "input_token_details": {
                                "text_tokens": 100,
                                "audio_tokens": 20,
                                "image_tokens": 0,
                                "cached_tokens": 0,
                            },
                            "output_token_details": {
                                "text_tokens": text_tokens,
                                "audio_tokens": audio_tokens,
                            },
                        },
                        "metadata": resp.metadata,
                    },
                }
            )
            await self._send(
                {
                    "type": "rate_limits.updated",
                    "rate_limits": [
                        {
                            "name": "requests",
                            "limit": 5000,
                            "remaining": 4999,
                            "reset_seconds": 0.012,
                        },
                        {
                            "name": "tokens",
                            "limit": 40000,
                            "remaining": 39000,
                            "reset_seconds": 1.5,
                        },
                    ],
                }
            )
        except ConnectionClosed:
            resp.status = resp.status if resp.status != "in_progress" else "failed"
        except Exception:
            self.server.handler_errors.append(traceback.format_exc())
            raise
        finally:
            if self.active_response is resp:
                self.active_response = None
            resp.done.set()
            self._notify()

    async def _sleep(self, resp: FakeResponse, seconds: float) -> None:
        """Wait ``seconds`` of wall-clock time, waking early when the response is stopped."""
        if seconds <= 0 or resp._stop_reason is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(resp._wake.wait(), seconds)

    async def _pace(self, resp: FakeResponse, audio_ms: int) -> None:
        """Wait the generation time of ``audio_ms`` of audio, waking early on a stop."""
        speed = self.server.generation_speed
        if not speed or speed == float("inf"):
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(resp._wake.wait(), audio_ms / 1000 / speed)

    async def _generate_message(self, resp: FakeResponse, output_index: int) -> dict[str, Any]:
        script = resp.script
        item_id = new_id("item")
        resp.item_id = item_id
        srv = self.server
        srv.item_audio_ms[item_id] = 0
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
            "_audio_ms": 0,
        }
        previous = self._add_item(item)
        ids = {"response_id": resp.id, "item_id": item_id, "output_index": output_index}
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": output_index,
                "item": _public_item(item),
            }
        )
        await self._send(
            {
                "type": "conversation.item.added",
                "previous_item_id": previous,
                "item": _public_item(item),
            }
        )
        await self._send(
            {
                "type": "response.content_part.added",
                **ids,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        chunk_bytes = max(1, script.delta_ms * BYTES_PER_MS)
        chunks = [
            script.audio[i : i + chunk_bytes] for i in range(0, len(script.audio), chunk_bytes)
        ]
        words = script.transcript.split(" ") if script.transcript else []
        words_sent = 0
        for n, chunk in enumerate(chunks, start=1):
            if resp._stop_reason is not None:
                break
            await self._send(
                {
                    "type": "response.output_audio.delta",
                    **ids,
                    "content_index": 0,
                    "delta": base64.b64encode(chunk).decode(),
                }
            )
            resp.audio_bytes_sent += len(chunk)
            self.audio_produced = True
            item["_audio_ms"] = resp.audio_bytes_sent // BYTES_PER_MS
            srv.item_audio_ms[item_id] = item["_audio_ms"]
            target = len(words) * n // len(chunks)
            if target > words_sent:
                piece = " ".join(words[words_sent:target])
                piece = piece if words_sent == 0 else " " + piece
                words_sent = target
                resp.transcript_sent += piece
                await self._send(
                    {
                        "type": "response.output_audio_transcript.delta",
                        **ids,
                        "content_index": 0,
                        "delta": piece,
                    }
                )
            self._notify()
            if n < len(chunks):
                await self._pace(resp, len(chunk) // BYTES_PER_MS)
        if not chunks and words and resp._stop_reason is None:
            resp.transcript_sent = script.transcript
            await self._send(
                {
                    "type": "response.output_audio_transcript.delta",
                    **ids,
                    "content_index": 0,
                    "delta": script.transcript,
                }
            )
        transcript = resp.transcript_sent
        await self._send({"type": "response.output_audio.done", **ids, "content_index": 0})
        await self._send(
            {
                "type": "response.output_audio_transcript.done",
                **ids,
                "content_index": 0,
                "transcript": transcript,
            }
        )
        await self._send(
            {
                "type": "response.content_part.done",
                **ids,
                "content_index": 0,
                "part": {"type": "audio", "transcript": transcript},
            }
        )
        item["status"] = "completed" if resp._stop_reason is None else "incomplete"
        item["content"] = [{"type": "output_audio", "transcript": transcript}]
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": output_index,
                "item": _public_item(item),
            }
        )
        await self._send(
            {
                "type": "conversation.item.done",
                "previous_item_id": previous,
                "item": _public_item(item),
            }
        )
        return item

    async def _generate_function_call(
        self, resp: FakeResponse, output_index: int, fc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One function_call item; stopped mid-arguments, it ends ``incomplete``."""
        fc = fc if fc is not None else resp.script.function_call or {}
        args = fc.get("arguments", {})
        arguments = args if isinstance(args, str) else json.dumps(args)
        item_id = new_id("item")
        if resp.function_item_id is None:
            resp.function_item_id = item_id
        resp.function_item_ids.append(item_id)
        call_id = fc.get("call_id") or new_id("call")
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": fc["name"],
            "call_id": call_id,
            "arguments": "",
        }
        previous = self._add_item(item)
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": output_index,
                "item": dict(item),
            }
        )
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": dict(item)}
        )
        ids = {
            "response_id": resp.id,
            "item_id": item_id,
            "output_index": output_index,
            "call_id": call_id,
        }
        half = len(arguments) // 2
        written = ""
        for n, piece in enumerate((arguments[:half], arguments[half:])):
            if n == 1:
                await self._sleep(resp, resp.script.function_call_delay_ms / 1000)
            if resp._stop_reason is not None:
                break  # interrupted: the arguments stay truncated
            if piece:
                written += piece
                await self._send(
                    {"type": "response.function_call_arguments.delta", **ids, "delta": piece}
                )
        await self._send(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": fc["name"],
                "arguments": written,
            }
        )
        item["arguments"] = written
        item["status"] = "completed" if written == arguments else "incomplete"
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": output_index,
                "item": dict(item),
            }
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": dict(item)}
        )
        return item


def _public_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the service shows it (without the fake's private bookkeeping keys)."""
    return copy.deepcopy({k: v for k, v in item.items() if not k.startswith("_")})


class FakeRealtime:
    """Scripted fake OpenAI Realtime GA service on ``ws://127.0.0.1:PORT/v1/realtime``.

    Use as ``async with FakeRealtime(responses=[ScriptedResponse(...)]) as rt:`` and point the
    bridge at ``rt.url``.  Shared state (script, transcripts, truncates, invalid events) spans
    all connections so reconnect scenarios continue the same conversation script; a
    connection given its own ``script`` / ``caller_transcripts`` (e.g. by a
    ``connection_class`` subclass, as the noise benchmark does) uses those instead, where an
    empty transcript stays empty (what the service transcribes from a cough).
    """

    def __init__(
        self,
        responses: list[ScriptedResponse] | None = None,
        *,
        expected_key: str | None = None,
        refuse: bool = False,
        generation_speed: float = 10.0,
        caller_transcripts: list[str] | None = None,
        default_caller_transcript: str = "(caller speech)",
        hang_handshake: bool = False,
        silent: bool = False,
        mcp_tools: dict[str, list[Any]] | None = None,
        failing_mcp_servers: set[str] | None = None,
        transcription_delay_ms: int = 0,
    ) -> None:
        self.script: deque[ScriptedResponse] = deque(responses or [])
        """Remaining scripted responses, consumed in order by any connection."""
        self.expected_key = expected_key
        self.refuse = refuse
        """When true, upgrades are refused with HTTP 503 (can be toggled at runtime)."""
        self.hang_handshake = hang_handshake
        """When true, the TCP connection is accepted but the upgrade never completes."""
        self.silent = silent
        self.stall_on_connect = False
        """When true, each new connection is accepted, then black-holed (see ``stall``)."""
        """When true, connections are accepted and client events recorded, but the fake never
        sends anything on its own (no session.created, no replies): a hung service."""
        self.generation_speed = generation_speed
        """Audio generation speed as a multiple of real time (0 or inf = no pause at all)."""
        self.caller_transcripts: deque[str] = deque(caller_transcripts or [])
        self.default_caller_transcript = default_caller_transcript
        self.transcription_delay_ms = transcription_delay_ms
        """Caller transcripts arrive this long after the commit (0: with it, at once); the
        real service's transcription runs asynchronously, a few hundred ms behind."""
        self.mcp_tools: dict[str, list[Any]] = dict(mcp_tools or {})
        """MCP server label -> the tool names (or full tool dicts) its listing returns; a
        server not named here lists its ``allowed_tools`` (when a list)."""
        self.failing_mcp_servers: set[str] = set(failing_mcp_servers or ())
        """MCP server labels whose tool listing fails (``mcp_list_tools.failed``)."""
        self.connections: list[RealtimeConnection] = []
        self.handshakes: list[dict[str, Any]] = []
        """Every upgrade attempt: ``{"path", "headers", "status"}`` (101 when accepted)."""
        self.invalid_events: list[dict[str, Any]] = []
        """Client frames that failed validation: ``{"connection", "event", "error"}``."""
        self.truncates: list[dict[str, Any]] = []
        self.rejected_truncates: list[dict[str, Any]] = []
        self.item_audio_ms: dict[str, int] = {}
        """Assistant item id -> total audio ms sent for it."""
        self.cancels_not_active = 0
        self.handler_errors: list[str] = []
        """Tracebacks of bugs inside the fake itself (should always stay empty)."""
        self.problems: list[str] = []
        """Protocol misuse that the real service would tolerate silently or garble."""
        self._watch = Watch()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._returned_connections = 0
        self._closing = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        """The endpoint to give the bridge as ``OPENAI_REALTIME_URL``."""
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:PORT/v1`` (for ``OpenAI(websocket_base_url=...)``)."""
        return f"ws://127.0.0.1:{self.port}/v1"

    def add_responses(self, *responses: ScriptedResponse) -> None:
        """Append responses to the script."""
        self.script.extend(responses)

    #: What serves each connection (a subclass can observe or time the traffic).
    connection_class: type[RealtimeConnection] = RealtimeConnection

    async def __aenter__(self) -> FakeRealtime:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            max_size=MAX_EVENT_BYTES + 1024,
            logger=_WS_LOGGER,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and the listening socket."""
        self._closing.set()
        for conn in self.connections:
            if conn.stalled:  # a black hole has no closing handshake to wait for
                conn.ws.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop_accepting(self) -> None:
        """Close the listening socket: new connects get ECONNREFUSED, live calls continue."""
        if self._server is not None:
            self._server.server.close()

    async def wait_connection(
        self, timeout: float = 5.0, index: int | None = None
    ) -> RealtimeConnection:
        """Return connection ``index`` (default: the next one not yet returned), waiting for it."""
        if index is None:
            index = self._returned_connections
            self._returned_connections += 1
        conns = self.connections
        return await self._watch.wait(
            lambda: conns[index] if len(conns) > index else None,
            timeout,
            f"realtime connection #{index}",
        )

    async def wait_until(self, pred: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``pred()`` is not None/False; re-checked on any event of any connection."""
        return await self._watch.wait(pred, timeout, "condition")

    def _record_invalid(self, conn: RealtimeConnection, event: Any, error: str) -> None:
        self.invalid_events.append(
            {"connection": self.connections.index(conn), "event": event, "error": error}
        )
        self._watch.notify()

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        record: dict[str, Any] = {"path": request.path, "headers": request.headers, "status": 101}
        self.handshakes.append(record)
        self._watch.notify()
        if self.hang_handshake:
            await self._closing.wait()
            record["status"] = 503
            return ws.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        if self.refuse:
            record["status"] = 503
            return ws.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        if urlsplit(request.path).path != "/v1/realtime":
            record["status"] = 404
            return ws.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if not key or (self.expected_key is not None and key != self.expected_key):
            record["status"] = 401
            body = {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                    "param": None,
                }
            }
            response = ws.respond(http.HTTPStatus.UNAUTHORIZED, json.dumps(body))
            response.headers["Content-Type"] = "application/json"
            return response
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = self.connection_class(self, ws)
        self.connections.append(conn)
        self._watch.notify()
        if self.stall_on_connect:
            conn.stall()
        try:
            if conn.headers.get("OpenAI-Beta") is not None:
                await conn._send({"type": "error", "error": dict(BETA_DISABLED_ERROR)})
                await ws.close(4000, "invalid_request_error.beta_api_shape_disabled")
                return
            await conn._run()
        except ConnectionClosed:
            pass
        except Exception:
            self.handler_errors.append(traceback.format_exc())
            raise
        finally:
            active = conn.active_response
            if active is not None and active._task is not None:
                active._stop_reason = active._stop_reason or "connection_closed"
                active._wake.set()
                await asyncio.gather(active._task, return_exceptions=True)
            await ws.wait_closed()
            conn.close_code = ws.close_code
            conn.close_reason = ws.close_reason
            conn.closed.set()
            conn._notify()
