"""The agents file's shape: one pydantic model per kind of table, every key declared.

These models check what a table can check on its own (types, ranges, formats: a voice,
an E.164 number, a time zone, a URL); what needs the rest of the file, the settings or
the environment (a tool an agent names, the model's support for reasoning, `${VAR}`
references, importing a Python tool) is `app.agents.load`'s job.

Unknown keys are errors (`extra="forbid"`): a misspelt `greating` would otherwise be
ignored in silence and the agent would greet with the default. Values are taken strictly
as TOML typed them (`timeout_seconds = "5"` is an error, not a 5), except that a number
without a fraction may be given where a fractional one is allowed.

The turn-detection fields are those of the settings of the same names, with the same
constraints (`vad_threshold` 0 to 1...), read from `app.settings.Settings` itself (`_like`)
so the two can't drift; an agent leaving one out gets the setting's value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from app.call.toolspec import DEFAULT_FILLER, DEFAULT_FILLER_AFTER_MS, DEFAULT_TIMEOUT_MS
from app.settings import (
    Settings,
    check_dial_target,
    check_e164,
    check_timezone,
    check_url,
    check_voice,
)
from app.tools.defs import DEFAULT_MAX_REPLY_BYTES, MAX_OUTPUT_BYTES

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTEXT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

#: The tools the bridge itself offers (app.call.tools); no tool of the file may take them.
BUILTIN_TOOLS: Final = frozenset({"end_call", "transfer_call"})
MAX_TOOL_TIMEOUT_SECONDS: Final = 60
#: A reply is the tool's output, which must fit in a line of the call's fixture.
MAX_REPLY_BYTES_LIMIT: Final = MAX_OUTPUT_BYTES
DEFAULT_PARAMETERS: Final[dict[str, Any]] = {"type": "object", "properties": {}}


def check_name(value: str) -> str:
    """An agent or tool name: what the Realtime API allows for a function's name."""
    if not _NAME_RE.match(value):
        raise ValueError("must be 1 to 64 letters, digits, '_' or '-'")
    return value


def _context_name(value: str) -> str:
    if not _CONTEXT_NAME_RE.match(value):
        raise ValueError("must be a name of letters, digits and _ (not starting with a digit)")
    return value


def _function(value: str) -> str:
    if not _FUNCTION_RE.match(value):
        raise ValueError('must be "module:function", like "examples.tools:opening_hours"')
    return value


def _http_url(value: str) -> str:
    return check_url(value, ("http", "https"), allow_path=True)


def _reply_limit(value: int) -> int:
    if value > MAX_REPLY_BYTES_LIMIT:
        raise ValueError(
            f"must be at most {MAX_REPLY_BYTES_LIMIT} ({MAX_REPLY_BYTES_LIMIT // 1024} KiB): "
            "a tool's output must fit in a line of the call's fixture, or a replay can't "
            "feed it back"
        )
    return value


def _approval(value: Any) -> str | list[str]:
    if value in ("never", "always"):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ValueError('must be "never", "always" or a list of tool names')


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _like(setting: str) -> Any:
    """An optional field with the numeric constraints of the setting of that name."""
    bounds: dict[str, Any] = {}
    for constraint in Settings.model_fields[setting].metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(constraint, key, None) is not None:
                bounds[key] = getattr(constraint, key)
    return Field(default=None, **bounds)


Name = Annotated[str, AfterValidator(check_name)]
Number = Annotated[str, AfterValidator(check_e164)]
#: Header name -> value; names, values and `${VAR}`s are checked by `app.agents.load`.
Headers = dict[str, str]
TurnDetection = Annotated[Literal["server_vad", "semantic_vad"], BeforeValidator(_lower)]
Eagerness = Annotated[Literal["low", "medium", "high", "auto"], BeforeValidator(_lower)]
ReasoningEffort = Literal["minimal", "low", "medium", "high", "xhigh"]
OnInterrupt = Annotated[Literal["continue", "cancel"], BeforeValidator(_lower)]


class _Table(BaseModel):
    """A table of the file: unknown keys are errors, values taken as TOML typed them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AgentEntry(_Table):
    """`[agents.NAME]`: who answers a number, and how. Unset fields: the settings'."""

    default: bool | None = None
    instructions: str | None = None
    #: Relative to the agents file's directory.
    instructions_file: str | None = None
    voice: Annotated[str, AfterValidator(check_voice)] | None = None
    #: "" = the caller speaks first.
    greeting: str | None = None
    tools: list[str] = []
    transfer_number: Annotated[str, AfterValidator(check_dial_target)] | None = None
    timezone: Annotated[str, AfterValidator(check_timezone)] | None = None
    turn_detection: TurnDetection | None = None
    vad_threshold: float | None = _like("vad_threshold")
    vad_prefix_padding_ms: int | None = _like("vad_prefix_padding_ms")
    vad_silence_duration_ms: int | None = _like("vad_silence_duration_ms")
    vad_eagerness: Eagerness | None = None
    interrupt_min_speech_ms: int | None = _like("interrupt_min_speech_ms")
    #: README "Noisy lines"; unset: INTERRUPT_MODE (or cancel with a min-speech value).
    interrupt_mode: Annotated[Literal["resume", "cancel"], BeforeValidator(_lower)] | None = None
    interrupt_decide_ms: int | None = _like("interrupt_decide_ms")
    #: The agent's backchannels (its language's words that don't take the turn).
    backchannel_words: list[Annotated[str, StringConstraints(min_length=1)]] | None = None
    reasoning_effort: Annotated[ReasoningEffort, BeforeValidator(_lower)] | None = None
    parallel_tool_calls: bool | None = None
    #: Outbound call context values its templates may name.
    context: list[Annotated[str, AfterValidator(_context_name)]] = []
    #: Dialled numbers (Twilio's `To`) it answers.
    numbers: list[Number] = []


#: The agent fields that override the `CallConfig` (and settings) field of the same name.
TURN_FIELDS: Final = (
    "turn_detection",
    "vad_threshold",
    "vad_prefix_padding_ms",
    "vad_silence_duration_ms",
    "vad_eagerness",
    "interrupt_min_speech_ms",
    "interrupt_decide_ms",
)


class _FunctionEntry(_Table):
    """What the model is told about a function tool, and how a call treats it."""

    description: str = ""
    #: A JSON Schema of type "object" (checked by `app.agents.load`).
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_PARAMETERS))
    timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT_MS / 1000, gt=0, le=MAX_TOOL_TIMEOUT_SECONDS
    )
    on_interrupt: OnInterrupt = "continue"
    filler_after_ms: int = Field(default=DEFAULT_FILLER_AFTER_MS, ge=0)
    filler: str = Field(default=DEFAULT_FILLER, min_length=1)
    #: Top-level argument names kept out of fixtures, logs and records.
    redact: list[str] = []


class HttpToolEntry(_FunctionEntry):
    """`[tools.NAME]` with `url`: the bridge sends the call's facts and the arguments."""

    url: Annotated[str, AfterValidator(_http_url)]
    method: Annotated[Literal["POST", "PUT", "PATCH"], BeforeValidator(_upper)] = "POST"
    #: Values may hold `${VAR}` references (`app.agents.envrefs`).
    headers: Headers = {}
    max_reply_bytes: Annotated[int, AfterValidator(_reply_limit)] = Field(
        default=DEFAULT_MAX_REPLY_BYTES, ge=1
    )


class PythonToolEntry(_FunctionEntry):
    """`[tools.NAME]` with `function = "module:function"`: an async function."""

    function: Annotated[str, AfterValidator(_function)]


class McpToolEntry(_Table):
    """`[tools.NAME]` with `mcp_url`: an MCP server the Realtime service calls itself."""

    mcp_url: Annotated[str, AfterValidator(_http_url)]
    #: The server's description for the model (`server_description`).
    description: str | None = None
    allowed_tools: list[str] | None = None
    headers: Headers = {}
    #: "never", "always", or the names of the tools that need approval.
    require_approval: Annotated[Any, AfterValidator(_approval)] = "never"


ToolEntry = HttpToolEntry | PythonToolEntry | McpToolEntry

#: The key that makes a tool table each kind, and what the kind is called in messages.
TOOL_KINDS: Final[dict[str, tuple[type[ToolEntry], str]]] = {
    "url": (HttpToolEntry, "an HTTP tool"),
    "function": (PythonToolEntry, "a Python tool"),
    "mcp_url": (McpToolEntry, "an MCP server"),
}


class AgentsFileTop(_Table):
    """The whole file: `[agents.NAME]` and `[tools.NAME]` tables (each checked on its
    own, by kind, so that one bad table doesn't hide the others' mistakes)."""

    agents: dict[str, dict[str, Any]] = {}
    tools: dict[str, dict[str, Any]] = {}
