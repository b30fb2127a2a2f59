"""A recording writer that keeps a call's fixture in memory instead of writing a file."""

from __future__ import annotations

from pathlib import Path

from app.recording import RecordingWriter
from app.replay import Fixture, parse


class KeptLines(RecordingWriter):
    """The lines a `CallRecorder` would write, kept; `fixture()` reads them back."""

    def __init__(self) -> None:
        super().__init__(Path("unused"))
        self.lines: list[str] = []

    def submit(self, op: str, name: str, text: str = "") -> bool:
        if op == "line":
            self.lines.append(text)
        return True

    def fixture(self) -> Fixture:
        return parse("".join(self.lines).splitlines())
