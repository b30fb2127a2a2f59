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

It emits only its own client events (`response.create`, `response.cancel`, deleting the
items of cut-off answers) through the call's outbox, and reports outcomes; what they mean
for the call (an ending waiting for its last words, a call whose answers keep failing)
is the session's to decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from app.call.inbound import short, text_or
from app.call.outbox import Outbox
from app.observability import log_event
from app.protocol import realtime as rt

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
    #: A filler while a tool runs: moot once the tool's answer is wanted; calls no tool.
    filler: bool = False
    #: The answer to tool outputs: moot once the caller speaks (their turn sees them).
    tool_answer: bool = False
    #: The response may call no tool (a filler; a model looping on tools).
    no_tools: bool = False

    def merge(self, other: Request) -> Request:
        return Request(
            other.instructions or self.instructions,
            self.closing or other.closing,
            self.droppable and other.droppable,
            filler=self.filler and other.filler,
            tool_answer=self.tool_answer and other.tool_answer,
            no_tools=self.no_tools or other.no_tools,
        )


class Refusal(Enum):
    """What an `error` refusing our `response.create` means."""

    ASK_AGAIN = "ask_again"  # the service started one of its own first
    FAILED = "failed"  # a failure, the call can go on
    FAILING = "failing"  # fatal, or too many in a row: hand the caller to the fallback


@dataclass(frozen=True, slots=True)
class Finished:
    """A `response.done`, as the rest of the call needs to know it."""

    response_id: str
    had_audio: bool  # some of its audio was played (not dropped)
    failing: bool  # it failed, fatally or once too often in a row


class Responses:
    """Response bookkeeping for one call."""

    def __init__(self, outbox: Outbox) -> None:
        self.out = outbox
        self.active: str | None = None
        self.failed_in_row = 0
        self._in_flight: Request | None = None
        #: Wanted once the active response is done: merged into one when it is sent, so a
        #: called-off ending withdraws only its own last words.
        self._waiting: list[Request] = []
        self._with_audio: set[str] = set()
        self._dropped: set[str] = set()
        self._unheard_items: dict[str, None] = {}
        self._seq = 0

    @property
    def responding(self) -> bool:
        """A response is being generated, or has been asked for."""
        return self.active is not None or self._in_flight is not None

    def request(
        self,
        instructions: str | None = None,
        *,
        closing: bool = False,
        droppable: bool = False,
        filler: bool = False,
        tool_answer: bool = False,
        no_tools: bool = False,
    ) -> None:
        """Ask for a response now, or as soon as the current one is done."""
        req = Request(
            instructions,
            closing,
            droppable,
            filler=filler,
            tool_answer=tool_answer,
            no_tools=no_tools or filler,
        )
        self._want(req)

    def request_after_done(self) -> None:
        """Answer the caller once the active response is over."""
        self._queue(Request())

    def _want(self, req: Request) -> None:
        if self.responding:
            self._queue(req)
        else:
            self._send(req)

    def _queue(self, req: Request) -> None:
        self._waiting.append(req)

    def _send(self, req: Request) -> None:
        self._seq += 1
        req.event_id = f"bridge_response_{self._seq}"
        self._in_flight = req
        self.out.realtime(rt.response_create(req.instructions, req.event_id, no_tools=req.no_tools))

    def withdraw_closing(self) -> None:
        """The ending these last words were for was called off: don't say them."""
        self._withdraw(lambda req: req.closing)

    def withdraw_fillers(self) -> None:
        """A tool's answer is wanted now: a filler not yet started is not said."""
        self._withdraw(lambda req: req.filler)

    def withdraw_tool_speech(self) -> None:
        """The caller spoke: a filler or an answer to tool outputs not yet started is not
        said over them (their turn's answer sees the outputs)."""
        self._withdraw(lambda req: req.filler or req.tool_answer)

    def _withdraw(self, which: Callable[[Request], bool]) -> None:
        self._waiting = [req for req in self._waiting if not which(req)]
        if self._in_flight is not None and which(self._in_flight):
            self._in_flight.withdrawn = True

    def was_cut_off(self, response_id: str | None) -> bool:
        """Whether the caller cut response `response_id` off."""
        return response_id is not None and response_id in self._dropped

    def cut_off(self) -> None:
        """The caller cut the bot off: the late audio of the active response, and of any
        response whose audio is still coming (played, not yet done), is never played. The
        second covers a response whose `response.created` never reached us (or was bad
        input): the service cancels it all the same, and its audio flushed by Twilio's
        `clear` must not start again with the chunks still on their way."""
        if self.active is not None:
            self._dropped.add(self.active)
        self._dropped |= self._with_audio

    # -- server events --------------------------------------------------------------------

    def created(self, response: dict[str, Any]) -> bool:
        """`response.created`: ours if its metadata names our request (or, should the
        service not echo metadata at all, if we are waiting for one). True when it is the
        response carrying an ending's last words."""
        response_id = response["id"]
        self.active = response_id
        req = self._in_flight
        if req is None:
            return False
        if "metadata" in response:  # the service sends null for its own responses
            metadata = response["metadata"]
            tag = metadata.get(rt.REQUEST_KEY) if isinstance(metadata, dict) else None
            if tag != req.event_id:
                # The service's own response (server VAD answering the caller): what
                # waits merely to fill a silence (a reprompt, a tool's answer) is moot.
                self._waiting = [w for w in self._waiting if not w.droppable]
                return False  # ours is still in flight
        self._in_flight = None
        if req.withdrawn:
            self.out.realtime(rt.response_cancel())
            self._dropped.add(response_id)
            return False
        return req.closing

    def refused(self, error: dict[str, Any]) -> Refusal | None:
        """An `error` event's `error` (its fields of the types `app.call.inbound` lists: the
        session checks): what it means if it refused our in-flight `response.create`
        (None: it didn't)."""
        req = self._in_flight
        if req is None or error.get("event_id") != req.event_id:
            return None
        self._in_flight = None
        if error.get("code") == _ALREADY_ACTIVE:
            # The service started a response of its own first.
            if not (req.droppable or req.withdrawn):
                self._queue(req)  # still wanted: ask again after it
            return Refusal.ASK_AGAIN
        return Refusal.FAILING if self._failed(error.get("code")) else Refusal.FAILED

    def audio(self, response_id: str, item_id: str, *, new_item: bool) -> bool:
        """Audio of `response_id` arrived for `item_id` (`new_item`: none of it was played
        yet): play it (True), or drop it (a cut-off response)."""
        if response_id in self._dropped:
            if new_item:
                self._unheard_items[item_id] = None
            return False
        self._with_audio.add(response_id)
        return True

    def done(self, response: dict[str, Any]) -> Finished:
        """`response.done` of the response `response["id"]` (its fields of the types
        `app.call.inbound` lists: the session checks)."""
        response_id: str = response["id"]
        status = response.get("status")
        if response_id == self.active:
            self.active = None
        if response_id in self._dropped:
            # Items none of whose audio reached the caller leave the conversation.
            for item_id in self._unheard_items:
                self.out.realtime(rt.item_delete(item_id))
            self._unheard_items.clear()
        had_audio = response_id in self._with_audio
        self._with_audio.discard(response_id)
        failing = False
        if status == "failed":
            details = response.get("status_details") or {}
            error = details.get("error") or {}
            log_event(
                logger,
                logging.WARNING,
                "realtime.response_failed",
                response_id=short(response_id),
                code=short(error.get("code")),
                error_type=text_or(error.get("type"), None, 60),
            )
            failing = self._failed(error.get("code"))
        elif status in ("completed", "cancelled", "incomplete"):
            self.failed_in_row = 0
        return Finished(response_id, had_audio, failing)

    def send_waiting(self) -> None:
        """Ask for the response that waited for the active one to finish, if any."""
        if self._waiting and not self.responding:
            first, *rest = self._waiting
            self._waiting = []
            for req in rest:
                first = first.merge(req)
            self._send(first)

    def _failed(self, code: str | None) -> bool:
        """Count a failure; True when answers keep failing (fatal, or too many in a row)."""
        self.failed_in_row += 1
        return code in rt.FATAL_RESPONSE_CODES or self.failed_in_row >= MAX_FAILED_IN_ROW
