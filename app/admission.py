"""Which media streams this process takes: how many, for which calls, from whom.

The media-stream upgrade's signature only says "Twilio, for some call": it is made over
the fixed `wss://host/media-stream` URL, the same for every call, so whoever has seen one
can replay it. What the stream then claims in its `start` (a CallSid, an account) is
checked here before the call is bridged:

- the stream token (STREAM_TOKEN_REQUIRED, on whenever TWILIO_AUTH_TOKEN is set): our
  webhook, itself signed over the call's parameters, put an HMAC of the CallSid into the
  TwiML; a `start` without its call's token, or for another account, is refused (an
  outbound call's token is bound to its `OutboundId`, made before Twilio had a CallSid);
- one stream per call: a `start` for a CallSid that already has a live bridge is refused
  (else a second stream could act for the first: its silence hang-up would end the call);
- MAX_CONCURRENT_CALLS admitted calls: the webhook answers busy when the process is full,
  and a stream that arrives anyway is refused (at the upgrade, or at its `start` if the
  last slot went meanwhile).
"""

from __future__ import annotations

from typing import Any

from app.protocol import twilio as tw
from app.security import (
    OUTBOUND_PARAMETER,
    STREAM_TOKEN_PARAMETER,
    check_stream_token,
    outbound_binding,
)


class Admission:
    """The process's live streams and calls, and the rules for taking a new one."""

    def __init__(
        self,
        max_calls: int,
        *,
        auth_token: str | None = None,
        account_sid: str | None = None,
        require_token: bool = False,
    ) -> None:
        self.max_calls = max_calls
        self._token = auth_token if require_token else None
        self._account = account_sid
        #: CallSids with a live bridge.
        self.calls: set[str] = set()

    @property
    def full(self) -> bool:
        """MAX_CONCURRENT_CALLS admitted calls are live. Counted by admitted calls, not by
        open streams: a stream holds no slot until its `start` has proven its call, so
        streams that never prove one (a replayed upgrade, over and over) can't make the
        process look full; they are bounded by MAX_CONNECTIONS and the 10 s start timeout."""
        return len(self.calls) >= self.max_calls

    def open_stream(self) -> Ticket | None:
        """A ticket for one more media stream, unless the process is full."""
        return None if self.full else Ticket(self)

    def check(self, msg: dict[str, Any]) -> tuple[str | None, str | None]:
        """Check a stream's `start`: (why it is refused or None, the CallSid to hold)."""
        fields = tw.start_fields(msg)
        if fields is None:
            return None, None  # malformed: the call core reports it (and never goes live)
        _, call_sid, account_sid, params = fields
        if self._token is not None:
            if self._account is not None and account_sid != self._account:
                return "account_mismatch", None
            token = params.get(STREAM_TOKEN_PARAMETER)
            outbound = params.get(OUTBOUND_PARAMETER)
            bound = outbound_binding(outbound) if outbound else call_sid
            if not check_stream_token(self._token, bound, token, params):
                return "bad_stream_token", None
        if call_sid in self.calls:
            return "duplicate_call", None
        if self.full:  # filled up since this stream's upgrade
            return "at_capacity", None
        return None, call_sid


class Ticket:
    """One accepted media stream: checks its `start`, holds its CallSid while it lives."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.call_sid: str | None = None

    def __call__(self, msg: dict[str, Any]) -> str | None:
        """The bridge's start verifier: None when admitted, else why refused."""
        reason, call_sid = self._admission.check(msg)
        if call_sid is not None and self.call_sid is None:
            self.call_sid = call_sid
            self._admission.calls.add(call_sid)
        return reason

    def release(self) -> None:
        """The stream is over: its CallSid (and so its slot) is free again."""
        if self.call_sid is not None:
            self._admission.calls.discard(self.call_sid)
            self.call_sid = None
