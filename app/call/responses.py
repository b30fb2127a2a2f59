"""The model's responses as the bridge sees them. Sans-I/O.

Which response is active; whether the bridge has asked for one that hasn't started yet
(and whether it carries the closing words of an ending); which request waits for the
active response to finish (the service refuses a second active response with
`conversation_already_has_active_response`); which responses the caller cut off, whose
late audio is dropped and whose never-heard items are deleted once they are done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.call.actions import ToRealtime
from app.protocol import realtime as rt

if TYPE_CHECKING:
    from app.call.session import CallSession


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
            self._requested = True
            self._requested_closing = closing
            self.call._emit(ToRealtime(rt.response_create(instructions)))

    def request_after_done(self) -> None:
        self._deferred = True

    def drop_active(self) -> None:
        """The caller cut the active response off: its late audio is never played."""
        if self.active is not None:
            self._dropped.add(self.active)

    def created(self, response_id: str) -> None:
        self.active = response_id
        if self._requested and self._requested_closing:
            self.call.ending.response_created(response_id)
        self._requested = self._requested_closing = False

    def audio(self, response_id: object, item_id: str) -> bool:
        """Audio arrived for `item_id`: play it (True), or drop it (cut-off response)."""
        if response_id in self._dropped:
            if item_id not in self.call.playback.items:
                self._unheard_items[item_id] = None
            return False
        if isinstance(response_id, str):
            self._with_audio.add(response_id)
        return True

    def done(self, now: float, response_id: object) -> None:
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
        if self._deferred and not self.responding:
            self._deferred = False
            instructions, self._deferred_instructions = self._deferred_instructions, None
            closing, self._deferred_closing = self._deferred_closing, False
            self.request(instructions, closing=closing)
