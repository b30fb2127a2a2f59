"""How the turn-taking modes cope with a noisy line: `python -m bench.noise.run`.

For each configuration (`CONFIGS`), the real app is served on loopback (in-process, as
the tests do: `tests.conftest.serve`) against a fake Realtime service with caller
transcription on, and each clip of the corpus (`bench.noise.corpus`) gets a call of its
own: the bot's greeting is a long answer (about 8 s of espeak speech in 100 ms deltas),
the fake caller plays it in real time and, 1.5 to 2 s into what it has heard, speaks the
clip into its otherwise silent stream (an echo clip instead echoes everything the caller
hears, live). The fake service's energy VAD turns the clip into speech_started / stopped
/ committed, and transcribes it by its label, 300 ms after the commit.

Everything is measured from the wire, not from the bridge's logs: what the caller heard
(each distinct byte of the answer once, so a resumed answer counts what it re-sent only
once), its `clear`s, and the events the fake service received and sent, with their times.
The bridge's `turn.*` log events are recorded beside them and used for one figure only
(verdict to resumed audio). The Markdown table and the raw per-clip JSON go to
`bench/results/` (`noise.md`, `noise.json`; `noise-quick.*` with `--quick`), the bridge's
log lines to `noise.log` there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import logging
import math
import statistics
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.noise.corpus import ANSWER_TEXT, REPLY_TEXT, Clip, Corpus, EchoSpec, build, gain_table
from tests.conftest import ACCOUNT_SID, API_KEY, AUTH_TOKEN, RunningApp, make_settings, serve
from tests.fakes.audio import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, rms
from tests.fakes.realtime_server import FakeRealtime, RealtimeConnection, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

LOST_BELOW = 0.95
"""An answer is lost when the caller heard less than this share of its audio."""
QUIET_S = 2.0
"""A call is over once nothing has happened on either leg for this long."""
DEADLINE_S = 10.0
"""...or, at the latest, this long after the answer would have ended uninterrupted."""
TRANSCRIPTION_DELAY_MS = 300
TIMELINE_ROWS = 60
"""Each clip's timeline in the JSON (ms from the first answer audio heard) stops here."""


@dataclass(frozen=True, slots=True)
class Config:
    """One way of running the bridge: environment variables (settings) and what it is."""

    name: str
    env: dict[str, str]
    about: str

    def overrides(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.env.items()}


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("cancel", {"INTERRUPT_MODE": "cancel"}, "clear + cancel + truncate at once"),
        Config(
            "min_speech_300",
            {"INTERRUPT_MODE": "cancel", "INTERRUPT_MIN_SPEECH_MS": "300"},
            "the bot talks on until 300 ms of speech are confirmed",
        ),
        Config("resume", {"INTERRUPT_MODE": "resume"}, "pause at once; resume after a false turn"),
        Config(
            "resume_echo_guard",
            {"INTERRUPT_MODE": "resume", "ECHO_GUARD_MS": "500"},
            "resume, and no pause for speech within 500 ms of the bot starting",
        ),
    )
}


# --- the fake service: one script per call, every event timed ---------------------------


@dataclass(slots=True)
class CallSpec:
    """What the fake service does on one call's connection."""

    script: list[ScriptedResponse]
    transcripts: list[str]
    connection: TimedConnection | None = None


class TimedConnection(RealtimeConnection):
    """A connection that takes its call's script and transcripts from the server's queue
    and notes the loop time of every event it receives and sends."""

    def __init__(self, server: FakeRealtime, ws: Any) -> None:
        super().__init__(server, ws)
        self._clock = asyncio.get_running_loop().time
        self.sent_at: dict[str, float] = {}
        """Server event id -> when it was sent."""
        self.event_at: list[float] = []
        """When each of ``events`` arrived (same order)."""
        pending = getattr(server, "pending", None)
        if pending:
            spec: CallSpec = pending.popleft()
            self.script = deque(spec.script)
            self.caller_transcripts = deque(spec.transcripts)
            spec.connection = self

    async def _send(self, event: dict[str, Any], *, force: bool = False) -> None:
        at = self._clock()
        try:
            await super()._send(event, force=force)
        finally:
            if "event_id" in event:
                self.sent_at[event["event_id"]] = at

    async def _on_message(self, message: str | bytes) -> None:
        at = self._clock()
        try:
            await super()._on_message(message)
        finally:
            self.event_at.extend([at] * (len(self.events) - len(self.event_at)))


class BenchRealtime(FakeRealtime):
    connection_class = TimedConnection

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending: deque[CallSpec] = deque()


class TurnLog(logging.Handler):
    """The bridge's `turn.*` events and each call's summary, by call, with loop times."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_call: dict[str | None, list[tuple[float, str, dict[str, Any]]]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        name = record.msg if isinstance(record.msg, str) else ""
        if name.startswith("turn.") or name == "call.summary":
            fields = dict(getattr(record, "fields", None) or {})
            # time.monotonic() is the event loop's clock: comparable with the wire's times.
            self.by_call[getattr(record, "call_sid", None)].append((time.monotonic(), name, fields))


# --- one call ---------------------------------------------------------------------------


@dataclass(slots=True)
class CallRecord:
    """Everything one call left on the wire (times are loop times)."""

    clip: Clip
    config: str
    call: FakeTwilioCall
    conn: TimedConnection
    start: float  # the first bot audio heard
    clip_start: float
    clip_end: float | None  # None for a live echo (it lasts the whole call)
    ended: str  # "quiet" or "deadline"
    logs: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    invalid_events: int = 0
    rejected_truncates: int = 0


async def _live_echo(call: FakeTwilioCall, spec: EchoSpec) -> None:
    """Echo what the caller hears back into its microphone, `spec.gain_db` quieter and
    `spec.delay_ms` later, for as long as the call lasts."""
    loop = asyncio.get_running_loop()
    table = gain_table(spec.gain_db)
    later: set[asyncio.Task[None]] = set()

    async def say_at(due: float, chunk: bytes) -> None:
        await asyncio.sleep(max(0.0, due - loop.time()))
        with contextlib.suppress(ConnectionError, RuntimeError):  # the call has ended
            await call.say(chunk)

    def grown(seen: int) -> Callable[[], bool]:
        return lambda: len(call.heard) > seen

    pos = 0
    try:
        while True:
            await call.wait_until(grown(pos), timeout=3600)
            chunk = bytes(call.heard[pos:]).translate(table)
            pos += len(chunk)
            task = asyncio.create_task(say_at(loop.time() + spec.delay_ms / 1000, chunk))
            later.add(task)
            task.add_done_callback(later.discard)
    finally:
        for task in later:
            task.cancel()


def _last_activity(call: FakeTwilioCall, conn: TimedConnection) -> float:
    """When either leg last did something other than stream silence."""
    last = 0.0
    for at, kind, _ in reversed(call.events):
        if kind in ("media", "played", "clear", "say"):
            last = at
            break
    for ev in reversed(conn.sent):
        if ev.get("type") != "rate_limits.updated":
            last = max(last, conn.sent_at.get(ev.get("event_id", ""), 0.0))
            break
    return last


def _speaking(conn: TimedConnection) -> bool:
    types = conn.sent_types()
    return types.count("input_audio_buffer.speech_started") > types.count(
        "input_audio_buffer.speech_stopped"
    )


async def _settle(call: FakeTwilioCall, conn: TimedConnection, deadline: float) -> str:
    """Wait until the call has gone quiet: nothing queued or being generated, nobody
    speaking, nothing on either leg for QUIET_S. Quiet is the absence of events, so this
    looks every 100 ms; `deadline` bounds calls that never settle (an echo loop)."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        busy = call.queued_bytes or conn.active_response is not None or _speaking(conn)
        if not busy and loop.time() - _last_activity(call, conn) >= QUIET_S:
            return "quiet"
        await asyncio.sleep(0.1)
    return "deadline"


async def run_call(
    app: RunningApp,
    fake: BenchRealtime,
    corpus: Corpus,
    clip: Clip,
    config: str,
    setup: asyncio.Lock,
    logs: TurnLog,
) -> CallRecord:
    """One call: the long answer, `clip` over it, until the line is quiet again."""
    loop = asyncio.get_running_loop()
    answer = ScriptedResponse(audio=corpus.answer, transcript=ANSWER_TEXT, delta_ms=100)
    reply = ScriptedResponse(audio=corpus.reply, transcript=REPLY_TEXT, delta_ms=100)
    spec = CallSpec(script=[answer, reply, reply, reply], transcripts=[clip.transcript] * 16)
    call = app.call()
    # Calls are set up one at a time, so the next connection is this call's.
    async with setup:
        fake.pending.append(spec)
        try:
            await call.connect()
            await call.start()
            await fake.wait_until(lambda: spec.connection is not None, timeout=10)
        except BaseException:
            with contextlib.suppress(ValueError):
                fake.pending.remove(spec)
            await call.close()
            raise
    conn = spec.connection
    assert conn is not None
    echo: asyncio.Task[None] | None = None
    try:
        await call.wait_for_heard(1, timeout=15)
        start = heard_time(call, 0) or loop.time()
        deadline = start + len(corpus.answer) / BYTES_PER_MS / 1000 + DEADLINE_S
        if clip.echo is not None:
            echo = asyncio.create_task(_live_echo(call, clip.echo))
            clip_start, clip_end = start, None
        else:
            await call.wait_for_heard(clip.onset_ms * BYTES_PER_MS, timeout=30)
            clip_start = loop.time()
            await call.say(clip.audio)
            clip_end = loop.time()
        ended = await _settle(call, conn, deadline)
    finally:
        if echo is not None:
            echo.cancel()
            await asyncio.gather(echo, return_exceptions=True)
        with contextlib.suppress(Exception):
            await call.hangup()
        with contextlib.suppress(TimeoutError):
            await conn.wait_closed(timeout=5)
    index = fake.connections.index(conn)
    items = {r.item_id for r in conn.responses}
    return CallRecord(
        clip=clip,
        config=config,
        call=call,
        conn=conn,
        start=start,
        clip_start=clip_start,
        clip_end=clip_end,
        ended=ended,
        logs=list(logs.by_call.get(call.call_sid, [])),
        invalid_events=sum(e["connection"] == index for e in fake.invalid_events),
        rejected_truncates=sum(t.get("item_id") in items for t in fake.rejected_truncates),
    )


# --- what the caller heard of the answer -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """`length` bytes heard from `heard` on were the answer's from `answer` on."""

    heard: int
    answer: int
    length: int


_WINDOW = 400  # 50 ms: a stretch of speech this long occurs once in an answer
_QUIET_RMS = 60.0  # a window this quiet (a pause) could be anywhere: skip it


def align(heard: bytes, answer: bytes, breaks: Iterable[int] = ()) -> list[Segment]:
    """Where each stretch of `heard` comes from in `answer` (exact byte matches: the bridge
    passes audio through untouched). `breaks` are heard positions where a new run starts
    (the caller's clears): a run is matched on its own, so a resume that re-sends a pause
    is never taken for the pause before the clear."""
    cuts = sorted({0, len(heard), *(b for b in breaks if 0 < b < len(heard))})
    segments: list[Segment] = []
    for lo, hi in itertools.pairwise(cuts):
        segments.extend(_align_run(heard, lo, hi, answer))
    return segments


def _align_run(heard: bytes, lo: int, hi: int, answer: bytes) -> list[Segment]:
    found: list[Segment] = []
    pos, floor = lo, lo
    while pos + _WINDOW <= hi:
        window = heard[pos : pos + _WINDOW]
        at = answer.find(window) if rms(window) >= _QUIET_RMS else -1
        if at < 0:
            pos += FRAME_BYTES
            continue
        length = _WINDOW
        while pos + length < hi and at + length < len(answer):
            step = min(FRAME_BYTES, hi - pos - length, len(answer) - at - length)
            if (
                heard[pos + length : pos + length + step]
                == answer[at + length : at + length + step]
            ):
                length += step
                continue
            while (
                pos + length < hi
                and at + length < len(answer)
                and heard[pos + length] == answer[at + length]
            ):
                length += 1
            break
        back = 0  # a leading pause the window search stepped over
        while (
            pos - back > floor and at - back > 0 and heard[pos - back - 1] == answer[at - back - 1]
        ):
            back += 1
        found.append(Segment(pos - back, at - back, length + back))
        pos += length
        floor = pos
    return found


def covered(segments: Iterable[Segment]) -> int:
    """Bytes of the answer heard at least once."""
    total, reach = 0, 0
    for lo, hi in sorted((s.answer, s.answer + s.length) for s in segments):
        if hi > reach:
            total += hi - max(lo, reach)
            reach = hi
    return total


def answer_position(segments: Sequence[Segment], heard_pos: int) -> int | None:
    """The answer byte the caller had reached at `heard_pos` heard bytes, if it was
    hearing the answer then."""
    for s in segments:
        if s.heard < heard_pos <= s.heard + s.length:
            return s.answer + heard_pos - s.heard
    return None


def heard_time(call: FakeTwilioCall, heard_pos: int) -> float | None:
    """When the caller began to hear byte `heard_pos`: the fake plays 20 ms frames and
    records each once it has played, so the byte began that much earlier."""
    for at, kind, details in call.events:
        if kind == "played" and details["heard"] > heard_pos:
            return at - (details["heard"] - heard_pos) / BYTES_PER_MS / 1000
    return None


# --- one call's figures ----------------------------------------------------------------


def _verdict_kind(name: str) -> str | None:
    """The bridge's turn log events, by what they say (the names may change a little)."""
    if "resum" in name:
        return "resumed"
    if "paus" in name:
        return "paused"
    if "guard" in name:
        return "guarded"  # no pause yet: the bridge waits for more evidence
    if any(word in name for word in ("false", "backchannel", "noise_ignored", "not_a_turn")):
        return "false"
    if any(word in name for word in ("real", "barge_in")):
        return "real"
    return None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def measure(rec: CallRecord, corpus: Corpus) -> dict[str, Any]:
    """One call's figures, all from the wire (plus the bridge's verdict times)."""
    call, conn, clip = rec.call, rec.conn, rec.clip
    answer = corpus.answer
    heard = bytes(call.heard)
    clears = [(at, d["heard"]) for at, kind, d in call.events if kind == "clear"]
    segments = align(heard, answer, [h for _, h in clears])
    heard_bytes = covered(segments)
    answer_item = conn.responses[0].item_id if conn.responses else None

    def sent(kind: str, after: float) -> list[tuple[float, dict[str, Any]]]:
        return [
            (at, ev)
            for ev in conn.sent
            if ev.get("type") == kind and (at := conn.sent_at.get(ev["event_id"], 0.0)) >= after
        ]

    def received(kind: str, after: float) -> list[tuple[float, dict[str, Any]]]:
        return [
            (at, ev)
            for ev, at in zip(conn.events, conn.event_at, strict=False)
            if ev.get("type") == kind and at >= after
        ]

    started = sent("input_audio_buffer.speech_started", rec.clip_start)
    first_ss = started[0][0] if started else None
    speech_items = {ev["item_id"] for _, ev in started}
    commits = [
        (at, ev)
        for at, ev in sent("input_audio_buffer.committed", rec.clip_start)
        if ev["item_id"] in speech_items
    ]
    first_commit = commits[0][0] if commits else None
    answered = sent("response.created", first_commit) if first_commit is not None else []
    triggers = [
        next((r.trigger for r in conn.responses if r.id == ev["response"]["id"]), "?")
        for _, ev in answered
    ]
    deleted = [ev["item_id"] for _, ev in received("conversation.item.delete", rec.clip_start)]
    truncates = [
        (at, ev)
        for at, ev in received("conversation.item.truncate", rec.clip_start)
        if ev["item_id"] == answer_item
    ]
    cancels = received("response.cancel", rec.clip_start)
    stops = [(at, h) for at, h in clears if at >= rec.clip_start]

    reaction = paused_at = None
    if first_ss is not None:
        later = [(at, h) for at, h in stops if at >= first_ss]
        if later:
            reaction = later[0][0] - first_ss
    if stops:
        pos = answer_position(segments, stops[0][1])
        paused_at = None if pos is None else pos / BYTES_PER_MS

    # A resume: after the first stop, the answer heard again (from wherever it restarts).
    resumed = None
    if stops:
        first_clear_heard = stops[0][1]
        resumed = next((s for s in segments if s.heard >= first_clear_heard and s.answer > 0), None)
    resume_time = heard_time(call, resumed.heard) if resumed else None
    rewind = None
    if resumed is not None and paused_at is not None:
        rewind = paused_at - resumed.answer / BYTES_PER_MS

    verdicts = [(at, name, _verdict_kind(name), f) for at, name, f in rec.logs]
    false_at = next((at for at, _, kind, _ in verdicts if kind == "false"), None)
    if false_at is None:
        false_at = next((at for at, _, kind, _ in verdicts if kind == "resumed"), None)
    logged_rewind = next(
        (f.get("rewind_ms") for _, _, kind, f in verdicts if kind == "resumed"), None
    )

    truncate_end = truncate_error = None
    if truncates:
        at, ev = truncates[0]
        truncate_end = ev["audio_end_ms"]
        before = [h for t, h in clears if t <= at]
        reached = answer_position(segments, before[-1]) if before else None
        if reached is not None:
            truncate_error = truncate_end - reached / BYTES_PER_MS

    # When the turn (if it was one) was decided, and answered, after the speech.
    decided = None
    if first_ss is not None:
        acts = [at for at, _ in truncates] + [at for at, _ in cancels]
        acts += [at for at, _ in received("response.create", first_ss)]
        acts += [at for at, _ in answered]
        decided = min(acts, default=None)
    reply_after = None
    if answered and rec.clip_end is not None:
        reply_after = answered[0][0] - rec.clip_end

    share = heard_bytes / len(answer)
    t0 = rec.start
    timeline: list[tuple[float | None, str, str]] = []
    for ev in conn.sent:
        sent_at = conn.sent_at.get(ev["event_id"])
        if ev["type"].startswith(("input_audio_buffer.", "response.created", "response.done")):
            timeline.append((_ms(sent_at - t0) if sent_at else None, "realtime", ev["type"]))
    for ev, at in zip(conn.events, conn.event_at, strict=False):
        if ev["type"] != "input_audio_buffer.append" and not ev["type"].startswith("session."):
            timeline.append((_ms(at - t0), "bridge", ev["type"]))
    for at, h in clears:
        timeline.append((_ms(at - t0), "caller", f"clear heard={h // BYTES_PER_MS}ms"))
    for at, name, _, f in verdicts:
        timeline.append((_ms(at - t0), "log", f"{name} {json.dumps(f, default=str)}"))
    timeline.sort(key=lambda row: row[0] if row[0] is not None else math.inf)
    if len(timeline) > TIMELINE_ROWS:  # an echo loop goes on and on: its start tells it
        more = len(timeline) - TIMELINE_ROWS
        timeline = [*timeline[:TIMELINE_ROWS], (None, "…", f"{more} more")]

    return {
        "clip": clip.name,
        "kind": clip.kind,
        "config": rec.config,
        "onset_ms": clip.onset_ms,
        "clip_ms": clip.duration_ms,
        "ended": rec.ended,
        "answer_ms": len(answer) // BYTES_PER_MS,
        "heard_ms": heard_bytes // BYTES_PER_MS,
        "heard_share": round(share, 4),
        "lost": clip.noise_event and share < LOST_BELOW,
        "speech_started": len(started),
        "speech_started_ms": _ms(first_ss - t0) if first_ss else None,
        "stops": len(stops),
        "reaction_ms": _ms(reaction),
        "reaction_frames": None if reaction is None else round(reaction * 1000 / FRAME_MS, 1),
        "paused_at_ms": paused_at,
        "resumed": resumed is not None,
        "resumed_from_ms": None if resumed is None else resumed.answer / BYTES_PER_MS,
        "rewind_ms": rewind,
        "logged_rewind_ms": logged_rewind,
        "pause_ms": _ms(resume_time - stops[0][0]) if resume_time and stops else None,
        "resume_after_noise_end_ms": (
            _ms(resume_time - rec.clip_end) if resume_time and rec.clip_end else None
        ),
        "verdict_to_resume_ms": (
            _ms(resume_time - false_at) if resume_time and false_at is not None else None
        ),
        "decided_ms": _ms(decided - first_ss) if decided and first_ss else None,
        "model_answered": bool(answered),
        "answer_after_speech_end_ms": _ms(reply_after),
        "response_triggers": triggers,
        "item_deleted": bool(speech_items & set(deleted)),
        "cancel_sent": bool(cancels),
        "truncated": bool(truncates),
        "truncate_end_ms": truncate_end,
        "truncate_error_ms": truncate_error,
        "log_events": [name for _, name, _ in rec.logs],
        "problems": {
            "twilio_violations": len(call.violations),
            "invalid_events": rec.invalid_events,
            "rejected_truncates": rec.rejected_truncates,
        },
        "timeline": timeline,
    }


# --- one configuration ------------------------------------------------------------------


class LoopLag:
    """How late the event loop runs a 10 ms timer: app, fakes and callers share one loop,
    so a busy loop would show in every latency here."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.samples.append((loop.time() - due) * 1000)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def figures(self) -> dict[str, float | None]:
        values = sorted(self.samples)
        if not values:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "p50_ms": round(values[len(values) // 2], 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            "max_ms": round(values[-1], 1),
        }


@dataclass(slots=True)
class Target:
    """One configuration's app and fake service, running."""

    config: Config
    app: RunningApp
    fake: BenchRealtime
    settings_seen: dict[str, str | None]
    setup: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while a call connects, so the fake's next connection is that call's."""


async def _start(
    stack: contextlib.AsyncExitStack, config: Config, transcription_delay_ms: int
) -> Target:
    fake = BenchRealtime(transcription_delay_ms=transcription_delay_ms)
    await stack.enter_async_context(fake)
    settings = make_settings(
        openai_api_key=API_KEY,
        openai_realtime_url=fake.url,
        public_base_url="https://bridge.example.com",
        twilio_auth_token=AUTH_TOKEN,
        twilio_account_sid=ACCOUNT_SID,
        transcription_model="gpt-4o-mini-transcribe",
        silence_reprompt_seconds=0,
        log_level="INFO",
        log_format="json",
        **config.overrides(),
    )
    # A setting this app doesn't know is ignored (pydantic-settings, extra="ignore").
    seen = {k: getattr(settings, k, None) for k in config.overrides()}
    app = await stack.enter_async_context(serve(settings))
    # Connections wait in the listen backlog until the app's startup (its call store) is
    # done; with several apps starting at once that can outlast a caller's opening
    # handshake, so one request waits for it first.
    async with httpx.AsyncClient(timeout=60) as client:
        (await client.get(f"{app.http_url}/healthz")).raise_for_status()
    return Target(config, app, fake, {k: None if v is None else str(v) for k, v in seen.items()})


def _app_log_handlers() -> list[logging.StreamHandler[Any]]:
    """The app's own handler on the root logger (`app.observability.configure_logging`)."""
    return [
        h
        for h in logging.getLogger().handlers
        if getattr(h, "_bridge_handler", False) and isinstance(h, logging.StreamHandler)
    ]


async def run_benchmark(
    configs: Sequence[Config],
    corpus: Corpus,
    *,
    concurrency: int = 12,
    log_path: Path | None = None,
    transcription_delay_ms: int = TRANSCRIPTION_DELAY_MS,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every clip of `corpus` in every configuration, one call each, at most `concurrency`
    calls at once over all of them (one app and one fake service per configuration, all
    in this process: the fakes' clocks are the app's). The figures are computed once every
    call is over, so measuring never slows a call down."""
    logs = TurnLog()
    root = logging.getLogger()
    root.addHandler(logs)
    stream = None
    gate = asyncio.Semaphore(concurrency)
    records: list[CallRecord | dict[str, Any]] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            targets = [await _start(stack, c, transcription_delay_ms) for c in configs]
            if log_path is not None:  # every app is made: their log lines go to one file
                stream = log_path.open("w", encoding="utf-8")
                for handler in _app_log_handlers():
                    handler.setStream(stream)
            done = 0

            async def one(target: Target, clip: Clip) -> CallRecord | dict[str, Any]:
                nonlocal done
                name = target.config.name
                try:
                    async with gate:
                        rec = await run_call(
                            target.app, target.fake, corpus, clip, name, target.setup, logs
                        )
                except Exception as exc:  # one broken call must not lose the others
                    return {
                        "clip": clip.name,
                        "kind": clip.kind,
                        "config": name,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                finally:
                    done += 1
                    if progress and (done % 10 == 0 or done == len(jobs)):
                        progress(f"{done}/{len(jobs)} calls")
                return rec

            # The longest calls (live echoes) first, so none is left running alone at the end.
            order = sorted(corpus.clips, key=lambda c: c.echo is None)
            jobs = [(t, clip) for clip in order for t in targets]
            if progress:
                progress(f"{len(jobs)} calls, {len(targets)} configurations, {concurrency} at once")
            # Every event of every call is kept for the figures: a growing heap that each
            # full garbage collection walks, stalling the one loop app, fakes and callers
            # share for 200-400 ms (the callers' playout then catches up in a burst). So
            # the collector is off while calls run (as `app.main` freezes its own heap).
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                with LoopLag() as lag:
                    records = list(await asyncio.gather(*(one(t, c) for t, c in jobs)))
            finally:
                gc.enable()
                gc.unfreeze()
            for target in targets:
                await target.app.wait_idle(within=15)
    finally:
        root.removeHandler(logs)
        if stream is not None:
            for handler in _app_log_handlers():
                handler.setStream(sys.stderr)
            stream.close()
    results = []
    for target in targets:
        name = target.config.name
        rows = {
            (r["clip"] if isinstance(r, dict) else r.clip.name): (
                r if isinstance(r, dict) else measure(r, corpus)
            )
            for r in records
            if (r["config"] if isinstance(r, dict) else r.config) == name
        }
        ordered = [rows[c.name] for c in corpus.clips]
        results.append(
            {
                "config": name,
                "env": target.config.env,
                "about": target.config.about,
                "settings_seen": target.settings_seen,
                "handler_errors": list(target.fake.handler_errors),
                "loop_lag": lag.figures(),
                "summary": summarise(ordered),
                "clips": ordered,
            }
        )
    return results


# --- summaries and the table ------------------------------------------------------------


def _values(rows: Iterable[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A configuration's figures over its clips (calls that failed are only counted)."""
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    noise = [r for r in rows if r["kind"] != "interruption"]
    real = [r for r in rows if r["kind"] == "interruption"]
    shares = _values(noise, "heard_share")
    reactions = _values(real, "reaction_ms")
    errors = _values(real, "truncate_error_ms")
    kinds: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        kinds[kind] = {
            "n": len(mine),
            "lost": sum(r["lost"] for r in mine),
            "heard_share_mean": _mean(_values(mine, "heard_share")),
            "stopped": sum(r["stops"] > 0 for r in mine),
            "resumed": sum(r["resumed"] for r in mine),
            "model_answered": sum(r["model_answered"] for r in mine),
            "item_deleted": sum(r["item_deleted"] for r in mine),
            "pause_ms_p50": _median(_values(mine, "pause_ms")),
            "rewind_ms_p50": _median(_values(mine, "rewind_ms")),
            "decided_ms_p50": _median(_values(mine, "decided_ms")),
        }
    problems: defaultdict[str, int] = defaultdict(int)
    for r in rows:
        for key, value in r["problems"].items():
            problems[key] += value
    return {
        "noise_events": len(noise),
        "answers_lost": sum(r["lost"] for r in noise),
        "lost_per_100": round(100 * sum(r["lost"] for r in noise) / len(noise), 1)
        if noise
        else None,
        "heard_share_mean": _mean(shares),
        "heard_share_min": min(shares) if shares else None,
        "noise_stopped_bot": sum(r["stops"] > 0 for r in noise),
        "noise_resumed": sum(r["resumed"] for r in noise),
        "resume_after_noise_end_ms_p50": _median(_values(noise, "resume_after_noise_end_ms")),
        "resume_after_noise_end_ms_max": max(
            _values(noise, "resume_after_noise_end_ms"), default=None
        ),
        "pause_ms_p50": _median(_values(noise, "pause_ms")),
        "verdict_to_resume_ms_p50": _median(_values(noise, "verdict_to_resume_ms")),
        "rewind_ms_p50": _median(_values(noise, "rewind_ms")),
        "noise_answered": sum(r["model_answered"] for r in noise),
        "noise_item_deleted": sum(r["item_deleted"] for r in noise),
        "interruptions": len(real),
        "reaction_ms_p50": _median(reactions),
        "reaction_ms_max": max(reactions, default=None),
        "interruptions_stopped": sum(r["reaction_ms"] is not None for r in real),
        "interruptions_truncated": sum(r["truncated"] for r in real),
        "truncate_error_ms_p50": _median(errors),
        "truncate_error_ms_max_abs": max((abs(e) for e in errors), default=None),
        "interruptions_answered": sum(r["model_answered"] for r in real),
        "interruption_decided_ms_p50": _median(_values(real, "decided_ms")),
        "answer_after_speech_end_ms_p50": _median(_values(real, "answer_after_speech_end_ms")),
        "calls_hit_deadline": sum(r["ended"] == "deadline" for r in rows),
        "calls_failed": len(failed),
        "kinds": kinds,
        "problems": dict(problems),
    }


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _fmt(value: Any, spec: str = ".0f", suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:{spec}}{suffix}"
    return str(value)


def table(results: Sequence[dict[str, Any]]) -> str:
    """One row per configuration (noise events, then real interruptions)."""
    head = (
        "| config | answers lost /100 noise | heard mean / min | noise stopped bot | "
        "resumed | resume after noise end p50 / max ms | verdict→resume p50 ms | "
        "noise answered | noise item deleted | interruption reaction p50 / max ms (frames) | "
        "truncation error p50 / max abs ms | interruptions answered | "
        "answer after speech end p50 ms |"
    )
    lines = [head, "|" + "---|" * 13]
    for res in results:
        s = res["summary"]
        n, k = s["noise_events"], s["interruptions"]
        frames = s["reaction_ms_p50"] / FRAME_MS if s["reaction_ms_p50"] is not None else None
        lines.append(
            f"| {res['config']} "
            f"| {_fmt(s['lost_per_100'], '.0f')} ({s['answers_lost']}/{n}) "
            f"| {_fmt(s['heard_share_mean'], '.0%')} / {_fmt(s['heard_share_min'], '.0%')} "
            f"| {s['noise_stopped_bot']}/{n} "
            f"| {s['noise_resumed']}/{n} "
            f"| {_fmt(s['resume_after_noise_end_ms_p50'])} / "
            f"{_fmt(s['resume_after_noise_end_ms_max'])} "
            f"| {_fmt(s['verdict_to_resume_ms_p50'])} "
            f"| {s['noise_answered']}/{n} "
            f"| {s['noise_item_deleted']}/{n} "
            f"| {_fmt(s['reaction_ms_p50'])} / {_fmt(s['reaction_ms_max'])} "
            f"({_fmt(frames, '.1f')}) "
            f"| {_fmt(s['truncate_error_ms_p50'], '+.0f')} / "
            f"{_fmt(s['truncate_error_ms_max_abs'])} "
            f"| {s['interruptions_answered']}/{k} "
            f"| {_fmt(s['answer_after_speech_end_ms_p50'])} |"
        )
    return "\n".join(lines)


def kinds_table(results: Sequence[dict[str, Any]]) -> str:
    """Per kind of clip: answers lost, share heard, and the model answering it."""
    lines = [
        "| config | kind | clips | answers lost | heard mean | stopped bot | resumed | "
        "pause p50 ms | rewind p50 ms | decided after p50 ms | model answered | item deleted |",
        "|" + "---|" * 12,
    ]
    for res in results:
        for kind, k in res["summary"]["kinds"].items():
            lines.append(
                f"| {res['config']} | {kind} | {k['n']} | "
                f"{k['lost'] if kind != 'interruption' else '—'} | "
                f"{_fmt(k['heard_share_mean'], '.0%')} | {k['stopped']} | {k['resumed']} | "
                f"{_fmt(k['pause_ms_p50'])} | {_fmt(k['rewind_ms_p50'], '+.0f')} | "
                f"{_fmt(k['decided_ms_p50'])} | {k['model_answered']} | {k['item_deleted']} |"
            )
    return "\n".join(lines)


def notes(results: Sequence[dict[str, Any]]) -> list[str]:
    """Things a reader of the table must know (unknown settings, resume never seen...)."""
    out: list[str] = []
    for res in results:
        name = res["config"]
        unknown = [k for k, v in res["settings_seen"].items() if v is None]
        if unknown:
            out.append(f"{name}: this app has no setting {', '.join(unknown)} (ignored)")
        s = res["summary"]
        if res["env"].get("INTERRUPT_MODE") == "resume" and s["noise_resumed"] == 0:
            out.append(f"{name}: no answer was ever resumed: it behaved like a cancel mode")
        if any(s["problems"].values()):
            out.append(f"{name}: protocol problems {s['problems']}")
        if res["handler_errors"]:
            out.append(f"{name}: the fake service failed {len(res['handler_errors'])} times")
        for row in res["clips"]:
            if "error" in row:
                out.append(f"{name}: the call for {row['clip']} failed: {row['error']}")
            elif row["speech_started"] == 0:
                out.append(f"{name}: {row['clip']} never started speech: it measured nothing")
        if s["calls_hit_deadline"]:
            out.append(
                f"{name}: {s['calls_hit_deadline']} call(s) never went quiet "
                f"(ended {DEADLINE_S:.0f} s after the answer's natural end)"
            )
    return out


def report(results: Sequence[dict[str, Any]], corpus: Corpus, wall_s: float) -> str:
    noise = sum(c.noise_event for c in corpus.clips)
    lag = results[0]["loop_lag"] if results else {}
    lines = [
        "# Noise benchmark",
        "",
        f"{len(corpus.clips)} clips ({noise} noise events: noise, backchannel, echo; "
        f"{len(corpus.clips) - noise} interruptions), one call each per configuration; "
        f"answer {len(corpus.answer) // BYTES_PER_MS} ms; lost = heard < {LOST_BELOW:.0%}; "
        f"transcripts {TRANSCRIPTION_DELAY_MS} ms after the commit; wall time {wall_s:.0f} s; "
        f"event loop lag p99 {_fmt(lag.get('p99_ms'), '.1f')} ms.",
        "",
        table(results),
        "",
        kinds_table(results),
    ]
    extra = notes(results)
    if (lag.get("p99_ms") or 0) > FRAME_MS:
        extra.append(f"the event loop ran {lag['p99_ms']:.0f} ms late (p99): lower --concurrency")
    if extra:
        lines += ["", *[f"- {n}" for n in extra]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one clip of each kind")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}"
    )
    parser.add_argument("--clips", default="", help="comma-separated clip names (default all)")
    parser.add_argument("--concurrency", type=int, default=12, help="calls at once")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    configs = [CONFIGS[c] for c in args.configs.split(",")]
    corpus = build()
    if args.quick:
        corpus = corpus.quick()
    if args.clips:
        corpus = corpus.select(args.clips.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {text}", file=sys.stderr, flush=True)

    stem = "noise-quick" if args.quick else "noise"
    results = asyncio.run(
        run_benchmark(
            configs,
            corpus,
            concurrency=args.concurrency,
            log_path=args.out / f"{stem}.log",
            progress=progress,
        )
    )
    wall = time.monotonic() - started
    text = report(results, corpus, wall)
    (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
    payload = {
        "wall_seconds": round(wall, 1),
        "lost_below": LOST_BELOW,
        "transcription_delay_ms": TRANSCRIPTION_DELAY_MS,
        "corpus": [
            {**{k: v for k, v in asdict(c).items() if k != "audio"}, "ms": c.duration_ms}
            for c in corpus.clips
        ],
        "results": results,
    }
    (args.out / f"{stem}.json").write_text(
        json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8"
    )
    print(text)
    print(f"(written to {args.out / stem}.md and .json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
