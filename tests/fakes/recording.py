"""A recording writer that keeps a call's fixture in memory instead of writing a file."""

from __future__ import annotations

from pathlib import Path

from app.recording import RecordingWriter
from app.replay import Fixture, parse


class KeptLines(RecordingWriter):
    """The lines a `CallRecorder` would write, kept; `fixture()` reads them back.

    Like the real writer, a `close` may carry a last line (a recording cut short ends with
    a marker); `closed` lists the names closed, in order. Nothing is ever refused."""

    def __init__(self) -> None:
        super().__init__(Path("unused"))
        self.lines: list[str] = []
        self.closed: list[str] = []

    def submit(self, op: str, name: str, text: str = "") -> bool:
        if text:
            self.lines.append(text)
        if op == "close":
            self.closed.append(name)
        return True

    def text(self) -> str:
        return "".join(self.lines)

    def fixture(self) -> Fixture:
        return parse(self.text().splitlines())
