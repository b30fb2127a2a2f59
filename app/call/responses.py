"""The model's responses as the bridge sees them. Sans-I/O.

Which response is active; which request of the bridge's is in flight (sent, not yet
started or refused) and which waits for the active response to finish (the service
refuses a second active response with `conversation_already_has_active_response`);
which responses the caller cut off, whose late audio is dropped and whose never-heard
items are deleted once they are done; and whether responses keep failing.

Each `response.create` of the bridge's carries an `event_id` and the same id as
`metadata.bridge_request`: the service echoes the first in an `error` refusing the
request and the second in the `response.created` it starts, so the bridge's responses are
told apart from those the service starts on its own (server VAD).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
_ALREADY_ACTIVE: Final = "conversation_already_has_active_response"


@dataclass(slots=True)
class Request:
    """A response the bridge wants."""

    instructions: str | None = None
    #: Carries the last words of a deliberate ending, which waits for exactly it.
    closing: bool = False
    #: A greeting or a silence reprompt: moot once the service answers by itself.
    droppable: bool = False
    event_id: str = ""
    #: Called off while in flight: cancelled as soon as it starts.
    withdrawn: bool = False

    def merge(self, other: Request) -> Request:
        return Request(
            other.instructions or self.instructions,
            self.closing or other.closing,
            self.droppable and other.droppable,
        )


class Responses:
    """Response bookkeeping for one call; emits through its call session."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.active: str | None = None
        self.failed_in_row = 0
        self._in_flight: Request | None = None
        self._waiting: Request | None = None
        self._with_audio: set[str] = set()
        self._dropped: set[str] = set()
        self._unheard_items: dict[str, None] = {}
        self._seq = 0

    @property
    def responding(self) -> bool:
        """A response is being generated, or has been asked for."""
        return self.active is not None or self._in_flight is not None

    def request(
        self, instructions: str | None = None, *, closing: bool = False, droppable: bool = False
    ) -> None:
        """Ask for a response now, or as soon as the current one is done."""
        self._want(Request(instructions, closing, droppable))

    def request_after_done(self) -> None:
        """Answer the caller once the active response is over."""
        self._queue(Request())

    def _want(self, req: Request) -> None:
        if self.responding:
            self._queue(req)
        else:
            self._send(req)

    def _queue(self, req: Request) -> None:
        self._waiting = req if self._waiting is None else self._waiting.merge(req)

    def _send(self, req: Request) -> None:
        self._seq += 1
        req.event_id = f"bridge_response_{self._seq}"
        self._in_flight = req
        self.call._emit(ToRealtime(rt.response_create(req.instructions, req.event_id)))

    def withdraw_closing(self) -> None:
        """The ending these last words were for was called off: don't say them."""
        if self._waiting is not None and self._waiting.closing:
            self._waiting = None
        if self._in_flight is not None and self._in_flight.closing:
            self._in_flight.withdrawn = True

    def drop_active(self) -> None:
        """The caller cut the active response off: its late audio is never played."""
        if self.active is not None:
            self._dropped.add(self.active)

    # -- server events --------------------------------------------------------------------

    def created(self, response: dict[str, Any]) -> None:
        """`response.created`: ours if its metadata names our request (or, should the
        service not echo metadata at all, if we are waiting for one)."""
        response_id = response["id"]
        self.active = response_id
        req = self._in_flight
        if req is None:
            return
        if "metadata" in response:  # the service sends null for its own responses
            metadata = response["metadata"]
            tag = metadata.get(rt.REQUEST_KEY) if isinstance(metadata, dict) else None
            if tag != req.event_id:
                return  # the service's own response; ours is still in flight
        self._in_flight = None
        if req.withdrawn:
            self.call._emit(ToRealtime(rt.response_cancel()))
            self._dropped.add(response_id)
        elif req.closing:
            self.call.ending.response_created(response_id)

    def refused(self, now: float, error: dict[str, Any]) -> bool:
        """An `error` event; True if it refused our in-flight `response.create`."""
        req = self._in_flight
        if req is None or error.get("event_id") != req.event_id:
            return False
        self._in_flight = None
        if error.get("code") == _ALREADY_ACTIVE:
            # The service started a response of its own first.
            if not (req.droppable or req.withdrawn):
                self._queue(req)  # still wanted: ask again after it
            return True
        self._failed(now, error.get("code"))
        return True

    def audio(self, response_id: object, item_id: str) -> bool:
        """Audio arrived for `item_id`: play it (True), or drop it (cut-off response)."""
        if response_id in self._dropped:
            if item_id not in self.call.playback.items:
                self._unheard_items[item_id] = None
            return False
        if isinstance(response_id, str):
            self._with_audio.add(response_id)
        return True

    def done(self, now: float, response: dict[str, Any]) -> None:
        response_id = response.get("id")
        status = response.get("status")
        if response_id == self.active:
            self.active = None
        if response_id in self._dropped:
            # Items none of whose audio reached the caller leave the conversation.
            for item_id in self._unheard_items:
                self.call._emit(ToRealtime(rt.item_delete(item_id)))
            self._unheard_items.clear()
        had_audio = response_id in self._with_audio
        self._with_audio.discard(response_id)  # type: ignore[arg-type]
        if status == "failed":
            details = response.get("status_details")
            error = details.get("error") if isinstance(details, dict) else None
            error = error if isinstance(error, dict) else {}
            log_event(
                logger,
                logging.WARNING,
                "realtime.response_failed",
                response_id=response_id,
                code=error.get("code"),
                error_type=error.get("type"),
            )
            self._failed(now, error.get("code"))
            if self.call.done:
                return
        elif status in ("completed", "cancelled", "incomplete"):
            self.failed_in_row = 0
        self.call.ending.response_done(now, response_id, had_audio)  # type: ignore[arg-type]
        if self._waiting is not None and not self.responding:
            req, self._waiting = self._waiting, None
            self._send(req)

    def _failed(self, now: float, code: object) -> None:
        self.failed_in_row += 1
        fatal = code in rt.FATAL_RESPONSE_CODES or self.failed_in_row >= MAX_FAILED_IN_ROW
        if not fatal or self.call.ending.committed:
            return  # an ending already on its way ends the call anyway
        log_event(
            logger,
            logging.ERROR,
            "realtime.responses_failing",
            code=code,
            failed_in_row=self.failed_in_row,
        )
        self.call._end(now, "failure", detail="responses_failing")
