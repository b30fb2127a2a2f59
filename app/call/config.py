"""What one call needs to know about its configuration, as plain data.

The call core never reads the environment or pydantic settings: it is given a
`CallConfig`, so that a recorded call can be replayed with exactly the configuration
it ran with (the fixture header stores it) and unit tests can build one in a line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from app.settings import Settings

TurnDetection = Literal["server_vad", "semantic_vad"]


@dataclass(frozen=True, slots=True)
class CallConfig:
    """Behaviour of one call. Times are in milliseconds."""

    instructions: str = "You are a helpful phone assistant. Keep answers short."
    voice: str = "marin"
    #: What the bot is told to do first; empty means the caller speaks first.
    greeting: str = "Greet the caller briefly and ask how you can help."
    #: Caller transcription model, or None for no caller transcripts.
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    transcription_language: str | None = None
    turn_detection: TurnDetection = "server_vad"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_eagerness: str = "auto"
    #: "near_field", "far_field", or None for off.
    noise_reduction: str | None = "near_field"
    #: 0: interrupt the bot as soon as the caller starts speaking. N > 0: only once the
    #: caller has kept speaking for N ms (the bot keeps talking meanwhile).
    interrupt_min_speech_ms: int = 0
    #: The caller never waits in silence longer than this for the Realtime service.
    realtime_ready_timeout_ms: int = 4000
    #: Caller audio kept while the Realtime socket opens (older audio is dropped).
    connect_buffer_ms: int = 5000
    #: Tools offered to the model (names from `app.call.tools`).
    tools: tuple[str, ...] = field(default_factory=tuple)
    #: Twilio REST credentials exist: the bridge can hang up and transfer calls.
    rest_available: bool = False
    transfer_number: str | None = None
    transfer_caller_id: str | None = None
    transfer_timeout_s: int | None = None
    #: Longest wait for the last words to play before hanging up / transferring anyway.
    playout_timeout_ms: int = 30_000
    #: 0 = no limit. At the limit the bot wraps up and the call ends after its last word.
    max_call_ms: int = 0
    #: 0 = off. Caller silence (after the bot's audio finished playing) before a reprompt.
    silence_reprompt_ms: int = 0
    #: Unanswered reprompts before a polite hang-up; 0 = never hang up for silence.
    silence_max_reprompts: int = 2
    dtmf_to_model: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, rest_available: bool) -> CallConfig:
        """The per-call view of the process settings."""
        tools: list[str] = []
        if rest_available:
            tools.append("end_call")
            if settings.transfer_number:
                tools.append("transfer_call")
        return cls(
            instructions=settings.instructions,
            voice=settings.bot_voice,
            greeting=settings.bot_greeting,
            transcription_model=(
                settings.transcription_model if settings.transcription_enabled else None
            ),
            transcription_language=settings.transcription_language,
            turn_detection=settings.turn_detection,
            vad_threshold=settings.vad_threshold,
            vad_prefix_padding_ms=settings.vad_prefix_padding_ms,
            vad_silence_duration_ms=settings.vad_silence_duration_ms,
            vad_eagerness=settings.vad_eagerness,
            noise_reduction=None if settings.noise_reduction == "off" else settings.noise_reduction,
            interrupt_min_speech_ms=settings.interrupt_min_speech_ms,
            realtime_ready_timeout_ms=round(settings.realtime_connect_timeout_seconds * 1000),
            tools=tuple(tools),
            rest_available=rest_available,
            transfer_number=settings.transfer_number,
            transfer_caller_id=settings.transfer_caller_id,
            transfer_timeout_s=settings.transfer_timeout_seconds,
            playout_timeout_ms=round(settings.last_words_timeout_seconds * 1000),
            max_call_ms=round(settings.max_call_seconds * 1000),
            silence_reprompt_ms=round(settings.silence_reprompt_seconds * 1000),
            silence_max_reprompts=settings.silence_max_reprompts,
            dtmf_to_model=settings.dtmf_to_model,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for fixture headers)."""
        data = asdict(self)
        data["tools"] = list(self.tools)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallConfig:
        """Inverse of `to_dict`; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "tools" in kwargs:
            kwargs["tools"] = tuple(kwargs["tools"])
        return cls(**kwargs)
