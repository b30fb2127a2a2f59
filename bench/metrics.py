"""From one run's raw files to its figures, and from several runs to their medians.

Only what happened inside the measured window counts: frames by their send time (so a
frame sent in the window and delivered just after it is still counted, and not lost),
CPU by the /proc readings at the window's edges. Barge-in reaction is the fake's
`speech_started` send time to the first `clear` the same caller received after it.
"""

from __future__ import annotations

import json
import math
import statistics
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.procfs import busy_pct

NOISY_CPU0_PCT = 10.0
"""Busy % of the target's core not explained by the target, above which a run is NOISY."""
NOISY_CPU1_PCT = 15.0
"""Same for the generator's core (generator + fake)."""

CALLER_ERRORS = (
    "calls_dropped_by_target",
    "calls_closed_by_target",
    "binary_frames_from_target",
    "bad_json_from_target",
    "wrong_streamsid_from_target",
    "bad_media_from_target",
    "bad_mark_from_target",
    "downlink_misrouted",
)
FAKE_ERRORS = (
    "uplink_misrouted",
    "uplink_reordered_or_duplicated",
    "bad_json_from_target",
    "bad_audio_from_target",
    "untagged_appends",
    "binary_frames_from_target",
)


def percentile(sorted_values: list[int] | list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values), max(1, math.ceil(p * len(sorted_values))))
    return sorted_values[rank - 1]


def latency_ms(values_us: list[int]) -> dict[str, Any]:
    """n, p50, p99 and max in ms."""
    v = sorted(values_us)
    if not v:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    p50, p99 = percentile(v, 0.50), percentile(v, 0.99)
    assert p50 is not None and p99 is not None
    return {"n": len(v), "p50": round(p50 / 1e3, 3), "p99": round(p99 / 1e3, 3), "max": v[-1] / 1e3}


def _file(prefix: Path, ending: str) -> Path:
    return prefix.with_name(prefix.name + ending)


def _pairs(path: Path, n: int, first: str, second: str) -> tuple[array, array]:
    a, b = array(first), array(second)
    with open(path, "rb") as f:
        if n:
            a.fromfile(f, n)
            b.fromfile(f, n)
    return a, b


def _within(times: array, values: array, w0: int, w1: int) -> list[int]:
    return [v for t, v in zip(times, values, strict=True) if w0 <= t < w1]


def barge_in(speech: list, clears: list, w1: int) -> tuple[list[int], int]:
    """Reaction times (us) of the barge-ins started before `w1`, and how many got no clear."""
    by_call: dict[int, list[int]] = defaultdict(list)
    for call, t in clears:
        by_call[call].append(t)
    reactions, missed = [], 0
    for call, t in speech:
        if t >= w1:
            continue
        after = [c for c in by_call.get(call, ()) if c >= t]
        if after:
            reactions.append(min(after) - t)
        else:
            missed += 1
    return reactions, missed


def one_run(prefix_lg: Path, prefix_fake: Path) -> dict[str, Any]:
    """The figures of one run, from the load generator's and the fake's files."""
    lg = json.loads(_file(prefix_lg, ".json").read_text())
    fk = json.loads(_file(prefix_fake, ".json").read_text())
    w0, w1 = lg["window_us"]
    window_s = (w1 - w0) / 1e6
    up_t, up_lat = _pairs(_file(prefix_fake, ".up.bin"), fk["up_n"], "I", "i")
    dn_t, dn_lat = _pairs(_file(prefix_lg, ".down.bin"), lg["down_n"], "I", "i")
    dsent = array("I")
    with open(_file(prefix_fake, ".dsent.bin"), "rb") as f:
        if fk["dsent_n"]:
            dsent.fromfile(f, fk["dsent_n"])
    up = _within(up_t, up_lat, w0, w1)
    down = _within(dn_t, dn_lat, w0, w1)
    down_sent = sum(1 for t in dsent if w0 <= t < w1)
    reactions, missed = barge_in(fk["speech_started"], lg["clears"], w1)
    before, after = lg["before"], lg["after"]

    def spent(key: str) -> float | None:
        a, b = before.get(key), after.get(key)
        return None if a is None or b is None else b - a

    target_s, fake_s, lg_s = spent("target_cpu_s"), spent("fake_cpu_s"), spent("loadgen_cpu_s")
    cores = busy_pct(before["cores"], after["cores"])
    calls = lg["calls_up"]
    target_pct = 100 * target_s / window_s if target_s is not None else None
    gen_pct = None
    if fake_s is not None and lg_s is not None:
        gen_pct = 100 * (fake_s + lg_s) / window_s
    # busy time on each core that our own processes do not explain: someone else's load
    other0 = _minus(cores.get("cpu0"), target_pct)
    other1 = _minus(cores.get("cpu1"), gen_pct)
    idle, loaded = lg.get("rss_idle_mb"), lg.get("rss_loaded_mb")
    up_sent = lg["up_sent_in_window"]
    frames = {
        "up_sent": up_sent,
        "up_received": len(up),
        "up_lost": up_sent - len(up),
        "down_sent": down_sent,
        "down_received": len(down),
        "down_lost": down_sent - len(down),
    }
    errors: dict[str, int] = {f"setup_{k}": v for k, v in lg["setup_failures"].items()}
    errors.update({k: lg["counters"][k] for k in CALLER_ERRORS if lg["counters"].get(k)})
    errors.update({f"fake_{k}": fk["counters"][k] for k in FAKE_ERRORS if fk["counters"].get(k)})
    if missed:
        errors["bargein_without_clear"] = missed
    return {
        "window_s": round(window_s, 3),
        "calls_up": calls,
        "setup_s": lg["setup_s"],
        "uplink_ms": latency_ms(up),
        "downlink_ms": latency_ms(down),
        "bargein_ms": dict(latency_ms(reactions), missed=missed),
        "frames": frames,
        "cpu": {
            "target_s": target_s,
            "target_pct": _round(target_pct, 1),
            "per_call_minute_s": _round(target_s / (calls * window_s / 60), 4)
            if target_s is not None and calls
            else None,
            "generator_pct": _round(gen_pct, 1),
            "core_busy_pct": cores,
            "cpu0_other_pct": _round(other0, 1),
            "cpu1_other_pct": _round(other1, 1),
        },
        "rss_mb": {
            "idle": _round(idle, 1),
            "loaded": _round(loaded, 1),
            "per_call": _round((loaded - idle) / calls, 4) if idle and loaded and calls else None,
        },
        "noisy": (other0 or 0) > NOISY_CPU0_PCT or (other1 or 0) > NOISY_CPU1_PCT,
        "errors": errors,
        "generator": {
            "tick_lag_ms": lg["tick_lag_ms"],
            "fake_timer_late_max_ms": fk["timer_late_max_ms"],
        },
        "caller_counters": lg["counters"],
        "fake_counters": fk["counters"],
        "target_client_events": fk["client_events"],
        "unknown_events_from_target": lg["unknown_events_from_target"],
        "not_closed_by_target_after_stop": lg["not_closed_by_target_after_stop"],
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several runs of the same target and N: medians of the figures, sums of
    the frames lost and the errors, and how many runs failed or were NOISY."""
    ok = [r for r in runs if "failed" not in r]
    out: dict[str, Any] = {"runs": len(runs), "failed_runs": len(runs) - len(ok)}
    if not ok:
        out["failed"] = "; ".join(sorted({r["failed"] for r in runs}))
        return out
    for group, keys in (
        ("uplink_ms", ("p50", "p99", "max")),
        ("downlink_ms", ("p50", "p99", "max")),
        ("bargein_ms", ("p50", "p99", "max")),
        ("cpu", ("per_call_minute_s", "target_pct", "generator_pct")),
        ("rss_mb", ("idle", "loaded", "per_call")),
    ):
        out[group] = {k: _median([r[group][k] for r in ok]) for k in keys}
    out["frames_lost"] = {
        "up": sum(r["frames"]["up_lost"] for r in ok),
        "down": sum(r["frames"]["down_lost"] for r in ok),
    }
    errors: dict[str, int] = defaultdict(int)
    for r in ok:
        for k, v in r["errors"].items():
            errors[k] += v
    if out["failed_runs"]:
        errors["failed_runs"] = out["failed_runs"]
    out["errors"] = dict(errors)
    out["noisy_runs"] = sum(1 for r in ok if r["noisy"])
    out["calls_up"] = min(r["calls_up"] for r in ok)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None
