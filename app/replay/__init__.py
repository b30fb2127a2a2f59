"""Replay a call fixture through the call core on a virtual clock, and compare.

    python -m app.replay FILE            # the call's timeline, then the replay verdict
    python -m app.replay --store FILE... # store each as a call record (`app.replay.store`)

The recorded *inputs* (from Twilio, from OpenAI, REST answers) are fed to a fresh
`CallSession` at their recorded times; the core's timers fire on a virtual clock, through
the same driver contract the live bridge follows (`app.call.outbox`: wake the core at its
`deadline`, each timer fires at its own deadline), so nothing sleeps and a minute-long
call replays in milliseconds. The live bridge feeds the core exactly the times it records,
so a recording made by a running server replays as it ran. What the core sends
is compared with the recorded *outputs*, direction by direction (to Twilio, to OpenAI,
REST requests): the same messages in the same order, equal except for what legitimately
differs between runs (mark names, compared by position; audio, compared by length;
`event_id`s), at times within `TOLERANCE_MS`. A mismatch is reported as a readable diff
of the two timelines around the first difference.

Recorded mark echoes name the recorded marks; the replayer translates each to the mark
the replay sent at the same position, so a replay stays in step with its own marks.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson

from app.call.actions import Action
from app.call.config import CallConfig
from app.call.inbound import lookup, preview
from app.call.session import CallSession
from app.recording_lines import (
    AUDIO,
    DIRECTIONS,
    action_record,
    audio_field,
    map_audio,
    strip_audio,
)

#: Outputs may differ in time by this much (timers fire a little late in a live run).
TOLERANCE_MS: Final = 150.0
OUTPUT_DIRS: Final = ("to_twilio", "to_openai", "rest")
#: The longest audio a length-only field may stand for: one Realtime event's limit
#: (15 MiB of base64 text, about 11 MiB of audio), so a broken file can't ask for more.
MAX_AUDIO_BYTES: Final = 15 * 1024 * 1024 * 3 // 4
#: Each direction is compared as two ordered streams: audio (media, marks, appends), and
#: control (everything else). How a timer-driven control message interleaves with 20 ms
#: audio frames is arrival jitter (a live timer fires a fraction of a ms late), not
#: behaviour; the order within each stream is.
STREAMS: Final = tuple(f"{d}/{k}" for d in OUTPUT_DIRS for k in ("control", "audio"))

Message = dict[str, Any]


#: `rest` lines that are inputs (a replay feeds them): REST answers, tool outcomes, the
#: driver's audio answers and an outbound call's answering-machine verdict.
_REST_INPUTS: Final = ("response", "tool_result", "voice", "pause", "answered_by")


@dataclass(frozen=True, slots=True)
class Entry:
    t_ms: float
    dir: str
    msg: Message
    line: int = 0  # line number in the fixture file (0: produced by the replay)

    @property
    def is_input(self) -> bool:
        if self.dir == "rest":
            return any(key in self.msg for key in _REST_INPUTS)
        return self.dir in ("from_twilio", "from_openai")


@dataclass
class Fixture:
    header: Message
    entries: list[Entry]
    path: Path | None = None

    @property
    def config(self) -> CallConfig:
        """The recorded configuration; what the header lacks comes from today's defaults."""
        return CallConfig.from_dict(self.header.get("config", {}), defaults=default_config())


@cache
def default_config() -> CallConfig:
    """The call configuration of the settings' own defaults (no environment, no `.env`)."""
    from app.settings import Settings

    return CallConfig.from_settings(Settings.model_construct())


class FixtureError(ValueError):
    """The file is not a call fixture."""


def load(path: Path | str) -> Fixture:
    path = Path(path)
    return parse(path.read_text(encoding="utf-8").splitlines(), path)


def parse(lines: list[str], path: Path | None = None) -> Fixture:
    """A fixture from its lines (as a recorder writes them; `path` names it in errors).

    A line that is not one (not JSON, nested past the parser's depth limit, not an entry,
    a length-only audio field that is not a sane length) is a `FixtureError` naming its
    line number: the replayer reports a broken file, it never crashes on one."""
    name = path or "fixture"
    if not lines:
        raise FixtureError(f"{name}: empty")
    head = _json_line(lines[0], name, 1)
    if not isinstance(head, dict) or head.get("fixture") != 1:
        raise FixtureError(f'{name}: the first line is not a {{"fixture": 1}} header')
    if type(head.get("config", {})) is not dict:
        raise FixtureError(f"{name}:1: the header's config is not an object")
    entries = []
    for number, text in enumerate(lines[1:], start=2):
        if text.strip():
            entries.append(_entry(_json_line(text, name, number), name, number))
    return Fixture(head, entries, path)


def _json_line(text: str, name: object, number: int) -> Any:
    """One line's JSON. orjson, like the live driver: its depth limit (1024) turns a
    frame nested past it into a parse error, where `json` would raise RecursionError."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FixtureError(f"{name}:{number}: not JSON ({exc})") from None


def _entry(raw: Any, name: object, number: int) -> Entry:
    """A fixture entry from its parsed line, checked: `t_ms` a number, `dir` a direction,
    `msg` an object, and any length-only audio field a length the replay can rebuild."""
    if type(raw) is not dict:
        raise FixtureError(f"{name}:{number}: not a fixture line")
    t_ms, direction, msg = _time(raw.get("t_ms")), raw.get("dir"), raw.get("msg")
    if (
        t_ms is None
        or type(direction) is not str
        or direction not in DIRECTIONS
        or type(msg) is not dict
    ):
        raise FixtureError(f"{name}:{number}: not a fixture line")
    audio = lookup(msg, audio_field(direction, msg) or ())
    if type(audio) is dict and AUDIO in audio:
        length = audio[AUDIO]
        if type(length) is not int or not 0 <= length <= MAX_AUDIO_BYTES:
            raise FixtureError(f"{name}:{number}: audio length {preview(length)} is not one")
    return Entry(t_ms, direction, msg, number)


def _time(value: object) -> float | None:
    """A line's `t_ms` as a float, if it is a finite number (not a boolean)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@cache
def _synthetic_audio(nbytes: int) -> str:
    return base64.b64encode(b"\xff" * nbytes).decode()


def _from_length(value: Any) -> Any:
    if isinstance(value, dict) and AUDIO in value:
        return _synthetic_audio(int(value[AUDIO]))
    return value


def _restore_audio(direction: str, msg: Message) -> Message:
    """Give a length-only audio field a payload of that length, so the core sees audio."""
    return map_audio(direction, msg, _from_length)


def _mark_name(entry: Entry) -> str | None:
    if entry.msg.get("event") == "mark":
        mark = entry.msg.get("mark")
        if isinstance(mark, dict) and isinstance(mark.get("name"), str):
            return mark["name"]
    return None


@dataclass
class Mismatch:
    direction: str
    index: int
    recorded: Entry | None
    replayed: Entry | None
    why: str


@dataclass
class Result:
    fixture: Fixture
    replayed: list[Entry]
    mismatches: list[Mismatch] = field(default_factory=list)
    unconsumed_inputs: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.unconsumed_inputs

    def counts(self) -> dict[str, int]:
        return {d: sum(e.dir == d for e in self.replayed) for d in OUTPUT_DIRS}


Observer = Callable[[CallSession, float, list[Action]], None]


def replay(fixture: Fixture, observe: Observer | None = None) -> Result:
    """Feed the recorded inputs to a new core on a virtual clock; compare its outputs.

    `observe(session, t_ms, actions)`, when given, sees every step (each input, each
    timer wake-up) right after the core has handled it."""
    session = CallSession(fixture.config, replaying=True)
    inputs = [e for e in fixture.entries if e.is_input]
    recorded_marks = [n for e in fixture.entries if e.dir == "to_twilio" if (n := _mark_name(e))]
    mark_index = {name: i for i, name in enumerate(recorded_marks)}
    replay_marks: list[str] = []
    out: list[Entry] = []

    def collect(now: float, actions: list[Action]) -> None:
        if observe is not None:
            observe(session, now, actions)
        for action in actions:
            if (entry := action_record(action)) is not None:
                produced = Entry(now, *entry)
                if (name := _mark_name(produced)) is not None:
                    replay_marks.append(name)
                out.append(produced)

    def wake_until(t_ms: float) -> None:
        """What the live driver's wake-ups do: fire the timers due by `t_ms`."""
        while (at := session.deadline) is not None and at <= t_ms and not session.done:
            collect(at, session.advance(at))

    collect(0.0, session.opened(0.0))
    i = 0
    while i < len(inputs) and not session.done:
        nxt = inputs[i]
        wake_until(nxt.t_ms)
        if session.done:
            break
        i += 1
        msg = _restore_audio(nxt.dir, nxt.msg)
        name = _mark_name(nxt) if nxt.dir == "from_twilio" else None
        if name is not None and name in mark_index and mark_index[name] < len(replay_marks):
            msg = {**msg, "mark": {**msg["mark"], "name": replay_marks[mark_index[name]]}}
        collect(nxt.t_ms, session.feed(nxt.t_ms, nxt.dir, msg))
    # A live call stops at its end; timers still due before that end fire here too.
    wake_until(float("inf"))
    result = Result(fixture, out, unconsumed_inputs=len(inputs) - i)
    result.mismatches = compare(fixture.entries, out)
    return result


def stream_of(e: Entry) -> str:
    audio = audio_field(e.dir, e.msg) is not None or _mark_name(e) is not None
    return f"{e.dir}/{'audio' if audio else 'control'}"


def _normalise(entries: list[Entry]) -> dict[str, list[tuple[Entry, str]]]:
    """Per output stream: (entry, canonical text) with marks numbered, audio by length."""
    per_dir: dict[str, list[tuple[Entry, str]]] = {d: [] for d in STREAMS}
    marks: dict[str, str] = {}
    for e in entries:
        if e.dir not in OUTPUT_DIRS or e.is_input:
            continue
        msg = strip_audio(e.dir, e.msg)
        name = _mark_name(e)
        if name is not None:
            label = marks.setdefault(name, f"mark#{len(marks) + 1}")
            msg = {**msg, "mark": {**msg["mark"], "name": label}}
        msg = {k: v for k, v in msg.items() if k != "event_id"}
        per_dir[stream_of(e)].append((e, _canonical(msg)))
    return per_dir


def _canonical(msg: Message) -> str:
    """A message as comparable text: compact JSON with sorted keys. A recorded message
    nested past orjson's serialiser limit (254 levels) can't be written so; the core never
    sends one, so it stands as a text no replayed message equals."""
    try:
        return orjson.dumps(msg, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return "<nested too deep>"


def compare(recorded: list[Entry], replayed: list[Entry]) -> list[Mismatch]:
    """The first difference in each output stream (later ones usually follow from it)."""
    rec, rep = _normalise(recorded), _normalise(replayed)
    found = []
    for d in STREAMS:
        a, b = rec[d], rep[d]
        for k in range(max(len(a), len(b))):
            ea, eb = (a[k] if k < len(a) else None), (b[k] if k < len(b) else None)
            if ea is None or eb is None:
                why = "missing in the replay" if eb is None else "extra in the replay"
                found.append(Mismatch(d, k, ea and ea[0], eb and eb[0], why))
                break
            if ea[1] != eb[1]:
                found.append(Mismatch(d, k, ea[0], eb[0], "different message"))
                break
            if abs(ea[0].t_ms - eb[0].t_ms) > TOLERANCE_MS:
                why = f"at another time ({eb[0].t_ms - ea[0].t_ms:+.0f} ms)"
                found.append(Mismatch(d, k, ea[0], eb[0], why))
                break
    return found


# -- human-readable output -------------------------------------------------------------

_WHO = {
    "from_twilio": "caller  -> bridge",
    "to_twilio": "bridge  -> caller",
    "from_openai": "openai  -> bridge",
    "to_openai": "bridge  -> openai",
    "rest": "bridge <-> twilio",
}
#: `rest` lines about business tools (`tool_request`, `tool_result`, `tool_cancel`).
_TOOL_WHO: Final = "bridge <-> tools "
_TOOL_KEYS: Final = ("tool_request", "tool_result", "tool_cancel")


#: `rest` lines about the driver's audio analysis (the detector, the resume's pause).
_VOICE_WHO: Final = "bridge <-> vad   "
_VOICE_KEYS: Final = ("voice_check", "voice", "pause_find", "pause")


def _who(e: Entry) -> str:
    if e.dir == "rest" and any(key in e.msg for key in _TOOL_KEYS):
        return _TOOL_WHO
    if e.dir == "rest" and any(key in e.msg for key in _VOICE_KEYS):
        return _VOICE_WHO
    return _WHO[e.dir]


def _show(value: object, limit: int = 200) -> str:
    """A recorded value for a human: a string as it is, anything else as compact JSON, cut
    to `limit` (a value nested past orjson's serialiser limit shows as its type alone)."""
    if type(value) is str:
        return value[:limit]
    try:
        return orjson.dumps(value).decode()[:limit]
    except orjson.JSONEncodeError:
        return preview(value)


def _body(msg: Message, limit: int = 240) -> str:
    """A message in a report: JSON with sorted keys, readable spacing, cut to `limit`. A
    recorded one nested too deep for `json` (RecursionError) is shown by `_show`."""
    try:
        return json.dumps(msg, sort_keys=True)[:limit]
    except (RecursionError, ValueError):
        return _show(msg, limit)


def _get(m: Message, *path: str) -> str:
    """The value at `path` in `m`, shown (`_show`); "None" where it is absent."""
    return _show(lookup(m, path))


def describe(e: Entry) -> str:
    """One line about one message, without audio. A recording holds whatever the peers
    sent: every value is looked up and shown defensively (`_get`)."""
    m = e.msg
    if "_socket" in m:
        extra = {k: v for k, v in m.items() if k != "_socket"}
        return f"socket {_get(m, '_socket')} {_show(extra) if extra else ''}".rstrip()
    if "_frame_error" in m:
        return f"unparseable frame ({_get(m, '_frame_error')})"
    if "_recording" in m:  # the recorder's own last line: cut at a limit
        return f"recording {_get(m, '_recording')} (limit {_get(m, 'limit')})"
    if e.dir == "rest":
        if "request" in m:
            return f"REST {_get(m, 'request', 'kind')} {_get(m, 'request', 'params')}"
        if "tool_request" in m:
            return f"tool {_get(m, 'tool_request', 'name')} {_get(m, 'tool_request', 'arguments')}"
        if "tool_cancel" in m:
            return f"tool cancelled {_get(m, 'tool_cancel', 'call_id')}"
        if "tool_result" in m:
            tool, result = _get(m, "tool_result", "name"), _get(m, "tool_result", "result")
            return f"tool result {tool}: {result} {_get(m, 'tool_result', 'output')}"
        if "voice_check" in m:
            return f"voice check, last {_get(m, 'voice_check', 'window_ms')} ms"
        if "voice" in m:
            voiced, tail = _get(m, "voice", "voiced_ms"), _get(m, "voice", "tail_voiced_ms")
            return f"voice report: {voiced} ms voiced, {tail} ms at the end"
        if "pause_find" in m:
            return f"find a pause before byte {_get(m, 'pause_find', 'heard')}"
        if "pause" in m:
            return f"resume at byte {_get(m, 'pause', 'resume_at')}"
        if "answered_by" in m:
            return f"answered by {_get(m, 'answered_by')} (machine detection)"
        return f"REST answer {_get(m, 'response')}"
    if "event" in m:
        event = m["event"]
        if event == "start":
            call, params = _get(m, "start", "callSid"), _get(m, "start", "customParameters")
            return f"start call={call} params={params}"
        if event == "mark":
            return f"mark {_get(m, 'mark', 'name')}"
        if event == "dtmf":
            return "dtmf (key press)"
        if event == "media":
            return f"audio {_audio_ms(e)} ms"
        return _show(event)
    kind = _get(m, "type")
    if kind == "response.output_audio_transcript.done":
        return f'bot said: "{_get(m, "transcript")}"'
    if kind == "conversation.item.input_audio_transcription.completed":
        return f'caller said: "{_get(m, "transcript")}"'
    if kind == "conversation.item.truncate":
        return f"truncate {_get(m, 'item_id')} at {_get(m, 'audio_end_ms')} ms"
    if kind in ("response.output_audio.delta", "input_audio_buffer.append"):
        return f"{kind} {_audio_ms(e)} ms"
    if kind == "error":
        return f"error {_get(m, 'error', 'code')}: {_get(m, 'error', 'message')}"
    item_type = lookup(m, ("item", "type"))
    if kind == "conversation.item.create":
        if item_type == "function_call_output":
            return f"function output {_get(m, 'item', 'output')}"
        content = lookup(m, ("item", "content"))
        parts = content if type(content) is list else []
        texts = [_get(c, "text") for c in parts if type(c) is dict]
        return f"{_get(m, 'item', 'role')} message: {' '.join(texts)}"
    if kind == "response.output_item.done" and item_type == "function_call":
        name, args = _get(m, "item", "name"), _get(m, "item", "arguments")
        return f"tool call {name}({args}) {_get(m, 'item', 'status')}"
    return kind


def _audio_ms(e: Entry) -> int:
    stripped = strip_audio(e.dir, e.msg)
    node = lookup(stripped, audio_field(e.dir, stripped) or ())
    return int(node[AUDIO]) // 8 if isinstance(node, dict) and AUDIO in node else 0


_QUIET = frozenset(
    {
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_item.added",
        "session.created",
        "rate_limits.updated",
        "response.content_part.added",
        "response.content_part.done",
        "conversation.item.added",
        "conversation.item.done",
    }
)


def timeline(entries: list[Entry]) -> list[str]:
    """The call as readable lines. Audio and mark traffic between two events is folded into
    one line: caller audio, bot audio sent to the caller, marks sent and echoed."""
    lines: list[str] = []
    fold = {"caller audio ms": 0, "bot audio ms": 0, "marks sent": 0, "marks echoed": 0}
    fold_from: float | None = None

    def flush() -> None:
        nonlocal fold_from
        if fold_from is not None:
            text = ", ".join(f"{k} {v}" for k, v in fold.items() if v)
            lines.append(f"{fold_from:9.0f} ms  {'':17}  ... {text}")
            fold.update(dict.fromkeys(fold, 0))
            fold_from = None

    for e in entries:
        key = None
        if audio_field(e.dir, e.msg) is not None:
            if e.dir == "from_twilio":
                key = "caller audio ms"
            elif e.dir == "to_twilio":
                key = "bot audio ms"
            else:
                continue  # the OpenAI side of the same audio
        elif _mark_name(e) is not None:
            key = "marks sent" if e.dir == "to_twilio" else "marks echoed"
        if key is not None:
            fold_from = e.t_ms if fold_from is None else fold_from
            fold[key] += _audio_ms(e) if key.endswith("ms") else 1
            continue
        kind = e.msg.get("type")
        if type(kind) is str and kind in _QUIET:  # a recorded type may be any value
            continue
        flush()
        lines.append(f"{e.t_ms:9.0f} ms  {_who(e)}  {describe(e)}")
    flush()
    return lines


def report(result: Result) -> str:
    """The verdict, with a diff of the timelines around each first difference."""
    counts = ", ".join(f"{d} {n}" for d, n in result.counts().items())
    if result.ok:
        return f"REPLAY OK: every output matched ({counts})."
    out = [f"REPLAY MISMATCH in {result.fixture.path or 'fixture'}:"]
    for m in result.mismatches:
        out.append(f"- {m.direction} message #{m.index + 1}: {m.why}")
        rec = [e for e in result.fixture.entries if not e.is_input and stream_of(e) == m.direction]
        rep = [e for e in result.replayed if stream_of(e) == m.direction]
        for label, seq in (("recorded", rec), ("replayed", rep)):
            out.append(f"    {label}:")
            for k in range(max(0, m.index - 2), min(len(seq), m.index + 3)):
                e = seq[k]
                where = f"line {e.line}" if e.line else "replay"
                pointer = ">>" if k == m.index else "  "
                body = _body(strip_audio(e.dir, e.msg))
                out.append(f"    {pointer} {e.t_ms:9.1f} ms ({where}) {body}")
    if result.unconsumed_inputs:
        out.append(f"- the call ended {result.unconsumed_inputs} recorded input(s) early")
    return "\n".join(out)
