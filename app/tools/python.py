"""Run a `PythonTool`: await its function in the call's event loop, bounded in time.

Why: an in-process tool is the operator's own code, and it fails like any code does. A run
is cut at `tool.timeout_s` (the function is cancelled), an exception becomes an error
outcome instead of breaking the call, and the return value must be JSON (orjson: dicts,
lists, dataclasses, datetimes...; `None` is `null`; integers past 64 bits, which orjson
can't write, through the standard library's `json`) of at most `MAX_OUTPUT_BYTES`, like an
HTTP tool's reply. Only `asyncio.CancelledError` gets through, so that the bridge can stop
a run.

An exception is logged by its type only: its message and its frames' locals may hold the
caller's data (a card number in a `ValueError`). At DEBUG, the frames' places (file, line,
function) are logged too, which is what finding the bug needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any, Final

import orjson

from app.observability import log_event
from app.tools.defs import MAX_OUTPUT_BYTES, PythonTool, ToolContext, ToolOutcome
from app.tools.http import TOO_LARGE_OUTPUT

logger = logging.getLogger("app.tools")

_MAX_FRAMES: Final = 12
"""Innermost frames logged at DEBUG for a failed run."""
_BIG_INT: Final = "Integer exceeds 64-bit range"
"""orjson's `JSONEncodeError` for an integer it can't write (which `json` can)."""


def _error(sentence: str) -> str:
    """An error output: `{"error": "<sentence>"}`, spaced like the call core's own."""
    return json.dumps({"error": sentence})


TIMEOUT_OUTPUT: Final = _error("the tool did not answer in time")
FAILED_OUTPUT: Final = _error("the tool failed")


async def call_python(
    tool: PythonTool, arguments: dict[str, Any], context: ToolContext
) -> ToolOutcome:
    """Await `tool.function(context, arguments)` and turn what happens into an outcome:
    ok with the value as compact JSON; timeout; error with detail `bad_result` (not
    JSON-serialisable), `too_large` (longer than `MAX_OUTPUT_BYTES`) or the exception's
    class name (`ValueError`)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(tool.timeout_s) as scope:
            value = await tool.function(context, arguments)
    except TimeoutError as exc:
        if scope.expired():
            return _failed(tool, ToolOutcome("timeout", TIMEOUT_OUTPUT, "timeout"), started)
        return _raised(tool, exc, started)  # the function's own TimeoutError
    except Exception as exc:
        return _raised(tool, exc, started)
    output = _encoded(value)
    if output is None:
        return _failed(tool, ToolOutcome("error", FAILED_OUTPUT, "bad_result"), started)
    if len(output) > MAX_OUTPUT_BYTES:
        return _failed(tool, ToolOutcome("error", TOO_LARGE_OUTPUT, "too_large"), started)
    return ToolOutcome("ok", output.decode())


def _encoded(value: Any) -> bytes | None:
    """`value` as compact JSON (UTF-8), or None when it is not JSON-serialisable."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if _BIG_INT not in str(exc):
            return None
    try:  # an integer past 64 bits: the standard library writes it exactly
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()  # a lone surrogate: UnicodeEncodeError, a ValueError
    except (TypeError, ValueError, RecursionError):  # another type; NaN; a cycle; too deep
        return None


def _raised(tool: PythonTool, exc: Exception, started: float) -> ToolOutcome:
    outcome = _failed(tool, ToolOutcome("error", FAILED_OUTPUT, type(exc).__name__), started)
    frames = traceback.extract_tb(exc.__traceback__)[-_MAX_FRAMES:]
    where = [f"{frame.filename}:{frame.lineno} {frame.name}" for frame in frames]
    log_event(logger, logging.DEBUG, "tool.frames", tool=tool.name, frames=where)
    return outcome


def _failed(tool: PythonTool, outcome: ToolOutcome, started: float) -> ToolOutcome:
    ms = round((time.monotonic() - started) * 1000)
    log_event(logger, logging.WARNING, "tool.failed", tool=tool.name, detail=outcome.detail, ms=ms)
    return outcome
