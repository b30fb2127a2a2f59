"""Twilio REST: update a live call (hang up, or replace its TwiML to transfer it), and
create an outbound one.

twilio-python is synchronous, so each request runs in a worker thread and never blocks
the event loop. This layer makes exactly one attempt per request and reports what
happened; whether to retry is the call core's decision (`app.call.ending`), so that a
recorded call replays its retries too. The library's own request logging (unstructured,
at INFO) is silenced; the core logs every request and answer as structured events.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

_QUIET = logging.getLogger("app.telephony.twilio_http")
_QUIET.setLevel(logging.WARNING)

#: Form parameter -> twilio-python keyword, for the updates the bridge makes.
_KWARGS = {"Status": "status", "Twiml": "twiml", "Url": "url", "Method": "method"}


@dataclass(frozen=True, slots=True)
class RestOutcome:
    """HTTP status (0 when there was no answer), Twilio error code, short error text."""

    status: int
    code: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Created:
    """The answer to creating a call: HTTP status (0: none), the new CallSid, Twilio's error
    code and text, and whether the request can have reached Twilio at all (False only when
    the connection itself failed: then no call can exist, and asking again is safe)."""

    status: int
    call_sid: str | None = None
    code: int | None = None
    error: str = ""
    reached: bool = True


#: `Calls.json` form parameter -> twilio-python keyword, for the calls the bridge places.
_CREATE_KWARGS = {
    "To": "to",
    "From": "from_",
    "Twiml": "twiml",
    "StatusCallback": "status_callback",
    "StatusCallbackEvent": "status_callback_event",
    "StatusCallbackMethod": "status_callback_method",
    "MachineDetection": "machine_detection",
    "MachineDetectionTimeout": "machine_detection_timeout",
    "AsyncAmd": "async_amd",
    "AsyncAmdStatusCallback": "async_amd_status_callback",
    "AsyncAmdStatusCallbackMethod": "async_amd_status_callback_method",
    "Timeout": "timeout",
}


class Telephony:
    """A REST client for one Twilio account, pointed at `base_url`."""

    def __init__(
        self, account_sid: str, auth_token: str, base_url: str, timeout_s: float = 10.0
    ) -> None:
        self.account_sid = account_sid
        http = TwilioHttpClient(timeout=timeout_s, logger=_QUIET)
        self._client = Client(account_sid, auth_token, http_client=http)
        self._client.api.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"Telephony(account_sid={self.account_sid!r})"

    async def update_call(self, call_sid: str, params: dict[str, str]) -> RestOutcome:
        """POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json with `params`."""
        kwargs = {_KWARGS[key]: value for key, value in params.items()}
        return await asyncio.to_thread(self._update, call_sid, kwargs)

    def _update(self, call_sid: str, kwargs: dict[str, str]) -> RestOutcome:
        try:
            self._client.api.v2010.accounts(self.account_sid).calls(call_sid).update(**kwargs)
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            return RestOutcome(exc.status, code, str(exc.msg)[:200])
        except Exception as exc:  # network errors, timeouts, malformed answers
            return RestOutcome(0, None, type(exc).__name__)
        return RestOutcome(200)

    async def create_call(self, params: dict[str, str | list[str]]) -> Created:
        """POST /2010-04-01/Accounts/{AccountSid}/Calls.json with `params` (form names;
        `StatusCallbackEvent` a list). One attempt: a retry is the caller's decision, and
        safe only when `Created.reached` is False or Twilio answered 429 (not created)."""
        kwargs: dict[str, Any] = {_CREATE_KWARGS[key]: value for key, value in params.items()}
        return await asyncio.to_thread(self._create, kwargs)

    def _create(self, kwargs: dict[str, Any]) -> Created:
        try:
            call = self._client.api.v2010.accounts(self.account_sid).calls.create(**kwargs)
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            return Created(exc.status, None, code, str(exc.msg)[:200])
        except requests.exceptions.ConnectionError as exc:
            return Created(0, None, None, type(exc).__name__, reached=not _never_sent(exc))
        except Exception as exc:  # timeouts, malformed answers
            return Created(0, None, None, type(exc).__name__)
        sid = call.sid if isinstance(call.sid, str) else None
        return Created(201, sid)


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before the request went out (refused, unresolvable,
    connect timeout). A connection dropped while waiting for the answer is not one: the
    request may have been read, and the call may exist."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(inner, (NewConnectionError, ConnectTimeoutError, NameResolutionError))
