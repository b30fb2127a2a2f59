"""Helpers of the call store's tests: records, a condition to wait for, the store's log.

`StoreLog` captures what `app.store` logs together with the CallSid each line carries:
the store binds it in the context of the line (as every call line has it), so the capture
reads the context at emit time, as the project's formatter does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.observability import StructuredFormatter, current_call
from app.store import CallStore

#: `open_store` (tests/conftest.py): start a store on the test's database.
OpenStore = Callable[..., Awaitable[CallStore]]

BASE_TIME = datetime(2026, 12, 2, 1, 21, 17, 123000, tzinfo=UTC)
PRIVATE_TEXT = "my card number is 4111 1111 1111 1111"
"""Said by the caller in every test record: it must never reach a log line."""


def iso(moment: datetime) -> str:
    """`2026-12-02T01:21:17.123Z`, as the call layer writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def make_record(call_sid: str, *, started: datetime = BASE_TIME, **overrides: Any) -> dict:
    """A call record shaped like the call layer's, started at `started`."""
    record: dict[str, Any] = {
        "call_sid": call_sid,
        "direction": "inbound",
        "from": "+15550001111",
        "to": "+15550002222",
        "agent": "default",
        "started_at": iso(started),
        "ended_at": iso(started + timedelta(seconds=42.5)),
        "duration_s": 42.5,
        "outcome": "completed",
        "end_detail": None,
        "barge_ins": 2,
        "turns": [
            {"role": "user", "text": PRIVATE_TEXT, "at_ms": 1200},
            {"role": "assistant", "text": "Thanks, noted. ✓ Ünïcødé", "at_ms": 3400},
        ],
        "usage": {"input_tokens": 1200, "output_tokens": 340, "audio": {"in_s": 12.25}},
        "tool_calls": [{"name": "end_call", "arguments": {"reason": "done"}}],
        "answered_by": None,
        "recording": None,
        "response_latency_ms": [640, 710, 820],
        "heard_latency_ms": 710,
    }
    record.update(overrides)
    return record


async def eventually(
    condition: Callable[[], bool], *, within: float = 20.0, what: str = "condition"
) -> None:
    """Wait until `condition()` holds (checked every 10 ms); fail after `within` seconds.

    For state another task changes (a counter of the writer): there is nothing to await.
    """
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a counter, not an event: poll it
            await asyncio.sleep(0.01)
    assert condition(), what


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'calls.db'}"


@dataclass
class Line:
    """One captured log line of the store."""

    event: str
    level: int
    call_sid: str | None
    fields: dict[str, Any]
    rendered: str


class StoreLog(logging.Handler):
    """The `app.store` lines, as events with their CallSid and the rendered text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[Line] = []
        self._formatter = StructuredFormatter("kv")

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", {})
        sid = current_call().get("call_sid")
        rendered = f"{self._formatter.format(record)} context_call_sid={sid}"
        self.lines.append(Line(str(record.msg), record.levelno, sid, dict(fields), rendered))

    def events(self, name: str) -> list[Line]:
        return [line for line in self.lines if line.event == name]

    def text(self) -> str:
        return "\n".join(line.rendered for line in self.lines)


@contextmanager
def capture_store_log() -> Iterator[StoreLog]:
    """Capture `app.store`'s lines at DEBUG for the duration of the block."""
    logger = logging.getLogger("app.store")
    handler = StoreLog()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
