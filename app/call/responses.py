"""The model's responses as the bridge sees them. Sans-I/O.

Which response is active; whether the bridge has asked for one that hasn't started yet
(and whether it carries the closing words of an ending); which request waits for the
active response to finish (the service refuses a second active response with
`conversation_already_has_active_response`); which responses the caller cut off, whose
late audio is dropped and whose never-heard items are deleted once they are done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from app.call.actions import ToRealtime
from app.observability import log_event
from app.protocol import realtime as rt

if TYPE_CHECKING:
    from app.call.session import CallSession

logger = logging.getLogger("app.call")

#: Failed responses in a row after which the call is handed to the fallback: a caller
#: must not sit through silence while every answer fails (quota, outage).
MAX_FAILED_IN_ROW: Final = 2


class Responses:
    """Response bookkeeping for one call; emits through its call session."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.active: str | None = None
        self._requested = False  # response.create sent, response.created not seen yet
        self._requested_closing = False  # ... and it carries an ending's last words
        self._deferred = False  # a request waits for the active response to finish
        self._deferred_instructions: str | None = None
        self._deferred_closing = False
        self._with_audio: set[str] = set()
        self._dropped: set[str] = set()
        self._unheard_items: dict[str, None] = {}
        self._seq = 0
        self._request_event: str | None = None  # event_id of the outstanding request
        self._request_instructions: str | None = None
        self.failed_in_row = 0

    @property
    def responding(self) -> bool:
        """A response is being generated, or has been asked for."""
        return self.active is not None or self._requested

    def request(self, instructions: str | None = None, *, closing: bool = False) -> None:
        """Ask for a response now, or as soon as the current one is done. `closing`: it
        carries the last words of a deliberate ending, which waits for exactly it."""
        if self.responding:
            self.request_after_done()
            self._deferred_instructions = instructions or self._deferred_instructions
            self._deferred_closing = self._deferred_closing or closing
        else:
            self._seq += 1
            self._requested = True
            self._requested_closing = closing
            self._request_event = f"bridge_response_{self._seq}"
            self._request_instructions = instructions
            event = rt.response_create(instructions, self._request_event)
            self.call._emit(ToRealtime(event))

    def request_after_done(self) -> None:
        self._deferred = True

    def drop_active(self) -> None:
        """The caller cut the active response off: its late audio is never played."""
        if self.active is not None:
            self._dropped.add(self.active)

    def created(self, response: dict[str, Any]) -> None:
        """`response.created`: ours if its metadata names our request (or, should the
        service not echo metadata, if we are waiting for one)."""
        response_id = response["id"]
        self.active = response_id
        if "metadata" in response:  # the service sends null for its own responses
            metadata = response["metadata"]
            tag = metadata.get(rt.REQUEST_KEY) if isinstance(metadata, dict) else None
            ours = self._requested and tag == self._request_event
        else:
            ours = self._requested
        if not ours:
            return  # the service's own response; our request, if any, is still pending
        if self._requested_closing:
            self.call.ending.response_created(response_id)
        self._requested = self._requested_closing = False
        self._request_event = None

    def audio(self, response_id: object, item_id: str) -> bool:
        """Audio arrived for `item_id`: play it (True), or drop it (cut-off response)."""
        if response_id in self._dropped:
            if item_id not in self.call.playback.items:
                self._unheard_items[item_id] = None
            return False
        if isinstance(response_id, str):
            self._with_audio.add(response_id)
        return True

    def refused(self, now: float, error: dict[str, Any]) -> bool:
        """An `error` event; True if it refused our outstanding `response.create`."""
        if not self._requested or error.get("event_id") != self._request_event:
            return False
        closing, instructions = self._requested_closing, self._request_instructions
        self._requested = self._requested_closing = False
        self._request_event = None
        if error.get("code") == "conversation_already_has_active_response":
            # The service started a response of its own first: ask again after it.
            self._deferred = True
            self._deferred_instructions = instructions or self._deferred_instructions
            self._deferred_closing = self._deferred_closing or closing
            return True
        self._failed(now, error.get("code"))
        return True

    def _failed(self, now: float, code: object) -> None:
        self.failed_in_row += 1
        if code in rt.FATAL_RESPONSE_CODES or self.failed_in_row >= MAX_FAILED_IN_ROW:
            log_event(
                logger,
                logging.ERROR,
                "realtime.responses_failing",
                code=code,
                failed_in_row=self.failed_in_row,
            )
            self.call._end(now, "failure", detail="responses_failing")

    def done(self, now: float, response: dict[str, Any]) -> None:
        response_id = response.get("id")
        status = response.get("status")
        if status == "failed":
            details = response.get("status_details")
            error = (details or {}).get("error") if isinstance(details, dict) else None
            error = error if isinstance(error, dict) else {}
            log_event(
                logger,
                logging.WARNING,
                "realtime.response_failed",
                response_id=response_id,
                code=error.get("code"),
                error_type=error.get("type"),
            )
        elif status in ("completed", "cancelled", "incomplete"):
            self.failed_in_row = 0
        if response_id == self.active:
            self.active = None
        if response_id in self._dropped:
            # Items none of whose audio reached the caller leave the conversation.
            for item_id in self._unheard_items:
                self.call._emit(ToRealtime(rt.item_delete(item_id)))
            self._unheard_items.clear()
        had_audio = response_id in self._with_audio
        self._with_audio.discard(response_id)  # type: ignore[arg-type]
        self.call.ending.response_done(now, response_id, had_audio)  # type: ignore[arg-type]
        if status == "failed":
            error = (response.get("status_details") or {}).get("error") or {}
            self._failed(now, error.get("code") if isinstance(error, dict) else None)
            if self.call.done:
                return
        if self._deferred and not self.responding:
            self._deferred = False
            instructions, self._deferred_instructions = self._deferred_instructions, None
            closing, self._deferred_closing = self._deferred_closing, False
            self.request(instructions, closing=closing)
