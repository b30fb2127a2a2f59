"""Playout: what the caller actually heard, rebuilt from a call fixture.

A fixture records what the bridge *sent* to Twilio, which is not what the caller heard:
the Realtime service produces audio much faster than real time, Twilio queues it and
plays it at 8 bytes of mu-law per ms, and a `clear` throws away whatever is still queued.
To draw a call or rebuild its audio we replay Twilio's queue, as Twilio plays it:

1. Each bot `media` sent to Twilio is one chunk in a FIFO queue. It starts playing at
   max(its send time, the end of the chunk before it) and lasts its length.
2. A mark echo that confirms a chunk (its mark still pending, as in
   `app.call.playback.PlaybackTracker`) re-anchors the playout clock: the chunk can't
   have finished after its echo (if the model says it did, the chunk moves earlier), and
   what is queued behind it starts no earlier than the echo. So the model never drifts
   from Twilio by more than one echo's network delay, and its position at a `clear` is
   the one the tracker computed for the truncate (`audio_end_ms`).
3. A `clear` cuts the queue at its time: the chunk playing is cut there, later chunks
   never play. Twilio then echoes every pending mark at once; those echoes (and any late
   ones) name marks no longer pending and are not played audio. In resume mode the
   bridge may send the cut answer's audio again after a false turn: those are new chunks,
   played like any other, and the clear is drawn as a pause, not a barge-in.
4. The end of the call (the last socket close or Twilio `stop`) cuts playout like a
   clear: a caller who hung up heard nothing after it.

Around the audio, the events worth seeing on a timeline are collected as they arrived:
caller speech (`speech_started`/`speech_stopped`), clears with what the truncate says the
caller heard, tool calls, key presses (never their digit), REST requests and answers, and
the end. Pure functions of a `Fixture`; positions are bytes, times are call ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from app.call.inbound import lookup
from app.call.playback import BYTES_PER_MS
from app.protocol.b64 import decoded_len, is_b64
from app.recording_lines import AUDIO
from app.replay import Entry, Fixture

#: A chunk whose mark names no item (an odd recording) is drawn under this item id.
UNKNOWN_ITEM: Final = "?"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One bot `media` message sent to Twilio."""

    index: int  # position among the bot's chunks, in send order
    item_id: str
    sent_ms: float
    nbytes: int
    item_offset: int  # bytes of the same item sent before this chunk
    payload: str | None  # base64 mu-law when the fixture kept audio, else None


@dataclass(frozen=True, slots=True)
class Played:
    """A stretch of one chunk the caller heard: `length_bytes` from its start."""

    item_id: str
    start_ms: float
    end_ms: float
    chunk_index: int
    offset_bytes: int  # position of the piece's first byte in its item
    length_bytes: int
    cut: bool  # a clear (or the call's end) stopped it before the chunk's end


@dataclass(frozen=True, slots=True)
class SentSpan:
    """An item's audio as sent to Twilio: first and last send time, and how much."""

    item_id: str
    first_ms: float
    last_ms: float
    nbytes: int

    @property
    def ms(self) -> float:
        return self.nbytes / BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Span:
    """Caller speech, as the Realtime service's VAD reported it (arrival times)."""

    start_ms: float
    end_ms: float
    open: bool = False  # no `speech_stopped` before the end


@dataclass(slots=True)
class Clear:
    """A `clear` sent to Twilio, with the truncate that followed it (if any).

    In resume mode a clear may only pause the answer: when audio of an item that was
    queued at the clear is sent again after it (before any truncate), the answer resumed
    at `resumed_ms`, and the clear was no barge-in."""

    t_ms: float
    heard_ms: int | None = None
    item_id: str | None = None
    queued: frozenset[str] = frozenset()  # the items with audio sent before the clear
    resumed_ms: float | None = None

    @property
    def paused(self) -> bool:
        return self.resumed_ms is not None


@dataclass(frozen=True, slots=True)
class Event:
    """A point event: `kind` is tool, key, rest or end; `label` is what to show."""

    kind: str
    t_ms: float
    label: str


@dataclass
class Playout:
    """The model of one call (see the module docstring)."""

    call_sid: str
    duration_ms: float
    chunks: list[Chunk] = field(default_factory=list)
    played: list[Played] = field(default_factory=list)
    sent: list[SentSpan] = field(default_factory=list)
    speech: list[Span] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def played_bytes(self, item_id: str) -> int:
        """Bytes of `item_id` the caller heard."""
        return sum(p.length_bytes for p in self.played if p.item_id == item_id)


def _is_media(e: Entry) -> bool:
    return e.dir == "to_twilio" and e.msg.get("event") == "media"


def _mark(e: Entry) -> str | None:
    if e.msg.get("event") != "mark":
        return None
    name = lookup(e.msg, ("mark", "name"))
    return name if type(name) is str else None


def _mark_item(name: str) -> str | None:
    """The item id a bridge mark name carries (`{item}.g{gen}.m{seq}`)."""
    parts = name.rsplit(".", 2)
    return parts[0] if len(parts) == 3 and parts[0] else None


def _payload(msg: dict[str, Any]) -> tuple[int, str | None]:
    """A media message's audio length in bytes, and its base64 text when kept."""
    node = lookup(msg, ("media", "payload"))
    if type(node) is str and is_b64(node):
        return decoded_len(node), node
    if type(node) is dict and type(node.get(AUDIO)) is int and node[AUDIO] >= 0:
        return int(node[AUDIO]), None
    return 0, None


def end_of(fixture: Fixture) -> tuple[float, str]:
    """When the call ended and why: the last socket close or Twilio `stop`, else the
    last entry (a recording cut short)."""
    for e in reversed(fixture.entries):
        sock = e.msg.get("_socket")
        if sock in ("close", "closed"):
            reason = e.msg.get("reason")
            return e.t_ms, reason if type(reason) is str and reason else str(sock)
        if e.dir == "from_twilio" and e.msg.get("event") == "stop":
            return e.t_ms, "stop"
    return (fixture.entries[-1].t_ms if fixture.entries else 0.0), "end of recording"


def chunks_of(fixture: Fixture, end_ms: float | None = None) -> list[Chunk]:
    """Every bot chunk sent to Twilio, in order, with its item: the item of the mark sent
    after it (the bridge marks every chunk), else of the last audio delta received. With
    `end_ms`, media sent after the call's end (never played) is left out."""
    media = [
        (i, e)
        for i, e in enumerate(fixture.entries)
        if _is_media(e) and (end_ms is None or e.t_ms <= end_ms)
    ]
    # Item of each media entry: the first mark sent to Twilio before the next media.
    owner: dict[int, str] = {}
    pending: int | None = None
    last_delta: str | None = None
    fallback: dict[int, str] = {}
    for i, e in enumerate(fixture.entries):
        if e.dir == "from_openai" and e.msg.get("type") == "response.output_audio.delta":
            item = e.msg.get("item_id")
            last_delta = item if type(item) is str else last_delta
        elif _is_media(e):
            pending = i
            fallback[i] = last_delta or UNKNOWN_ITEM
        elif e.dir == "to_twilio" and (name := _mark(e)) is not None and pending is not None:
            owner[pending] = _mark_item(name) or fallback[pending]
            pending = None
    chunks: list[Chunk] = []
    offsets: dict[str, int] = {}
    for index, (i, e) in enumerate(media):
        item = owner.get(i, fallback[i])
        nbytes, payload = _payload(e.msg)
        chunks.append(Chunk(index, item, e.t_ms, nbytes, offsets.get(item, 0), payload))
        offsets[item] = offsets.get(item, 0) + nbytes
    return chunks


class _Queue:
    """Twilio's playout queue (rules 1-4 of the module docstring)."""

    def __init__(self) -> None:
        self.clock = 0.0  # when the queue is free to start its next chunk
        self.pending: list[Chunk] = []  # sent, not confirmed, not cut
        self.start: dict[int, float] = {}
        self.live: dict[str, int] = {}  # pending mark name -> chunk index
        self.played: list[Played] = []
        self.last_end = 0.0  # end of the last chunk confirmed or cut

    def send(self, chunk: Chunk) -> None:
        self.start[chunk.index] = max(chunk.sent_ms, self.clock)
        self.clock = self.start[chunk.index] + chunk.nbytes / BYTES_PER_MS
        self.pending.append(chunk)

    def _keep(self, c: Chunk, start: float, nbytes: int, end: float, cut: bool) -> None:
        if nbytes > 0:
            self.played.append(Played(c.item_id, start, end, c.index, c.item_offset, nbytes, cut))
        self.last_end = end

    def echo(self, t_ms: float, name: str) -> None:
        index = self.live.get(name)
        if index is None:
            return  # a cleared mark, one echoed twice, or not ours: not played audio
        self.live = {n: i for n, i in self.live.items() if i > index}
        while self.pending and self.pending[0].index <= index:
            c = self.pending.pop(0)
            start, length = self.start[c.index], c.nbytes / BYTES_PER_MS
            if c.index == index and start + length > t_ms:
                start = max(t_ms - length, c.sent_ms, self.last_end)
            self._keep(c, start, c.nbytes, start + length, False)
        self.clock = max(t_ms, self.last_end)
        for c in self.pending:  # re-anchor what is queued behind the echoed chunk
            self.start[c.index] = max(c.sent_ms, self.clock)
            self.clock = self.start[c.index] + c.nbytes / BYTES_PER_MS

    def cut(self, t_ms: float) -> None:
        """Everything still queued stops at `t_ms` (a clear, or the call's end)."""
        for c in self.pending:
            start = self.start[c.index]
            if start >= t_ms:
                break
            end = start + c.nbytes / BYTES_PER_MS
            if end <= t_ms:
                self._keep(c, start, c.nbytes, end, False)
            else:
                nbytes = min(c.nbytes, int((t_ms - start) * BYTES_PER_MS + 1e-6))
                self._keep(c, start, nbytes, t_ms, True)
        self.pending.clear()
        self.live.clear()
        self.clock = t_ms


def _sent_spans(chunks: list[Chunk]) -> list[SentSpan]:
    spans: dict[str, SentSpan] = {}
    for c in chunks:
        s = spans.get(c.item_id)
        if s is None:
            spans[c.item_id] = SentSpan(c.item_id, c.sent_ms, c.sent_ms, c.nbytes)
        else:
            spans[c.item_id] = SentSpan(c.item_id, s.first_ms, c.sent_ms, s.nbytes + c.nbytes)
    return list(spans.values())


def _openai_event(e: Entry, out: Playout, speaking: list[float]) -> None:
    kind = e.msg.get("type")
    if kind == "input_audio_buffer.speech_started" and not speaking:
        speaking.append(e.t_ms)
    elif kind == "input_audio_buffer.speech_stopped" and speaking:
        out.speech.append(Span(speaking.pop(), e.t_ms))
    elif kind == "response.output_item.done":
        item_type = lookup(e.msg, ("item", "type"))
        name = lookup(e.msg, ("item", "name"))
        shown = name if type(name) is str else "function"
        if item_type == "function_call":
            out.events.append(Event("tool", e.t_ms, shown))
        elif item_type == "mcp_call":
            server = lookup(e.msg, ("item", "server_label"))
            failed = lookup(e.msg, ("item", "error")) is not None
            label = f"{server if type(server) is str else 'mcp'}.{shown}"
            out.events.append(Event("tool", e.t_ms, label + (" failed" if failed else "")))


def _rest_event(e: Entry) -> Event | None:
    if "request" in e.msg:
        kind = lookup(e.msg, ("request", "kind"))
        return Event("rest", e.t_ms, f"REST {kind if type(kind) is str else 'request'}")
    if "response" in e.msg:
        status = lookup(e.msg, ("response", "status"))
        shown = status if type(status) is int else "failed"
        return Event("rest", e.t_ms, f"REST answer {shown}")
    if "tool_result" in e.msg:  # a business tool's outcome (its request is the call above)
        name, result = (
            lookup(e.msg, ("tool_result", "name")),
            lookup(e.msg, ("tool_result", "result")),
        )
        label = f"{name if type(name) is str else 'tool'}: {result if type(result) is str else '?'}"
        return Event("tool", e.t_ms, label)
    if "tool_cancel" in e.msg:
        return Event("tool", e.t_ms, "tool cancelled")
    return None


def playout(fixture: Fixture) -> Playout:
    """The model of what the caller heard, and the call's events (module docstring)."""
    end_ms, reason = end_of(fixture)
    chunks = chunks_of(fixture, end_ms)
    call_sid = fixture.header.get("call_sid")
    out = Playout(
        call_sid if type(call_sid) is str else "", end_ms, chunks, [], _sent_spans(chunks)
    )
    queue = _Queue()
    next_chunk = iter(chunks)
    last_sent: int | None = None
    speaking: list[float] = []
    for e in fixture.entries:
        if e.t_ms > end_ms:
            break
        if _is_media(e):
            chunk = next(next_chunk)
            queue.send(chunk)
            last_sent = chunk.index
            if out.clears:
                last = out.clears[-1]
                resends = chunk.item_id in last.queued and last.heard_ms is None
                if resends and last.resumed_ms is None:
                    last.resumed_ms = e.t_ms  # the paused answer goes on
        elif e.dir == "to_twilio" and (name := _mark(e)) is not None:
            if last_sent is not None:
                queue.live[name] = last_sent
                last_sent = None
        elif e.dir == "from_twilio" and (name := _mark(e)) is not None:
            queue.echo(e.t_ms, name)
        elif e.dir == "to_twilio" and e.msg.get("event") == "clear":
            queue.cut(e.t_ms)
            last_sent = None
            sent_items = frozenset(c.item_id for c in chunks if c.sent_ms <= e.t_ms)
            out.clears.append(Clear(e.t_ms, queued=sent_items))
        elif e.dir == "to_openai" and e.msg.get("type") == "conversation.item.truncate":
            if out.clears and out.clears[-1].heard_ms is None and not out.clears[-1].paused:
                heard, item = e.msg.get("audio_end_ms"), e.msg.get("item_id")
                out.clears[-1].heard_ms = heard if type(heard) is int else None
                out.clears[-1].item_id = item if type(item) is str else None
        elif e.dir == "from_openai":
            _openai_event(e, out, speaking)
        elif e.dir == "from_twilio" and e.msg.get("event") == "dtmf":
            out.events.append(Event("key", e.t_ms, "key"))  # never the digit
        elif e.dir == "rest" and (rest := _rest_event(e)) is not None:
            out.events.append(rest)
    queue.cut(end_ms)
    if speaking:
        out.speech.append(Span(speaking[0], max(end_ms, speaking[0]), open=True))
    out.events.append(Event("end", end_ms, f"end ({reason})"))
    out.played = sorted(queue.played, key=lambda p: (p.start_ms, p.chunk_index))
    return out
