"""What the call core asks its I/O layer to do. Plain data, in the order to be done.

The core (`app.call.session.CallSession`) never touches a socket or a clock: each input
returns a list of these, and `app.bridge` carries them out in order. A recorded call
replays by feeding the same inputs and comparing the actions that come out. Timers are not
actions: the core keeps them and tells its driver when to wake it (`app.call.outbox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from app.call.playback import Chunk


@dataclass(frozen=True, slots=True)
class ToTwilio:
    """Send one message on the Twilio media stream."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToRealtime:
    """Send one client event on the Realtime socket."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnectRealtime:
    """Open the Realtime socket; answer with the input `{"_socket": "open"}` or
    `{"_socket": "failed", "reason": ...}` (direction `from_openai`)."""


@dataclass(frozen=True, slots=True)
class CloseTwilio:
    """Close the media stream. Unless the call was ended deliberately, Twilio then runs
    the fallback TwiML that follows `<Connect>`."""

    reason: str


@dataclass(frozen=True, slots=True)
class CloseRealtime:
    """Close the Realtime socket."""

    reason: str


@dataclass(frozen=True, slots=True)
class RestRequest:
    """Update the live call through the Twilio REST API (form `params`: `Status` or
    `Twiml`); answer with `rest_result`."""

    kind: str
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class RunTool:
    """Run business tool `name` (`app.tools`) with the validated `arguments`; answer with
    the input `{"tool_result": {"call_id", "name", "result", "output", "detail", "ms"}}`
    (direction `rest`) when it is done. The driver enforces `timeout_ms`."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class CancelTool:
    """Stop the run of `call_id` (the caller interrupted a `cancel` tool, or the call is
    over): no answer is expected, and one that comes anyway is ignored."""

    call_id: str


@dataclass(frozen=True, slots=True)
class CheckVoice:
    """Resume mode: ask the driver's local speech detector (`app.voice`) about the last
    `window_ms` of caller audio; answer at once with the input `{"voice": {...report,
    "at_decision": at_decision}}` (direction `rest`). Only a driver with a detector gets
    one (`CallConfig.local_vad` set)."""

    window_ms: int
    at_decision: bool


@dataclass(frozen=True, slots=True)
class FindPause:
    """Resume mode: where may item `item_id`, heard up to byte `heard`, resume, at most
    `rewind_ms` before that (the last pause between words: `app.pauses`)? `chunks` are its
    audio around there, base64 as the service sent it (the core never decodes audio).
    Answer at once with the input `{"pause": {"item_id", "resume_at"}}` (direction `rest`)."""

    item_id: str
    heard: int
    rewind_ms: int
    chunks: tuple[Chunk, ...]


class Metric(Enum):
    """What a call reports to the operator's metrics (`app.metrics` names the series)."""

    BARGE_IN = "barge_in"  # value: reaction s, `speech_started` received -> `clear` sent
    RESPONSE_LATENCY = "response_latency"  # value: s, `speech_stopped` -> first mark echo
    TRUNCATED_AUDIO = "truncated_audio"  # value: s of bot audio sent, cut before heard
    REPROMPT = "reprompt"  # the caller was silent: the bot asked again
    ENDING_CALLED_OFF = "ending_called_off"  # labels: (kind,) goodbye/transfer cut by the caller
    REALTIME_ERROR = "realtime_error"  # labels: (code,) an `error` event from the service
    TOOL_CALL = "tool_call"  # labels: (tool, result)
    TOOL_DURATION = "tool_duration"  # value: s a tool ran; labels: (tool,)
    MCP_ERROR = "mcp_error"  # labels: (server, kind) an MCP list or call failure
    REST = "rest"  # labels: (action, result) a Twilio REST answer (or none)
    FALSE_TURN = "false_turn"  # labels: (verdict, reason) speech over the bot, judged


@dataclass(frozen=True, slots=True)
class Measure:
    """An observation for the operator's metrics, emitted once when its event happens
    (never per audio frame): `value` is a duration in seconds, or 1 for a count. Not
    recorded in call fixtures: it is derived from the messages around it."""

    metric: Metric
    value: float = 1.0
    labels: tuple[str, ...] = ()


Action = (
    ToTwilio
    | ToRealtime
    | ConnectRealtime
    | CloseTwilio
    | CloseRealtime
    | RestRequest
    | RunTool
    | CancelTool
    | CheckVoice
    | FindPause
    | Measure
)
