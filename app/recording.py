"""Call fixtures: every call written down as JSON Lines, to be replayed by `app.replay`.

What a line holds (the format, redaction, a line's size cap, the file's name) is
`app.recording_lines`; this module writes the lines down: `CallRecorder`, one per call,
and `RecordingWriter`, one background thread for all calls.

Nothing a caller or the service sends can fill the disk or the memory through a recording,
nor crash the call (each line is capped, see `app.recording_lines`):

- A call's file holds at most `max_bytes` (RECORD_MAX_BYTES) plus one last small line:
  the line that would pass the limit is replaced by the `truncated` marker line, nothing
  follows, and the call goes on (`recording.limit`, logged once).
- The writer holds at most `MAX_BACKLOG_CHARS` waiting for the disk, across all calls. A
  call whose line does not fit is abandoned: the lines it still has queued are skipped and
  its file ends with the `abandoned` marker line (`recording.backlog_full`, logged once);
  other calls keep recording.

Two streams of one writer never share a file name (`-2`, `-3`, ... is added), and the file
is created exclusively, so a file already on disk is never appended to (the same suffix).
It is named when Twilio's `start` arrives: lines before it are held (at most
`MAX_EARLY_CHARS`, past which the recording is cut as above), and a stream that never
starts writes no file at all.

Writing never blocks a call: lines go to one background thread through a queue. A full
disk or any write error is logged once per file and the call goes on unrecorded.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import secrets
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from app.call.actions import Action
from app.call.config import CallConfig
from app.observability import log_event
from app.recording_lines import (
    MAX_LINE_CHARS,
    MIN_SECRET_CHARS,
    REDACTED,
    Message,
    action_record,
    dumps,
    file_label,
    header,
    marker_line,
    record_line,
    redactions_of,
    secret_values,
)

logger = logging.getLogger("app.recording")

#: A call's file stops here (RECORD_MAX_BYTES). The fixture library records about 28 KB/s
#: with audio as lengths, some 60 KB/s with RECORD_AUDIO on (both sides' base64 audio, twice
#: each): a call at the default 55-minute limit writes about 90 or 200 MB, so a real call is
#: never cut, and a flood stops well before the disk fills.
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
#: Characters held before Twilio's `start` names the file (normally one `connected`).
MAX_EARLY_CHARS: Final = 256 * 1024
#: Characters (plus `_ITEM_OVERHEAD` each) waiting for the disk across all calls.
MAX_BACKLOG_CHARS: Final = 64 * 1024 * 1024
#: What a queued line costs beyond its characters (the str and tuple objects, the queue
#: slot): counted so that a flood of tiny lines is bounded in memory too.
_ITEM_OVERHEAD: Final = 128
#: Attempts at an exclusive file name (`name`, `name-2`, ...) before giving up.
_NAME_ATTEMPTS: Final = 100
#: At most this many secret values per call are also scrubbed as text from its lines
#: (each costs a search per line; a call has one token).
_MAX_SECRETS: Final = 4


# -- the writer -------------------------------------------------------------------------


def directory_problem(directory: Path) -> str | None:
    """Why `directory` can't take recordings, or None when it can: checked at start.

    Creates it when missing (with its parents), then writes and removes a probe file, so a
    RECORD_DIR that can't be created, is not a directory or is not writable stops the
    process before it takes a call, instead of failing every call's recording (logged,
    and the call unrecorded) from the first one on."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file (or a link to one) is in the way
        return "exists but is not a directory"
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    probe = directory / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.open("x").close()
        probe.unlink()
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


class RecordingWriter:
    """One background thread that writes fixture files in `directory`.

    `max_backlog_chars` bounds what waits for the disk, across all calls (each queued line
    counts its characters plus `_ITEM_OVERHEAD`): a stalled disk or a flooding call costs
    at most that much memory.
    """

    def __init__(self, directory: Path, *, max_backlog_chars: int = MAX_BACKLOG_CHARS) -> None:
        self.directory = directory
        self.max_backlog_chars = max_backlog_chars
        self._queue: queue.SimpleQueue[tuple[str, str, str] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queued = 0  # characters (and overheads) in the queue; under `_lock`
        self._abandoned: set[str] = set()  # names whose queued lines are skipped
        self._stamp = ""  # the millisecond of the last name handed out...
        self._taken: set[str] = set()  # ...and the names handed out in it
        self._opened: dict[str, str] = {}  # name -> file created, until closed (thread's)

    @property
    def backlog_chars(self) -> int:
        """What waits for the disk now (characters plus `_ITEM_OVERHEAD` per line)."""
        with self._lock:
            return self._queued

    def reserve(self, label: str) -> str:
        """A new file name, `<UTC time to the ms>_<label>.jsonl`, that no other recording
        of this writer has: two streams of one call can start in the same millisecond, and
        the second gets `-2` (then `-3`, ...). Only the current millisecond's names are
        remembered; a name seen again later (the clock was set back) is caught on disk."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        with self._lock:
            if stamp != self._stamp:
                self._stamp, self._taken = stamp, set()
            name, n = f"{stamp}_{label}.jsonl", 1
            while name in self._taken:
                n += 1
                name = f"{stamp}_{label}-{n}.jsonl"
            self._taken.add(name)
        return name

    def submit(self, op: str, name: str, text: str = "") -> bool:
        """Queue `op` for file `name`: `"line"` appends `text`, and is refused (False,
        nothing queued) when the backlog would pass `max_backlog_chars`; `"close"` appends
        `text` (a last line, or nothing) and closes the file, and is always queued (once
        per file, and small)."""
        cost = len(text) + _ITEM_OVERHEAD
        with self._lock:
            if op == "line" and self._queued + cost > self.max_backlog_chars:
                return False
            self._queued += cost
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="call-recorder", daemon=True)
                self._thread.start()
        self._queue.put((op, name, text))
        return True

    def abandon(self, name: str, last: str) -> None:
        """Give up on `name`: the lines it still has queued are skipped (after its first,
        the header, so the file stays a fixture), then `last` is written and it closes."""
        with self._lock:
            self._abandoned.add(name)
        self.submit("close", name, last)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        files: dict[str, TextIO] = {}
        failed: set[str] = set()
        while (item := self._queue.get()) is not None:
            op, name, text = item
            try:
                self._apply(files, failed, op, name, text)
            finally:
                self._done_with(op, name, len(text) + _ITEM_OVERHEAD)
        for handle in files.values():
            with contextlib.suppress(OSError):
                handle.close()

    def _done_with(self, op: str, name: str, cost: int) -> None:
        with self._lock:
            self._queued -= cost
            if op == "close":
                self._abandoned.discard(name)

    def _apply(
        self, files: dict[str, TextIO], failed: set[str], op: str, name: str, text: str
    ) -> None:
        """Carry out one queued operation; an OSError fails the file once (logged)."""
        try:
            if op == "close":
                self._close(files, name, "" if name in failed else text)
                failed.discard(name)
                return
            if name in failed:
                return
            if name in self._opened and self._skipped(name):
                return  # abandoned, and its header is written: its backlog just goes
            handle = files.get(name)
            if handle is None:
                handle = files[name] = self._create(name)
            handle.write(text)
            if self._queue.empty():
                handle.flush()
        except OSError as exc:
            if op != "close":
                failed.add(name)
            log_event(logger, logging.ERROR, "recording.write_failed", file=name, error=str(exc))
            handle = files.pop(name, None)
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()

    def _skipped(self, name: str) -> bool:
        with self._lock:
            return name in self._abandoned

    def _close(self, files: dict[str, TextIO], name: str, last: str) -> None:
        handle = files.pop(name, None)
        try:
            if last:
                handle = handle or self._create(name)
                handle.write(last)
        finally:
            self._opened.pop(name, None)
            if handle is not None:
                handle.close()

    def _create(self, name: str) -> TextIO:
        """Open the file for `name`. The first time, a new file, created exclusively: a file
        already there (an earlier run, another process, a clock set back) is never appended
        to; `-2`, `-3`, ... is added instead, and logged (`recording.renamed`: the recorder
        still says `name`). Lines after a `stop()` reopen the same file."""
        if (known := self._opened.get(name)) is not None:
            return (self.directory / known).open("a", encoding="utf-8")
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = name.removesuffix(".jsonl")
        for attempt in range(1, _NAME_ATTEMPTS + 1):
            actual = name if attempt == 1 else f"{stem}-{attempt}.jsonl"
            try:
                handle = (self.directory / actual).open("x", encoding="utf-8")
            except FileExistsError:
                continue
            self._opened[name] = actual
            if actual != name:
                log_event(logger, logging.INFO, "recording.renamed", file=name, actual=actual)
            return handle
        raise FileExistsError(errno.EEXIST, "every candidate file name is taken", name)


# -- one call ---------------------------------------------------------------------------


class CallRecorder:
    """Writes one call's fixture. Lines before Twilio's `start` wait for the CallSid.

    `max_bytes` (RECORD_MAX_BYTES) bounds the call's file (see the module docstring). For
    the call summary: `filename`, `bytes_written`, `truncated` / `abandoned`, and
    `lines_dropped` (lines not written because the recording was cut), or `summary()`.
    """

    def __init__(
        self,
        writer: RecordingWriter,
        config: CallConfig,
        keep_audio: bool,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        secrets: Sequence[str] = (),
    ) -> None:
        """`secrets`: the process's own secret values that a peer could echo into a line
        (the MCP header values of the agents file, which the service's `session.updated`
        repeats): scrubbed as text from every line, like the call's stream token."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self._writer = writer
        self._keep_audio = keep_audio
        self.configure(config)
        self.max_bytes = max_bytes
        self._name: str | None = None
        self._early: list[tuple[float, str]] = []
        self._early_chars = 0
        self._early_cut_ms: float | None = None  # when the early lines passed their limit
        self._discarded = False
        self._cut: str | None = None  # "truncated" or "abandoned": the file has its end
        #: The process's secrets, then the call's secret parameter values, as in a line.
        self._secrets: list[str] = [v for v in secrets if len(v) >= MIN_SECRET_CHARS]
        self._own_secrets = len(self._secrets)
        self.bytes_written = 0
        self.lines_dropped = 0

    def configure(self, config: CallConfig) -> None:
        """The call's own configuration (its agent's), learned from its `start`: the
        header holds it, and its tools' `redact` arguments are recorded as `***`."""
        self._config = config
        self._redactions = redactions_of(config)

    @property
    def filename(self) -> str | None:
        return self._name

    @property
    def truncated(self) -> bool:
        """The file reached a size limit and ends with a `truncated` marker."""
        return self._cut == "truncated"

    @property
    def abandoned(self) -> bool:
        """The writer's backlog was full: the file ends early, with an `abandoned` marker."""
        return self._cut == "abandoned"

    def summary(self) -> dict[str, object]:
        """The recording's figures, for the call summary."""
        return {
            "recording": self._name,
            "recording_bytes": self.bytes_written,
            "recording_cut": self._cut,
            "recording_lines_dropped": self.lines_dropped,
        }

    def record(self, t_ms: float, direction: str, msg: Message) -> None:
        """Write one message down. Never raises, whatever `msg` holds."""
        if self._discarded:
            return
        if direction == "from_twilio" and type(msg) is dict:
            if "start" in msg:
                self._learn_secrets(msg)
            if self._name is None and msg.get("event") == "start":
                self._open(t_ms, msg)
        if self._cut is not None or self._early_cut_ms is not None:
            self.lines_dropped += 1
            return
        line = record_line(t_ms, direction, msg, self._keep_audio, self._redactions)
        if self._name is None:
            self._hold(t_ms, line)
        else:
            self._emit(t_ms, line)

    def record_actions(self, t_ms: float, actions: list[Action]) -> None:
        for action in actions:
            entry = action_record(action)
            if entry is not None:
                self.record(t_ms, *entry)

    def discard(self) -> None:
        """Write nothing more for this stream (it was refused before it became a call)."""
        self._discarded = True
        self._early.clear()

    def close(self) -> None:
        """End the file. A stream that never started has none: its held lines go."""
        if self._name is None:
            self._early.clear()
        elif self._cut is None:
            self._writer.submit("close", self._name)

    def _learn_secrets(self, msg: Message) -> None:
        for value in secret_values(msg):
            room = len(self._secrets) < self._own_secrets + _MAX_SECRETS
            if value not in self._secrets and room:
                self._secrets.append(value)

    def _scrubbed(self, line: str) -> str:
        """Defence in depth: `redact` took the call's secrets out already; a secret of the
        process (a literal MCP header value in the header's config, one the service echoes)
        is scrubbed here as text."""
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line

    def _hold(self, t_ms: float, line: str) -> None:
        if self._early_chars + len(line) > MAX_EARLY_CHARS:
            self._early_cut_ms = t_ms
            self.lines_dropped += 1
            return
        self._early.append((t_ms, line))
        self._early_chars += len(line)

    def _open(self, t_ms: float, start: Message) -> None:
        name = self._name = self._writer.reserve(file_label(start))
        limits = {"max_bytes": self.max_bytes, "max_line_chars": MAX_LINE_CHARS}
        head_line = self._scrubbed(
            dumps(header(self._config, start, self._keep_audio, limits)) + "\n"
        )
        # The header is written whatever the limits: without it the file is no fixture.
        if not self._writer.submit("line", name, head_line):
            self._abandon(t_ms, started=False)
            return
        self.bytes_written += len(head_line)
        early, self._early = self._early, []
        for at, line in early:
            if self._cut is None:
                self._emit(at, line)
            else:
                self.lines_dropped += 1
        if self._early_cut_ms is not None:
            if self._cut is None:
                self._truncate(self._early_cut_ms, MAX_EARLY_CHARS)
            self._early_cut_ms = None

    def _emit(self, t_ms: float, line: str) -> None:
        name = self._name
        assert name is not None
        line = self._scrubbed(line)
        if self.bytes_written + len(line) > self.max_bytes:
            self.lines_dropped += 1
            self._truncate(t_ms, self.max_bytes)
        elif self._writer.submit("line", name, line):
            self.bytes_written += len(line)
        else:
            self.lines_dropped += 1
            self._abandon(t_ms)

    def _truncate(self, t_ms: float, limit: int) -> None:
        assert self._name is not None
        self._cut = "truncated"
        last = marker_line(t_ms, "truncated", limit)
        self._writer.submit("close", self._name, last)
        self.bytes_written += len(last)
        log_event(logger, logging.WARNING, "recording.limit", file=self._name, limit=limit)

    def _abandon(self, t_ms: float, started: bool = True) -> None:
        """The backlog is full: stop here. A file with its header gets the marker; one
        without (the header itself did not fit) is not even created."""
        assert self._name is not None
        self._cut = "abandoned"
        limit = self._writer.max_backlog_chars
        if started:
            last = marker_line(t_ms, "abandoned", limit)
            self._writer.abandon(self._name, last)
            self.bytes_written += len(last)
        else:
            self._writer.submit("close", self._name)
        log_event(logger, logging.ERROR, "recording.backlog_full", file=self._name, limit=limit)
