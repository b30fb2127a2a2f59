"""Run an `HttpTool`: one signed JSON request, its JSON reply as the tool's output.

Why this shape: the model waits on a live phone line while a tool runs, and the tool's
endpoint is someone else's server. So a run is bounded in time as a whole (connect, send,
every byte of the reply: `tool.timeout_s`) and in size (`tool.max_reply_bytes`, checked on
`Content-Length` before reading and again while reading, so a chunked flood is cut short);
it never follows a redirect (a 3xx would send the call's data, and the tool's headers,
somewhere nobody configured); and it never raises: every failure becomes a `ToolOutcome`
whose output is a short `{"error": ...}` sentence the model can speak from. Only
`asyncio.CancelledError` gets through, so that the bridge can stop a run (barge-in, hang-up).

A JSON reply reaches the model as the endpoint wrote it (checked by orjson, which bounds
its depth and checks its UTF-8, then passed on stripped of surrounding whitespace), never
re-encoded: re-encoding would turn an integer past 64 bits into a rounded float. An empty
2xx is a success with nothing to say (`{"ok": true}`). A failed request's own JSON body,
when it is small (`MAX_ERROR_BODY_BYTES`) and says it is JSON, goes to the model beside the
status, since it usually explains the failure ("no such order"); any other error body is
not read.

Nothing of the exchange is logged but the tool's name, the failure's `detail`, the HTTP
status and the time taken: the headers hold secrets, the body the caller's data, and the
reply whatever the endpoint chose to send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson

from app import __version__
from app.observability import log_event
from app.tools.defs import HttpTool, ToolContext, ToolOutcome
from app.tools.signing import headers as signature_headers

logger = logging.getLogger("app.tools")

USER_AGENT: Final = f"twilio-realtime-bridge/{__version__}"
METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
"""The methods a tool may use: each sends a body."""
MAX_ERROR_BODY_BYTES: Final = 4 * 1024
"""A non-2xx reply's JSON body up to this long is handed to the model; a longer one is not
read."""
_JSON_WHITESPACE: Final = " \t\r\n"

# httpx logs every request's URL at INFO (a URL may carry a key in its query string) and
# httpcore every reply's headers at DEBUG: neither belongs in the bridge's log.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(slots=True)
class _Progress:
    """What is known of an exchange so far: its status, once the reply's head is in."""

    status: int | None = None


class _TooLarge(Exception):
    """The reply (HTTP `status`) is longer than the tool's `max_reply_bytes`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _error(sentence: str) -> str:
    """An error output: `{"error": "<sentence>"}`, spaced like the call core's own."""
    return json.dumps({"error": sentence})


TIMEOUT_OUTPUT: Final = _error("the tool did not answer in time")
INVALID_JSON_OUTPUT: Final = _error("the tool's answer was not valid JSON")
TOO_LARGE_OUTPUT: Final = _error("the tool's answer was too large")
UNREACHABLE_OUTPUT: Final = _error("the tool could not be reached")
FAILED_OUTPUT: Final = _error("the tool failed")
EMPTY_OK_OUTPUT: Final = json.dumps({"ok": True})
"""A 2xx without a body (204 No Content...): the action was done, there is nothing more."""


def request_body(tool: HttpTool, arguments: dict[str, Any], context: ToolContext) -> bytes:
    """The JSON the endpoint receives (compact): who is calling, and the arguments."""
    return orjson.dumps(
        {
            "call_sid": context.call_sid,
            "agent": context.agent,
            "from": context.from_number,
            "to": context.to_number,
            "tool": tool.name,
            "arguments": arguments,
        }
    )


def request_headers(
    tool: HttpTool, body: bytes, signing_secret: str | None, now: float
) -> dict[str, str]:
    """The tool's own headers, then ours (which win), then the signature if there is a
    secret. `Accept-Encoding: identity` asks for the reply as is: the size limit then
    bounds what the bridge holds in memory, not a compressed stand-in for it."""
    sent = {**tool.headers}
    sent.update(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
        }
    )
    if signing_secret:
        sent.update(signature_headers(signing_secret, int(now), body))
    return sent


async def call_http(
    tool: HttpTool,
    arguments: dict[str, Any],
    context: ToolContext,
    client: httpx.AsyncClient,
    signing_secret: str | None,
    clock: Callable[[], float] = time.time,
) -> ToolOutcome:
    """Send `arguments` to `tool.url` and turn what happens into an outcome.

    `client` is shared by all runs (its connection pool); redirects are never followed
    whatever it is configured to do. `clock` gives the signature's unix time (tests pin
    it). See the module's docstring for the bounds. The outcomes: ok (a 2xx with JSON, as
    written, or with an empty body: `{"ok": true}`); timeout; error with detail
    `http_<status>` (3xx included; a small JSON body goes along as `reply`),
    `invalid_json`, `too_large`, `unreachable` (refused, DNS, TLS, protocol errors), or,
    before any request is made, `bad_method` / `bad_arguments` (not JSON-serialisable).
    """
    started = time.monotonic()
    if tool.method.upper() not in METHODS:  # the agents file is checked at start; still
        log_event(logger, logging.WARNING, "tool.failed", tool=tool.name, detail="bad_method")
        return ToolOutcome("error", FAILED_OUTPUT, "bad_method")
    try:
        body = request_body(tool, arguments, context)
    except orjson.JSONEncodeError:  # arguments come from JSON; a caller in Python may err
        log_event(logger, logging.WARNING, "tool.failed", tool=tool.name, detail="bad_arguments")
        return ToolOutcome("error", FAILED_OUTPUT, "bad_arguments")
    sent = request_headers(tool, body, signing_secret, clock())
    progress = _Progress()
    try:
        # The deadline of the whole run: httpx's own timeouts bound each read, and a reply
        # trickling in a byte at a time would satisfy every one of them.
        async with asyncio.timeout(tool.timeout_s) as scope:
            reply = await _exchange(client, tool, body, sent, progress)
    except TimeoutError:
        if not scope.expired():  # raised by the transport, not by our deadline
            outcome = ToolOutcome("error", UNREACHABLE_OUTPUT, "unreachable")
        else:
            outcome = ToolOutcome("timeout", TIMEOUT_OUTPUT, "timeout")
    except httpx.TimeoutException:  # one of httpx's own (per-operation) timeouts
        outcome = ToolOutcome("timeout", TIMEOUT_OUTPUT, "timeout")
    except _TooLarge:
        outcome = ToolOutcome("error", TOO_LARGE_OUTPUT, "too_large")
    except (httpx.TransportError, httpx.InvalidURL, OSError):
        outcome = ToolOutcome("error", UNREACHABLE_OUTPUT, "unreachable")
    except Exception as exc:  # anything else httpx may raise: still an outcome
        outcome = ToolOutcome("error", FAILED_OUTPUT, type(exc).__name__)
    else:
        assert progress.status is not None  # set by any exchange that returns
        outcome = _judge(progress.status, reply)
    status = progress.status
    if status is not None and not _is_success(status) and outcome.detail != f"http_{status}":
        # The endpoint said no, then its error body stalled or broke off: the status is
        # what the model needs to hear, not how the body failed.
        outcome = _judge(status, None)
    if outcome.result != "ok":
        ms = round((time.monotonic() - started) * 1000)
        fields: dict[str, object] = {"tool": tool.name, "detail": outcome.detail}
        if status is not None:
            fields["status"] = status
        log_event(logger, logging.WARNING, "tool.failed", **fields, ms=ms)
    return outcome


async def _exchange(
    client: httpx.AsyncClient,
    tool: HttpTool,
    body: bytes,
    sent: dict[str, str],
    progress: _Progress,
) -> bytes | None:
    """The reply's body: for a 2xx (at most `max_reply_bytes`, else `_TooLarge`), and for
    any other status when it is JSON of at most `MAX_ERROR_BODY_BYTES` (None otherwise).
    Its status is in `progress` from the moment the reply's head is in."""
    async with client.stream(
        tool.method.upper(),
        tool.url,
        content=body,
        headers=sent,
        follow_redirects=False,
        # Each phase no longer than the whole run; the run's own deadline is the bound.
        timeout=httpx.Timeout(tool.timeout_s),
    ) as response:
        status = progress.status = response.status_code
        if _is_success(status):
            return await _read(response, tool.max_reply_bytes, status)
        if not _is_json(response.headers.get("content-type", "")):
            return None
        try:
            return await _read(response, MAX_ERROR_BODY_BYTES, status)
        except _TooLarge:
            return None


async def _read(response: httpx.Response, limit: int, status: int) -> bytes:
    """The reply's body, or `_TooLarge` as soon as it is known to exceed `limit` bytes."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _TooLarge(status)
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise _TooLarge(status)
    return bytes(data)


def _is_success(status: int) -> bool:
    return 200 <= status < 300


def _is_json(content_type: str) -> bool:
    """`application/json`, or a JSON-based type such as `application/problem+json`."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _json_text(reply: bytes) -> str | None:
    """`reply` as text, stripped, when it is JSON (as orjson reads it: depth-limited,
    valid UTF-8); else None. The text itself is what goes on, so that numbers orjson reads
    as floats (integers past 64 bits) reach the model exactly as written."""
    try:
        orjson.loads(reply)
    except orjson.JSONDecodeError:
        return None
    return reply.decode("utf-8").strip(_JSON_WHITESPACE)


def _judge(status: int, reply: bytes | None) -> ToolOutcome:
    """The outcome of a complete exchange: `reply` is the body `_exchange` read."""
    if not _is_success(status):
        sentence = f"the tool failed (HTTP {status})"
        text = _json_text(reply) if reply is not None else None
        if text is None:
            return ToolOutcome("error", _error(sentence), f"http_{status}")
        output = f'{{"error": {json.dumps(sentence)}, "reply": {text}}}'
        return ToolOutcome("error", output, f"http_{status}")
    assert reply is not None  # a 2xx's body is always read
    if not reply.strip(_JSON_WHITESPACE.encode()):
        return ToolOutcome("ok", EMPTY_OK_OUTPUT)
    text = _json_text(reply)
    if text is None:
        return ToolOutcome("error", INVALID_JSON_OUTPUT, "invalid_json")
    return ToolOutcome("ok", text)
