"""What the call core asks its I/O layer to do. Plain data, in the order to be done.

The core (`app.call.session.CallSession`) never touches a socket or a clock: each input
returns a list of these, and `app.bridge` carries them out in order. A recorded call
replays by feeding the same inputs and comparing the actions that come out. Timers are not
actions: the core keeps them and tells its driver when to wake it (`app.call.outbox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


Action = ToTwilio | ToRealtime | ConnectRealtime | CloseTwilio | CloseRealtime | RestRequest
