"""Runtime settings, read from the environment and from `.env` when present.

Every setting has a safe default so the bridge starts with no configuration at all
(it then serves `/healthz` and answers calls with a spoken apology). Invalid values are
refused at start with a message naming the environment variable, because a typo found
at boot is far cheaper than one found on a live call.

Environment variable names are the upper-case field names (matching is case-insensitive).
An empty value (`FOO=` in a `.env` file) means "not set" and falls back to the default,
except for the two settings where empty has a documented meaning: `BOT_GREETING` (empty:
the caller speaks first) and `TRANSCRIPTION_MODEL` (empty: transcription off).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.outbound.destinations import E164, country_code, parse_prefixes

BUILTIN_VOICES: frozenset[str] = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
"""Voices the Realtime API ships with; any other voice must be a custom `voice_...` id."""

SECRET_FIELDS: frozenset[str] = frozenset(
    {
        "openai_api_key",
        "twilio_auth_token",
        "operator_api_key",
        "database_url",
        "tools_signing_secret",
    }
)
"""Fields whose values must never appear in logs or error messages."""

KEEP_EMPTY_FIELDS: frozenset[str] = frozenset({"bot_greeting", "transcription_model"})
"""Fields where an empty string is a meaningful value rather than "unset"."""

DEFAULT_INSTRUCTIONS = (
    "You are a friendly, helpful voice assistant answering a phone call. "
    "Speak naturally, warmly and concisely: use short sentences, one idea at a time, "
    "and keep each answer to a few sentences unless the caller asks for more. "
    "Always reply in the language the caller speaks. "
    "This is a phone call, so never read out URLs, email addresses letter by letter, "
    "markdown, lists, code or emoji; say things the way a person would on the phone. "
    "If you did not catch something, ask the caller to repeat it. "
    "When the caller is done or says goodbye, say a short goodbye and end the call."
)
DEFAULT_GREETING = "Greet the caller briefly and ask how you can help."
DEFAULT_FALLBACK_MESSAGE = (
    "Sorry, our assistant can't take your call right now. Please try again later."
)
DEFAULT_APOLOGY_MESSAGE = "Sorry, this line is not set up yet. Goodbye."

_ACCOUNT_SID_RE = re.compile(r"^AC[0-9a-fA-F]{32}$")
_PHONE_SEPARATORS_RE = re.compile(r"[\s().-]")
_SIP_RE = re.compile(r"^sip:[^\s<>@]+@[^\s<>@]+$", re.IGNORECASE)
_MAX_ECHO = 80


class SettingsError(Exception):
    """Raised by `load_settings` when the configuration is invalid.

    `problems` holds one human-readable line per bad setting; `str(error)` joins them.
    Secret values are never included.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def check_url(value: str, schemes: tuple[str, ...], *, allow_path: bool) -> str:
    """Validate an absolute URL's scheme and host; return it without a trailing slash."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise ValueError("must include a host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    try:
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if not allow_path:
        if parts.path not in ("", "/"):
            raise ValueError("must be only scheme://host[:port], without a path")
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise ValueError("must not contain a query or fragment")
    return value.rstrip("/")


def check_dial_target(value: str) -> str:
    """Validate an E.164 number (separators allowed and removed) or a `sip:` URI."""
    value = value.strip()
    if value.lower().startswith("sip:"):
        if not _SIP_RE.match(value):
            raise ValueError("must be a SIP URI like sip:user@host")
        return value
    number = _PHONE_SEPARATORS_RE.sub("", value)
    if not E164.match(number):
        raise ValueError("must be an E.164 phone number like +14155550100, or a sip: URI")
    return number


def check_e164(value: str) -> str:
    """Validate an E.164 phone number (separators allowed and removed); return it bare."""
    number = _PHONE_SEPARATORS_RE.sub("", value.strip())
    if not E164.match(number):
        raise ValueError("must be an E.164 phone number like +14155550100")
    return number


def check_voice(value: str) -> str:
    """Validate a Realtime voice: a built-in name (any case) or a custom `voice_...` id."""
    value = value.strip()
    if value.lower() in BUILTIN_VOICES:
        return value.lower()
    if value.startswith("voice_") and len(value) > len("voice_"):
        return value
    raise ValueError(
        f"must be one of {', '.join(sorted(BUILTIN_VOICES))}, or a custom voice_... id"
    )


def check_timezone(value: str) -> str:
    """Validate an IANA time zone name (`Europe/Berlin`, `UTC`) against the zone database."""
    value = value.strip()
    try:
        ZoneInfo(value)
    except (ValueError, OSError, ZoneInfoNotFoundError):
        raise ValueError("must be an IANA time zone name like Europe/Berlin or UTC") from None
    return value


def _read_text_file(path: Path) -> str:
    """Read a UTF-8 text file, turning failures into a ValueError pydantic can report."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read as UTF-8 text ({type(exc).__name__})") from None


class Settings(BaseSettings):
    """All bridge settings. Build it with `load_settings()` for friendly errors."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    # --- OpenAI -------------------------------------------------------------------------
    openai_api_key: SecretStr | None = None
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    realtime_connect_timeout_seconds: float = Field(default=4.0, gt=0, le=5)

    # --- Public URL and Twilio ----------------------------------------------------------
    public_base_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    # Unset: on whenever TWILIO_AUTH_TOKEN is set (see `stream_token_enforced`).
    stream_token_required: bool | None = None

    # --- Call behaviour -----------------------------------------------------------------
    bot_instructions: str = DEFAULT_INSTRUCTIONS
    bot_instructions_file: Path | None = None
    bot_voice: str = "marin"
    bot_greeting: str = DEFAULT_GREETING
    transcription_model: str = "gpt-4o-mini-transcribe"
    transcription_language: str | None = None
    dtmf_to_model: bool = True

    # --- Ending calls: tools, last words, limits ----------------------------------------
    transfer_number: str | None = None
    transfer_caller_id: str | None = None
    transfer_timeout_seconds: int | None = Field(default=None, ge=5, le=600)
    last_words_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # The Realtime service caps a session at 60 minutes: wrap up politely before that.
    max_call_seconds: float = Field(default=3300.0, ge=0)
    silence_reprompt_seconds: float = Field(default=10.0, ge=0)
    silence_max_reprompts: int = Field(default=2, ge=0)

    # --- Turn detection and noise -------------------------------------------------------
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    vad_threshold: float = Field(default=0.5, ge=0, le=1)
    vad_prefix_padding_ms: int = Field(default=300, ge=0)
    vad_silence_duration_ms: int = Field(default=500, gt=0)
    vad_eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    interrupt_min_speech_ms: int = Field(default=0, ge=0)
    # README "Noisy lines": pause the answer on speech over it, resume it after a false turn.
    interrupt_mode: Literal["resume", "cancel"] = "resume"
    interrupt_decide_ms: int = Field(default=1000, ge=200, le=3000)  # < the 4 s limit
    backchannel_words: str | None = None  # unset: the list for TRANSCRIPTION_LANGUAGE
    resume_rewind_ms: int = Field(default=400, ge=0, le=2000)
    local_vad: Literal["off", "0", "1", "2", "3"] = "3"
    echo_guard_ms: int = Field(default=0, ge=0, le=5000)
    hangup_tail_ms: int = Field(default=300, ge=0, le=3000)

    # --- Outbound calls (README "Outbound calls") ---------------------------------------
    twilio_from_number: str | None = None
    # Unset: the caller ID's own country only (README "Outbound calls": toll fraud).
    outbound_allowed_prefixes: str | None = None
    max_outbound_calls: int = Field(default=20, ge=1, le=10_000)
    outbound_greet_silence_ms: int = Field(default=1500, ge=0, le=10_000)
    outbound_amd_wait_ms: int = Field(default=4000, ge=500, le=30_000)
    outbound_detection_timeout_seconds: int = Field(default=30, ge=3, le=59)

    # --- Fallback -----------------------------------------------------------------------
    fallback_message: str = DEFAULT_FALLBACK_MESSAGE
    fallback_number: str | None = None
    apology_message: str = DEFAULT_APOLOGY_MESSAGE

    # --- Serving: where `python -m app` (`make run`) listens; the uvicorn CLI has its own --
    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)

    # --- Recording and operations -------------------------------------------------------
    record_dir: Path | None = None
    record_audio: bool = False
    shutdown_drain_seconds: float = Field(default=600, ge=0)
    log_format: Literal["kv", "json"] = "kv"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_transcripts: bool = True
    log_max_field_chars: int = Field(default=1000, ge=80, le=1_000_000)

    # --- Limits: what one process takes from the outside (README "Security") -----------
    max_concurrent_calls: int = Field(default=400, ge=1, le=100_000)
    max_connections: int | None = Field(default=None, ge=1, le=1_000_000)
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    twilio_max_frame_bytes: int = Field(default=64 * 1024, ge=4096, le=16 * 1024 * 1024)
    realtime_max_frame_bytes: int = Field(
        default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024
    )
    stream_idle_seconds: float = Field(default=10.0, ge=1, le=600)
    caller_audio_burst_seconds: float = Field(default=2.0, ge=0.1, le=60)
    record_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)

    # --- Operating it: call records, the operator API (README "Operating it") ----------
    operator_api_key: SecretStr | None = None
    database_url: SecretStr | None = None  # unset: sqlite under ./data/ (`app.store`)
    call_records_retention_days: int = Field(default=0, ge=0, le=36_500)
    call_records_retry_seconds: float = Field(default=120.0, ge=1, le=86_400)
    store_transcripts: bool = True

    # --- Agents and tools (README "Agents and tools"; read by `app.agents`) ------------
    agents_file: Path | None = None
    tools_signing_secret: SecretStr | None = None
    # The zone of `{local_time}` in instructions, unless an agent sets its own.
    timezone: str = "UTC"

    _file_instructions: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: Any) -> Any:
        """Drop blank values so `.env` lines like `FOO=` fall back to the default."""
        if not isinstance(data, dict):
            return data
        return {
            key: value
            for key, value in data.items()
            if not (isinstance(value, str) and not value.strip() and key not in KEEP_EMPTY_FIELDS)
        }

    @field_validator("openai_realtime_url")
    @classmethod
    def _realtime_url(cls, value: str) -> str:
        return check_url(value, ("ws", "wss"), allow_path=True)

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, ("http", "https"), allow_path=False)

    @field_validator("twilio_api_base_url")
    @classmethod
    def _twilio_api_base_url(cls, value: str) -> str:
        return check_url(value, ("http", "https"), allow_path=True)

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not _ACCOUNT_SID_RE.match(value):
            raise ValueError("must be 'AC' followed by 32 hexadecimal characters")
        return value

    @field_validator("twilio_from_number")
    @classmethod
    def _from_number(cls, value: str | None) -> str | None:
        return None if value is None else check_e164(value)

    @field_validator("outbound_allowed_prefixes")
    @classmethod
    def _allowed_prefixes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return ",".join(parse_prefixes(value))

    @property
    def allowed_prefixes(self) -> list[str] | None:
        """`OUTBOUND_ALLOWED_PREFIXES` as a list (None: the default rule)."""
        value = self.outbound_allowed_prefixes
        return None if value is None else value.split(",")

    @field_validator("transfer_number", "fallback_number", "transfer_caller_id")
    @classmethod
    def _dial_target(cls, value: str | None) -> str | None:
        return None if value is None else check_dial_target(value)

    @field_validator("bot_voice")
    @classmethod
    def _voice(cls, value: str) -> str:
        return check_voice(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("transcription_model", "bot_greeting", "host")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator(
        "turn_detection",
        "vad_eagerness",
        "noise_reduction",
        "log_format",
        "interrupt_mode",
        "local_vad",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("record_dir")
    @classmethod
    def _record_dir(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError("exists but is not a directory")
        return value

    @field_validator("bot_instructions_file")
    @classmethod
    def _instructions_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError("is not an existing file")
            _read_text_file(value)
        return value

    @model_validator(mode="after")
    def _min_speech_needs_server_vad(self) -> Settings:
        """Refuse INTERRUPT_MIN_SPEECH_MS > 0 with semantic VAD.

        The min-speech confirmation comes from a timer at N ms plus the VAD silence window
        after `speech_started`, or from `speech_stopped`; it assumes server_vad's fixed
        silence window. Semantic VAD's end of turn can take seconds, so noise would hold
        the bot's voice (and real barge-ins would come late) unpredictably.
        """
        if self.turn_detection == "semantic_vad" and self.interrupt_min_speech_ms > 0:
            raise ValueError(
                f"INTERRUPT_MIN_SPEECH_MS={self.interrupt_min_speech_ms} does not work with "
                "TURN_DETECTION=semantic_vad: semantic VAD can take seconds to end a turn, "
                "while the min-speech confirmation assumes server_vad's silence window. Use "
                "TURN_DETECTION=server_vad, or INTERRUPT_MIN_SPEECH_MS=0"
            )
        return self

    @model_validator(mode="after")
    def _min_speech_is_cancel_mode(self) -> Settings:
        """INTERRUPT_MIN_SPEECH_MS > 0 is the min-speech policy (the bot talks on until the
        speech is confirmed), which `resume` replaces: asking for both is a contradiction.
        Without an explicit INTERRUPT_MODE, a min-speech setting keeps working as before."""
        if self.interrupt_min_speech_ms > 0 and self.interrupt_mode == "resume":
            if "interrupt_mode" in self.model_fields_set:
                raise ValueError(
                    f"INTERRUPT_MIN_SPEECH_MS={self.interrupt_min_speech_ms} needs "
                    "INTERRUPT_MODE=cancel: with INTERRUPT_MODE=resume the bot stops at once "
                    "and resumes after a false turn, so there is no speech to wait for. "
                    "Unset one of them"
                )
            self.interrupt_mode = "cancel"
        return self

    @model_validator(mode="after")
    def _read_instructions_file(self) -> Settings:
        """Read the instructions file once, at start, so a bad file fails the boot."""
        if self.bot_instructions_file is not None:
            self._file_instructions = _read_text_file(self.bot_instructions_file).strip()
        return self

    # --- Derived values ---------------------------------------------------------------

    @property
    def instructions(self) -> str:
        """The system prompt: the file's text when BOT_INSTRUCTIONS_FILE is set."""
        if self._file_instructions is not None:
            return self._file_instructions
        return self.bot_instructions

    @property
    def transcription_enabled(self) -> bool:
        """False when TRANSCRIPTION_MODEL is empty or `off`."""
        return self.transcription_model.lower() not in ("", "off")

    @property
    def rest_enabled(self) -> bool:
        """True when the Twilio REST API can be used (account SID and auth token set)."""
        return self.twilio_account_sid is not None and self.twilio_auth_token is not None

    @property
    def transfer_enabled(self) -> bool:
        """True when the `transfer_call` tool can be offered to the model."""
        return self.transfer_number is not None and self.rest_enabled

    @property
    def stream_token_enforced(self) -> bool:
        """True when a stream's `start` must carry its call's token and account (on by
        default whenever signatures are checked; STREAM_TOKEN_REQUIRED=false opts out)."""
        if self.twilio_auth_token is None:
            return False
        return self.stream_token_required is not False

    @property
    def connection_limit(self) -> int:
        """MAX_CONNECTIONS, or by default room for every call's media stream and webhook
        twice over plus health checks and scrapes."""
        if self.max_connections is not None:
            return self.max_connections
        return 2 * self.max_concurrent_calls + 100

    @property
    def signatures_enabled(self) -> bool:
        """True when X-Twilio-Signature is enforced (TWILIO_AUTH_TOKEN set)."""
        return self.twilio_auth_token is not None

    def secret_values(self) -> list[str]:
        """The configured secret values, for registration with the log scrubber."""
        secrets = (
            self.openai_api_key,
            self.twilio_auth_token,
            self.operator_api_key,
            self.tools_signing_secret,
        )
        return [s.get_secret_value() for s in secrets if s is not None]

    def warnings(self) -> list[str]:
        """Start-up warnings about risky or degraded configurations, loudest first."""
        found: list[str] = []
        if self.twilio_auth_token is None:
            found.append(
                "SECURITY: TWILIO_AUTH_TOKEN is not set, so X-Twilio-Signature checks are OFF "
                "and anyone who finds this server can open media streams and spend your "
                "OpenAI credit. Set TWILIO_AUTH_TOKEN before exposing the server."
            )
        elif self.stream_token_required is False:
            found.append(
                "SECURITY: STREAM_TOKEN_REQUIRED=false: a media stream is accepted for any "
                "CallSid its `start` claims, so anyone who has seen one signed upgrade can "
                "open billed Realtime sessions and end other calls. Use it only for streams "
                "opened by TwiML other than this bridge's own webhook."
            )
        if self.stream_token_required is True and self.twilio_auth_token is None:
            found.append(
                "STREAM_TOKEN_REQUIRED=true has no effect without TWILIO_AUTH_TOKEN "
                "(the token is an HMAC keyed by it)."
            )
        if self.max_connections is not None and self.max_connections <= self.max_concurrent_calls:
            found.append(
                f"MAX_CONNECTIONS={self.max_connections} leaves no room beside "
                f"MAX_CONCURRENT_CALLS={self.max_concurrent_calls}: each call holds one "
                "connection, and webhooks, health checks and scrapes need their own."
            )
        if self.openai_api_key is None:
            found.append(
                "OPENAI_API_KEY is not set: every call gets the spoken apology and is hung up."
            )
        if self.public_base_url is None:
            found.append(
                "PUBLIC_BASE_URL is not set: public URLs are derived from the request's Host "
                "and X-Forwarded-* headers, which is for development only."
            )
        elif self.public_base_url.lower().startswith("http://"):
            found.append(
                "PUBLIC_BASE_URL uses http://, so the media stream URL is ws://; Twilio only "
                "connects to wss:// streams."
            )
        if not self.rest_enabled:
            found.append(
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not both set: the Twilio REST "
                "API can't be used, so the end_call and transfer_call tools are not offered, "
                "and time-limit or silence endings close the media stream (fallback TwiML) "
                "instead of hanging up."
            )
        if self.transfer_number is not None and not self.rest_enabled:
            found.append(
                "TRANSFER_NUMBER is set but TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not "
                "both set: the transfer_call tool is not offered."
            )
        if "model=" not in urlsplit(self.openai_realtime_url).query:
            found.append(
                "OPENAI_REALTIME_URL has no model= query parameter; the service default "
                "model will be used."
            )
        if self.bot_instructions_file is not None and not self.instructions:
            found.append("BOT_INSTRUCTIONS_FILE is empty: the model gets no instructions.")
        if self.twilio_from_number is not None and self.outbound_allowed_prefixes is None:
            found.append(
                "OUTBOUND_ALLOWED_PREFIXES is not set: POST /calls dials only numbers in "
                f"the caller ID's own country (+{country_code(self.twilio_from_number)}; "
                "within +1, not the Caribbean area codes or +1 900; other countries' premium "
                "ranges are not known); list the prefixes you call."
            )
        if self.operator_api_key is None:
            found.append(
                "OPERATOR_API_KEY is not set: the operator API (/calls) and its docs (/docs) "
                "are off, and /metrics answers anyone who can reach this port."
            )
        if self.record_dir is not None:
            found.append(
                f"RECORD_DIR is set: every call is recorded to {self.record_dir} "
                "(caller audio and transcripts are personal data)."
            )
        return found


def _describe(error: Any) -> str:
    """One line for one pydantic error, with the offending value unless it is secret."""
    loc = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if not loc:
        return f"invalid settings: {message}"
    field = str(loc[0])
    line = f"invalid setting {field.upper()}: {message}"
    value = error.get("input")
    if field not in SECRET_FIELDS and isinstance(value, str | int | float):
        shown = str(value)
        if len(shown) > _MAX_ECHO:
            shown = shown[:_MAX_ECHO] + "..."
        line += f" (got {shown!r})"
    return line


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings` from the environment (and `.env`), with keyword overrides.

    Raises `SettingsError` naming the environment variable of each invalid setting and
    why, never echoing secret values. Pass `_env_file=None` to ignore `.env` (tests).
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError([_describe(e) for e in exc.errors()]) from None
