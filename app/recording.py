"""Call fixtures: every call written down as JSON Lines, to be replayed by `app.replay`.

Format (the contract's): the first line is a header `{"fixture": 1, ...}` with the call's
effective configuration and versions; then one line per message, in the order they
happened: `{"t_ms": <ms since the media stream opened>, "dir": <direction>, "msg": {...}}`
with direction `from_twilio`, `to_twilio`, `from_openai`, `to_openai` or `rest`.

Besides the protocol messages themselves, a few small records complete the story:
`{"_socket": "open" | "failed" | "closed" | "stalled" | "connect" | "close", ...}` for socket
events (`stalled`: the caller's side stopped taking frames),
`{"_frame_error": reason}` for a frame that could not be parsed, and for `rest`
`{"request": {"kind", "params"}}` / `{"response": {"status", "code", "error"}}`.
Audio payloads are replaced by `{"_audio_bytes": N}` unless RECORD_AUDIO is on: a
recording otherwise holds the caller's voice. Key presses (PINs, card numbers) and per-call
secrets are never stored, whatever RECORD_AUDIO says (`redact`): every digit is recorded as
`*`, in Twilio's `dtmf` message and in the text the model is told, so a replay feeds `*` to
the core and gets exactly the recorded text back; the `StreamToken` stream parameter is
recorded as `***`. Outputs carry the time the core decided them, so a replay of unchanged
code reproduces the times exactly.

Writing never blocks a call: lines go to one background thread through a queue. A full
disk or any write error is logged once per file and the call goes on unrecorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from app.call.actions import (
    Action,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    RestRequest,
    ToRealtime,
    ToTwilio,
)
from app.call.config import CallConfig
from app.call.nudges import DTMF_MESSAGE
from app.observability import log_event
from app.protocol.b64 import decoded_len, is_b64

logger = logging.getLogger("app.recording")

FORMAT_VERSION: Final = 1
DIRECTIONS: Final = ("from_twilio", "to_twilio", "from_openai", "to_openai", "rest")
AUDIO: Final = "_audio_bytes"
#: Lines waiting for the disk; past this a call's recording is abandoned (logged).
_MAX_BACKLOG: Final = 200_000

Message = dict[str, Any]

#: Every key a `dtmf` message can report.
DTMF_KEYS: Final = frozenset("0123456789*#ABCD")
#: What a key press is recorded as: a valid key, so a replay drives the same code path.
REDACTED_DIGIT: Final = "*"
#: What a malformed `digit` is recorded as: still invalid, so the core rejects it again.
REDACTED_BAD_DIGIT: Final = "?"
REDACTED: Final = "***"
#: `start` custom parameters whose values are secrets (compared case-insensitively).
SECRET_PARAMETERS: Final = frozenset({"streamtoken"})
_DTMF_TEXTS: Final = frozenset(DTMF_MESSAGE.format(digit=key) for key in DTMF_KEYS)
_REDACTED_DTMF_TEXT: Final = DTMF_MESSAGE.format(digit=REDACTED_DIGIT)


def audio_field(direction: str, msg: Message) -> tuple[str, ...] | None:
    """Path of the audio payload inside `msg`, if it carries one."""
    if direction in ("from_twilio", "to_twilio"):
        return ("media", "payload") if msg.get("event") == "media" else None
    kind = msg.get("type")
    if direction == "to_openai" and kind == "input_audio_buffer.append":
        return ("audio",)
    if direction == "from_openai" and kind == "response.output_audio.delta":
        return ("delta",)
    return None


def map_audio(direction: str, msg: Message, change: Callable[[Any], Any]) -> Message:
    """A copy of `msg` with its audio field (if any) replaced by `change(field)`; the
    message itself is never modified (it may still be on its way to a socket)."""
    path = audio_field(direction, msg)
    if path is None:
        return msg
    *parents, leaf = path
    out = dict(msg)
    node = out
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            return msg
        node[key] = node = dict(child)
    node[leaf] = change(node.get(leaf))
    return out


def _to_length(payload: Any) -> Any:
    return {AUDIO: decoded_len(payload)} if is_b64(payload) else payload


def strip_audio(direction: str, msg: Message) -> Message:
    """A copy of `msg` with its audio payload replaced by `{"_audio_bytes": N}`."""
    return map_audio(direction, msg, _to_length)


def _redact_dtmf(msg: Message) -> Message:
    dtmf = msg.get("dtmf")
    if not isinstance(dtmf, dict) or dtmf.get("digit") is None:
        return msg
    digit = dtmf["digit"]
    valid = isinstance(digit, str) and digit in DTMF_KEYS
    return {**msg, "dtmf": {**dtmf, "digit": REDACTED_DIGIT if valid else REDACTED_BAD_DIGIT}}


def _redact_start(msg: Message) -> Message:
    start = msg.get("start")
    if not isinstance(start, dict):
        return msg
    params = start.get("customParameters")
    if not isinstance(params, dict) or not any(
        str(name).lower() in SECRET_PARAMETERS for name in params
    ):
        return msg
    clean = {k: REDACTED if str(k).lower() in SECRET_PARAMETERS else v for k, v in params.items()}
    return {**msg, "start": {**start, "customParameters": clean}}


def _redact_item(msg: Message) -> Message:
    """Redact the key-press text in a user message item (sent, or echoed by the service)."""
    item = msg.get("item")
    if not isinstance(item, dict) or item.get("role") != "user":
        return msg
    content = item.get("content")
    if not isinstance(content, list) or not any(
        isinstance(part, dict) and part.get("text") in _DTMF_TEXTS for part in content
    ):
        return msg
    clean = [
        {**part, "text": _REDACTED_DTMF_TEXT}
        if isinstance(part, dict) and part.get("text") in _DTMF_TEXTS
        else part
        for part in content
    ]
    return {**msg, "item": {**item, "content": clean}}


def redact(direction: str, msg: Message) -> Message:
    """`msg` without key presses or per-call secrets, as it may be written to a recording.

    - `from_twilio` `dtmf`: the digit becomes `*` (a malformed one `?`, still malformed);
    - `from_twilio` `start`: the `StreamToken` custom parameter becomes `***`;
    - a user message item whose text is the key-press message (`to_openai`
      `conversation.item.create`, and the service's `conversation.item.*` echoes of it):
      the text becomes the message for `*`, which is what the core says when fed `*`.

    Returns `msg` itself when there is nothing to redact, else a copy (`msg` is untouched).
    """
    if direction == "from_twilio":
        event = msg.get("event")
        if event == "dtmf":
            return _redact_dtmf(msg)
        if event == "start":
            return _redact_start(msg)
        return msg
    if direction in ("to_openai", "from_openai") and "item" in msg:
        return _redact_item(msg)
    return msg


def action_record(action: Action) -> tuple[str, Message] | None:
    """The fixture form of an output action (timers are internal and not recorded)."""
    if type(action) is ToTwilio:
        return "to_twilio", action.msg
    if type(action) is ToRealtime:
        return "to_openai", action.msg
    if type(action) is RestRequest:
        return "rest", {"request": {"kind": action.kind, "params": action.params}}
    if type(action) is ConnectRealtime:
        return "to_openai", {"_socket": "connect"}
    if type(action) is CloseTwilio:
        return "to_twilio", {"_socket": "close", "reason": action.reason}
    if type(action) is CloseRealtime:
        return "to_openai", {"_socket": "close", "reason": action.reason}
    return None


def header(config: CallConfig, call_sid: str, stream_sid: str, keep_audio: bool) -> Message:
    from app import __version__

    return {
        "fixture": FORMAT_VERSION,
        "call_sid": call_sid,
        "stream_sid": stream_sid,
        "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "audio": "kept" if keep_audio else "lengths",
        "versions": {
            "bridge": __version__,
            "python": platform.python_version(),
            "realtime_protocol": "ga",
        },
        "config": config.to_dict(),
    }


class RecordingWriter:
    """One background thread that appends fixture lines to files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: queue.SimpleQueue[tuple[str, str, str] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, op: str, name: str, text: str = "") -> bool:
        """Queue `op` ("line" or "close") for file `name`; False when the backlog is full."""
        if self._queue.qsize() > _MAX_BACKLOG:
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="call-recorder", daemon=True)
                self._thread.start()
        self._queue.put((op, name, text))
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        files: dict[str, Any] = {}
        failed: set[str] = set()
        while (item := self._queue.get()) is not None:
            op, name, text = item
            if name in failed:
                continue
            try:
                handle = files.get(name)
                if op == "close":
                    if handle is not None:
                        handle.close()
                        del files[name]
                    continue
                if handle is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    handle = files[name] = (self.directory / name).open("a", encoding="utf-8")
                handle.write(text)
                if self._queue.empty():
                    handle.flush()
            except OSError as exc:
                failed.add(name)
                log_event(
                    logger, logging.ERROR, "recording.write_failed", file=name, error=str(exc)
                )
                handle = files.pop(name, None)
                if handle is not None:
                    with contextlib.suppress(OSError):
                        handle.close()
        for handle in files.values():
            handle.close()


class CallRecorder:
    """Writes one call's fixture. Lines before Twilio's `start` wait for the CallSid."""

    def __init__(self, writer: RecordingWriter, config: CallConfig, keep_audio: bool) -> None:
        self._writer = writer
        self._config = config
        self._keep_audio = keep_audio
        self._name: str | None = None
        self._early: list[str] = []
        self._broken = False

    @property
    def filename(self) -> str | None:
        return self._name

    def record(self, t_ms: float, direction: str, msg: Message) -> None:
        if self._broken:
            return
        if self._name is None and direction == "from_twilio" and msg.get("event") == "start":
            self._open(msg)
        msg = redact(direction, msg)
        if not self._keep_audio:
            msg = strip_audio(direction, msg)
        line = json.dumps(
            {"t_ms": round(t_ms, 3), "dir": direction, "msg": msg}, separators=(",", ":")
        )
        self._write(line + "\n")

    def record_actions(self, t_ms: float, actions: list[Action]) -> None:
        for action in actions:
            entry = action_record(action)
            if entry is not None:
                self.record(t_ms, *entry)

    def discard(self) -> None:
        """Write nothing for this stream (it was refused before it became a call)."""
        self._broken = True
        self._early.clear()

    def close(self) -> None:
        if self._name is None and self._early and not self._broken:
            self._open(None)  # a stream that never started is worth keeping too
        if self._name is not None:
            self._writer.submit("close", self._name)

    def _open(self, start: Message | None) -> None:
        inner = (start or {}).get("start") or {}
        call_sid = str(inner.get("callSid") or "unknown")
        stream_sid = str(inner.get("streamSid") or "")
        safe_sid = "".join(c for c in call_sid if c.isalnum())[:64] or "unknown"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        self._name = f"{stamp}_{safe_sid}.jsonl"
        head = header(self._config, call_sid, stream_sid, self._keep_audio)
        early, self._early = self._early, []
        self._write(json.dumps(head, separators=(",", ":")) + "\n")
        for line in early:
            self._write(line)

    def _write(self, line: str) -> None:
        if self._name is None:
            self._early.append(line)
            return
        if not self._writer.submit("line", self._name, line):
            self._broken = True
            log_event(logger, logging.ERROR, "recording.backlog_full", file=self._name)
