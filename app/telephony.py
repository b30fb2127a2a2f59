"""Twilio REST: update a live call (hang up, or replace its TwiML to transfer it).

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

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

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
