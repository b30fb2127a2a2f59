"""How the driver runs a business tool: the executor side of a `ToolSpec`.

The call core decides *whether* and *when* a tool runs (`app.call.toolcalls`); these say
*how*: an HTTP endpoint the bridge POSTs to, or an async Python function. Built once at
start from the agents file (`app.agents`), shared by every call, keyed by tool name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

DEFAULT_MAX_REPLY_BYTES: Final = 64 * 1024
MAX_OUTPUT_BYTES: Final = 256 * 1024
"""The longest output a tool may hand the model (an HTTP tool's `max_reply_bytes` at most,
a Python tool's JSON): it must fit in a call fixture's line, or a replay can't feed it
back (`app.recording_lines.MAX_LINE_CHARS`)."""

Result = Literal["ok", "error", "timeout"]


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool learns about the call it serves."""

    call_sid: str
    agent: str
    from_number: str
    to_number: str
    #: The stream's `<Parameter>`s (caller location fields and such), secrets removed.
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpTool:
    """POST `{call_sid, agent, from, to, tool, arguments}` to `url`; the JSON reply is the
    output. `headers` are already resolved (`${ENV}` filled in): secrets, never logged."""

    name: str
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 8.0
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES


#: `async def tool(context: ToolContext, arguments: dict) -> <JSON-serialisable value>`
PythonFunction = Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class PythonTool:
    """An async function (`module:function` in the agents file), awaited in the call's
    event loop; cancelled at its timeout."""

    name: str
    function: PythonFunction
    timeout_s: float = 8.0


ToolDef = HttpTool | PythonTool


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """How one run ended. `output` is the JSON text handed to the model as the function
    call's output (`{"error": ...}` unless `result` is ok); `detail` a short reason for the
    log and the record (`http_503`, `invalid_json`, `too_large`, `ValueError`...), never
    the reply's content."""

    result: Result
    output: str
    detail: str = ""
