"""What one call needs to know about its configuration, as plain data.

The call core never reads the environment or pydantic settings: it is given a
`CallConfig`, so that a recorded call replays with exactly the configuration it ran with
(the fixture header stores it) and tests can build one in a line.

**One declaration, one default.** A call setting is declared once, in `app.settings`
(environment name, type, validation, default). A `CallConfig` field only names the setting
it comes from (and how its unit converts, seconds to ms), so it has no default of its own
that could drift: `from_settings` reads every field generically. Derived fields (the tools
offered, whether REST can be used) are computed there too. Tests build configs from the
settings' defaults (`tests/core.py: config()`), never from numbers of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal

from app.call.backchannel import phrases_for
from app.call.toolspec import ToolSpec

#: An `app.settings.Settings` (the core doesn't import the settings layer, not even for
#: types: fields are read by name).
Settings = Any

TurnDetection = Literal["server_vad", "semantic_vad"]
InterruptMode = Literal["resume", "cancel"]

#: The agent of a call when no agents file names one (`AGENTS_FILE`).
DEFAULT_AGENT: Final = "default"

#: Caller audio kept while the Realtime socket opens (older audio is dropped). Not a setting.
CONNECT_BUFFER_MS: Final = 5000


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


#: Past Twilio's detection timeout, how long its verdict's callback may take to arrive.
AMD_MARGIN_MS: Final = 3000

_PRESENT: Final = object()


def _setting(
    name: str, convert: Callable[[Any], Any] | None = None, *, absent: Any = _PRESENT
) -> Any:
    """A field filled from setting `name` (through `convert`, if given). `absent`: the
    value a call fixture recorded before the field existed ran with (when it differs from
    today's default), so old fixtures replay as they ran."""
    return field(metadata={"setting": name, "convert": convert, "absent": absent})


def _derived(read: Callable[[Settings], Any]) -> Any:
    """A field computed from the whole settings object."""
    return field(metadata={"derived": read})


def _transcription(settings: Settings) -> str | None:
    return settings.transcription_model if settings.transcription_enabled else None


def _noise(value: str) -> str | None:
    return None if value == "off" else value


def _vad(value: str) -> int | None:
    return None if value == "off" else int(value)


@dataclass(frozen=True, slots=True)
class CallConfig:
    """Behaviour of one call. Times are in milliseconds."""

    instructions: str = _derived(lambda s: s.instructions)
    voice: str = _setting("bot_voice")
    #: What the bot is told to do first; empty means the caller speaks first.
    greeting: str = _setting("bot_greeting")
    #: Caller transcription model, or None for no caller transcripts.
    transcription_model: str | None = _derived(_transcription)
    transcription_language: str | None = _setting("transcription_language")
    turn_detection: TurnDetection = _setting("turn_detection")  # noqa: RUF009 (a field spec)
    vad_threshold: float = _setting("vad_threshold")
    vad_prefix_padding_ms: int = _setting("vad_prefix_padding_ms")
    vad_silence_duration_ms: int = _setting("vad_silence_duration_ms")
    vad_eagerness: str = _setting("vad_eagerness")
    #: "near_field", "far_field", or None for off.
    noise_reduction: str | None = _setting("noise_reduction", convert=_noise)
    #: 0: interrupt the bot as soon as the caller starts speaking. N > 0: only once the
    #: caller has kept speaking for N ms (the bot keeps talking meanwhile).
    interrupt_min_speech_ms: int = _setting("interrupt_min_speech_ms")
    #: "resume": speech over the bot pauses it; a false turn resumes the answer, a real
    #: one interrupts it (`app.call.falseturn`). "cancel": any speech interrupts at once
    #: (or after `interrupt_min_speech_ms`). Fixtures from before the mode ran "cancel".
    interrupt_mode: InterruptMode = _setting("interrupt_mode", absent="cancel")  # noqa: RUF009
    #: Resume mode: speech over the bot still going this long after it started is a turn.
    interrupt_decide_ms: int = _setting("interrupt_decide_ms")
    #: Resume mode: the words that don't take the turn ("mm-hmm"), as normalised phrases.
    backchannels: tuple[str, ...] = _derived(
        lambda s: phrases_for(s.transcription_language, s.backchannel_words)
    )
    #: Resume mode: how far before the heard position a resume may start (to a pause).
    resume_rewind_ms: int = _setting("resume_rewind_ms")
    #: Resume mode: the driver's local speech detector (webrtcvad mode 0-3), or None.
    local_vad: int | None = _setting("local_vad", convert=_vad, absent=None)
    #: Resume mode: speech starting this soon after the bot's audio started playing needs
    #: words to interrupt (a speakerphone's echo); 0 = off.
    echo_guard_ms: int = _setting("echo_guard_ms", absent=0)
    #: After the last mark echo of the last words, before the hang-up or transfer.
    hangup_tail_ms: int = _setting("hangup_tail_ms", absent=0)
    #: The caller never waits in silence longer than this for the Realtime service.
    realtime_ready_timeout_ms: int = _setting("realtime_connect_timeout_seconds", convert=_ms)
    #: Tools offered to the model (names from `app.call.tools`).
    tools: tuple[str, ...] = _derived(lambda s: _tools(s))
    #: Twilio REST credentials exist: the bridge can hang up and transfer calls.
    rest_available: bool = _derived(lambda s: s.rest_enabled)
    transfer_number: str | None = _setting("transfer_number")
    transfer_caller_id: str | None = _setting("transfer_caller_id")
    transfer_timeout_s: int | None = _setting("transfer_timeout_seconds")
    #: Longest wait for the last words to play before hanging up / transferring anyway.
    playout_timeout_ms: int = _setting("last_words_timeout_seconds", convert=_ms)
    #: 0 = no limit. At the limit the bot wraps up and the call ends after its last word.
    max_call_ms: int = _setting("max_call_seconds", convert=_ms)
    #: 0 = off. Caller silence (after the bot's audio finished playing) before a reprompt.
    silence_reprompt_ms: int = _setting("silence_reprompt_seconds", convert=_ms)
    #: Unanswered reprompts before a polite hang-up; 0 = never hang up for silence.
    silence_max_reprompts: int = _setting("silence_max_reprompts")
    dtmf_to_model: bool = _setting("dtmf_to_model")
    #: The agent answering the call (`app.agents`; "default" without an agents file).
    agent: str = _derived(lambda s: DEFAULT_AGENT)
    #: Business function tools offered besides `tools` (`app.call.toolspec`).
    functions: tuple[ToolSpec, ...] = _derived(lambda s: ())
    #: MCP servers as `session.tools` entries (`{"type": "mcp", ...}`); header values keep
    #: their `${ENV}` references, filled in by the driver as it sends (never recorded).
    mcp_servers: tuple[dict[str, Any], ...] = _derived(lambda s: ())
    #: `session.reasoning.effort` (reasoning models only), or None: the model's default.
    reasoning_effort: str | None = _derived(lambda s: None)
    #: `session.parallel_tool_calls`, or None: the model's default.
    parallel_tool_calls: bool | None = _derived(lambda s: None)
    #: "inbound", or "outbound" for a call the bridge placed (`POST /calls`).
    direction: str = _derived(lambda s: "inbound")
    #: Outbound: Twilio's answering-machine detection, "off" | "hangup" | "voicemail".
    machine_detection: str = _derived(lambda s: "off")
    #: Outbound with `machine_detection = "voicemail"`: what is said after the beep.
    voicemail_message: str = _derived(lambda s: "")
    #: Outbound: the bot greets after the callee's hello, or after this much silence.
    greet_silence_ms: int = _setting("outbound_greet_silence_ms")
    #: Outbound with detection: how long the greeting waits for Twilio's verdict.
    amd_wait_ms: int = _setting("outbound_amd_wait_ms")
    #: Outbound voicemail: the longest wait for the end of a machine's greeting (Twilio's
    #: detection timeout and a margin for its callback).
    amd_limit_ms: int = _setting(
        "outbound_detection_timeout_seconds", convert=lambda s: _ms(s) + AMD_MARGIN_MS
    )
    connect_buffer_ms: int = CONNECT_BUFFER_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> CallConfig:
        """The per-call view of the process settings (every field, read generically)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            meta = f.metadata
            if "derived" in meta:
                values[f.name] = meta["derived"](settings)
            elif "setting" in meta:
                value = getattr(settings, meta["setting"])
                convert = meta["convert"]
                values[f.name] = convert(value) if convert is not None else value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for fixture headers)."""
        data = asdict(self)
        data["tools"] = list(self.tools)
        data["functions"] = [spec.to_dict() for spec in self.functions]
        data["mcp_servers"] = [dict(entry) for entry in self.mcp_servers]
        data["backchannels"] = list(self.backchannels)
        return data

    def function(self, name: str) -> ToolSpec | None:
        """The business tool `name`, if this call offers it."""
        for spec in self.functions:
            if spec.name == name:
                return spec
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any], defaults: CallConfig) -> CallConfig:
        """Inverse of `to_dict`. Keys a fixture lacks (fields added since it was recorded)
        come from `defaults`; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for f in fields(cls):
            absent = f.metadata.get("absent", _PRESENT)
            if f.name not in data and absent is not _PRESENT:
                kwargs[f.name] = absent
        if "tools" in kwargs:
            kwargs["tools"] = tuple(kwargs["tools"])
        if "functions" in kwargs:
            kwargs["functions"] = tuple(ToolSpec.from_dict(d) for d in kwargs["functions"])
        if "mcp_servers" in kwargs:
            kwargs["mcp_servers"] = tuple(kwargs["mcp_servers"])
        if "backchannels" in kwargs:
            kwargs["backchannels"] = tuple(kwargs["backchannels"])
        return replace(defaults, **kwargs)


def _tools(settings: Settings) -> tuple[str, ...]:
    if not settings.rest_enabled:
        return ()
    return ("end_call", "transfer_call") if settings.transfer_number else ("end_call",)
