"""Load generator: N simulated Twilio callers in one process (uvloop, orjson, raw framing).

Per call (bench/webhook.py, bench/caller.py): a signed POST /incoming-call, the
`<Stream url>` and `<Parameter>`s parsed from the TwiML, a signed websocket upgrade,
`connected` + `start` (the parameters and the account SID), then a tagged 20 ms frame
every 20 ms in real time, marks echoed after simulated playout, `clear` honoured, and at
the end `stop` + close. Calls are spread over 20 phases of the 20 ms cycle, so the target
sees a steady stream rather than bursts.

Timeline: RSS of the idle target -> set up all calls (16 at a time) -> warmup -> the
measured window (SIGUSR1 arms the fake's barge-in; CPU, RSS and per-core readings at both
edges, taken here so they match the window exactly) -> drain (still streaming) -> hang
up every call -> PREFIX.json and PREFIX.down.bin for the runner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from array import array
from collections import Counter
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import uvloop
from twilio.request_validator import RequestValidator

from bench import procfs, webhook
from bench.caller import Caller, Crowd

PHASES = 20  # one slot per ms of the 20 ms frame cycle
FRAME_US = 20_000


class Metronome:
    """Calls every caller's `tick()` once per 20 ms, slot by slot (one timer per slot, so
    400 calls cost 1,000 timer callbacks a second, not 20,000). A late slot catches up at
    once: every call sends its 50 frames a second however the loop is loaded."""

    def __init__(self, now_us: Callable[[], int]) -> None:
        self.now_us = now_us
        self.loop = asyncio.get_running_loop()
        self.slots: list[list[Caller]] = [[] for _ in range(PHASES)]
        self.lag_us = array("i")
        self.running = True
        self.handles: list[asyncio.TimerHandle | None] = [None] * PHASES
        base = now_us() + 1000
        for slot in range(PHASES):
            self._arm(slot, base + slot * 1000)

    def _arm(self, slot: int, due: int) -> None:
        delay = max(0.0, (due - self.now_us()) / 1e6)
        self.handles[slot] = self.loop.call_later(delay, self._fire, slot, due)

    def _fire(self, slot: int, due: int) -> None:
        if not self.running:
            return
        callers = self.slots[slot]
        if callers:
            self.lag_us.append(max(0, self.now_us() - due))
            for caller in callers:
                caller.tick()
        self._arm(slot, due + FRAME_US)

    def stop(self) -> None:
        self.running = False
        for handle in self.handles:
            if handle is not None:
                handle.cancel()


def snapshot(args: argparse.Namespace, crowd: Crowd) -> dict:
    """CPU readings at one edge of the window."""
    own = os.times()
    return {
        "t_us": crowd.now_us(),
        "target_cpu_s": procfs.cpu_seconds(args.target_pid) if args.target_pid else None,
        "fake_cpu_s": procfs.cpu_seconds(args.fake_pid) if args.fake_pid else None,
        "loadgen_cpu_s": own.user + own.system,
        "cores": procfs.core_ticks(),
    }


async def place_call(
    args: argparse.Namespace,
    crowd: Crowd,
    index: int,
    validator: RequestValidator | None,
    gate: asyncio.Semaphore,
    failures: Counter[str],
) -> Caller | None:
    """Set up one call up to its first frame; None (and a counted reason) if it failed."""
    public = args.public_base.rstrip("/")
    call_sid, stream_sid = webhook.random_sid("CA"), webhook.random_sid("MZ")
    stream_url = "wss://" + urlsplit(public).netloc + "/media-stream"
    params: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    async with gate:
        try:
            async with asyncio.timeout(args.step_timeout):
                if args.webhook:
                    form = webhook.call_form(args.account_sid, call_sid, index)
                    signature = webhook.sign(validator, public + "/incoming-call", form)
                    status, body = await webhook.post_form(
                        args.host, args.port, "/incoming-call", form, signature
                    )
                    if status != 200:
                        raise RuntimeError(f"webhook_http_{status}")
                    url, params = webhook.parse_stream(body)
                    stream_url = urljoin(public.replace("https://", "wss://", 1) + "/", url)
                parts = urlsplit(stream_url)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                start = {
                    "accountSid": args.account_sid,
                    "streamSid": stream_sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": params,
                }
                signature = webhook.sign(validator, stream_url, {})
                target = f"{args.host}:{args.port}"
                _, caller = await loop.create_connection(
                    lambda: Caller(crowd, index, target, path, signature, start),
                    args.host,
                    args.port,
                )
                try:
                    await caller.opened
                except BaseException:
                    if caller.transport is not None:
                        caller.transport.abort()
                    raise
        except Exception as exc:
            failures[str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__] += 1
            return None
    caller.begin()
    return caller


async def generate(args: argparse.Namespace) -> tuple[dict, Crowd]:
    """The whole timeline; returns the summary and the crowd (with its samples)."""
    crowd = Crowd(args.epoch_ns)
    result: dict = {"calls": args.calls}
    result["rss_idle_mb"] = procfs.rss_mb(args.target_pid) if args.target_pid else None
    validator = RequestValidator(args.auth_token) if args.auth_token else None
    metronome = Metronome(crowd.now_us)
    gate = asyncio.Semaphore(args.setup_concurrency)
    failures: Counter[str] = Counter()
    callers: list[Caller] = []
    t0 = crowd.now_us()

    async def place(index: int) -> None:
        caller = await place_call(args, crowd, index, validator, gate, failures)
        if caller is not None:
            callers.append(caller)
            metronome.slots[index * PHASES // args.calls % PHASES].append(caller)

    tasks = [asyncio.create_task(place(i)) for i in range(args.calls)]
    _, late = await asyncio.wait(tasks, timeout=args.setup_budget)
    for task in late:
        task.cancel()
        failures["setup_budget_exceeded"] += 1
    result["setup_s"] = round((crowd.now_us() - t0) / 1e6, 3)
    result["calls_up"] = len(callers)
    await asyncio.sleep(args.warmup)

    crowd.in_window = True
    if args.fake_pid:
        os.kill(args.fake_pid, signal.SIGUSR1)  # arm the barge-ins
    before = snapshot(args, crowd)
    await asyncio.sleep(args.seconds)
    after = snapshot(args, crowd)
    crowd.in_window = False
    result["rss_loaded_mb"] = procfs.rss_mb(args.target_pid) if args.target_pid else None
    result["calls_streaming_at_end"] = sum(1 for c in callers if c.streaming)
    await asyncio.sleep(args.drain)

    metronome.stop()
    for caller in callers:
        if not caller.stopped:
            caller.stop()
    pending = [c.closed for c in callers if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=args.close_timeout)
    unclosed = [c for c in callers if not c.closed.done()]
    for caller in unclosed:
        caller.transport.abort()
    lags = sorted(metronome.lag_us)
    result.update(
        {
            "window_us": [before["t_us"], after["t_us"]],
            "before": before,
            "after": after,
            "up_sent_in_window": crowd.sent_in_window,
            "down_n": len(crowd.down_sent_at),
            "clears": crowd.clears,
            "counters": dict(crowd.counters),
            "unknown_events_from_target": dict(crowd.unknown_events),
            "setup_failures": dict(failures),
            "not_closed_by_target_after_stop": len(unclosed),
            "tick_lag_ms": {
                "p50": lags[len(lags) // 2] / 1000 if lags else None,
                "p99": lags[int(len(lags) * 0.99)] / 1000 if lags else None,
                "max": lags[-1] / 1000 if lags else None,
            },
        }
    )
    return result, crowd


def main() -> None:
    parser = argparse.ArgumentParser(description="N simulated Twilio callers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="the measured window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=1.5)
    parser.add_argument("--epoch-ns", type=int, required=True)
    parser.add_argument("--out", required=True, help="path prefix of the result files")
    parser.add_argument("--webhook", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--public-base", default="https://bridge.test")
    parser.add_argument("--auth-token", default="")
    parser.add_argument("--account-sid", default="AC" + "0" * 32)
    parser.add_argument("--target-pid", type=int, default=0)
    parser.add_argument("--fake-pid", type=int, default=0)
    parser.add_argument("--setup-concurrency", type=int, default=16)
    parser.add_argument("--setup-budget", type=float, default=30.0)
    parser.add_argument("--step-timeout", type=float, default=10.0)
    parser.add_argument("--close-timeout", type=float, default=3.0)
    args = parser.parse_args()
    result, crowd = uvloop.run(generate(args))
    with open(args.out + ".down.bin", "wb") as f:
        crowd.down_sent_at.tofile(f)
        crowd.down_latency.tofile(f)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
