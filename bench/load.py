"""Load benchmark: N concurrent calls through the real server process, against the fakes.

Run: `make load` or `.venv/bin/python -m bench.load [--calls 10 50 100] [--seconds 15]`.

For each N, a fresh server process runs `python -m uvicorn app.main:app` (LOG_LEVEL=WARNING)
on 127.0.0.1: by default on a socket bound here and handed over with `--fd`, as
tests/test_e2e_shutdown.py does; with `--bind port` uvicorn binds `--host/--port` itself, as
the Dockerfile does. The two differ: uvicorn wraps an `--fd` socket as AF_UNIX, so its TCP
connections get no TCP_NODELAY and Nagle holds back the bridge's writes to the caller
until the caller's next frame acknowledges the last one (up to 20 ms).

The bench process holds one `FakeRealtime` and N `FakeTwilioCall` callers. Each caller
streams 20 ms frames in real time and says a line every few seconds; the fake's VAD answers
with a few seconds of espeak speech generated faster than real time, so audio flows both
ways, marks are echoed as the audio plays, and a caller who speaks before the answer has
finished playing barges in. Over a steady-state window of D seconds, after every call is
live, it prints:

- the server's own CPU time (`/proc/<pid>/stat` utime+stime): % of one core, CPU ms per
  call-second, the time it was runnable but waiting for a CPU (`/proc/<pid>/schedstat`),
  and how often it went to sleep (voluntary context switches);
- the server's RSS before any call and at its peak (`/proc/<pid>/status` VmRSS, VmHWM);
- forwarding latency caller -> service: a caller sends a media frame, the fake service gets
  the matching `input_audio_buffer.append`. Every caller frame carries a unique 8-byte tag
  in its first millisecond (near-silent mu-law codes, below the VAD threshold), so the
  base64 payload, which the bridge passes through as-is, names the frame;
- forwarding latency service -> caller: the fake sends `response.output_audio.delta`, the
  caller gets the matching `media` frame (every delta is tagged the same way);
- errors: calls the server ended (not the caller's hang-up), caller `violations`, the fake
  service's `invalid_events` (and its other problem lists), server log lines at WARNING+.

Both ends of each latency are stamped in this process with one clock (`perf_counter`), so
they include this process's own scheduling delay: its CPU share and event-loop lag are
printed next to them (and `/healthz` round trips, which go through both loops). On a small
machine the bench process, which does the work of both peers of every call, saturates
before the server does; read the latencies together with its CPU line. The bench runs on
uvloop with the garbage collector off during a level (the fakes keep every event, and a
full collection would stall the loop for tens of ms). Each level is bounded in time; the
server process is killed at the end whatever happens, and dies with this process
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from twilio.request_validator import RequestValidator

from app.security import STREAM_TOKEN_PARAMETER, stream_token
from tests.fakes.audio import BYTES_PER_MS, MULAW_SILENCE, speech
from tests.fakes.realtime_server import (
    FakeRealtime,
    RealtimeConnection,
    ScriptedResponse,
)
from tests.fakes.twilio_caller import FakeTwilioCall

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "https://bridge.example.com"
AUTH_TOKEN = "load-auth-token-0123456789"
API_KEY = "sk-load-key-0123456789"
TAG_BYTES = 8
DELTA_MS = 100

CALLER_LINES = (
    "Hello, I would like to check on my order please.",
    "Yes, that is right.",
    "Can you tell me when it will arrive?",
    "No, wait, I meant next week, not this week.",
    "Okay, thank you.",
)
BOT_LINES = (
    "Sure, I can help you with that. Let me look up your account for a moment.",
    "Your order left the warehouse this morning and should arrive on Tuesday afternoon.",
    "Thanks for calling. Is there anything else I can do for you today?",
    "I have changed the delivery to next week. You will get a text message with the time.",
)


def _tag(n: int) -> bytes:
    """Eight mu-law codes 0xF0..0xFF (linear 0..120, far below the VAD's 250) carrying n."""
    return bytes(0xF0 | ((n >> (4 * i)) & 0xF) for i in range(TAG_BYTES))


def _payload_after(text: str, key: str) -> str | None:
    """The string value following `key` (e.g. `"audio":"`) in raw JSON text, found cheaply."""
    i = text.find(key)
    if i < 0:
        return None
    i += len(key)
    return text[i : text.find('"', i)]


class Probe:
    """Send times of tagged audio, and the latencies measured when it arrives."""

    def __init__(self) -> None:
        self.reset([], False)

    def reset(self, bot_audio: list[tuple[bytes, str]], compression: bool) -> None:
        self.bot_audio = bot_audio
        self.compression = compression
        self.rng = random.Random(7)
        self.in_tags = 0
        self.out_tags = 0
        self.in_sent: dict[str, float] = {}
        self.out_sent: dict[str, float] = {}
        self.in_lat: list[tuple[float, float]] = []  # (sent at, latency)
        self.out_lat: list[tuple[float, float]] = []
        self.in_unmatched = 0
        self.out_unmatched = 0

    def tag_in(self) -> bytes:
        self.in_tags += 1
        return _tag(self.in_tags)

    def response(self) -> ScriptedResponse:
        """One bot answer: espeak speech, every delta tagged so it can be told apart."""
        audio, text = self.rng.choice(self.bot_audio)
        chunk = DELTA_MS * BYTES_PER_MS
        buf = bytearray(audio)
        buf.extend(bytes([MULAW_SILENCE]) * (-len(buf) % chunk))
        for at in range(0, len(buf), chunk):
            self.out_tags += 1
            buf[at : at + TAG_BYTES] = _tag(self.out_tags)
        return ScriptedResponse(audio=bytes(buf), transcript=text, delta_ms=DELTA_MS)


PROBE = Probe()


class TimedCall(FakeTwilioCall):
    """A FakeTwilioCall whose frames are tagged and timed (send and receive)."""

    def _next_frame(self) -> tuple[bytes, list[asyncio.Future[None]]]:
        frame, finished = super()._next_frame()
        return PROBE.tag_in() + frame[TAG_BYTES:], finished

    async def _send(self, msg: dict[str, Any]) -> None:
        if msg["event"] == "media":
            PROBE.in_sent[msg["media"]["payload"]] = time.perf_counter()
        await super()._send(msg)

    async def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            now = time.perf_counter()
            payload = _payload_after(message, '"payload":"')
            if payload is not None:
                sent = PROBE.out_sent.pop(payload, None)
                if sent is None:
                    PROBE.out_unmatched += 1
                else:
                    PROBE.out_lat.append((sent, now - sent))
        await super()._on_message(message)


class TimedConnection(RealtimeConnection):
    """The fake service's side of one connection, timing appends in and deltas out."""

    async def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            now = time.perf_counter()
            audio = _payload_after(message, '"audio":"')
            if audio is not None:
                sent = PROBE.in_sent.pop(audio, None)
                if sent is None:
                    PROBE.in_unmatched += 1
                else:
                    PROBE.in_lat.append((sent, now - sent))
        await super()._on_message(message)

    async def _send(self, event: dict[str, Any], *, force: bool = False) -> None:
        if event.get("type") == "response.output_audio.delta":
            PROBE.out_sent[event["delta"]] = time.perf_counter()
        await super()._send(event, force=force)

    async def _start_response(
        self,
        trigger: str,
        *,
        script: ScriptedResponse | None = None,
        create_event: dict[str, Any] | None = None,
    ) -> Any:
        return await super()._start_response(
            trigger, script=script or PROBE.response(), create_event=create_event
        )


class TimedRealtime(FakeRealtime):
    """FakeRealtime whose connections are TimedConnections. (The bridge's Realtime client
    never offers compression, so that leg is uncompressed whatever this server allows.)"""

    connection_class = TimedConnection


# -- the server process -------------------------------------------------------------------


SERVER_CPUS: set[int] | None = None
"""With --pin: the CPUs the server process may run on (the bench takes the others)."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the bench process dies (PR_SET_PDEATHSIG),
    and with --pin keep it on its own CPU."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


def _start_server(
    realtime_url: str, workdir: Path, bind: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`python -m uvicorn app.main:app`, on a socket bound here (`--fd`, as the tests run
    it) or, with `bind="port"`, on a free port uvicorn binds itself (as the Dockerfile runs
    it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if bind == "fd":
        sock.listen(1024)
        sock.set_inheritable(True)
        where = ["--fd", str(sock.fileno())]
        fds: tuple[int, ...] = (sock.fileno(),)
    else:
        sock.close()  # a tiny race for the port; fine on a quiet loopback
        where = ["--host", "127.0.0.1", "--port", str(port), "--backlog", "1024"]
        fds = ()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_REALTIME_URL": realtime_url,
        "PUBLIC_BASE_URL": PUBLIC,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", *where],
            pass_fds=fds,
            cwd=workdir,  # no developer's .env is read
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    sock.close()
    return proc, port, log_path


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in kB, and its voluntary context switches
    (how often it slept: each is an event-loop wake-up), from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "voluntary_ctxt_switches"):
            out[key] = int(value.split()[0])
    return out


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds) for every process we can read."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(entry.path, "stat").read_text()
            name = text[text.find("(") + 1 : text.rfind(")")]
            fields = text[text.rfind(")") + 2 :].split()
            out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def machine_cpu() -> dict[str, float]:
    """Seconds all CPUs spent idle, in softirq and stolen by the hypervisor (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "idle": (values[3] + values[4]) / tick,
        "softirq": values[6] / tick,
        "steal": values[7] / tick,
    }


def run_queue_wait(pid: int | str) -> float:
    """Seconds a process has spent runnable but waiting for a CPU (/proc/<pid>/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- one load level -------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile of values (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def dist(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = [v * 1000 for v in values]
    return (
        f"p50 {pct(ms, 50):6.2f} ms  p95 {pct(ms, 95):6.2f} ms  p99 {pct(ms, 99):6.2f} ms  "
        f"max {max(ms):7.2f} ms"
    )


@dataclass
class Level:
    calls: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    def out(self, text: str) -> None:
        print(text, flush=True)


async def _talk(call: TimedCall, rng: random.Random, lines: list[bytes], stop: asyncio.Event):
    """The caller: speaks a line, waits 1 to 5 s, again, until stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), rng.uniform(0.3, 2.5))
    while not stop.is_set():
        try:
            await call.say(rng.choice(lines))
        except (ConnectionError, RuntimeError):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(1.0, 5.0))


async def _sample(pid: int, peak: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            rss = memory_kb(pid)["VmRSS"]
            peak["rss"] = max(peak.get("rss", 0), rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _loop_lag(samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """How late a 20 ms sleep wakes up in this (the bench) process."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.02)
        samples.append((t, time.perf_counter() - t - 0.02))


async def _healthz(port: int, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """Round trip of GET /healthz: the server's event loop answers between call frames."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while not stop.is_set():
            t = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/healthz")
                samples.append((t, time.perf_counter() - t))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def _wait_healthy(port: int, proc: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} at start")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("server not healthy in time")


async def _live_calls(port: int) -> int | None:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        async with httpx.AsyncClient(timeout=2) as client:
            return int((await client.get(f"http://127.0.0.1:{port}/readyz")).json()["calls"])
    return None


def _extension(headers: Any) -> str:
    value = headers.get("Sec-WebSocket-Extensions") if headers is not None else None
    return "permessage-deflate" if value and "permessage-deflate" in value else "none"


async def run_level(
    n: int, seconds: float, args: argparse.Namespace, caller_audio: list[bytes]
) -> Level:
    level = Level(n, seconds)
    stagger = args.stagger_ms / 1000
    settle = 1.0
    async with TimedRealtime(generation_speed=args.speed) as rt:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            proc, port, log_path = _start_server(rt.url, Path(tmp), args.bind)
            try:
                async with asyncio.timeout(n * stagger + seconds + 120):
                    await _measure(level, rt, proc, port, stagger, settle, caller_audio)
            finally:
                _kill(proc)
                log_text = log_path.read_text(errors="replace")
    _report_server_log(level, log_text)
    return level


async def _measure(
    level: Level,
    rt: TimedRealtime,
    proc: subprocess.Popen[bytes],
    port: int,
    stagger: float,
    settle: float,
    caller_audio: list[bytes],
) -> None:
    n, seconds, pid = level.calls, level.seconds, proc.pid
    await _wait_healthy(port, proc, 20)
    await asyncio.sleep(0.5)
    rss_start = memory_kb(pid)["VmRSS"]

    stop_probes, stop_talk = asyncio.Event(), asyncio.Event()
    peak: dict[str, int] = {}
    lag: list[tuple[float, float]] = []
    rtt: list[tuple[float, float]] = []
    probes = [
        asyncio.create_task(_sample(pid, peak, stop_probes)),
        asyncio.create_task(_loop_lag(lag, stop_probes)),
        asyncio.create_task(_healthz(port, rtt, stop_probes)),
    ]

    sig = RequestValidator(AUTH_TOKEN).compute_signature(
        PUBLIC.replace("https://", "wss://") + "/media-stream", {}
    )
    calls: list[TimedCall] = []
    connect_failures: list[str] = []

    async def one_call(i: int) -> None:
        await asyncio.sleep(i * stagger)
        call_sid = "CA" + secrets.token_hex(16)
        call = TimedCall(
            f"ws://127.0.0.1:{port}/media-stream",
            headers={"X-Twilio-Signature": sig},
            call_sid=call_sid,
            custom_parameters={
                "CallSid": call_sid,
                STREAM_TOKEN_PARAMETER: stream_token(AUTH_TOKEN, call_sid),
            },
            open_timeout=15,
            compression="deflate" if PROBE.compression else None,
            keep_sent_media=False,  # 50 frames a second per call would be kept otherwise
        )
        try:
            await call.connect()
            await call.start()
        except Exception as exc:
            connect_failures.append(f"{type(exc).__name__}: {exc}")
            await call.close()
            return
        calls.append(call)
        await _talk(call, random.Random(i), caller_audio, stop_talk)

    t_ramp = time.perf_counter()
    talkers = [asyncio.create_task(one_call(i)) for i in range(n)]
    try:
        # Every call live: its Realtime session has been configured (session.updated sent).
        def live() -> int:
            return sum(
                any(e.get("type") == "session.updated" for e in c.sent) for c in rt.connections
            )

        deadline = time.perf_counter() + n * stagger + 30
        while live() + len(connect_failures) < n and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        ramp_s = time.perf_counter() - t_ramp
        live_at_start = live()
        await asyncio.sleep(settle)

        procs0 = all_processes_cpu()
        w0, cpu0, self0 = time.perf_counter(), cpu_seconds(pid), _self_cpu()
        switches0 = memory_kb(pid)["voluntary_ctxt_switches"]
        wait0, self_wait0, mach0 = run_queue_wait(pid), run_queue_wait("self"), machine_cpu()
        await asyncio.sleep(seconds)
        w1, cpu1, self1 = time.perf_counter(), cpu_seconds(pid), _self_cpu()
        wait1, self_wait1, mach1 = run_queue_wait(pid), run_queue_wait("self"), machine_cpu()
        rss_end = memory_kb(pid)
        procs1 = all_processes_cpu()
        await asyncio.sleep(1.0)  # grace: what was sent in the window arrives
        in_lost = sum(1 for t in PROBE.in_sent.values() if w0 <= t <= w1)
        out_lost = sum(1 for t in PROBE.out_sent.values() if w0 <= t <= w1)
        in_lat = [lat for t, lat in PROBE.in_lat if w0 <= t <= w1]
        out_lat = [lat for t, lat in PROBE.out_lat if w0 <= t <= w1]
        lag_w = [v for t, v in lag if w0 <= t <= w1]
        rtt_w = [v for t, v in rtt if w0 <= t <= w1]
    finally:
        stop_talk.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                await asyncio.gather(
                    *(c.close() if c.closed.is_set() else c.hangup() for c in calls),
                    return_exceptions=True,
                )
        for task in talkers:
            task.cancel()
        await asyncio.gather(*talkers, return_exceptions=True)
        stop_probes.set()
        await asyncio.gather(*probes, return_exceptions=True)

    # Closed by the server (not by the caller's hang-up), at any time during the run.
    ended_early = [
        c for c in calls if any(e[2].get("by") == "unknown" for e in c.events_of("closed"))
    ]
    idle_after = None
    t_hang = time.perf_counter()
    while time.perf_counter() - t_hang < 10:
        if await _live_calls(port) == 0:
            idle_after = time.perf_counter() - t_hang
            break
        await asyncio.sleep(0.1)

    wall = w1 - w0
    wakeups = (rss_end["voluntary_ctxt_switches"] - switches0) / wall
    cpu = cpu1 - cpu0
    call_seconds = len(calls) * wall
    hwm = rss_end["VmHWM"]
    peak_kb = max(hwm, peak.get("rss", 0))
    responses = [r for c in rt.connections for r in c.responses]
    reasons = Counter(r.reason or r.status for r in responses)
    violations = sum(len(c.violations) for c in calls)
    out = level.out
    out("")
    out(
        f"=== {n} calls, {seconds:g} s steady state "
        f"(ramp {ramp_s:.1f} s, {live_at_start}/{n} live at start) ==="
    )
    out(
        f"server CPU       : {cpu:6.2f} s in {wall:.2f} s = {100 * cpu / wall:5.1f} % of one core"
        f" = {1000 * cpu / call_seconds if call_seconds else float('nan'):.2f} ms CPU per"
        f" call-second; runnable but waiting for a CPU {100 * (wait1 - wait0) / wall:.1f} % of"
        f" the time; {wakeups:.0f} sleeps (loop wake-ups) per second"
    )
    out(
        f"server RSS       : start {rss_start / 1024:.1f} MB, peak {peak_kb / 1024:.1f} MB, "
        f"end of window {rss_end['VmRSS'] / 1024:.1f} MB -> "
        f"{(peak_kb - rss_start) / 1024 / max(1, n):.3f} MB per call"
    )
    out(f"caller->service  : {dist(in_lat)}  ({len(in_lat)} frames, {in_lost} lost)")
    out(
        f"service->caller  : {dist(out_lat)}  ({len(out_lat)} deltas, {out_lost} not delivered"
        " - cut off by barge-in)"
    )
    out(f"/healthz RTT     : {dist(rtt_w)}  ({len(rtt_w)} requests)")
    bench_cpu = self1 - self0
    out(
        f"bench process    : CPU {100 * bench_cpu / wall:5.1f} % of one core "
        f"(+{100 * (self_wait1 - self_wait0) / wall:.1f} % waiting for a CPU); "
        f"loop lag (20 ms sleep) {dist(lag_w)}"
    )
    others = sorted(
        (
            (t1 - procs0[p][1], name)
            for p, (name, t1) in procs1.items()
            if p in procs0 and p not in (pid, os.getpid())
        ),
        reverse=True,
    )
    other = sum(t for t, _ in others)
    top = ", ".join(f"{name} {100 * t / wall:.0f} %" for t, name in others[:3] if t > 0.05)
    out(
        f"other processes  : {100 * other / wall:5.1f} % of one core"
        + (f" ({top})" if top else "")
        + f"; {os.cpu_count()} CPUs in all: "
        + ", ".join(f"{k} {100 * (mach1[k] - mach0[k]) / wall:.0f} %" for k in mach0)
    )
    marks = sum(len(c.marks_echoed) for c in calls)
    clears = sum(c.clears for c in calls)
    out(
        f"traffic (run)    : {len(responses)} responses ({dict(reasons)}), {clears} clears, "
        f"{len(rt.truncates)} truncates, {marks} mark echoes, "
        f"{sum(len(c.heard) for c in calls) / BYTES_PER_MS / 1000:.0f} s of bot audio heard"
    )
    twilio_ext = Counter(_extension(c.ws.response.headers if c.ws else None) for c in calls)
    rt_ext = Counter(
        _extension(c.ws.response.headers if c.ws.response else None) for c in rt.connections
    )
    out(f"compression      : twilio leg {dict(twilio_ext)}; realtime leg {dict(rt_ext)}")
    codes = Counter(c.close_code for c in ended_early)
    out(
        f"errors           : {len(ended_early)} calls ended by the server"
        + (f" (close codes {dict(codes)})" if codes else "")
        + ", "
        f"{len(connect_failures)} connect failures, {violations} violations, "
        f"{len(rt.invalid_events)} invalid_events, {len(rt.handler_errors)} fake handler "
        f"errors, {len(rt.problems)} fake problems, {len(rt.rejected_truncates)} rejected "
        f"truncates, {rt.cancels_not_active} cancels with no active response, "
        f"{PROBE.in_unmatched} unmatched appends, {PROBE.out_unmatched} unmatched media"
    )
    for text in sorted(set(connect_failures))[:3]:
        out(f"  connect failure: {text}")
    for text in sorted({v for c in calls for v in c.violations})[:3]:
        out(f"  violation: {text[:200]}")
    for ev in rt.invalid_events[:3]:
        out(f"  invalid event: {ev['error'][:200]}")
    out(
        "after hang-up    : server idle in "
        + (f"{idle_after:.1f} s" if idle_after is not None else "> 10 s (NOT idle)")
    )
    level.summary = {
        "cpu_pct": 100 * cpu / wall,
        "cpu_ms_per_call_s": 1000 * cpu / call_seconds if call_seconds else float("nan"),
        "mb_per_call": (peak_kb - rss_start) / 1024 / max(1, n),
        "in_p99": pct(in_lat, 99) * 1000 if in_lat else float("nan"),
        "out_p99": pct(out_lat, 99) * 1000 if out_lat else float("nan"),
        "lag_p99": pct(lag_w, 99) * 1000 if lag_w else float("nan"),
        "bench_pct": 100 * bench_cpu / wall,
        "other_pct": 100 * other / wall,
        "errors": len(ended_early)
        + len(connect_failures)
        + violations
        + len(rt.invalid_events)
        + len(rt.handler_errors),
    }


def _report_server_log(level: Level, text: str) -> None:
    events: Counter[str] = Counter()
    other: list[str] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if line.strip():
                other.append(line.strip())
            continue
        if isinstance(rec, dict) and rec.get("event") != "startup.warning":
            events[f"{rec.get('level')}:{rec.get('event')}"] += 1
    level.summary["server_log"] = sum(events.values()) + len(other)
    level.out(f"server log       : {dict(events) or 'no warnings or errors'}")
    for line in other[:5]:
        level.out(f"  {line[:200]}")


# -- main ------------------------------------------------------------------------------------


def _speech_lines(texts: tuple[str, ...]) -> list[bytes]:
    return [speech(t) for t in texts]


async def main_async(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
    caller_audio = _speech_lines(CALLER_LINES)
    bot_audio = list(zip(_speech_lines(BOT_LINES), BOT_LINES, strict=True))
    lengths = [len(a) / BYTES_PER_MS / 1000 for a, _ in bot_audio]
    print(
        f"load: calls {args.calls}, {args.seconds:g} s each; bot answers "
        f"{min(lengths):.1f}-{max(lengths):.1f} s of speech generated at "
        f"{args.speed:g}x real time in {DELTA_MS} ms deltas; callers speak a line every "
        f"1-5 s; websocket compression {'as negotiated' if not args.no_compression else 'off'}; "
        f"server on --{args.bind}{', pinned to its own CPU' if args.pin else ''}; "
        f"{os.cpu_count()} CPUs; bench loop {type(loop).__module__}",
        flush=True,
    )
    levels: list[Level] = []
    for n in args.calls:
        PROBE.reset(bot_audio, not args.no_compression)
        # The fakes keep every event they see; a full collection over that history would
        # stall this process's loop for tens of ms and show up as forwarding latency.
        gc.collect()
        gc.disable()
        try:
            levels.append(await run_level(n, args.seconds, args, caller_audio))
        finally:
            gc.enable()
    print("\nsummary")
    print(
        "  calls | server CPU % | CPU ms/call-s | MB/call | in p99 ms | out p99 ms |"
        " bench CPU % | other CPU % | bench lag p99 ms | errors | server log lines"
    )
    for lv in levels:
        s = lv.summary
        print(
            f"  {lv.calls:5d} | {s['cpu_pct']:12.1f} | {s['cpu_ms_per_call_s']:13.2f} | "
            f"{s['mb_per_call']:7.3f} | {s['in_p99']:9.2f} | {s['out_p99']:10.2f} | "
            f"{s['bench_pct']:11.1f} | {s['other_pct']:11.1f} | {s['lag_p99']:16.2f} | "
            f"{s['errors']:6d} | {s['server_log']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--calls", type=int, nargs="+", default=[10, 50, 100], help="one level each"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="steady-state window")
    parser.add_argument("--speed", type=float, default=4.0, help="bot audio generation speed")
    parser.add_argument("--stagger-ms", type=float, default=30.0, help="between call starts")
    parser.add_argument(
        "--bind",
        choices=("fd", "port"),
        default="port",
        help="fd: socket bound here and passed with --fd (as the tests do); port: uvicorn"
        " binds --host/--port itself (as the Dockerfile does)",
    )
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="fakes refuse permessage-deflate on both legs (default: negotiated as usual)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the server on CPU 0 and the bench on the other CPUs (sched_setaffinity)",
    )
    args = parser.parse_args(argv)
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least 2 CPUs")
        global SERVER_CPUS
        SERVER_CPUS = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(main_async(args))
        except (asyncio.CancelledError, KeyboardInterrupt):
            print("\ninterrupted: server process killed", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
