"""What a call costs: the product side by side with a floor relay, under N calls.

    python -m bench.run --calls 100,200,400 --seconds 15 --runs 3

For each N, each run and each target (innermost, so slow drift hits every target alike):
a fresh fake Realtime server (bench/fake_realtime.py) and a fresh target, N simulated
Twilio callers (bench/loadgen.py) for warmup + the measured window + drain, then
everything stopped by PID. The target is pinned to CPU 0, the generator and the fake to
CPU 1. Targets: `product` (uvicorn app.main:app from the repo's .venv) and `floor`
(bench/floor_relay.py, the cheapest correct relay): the ratio product/floor is the figure
to quote, as absolute numbers move with the machine.

Prints the machine and one markdown table per N (medians over the runs; frames lost and
errors summed) on stdout, progress on stderr; --json-out writes everything as JSON.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import metrics, procs, report

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "5a" * 16
AUTH_TOKEN = "bench0auth0token" + "0" * 16
PUBLIC_BASE = "https://bridge.test"
TARGET_CPU, GENERATOR_CPU = 0, 1
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the caller's shell reaches the target's settings."""
    env = {k: v for k, v in os.environ.items() if k in _KEPT_ENV}
    env.update(extra)
    return env


def _realtime_url(fake_port: int) -> str:
    return f"ws://127.0.0.1:{fake_port}/v1/realtime?model=gpt-realtime"


@dataclass(frozen=True)
class Target:
    """How to start one thing under test."""

    name: str
    webhook: bool  # does it serve POST /incoming-call (the floor has no HTTP routes)

    def command(self, port: int, fake_port: int) -> tuple[list[str], dict[str, str]]:
        if self.name == "product":
            argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "uvicorn", "app.main:app"]
            env = _clean_env(
                OPENAI_API_KEY="sk-bench",
                OPENAI_REALTIME_URL=_realtime_url(fake_port),
                PUBLIC_BASE_URL=PUBLIC_BASE,
                TWILIO_ACCOUNT_SID=ACCOUNT_SID,
                TWILIO_AUTH_TOKEN=AUTH_TOKEN,
                TWILIO_API_BASE_URL=f"http://127.0.0.1:{fake_port}",
                SHUTDOWN_DRAIN_SECONDS="2",
                LOG_LEVEL="WARNING",
            )
            return [*argv, "--host", "127.0.0.1", "--port", str(port)], env
        argv = [sys.executable, "-m", "bench.floor_relay", "--port", str(port)]
        env = _clean_env(OPENAI_API_KEY="sk-bench", OPENAI_REALTIME_URL=_realtime_url(fake_port))
        return argv, env

    def missing(self) -> str | None:
        """Why this target cannot run here (None: it can)."""
        if self.name == "product" and not (ROOT / ".venv" / "bin" / "python").exists():
            return "no .venv in the repo root (make test creates it)"
        return None


TARGETS = {"product": Target("product", webhook=True), "floor": Target("floor", webhook=False)}


def _tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def measure(target: Target, n: int, args: argparse.Namespace, work: Path, tag: str) -> dict:
    """One run of `target` under `n` calls; its figures, or {"failed": why}."""
    result: dict[str, Any] = {"target": target.name, "calls": n}
    epoch_ns = time.monotonic_ns()
    setup_budget = min(60.0, 5 + n * 0.08)
    budget = setup_budget + args.warmup + args.seconds + args.drain + 3 + 5
    bench_env = _clean_env()
    fake = server = gen = None
    target_log = work / f"{tag}.target.log"
    try:
        fake = procs.spawn(
            [
                *(sys.executable, "-m", "bench.fake_realtime", "--epoch-ns", epoch_ns),
                *("--out", work / f"{tag}.fake", "--max-seconds", budget + 60),
            ],
            cpu=GENERATOR_CPU,
            cwd=ROOT,
            env=bench_env,
            stdout=subprocess.PIPE,
        )
        line = procs.read_line(fake, 20)
        if not line.startswith("PORT "):
            raise RuntimeError(f"the fake Realtime server did not start ({line!r})")
        fake_port, port = int(line.split()[1]), procs.free_port()
        argv, env = target.command(port, fake_port)
        # The call records of the simulated calls go to the run's own directory, never to
        # the checkout's `./data/` (the floor relay ignores it).
        env = {**env, "DATABASE_URL": f"sqlite:///{work / (tag + '.calls.db')}"}
        with open(target_log, "wb") as out:
            server = procs.spawn(
                argv, cpu=TARGET_CPU, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        if not procs.wait_listening(port, server, 30):
            raise RuntimeError(f"target did not listen (rc={server.poll()}): {_tail(target_log)}")
        time.sleep(0.5)  # settle before the idle RSS reading
        gen = procs.spawn(
            [
                *(sys.executable, "-m", "bench.loadgen", "--port", port, "--calls", n),
                *("--seconds", args.seconds, "--warmup", args.warmup, "--drain", args.drain),
                *("--epoch-ns", epoch_ns, "--out", work / f"{tag}.lg"),
                *("--target-pid", server.pid, "--fake-pid", fake.pid),
                *("--auth-token", AUTH_TOKEN, "--account-sid", ACCOUNT_SID),
                *("--public-base", PUBLIC_BASE, "--setup-budget", setup_budget),
                "--webhook" if target.webhook else "--no-webhook",
            ],
            cpu=GENERATOR_CPU,
            cwd=ROOT,
            env=bench_env,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = gen.communicate(timeout=budget + 20)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the load generator overran its time budget") from None
        procs.LIVE.pop(gen.pid, None)
        if gen.returncode != 0:
            raise RuntimeError(f"load generator rc={gen.returncode}: {err.decode()[-400:]}")
        alive = server.poll() is None
        took = procs.stop(server, 12)
        procs.stop(fake, 10)
        result.update(metrics.one_run(work / f"{tag}.lg", work / f"{tag}.fake"))
        result["target_exit_s"] = round(took, 2) if took is not None else None
        if not alive:
            result["errors"]["target_died"] = 1
        return result
    except Exception as exc:
        result["failed"] = str(exc)
        return result
    finally:
        for proc in (gen, server, fake):
            procs.stop(proc, 5)


def _summary_line(r: dict) -> str:
    if "failed" in r:
        return f"FAILED: {r['failed']}"
    c = r["cpu"]
    return (
        f"up p50/p99 {r['uplink_ms']['p50']}/{r['uplink_ms']['p99']} ms, "
        f"down p99 {r['downlink_ms']['p99']} ms, barge p99 {r['bargein_ms']['p99']} ms, "
        f"CPU {c['per_call_minute_s']} s/call-min (target {c['target_pct']}%, "
        f"gen {c['generator_pct']}%), other {c['cpu0_other_pct']}/{c['cpu1_other_pct']}%, "
        f"errors {r['errors'] or 'none'}"
    )


def _on_signal(signum: int, _frame: object) -> None:
    procs.stop_all()
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--calls", default="100,200,400", help="comma-separated numbers of calls")
    p.add_argument("--seconds", type=float, default=15.0, help="the measured window per run")
    p.add_argument("--runs", type=int, default=3, help="runs per N and target (medians)")
    p.add_argument("--targets", default="product,floor", help="product, floor or both")
    p.add_argument("--json-out", default="", help="write every figure here as JSON")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after setup, unmeasured")
    p.add_argument("--drain", type=float, default=1.5, help="seconds after the window")
    p.add_argument("--capacity-ms", type=float, default=20.0, help="p99 uplink bound")
    args = p.parse_args(argv)
    if args.seconds < 6:
        p.error("--seconds must be at least 6 (every call needs a barge-in in the window)")
    args.ns = sorted({int(x) for x in args.calls.split(",") if x.strip()})
    if not args.ns or min(args.ns) < 1 or max(args.ns) > 65535:
        p.error("--calls needs numbers from 1 to 65535")
    args.names = [x.strip() for x in args.targets.split(",") if x.strip()]
    for name in args.names:
        if name not in TARGETS:
            p.error(f"unknown target {name!r} (product, floor)")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(procs.stop_all)
    targets = []
    for name in args.names:
        why = TARGETS[name].missing()
        if why:
            log(f"bench: {name} not available: {why}")
        else:
            targets.append(TARGETS[name])
    host = report.machine()
    pinning = (
        "target on CPU 0; load generator + fake Realtime on CPU 1"
        if procs.can_pin()
        else "NOT pinned (needs 2 CPUs)"
    )
    log(f"bench: {pinning}; targets {[t.name for t in targets]}; N {args.ns}; {args.seconds:g} s")
    if (ROOT / ".env").exists():
        log("bench: note: .env exists in the repo root; the product reads the settings in it")
    raw: list[dict] = []
    by_n: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for n in args.ns:
            per_target: dict[str, list[dict]] = {t.name: [] for t in targets}
            for run in range(1, args.runs + 1):
                for t in targets:
                    log(f"bench: {t.name} N={n} run {run}/{args.runs} ...")
                    r = measure(t, n, args, Path(tmp), f"{t.name}-{n}-{run}")
                    r["run"] = run
                    log("bench:   " + _summary_line(r))
                    per_target[t.name].append(r)
                    raw.append(r)
            by_n[n] = {name: metrics.combine(rs) for name, rs in per_target.items()}
    ratios = {n: report.ratios(rows) for n, rows in by_n.items()}
    capacity = {t.name: report.capacity(by_n, t.name, args.capacity_ms) for t in targets}

    print(f"Machine: {host['cpu']}, {host['cores']} cores, Python {host['python']}, ", end="")
    print(f"kernel {host['kernel']}. Pinning: {pinning}.")
    print(
        f"Window {args.seconds:g} s, {args.runs} run(s) per cell: medians; lost frames and errors"
        " summed. CPU s/call-min = target CPU seconds per call-minute; RSS/call ="
        " (loaded - idle) / N; gen = load generator + fake (CPU 1)."
    )
    for n, rows in by_n.items():
        print()
        print(report.table(n, rows, ratios[n]))
    print()
    for name, text in capacity.items():
        print(f"- {name}: max calls at p99 uplink <= {args.capacity_ms:g} ms: {text}")
    if args.json_out:
        out = {
            "machine": host,
            "pinning": pinning,
            "args": {k: v for k, v in vars(args).items() if k not in ("ns", "names")},
            "results": {str(n): rows for n, rows in by_n.items()},
            "ratios": {str(n): r for n, r in ratios.items()},
            "capacity": capacity,
            "runs": raw,
        }
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"\nJSON: {path}")
    failed = any("failed" in r for rows in by_n.values() for r in rows.values())
    return 1 if failed or not targets else 0


if __name__ == "__main__":
    sys.exit(main())
