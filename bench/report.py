"""The printed report: the machine, one markdown table per N, and capacity per target."""

from __future__ import annotations

import os
import platform
from typing import Any

from bench.metrics import ratio


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and kernel: what the absolute numbers depend on."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (
    "| target | CPU s/call-min | RSS MB/call | up p50 | up p99 | down p50 | down p99 "
    "| barge p50 | barge p99 | lost up/down | errors | target CPU % | gen CPU % | noisy |"
)


def table(n: int, rows: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> str:
    """Markdown table of one N: a row per target, then the product/floor ratios."""
    cols = HEADER.count("|") - 1
    lines = [f"N = {n} calls (latencies in ms)", "", HEADER, "|" + "---|" * cols]
    for name, r in rows.items():
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed']} |" + " |" * (cols - 2))
            continue
        up, down, barge = r["uplink_ms"], r["downlink_ms"], r["bargein_ms"]
        errors = ", ".join(f"{k}={v}" for k, v in sorted(r["errors"].items())) or "none"
        noisy = f"NOISY ({r['noisy_runs']}/{r['runs']} runs)" if r["noisy_runs"] else "no"
        cells = [
            name,
            _f(r["cpu"]["per_call_minute_s"], 3),
            _f(r["rss_mb"]["per_call"], 3),
            _f(up["p50"]),
            _f(up["p99"]),
            _f(down["p50"]),
            _f(down["p99"]),
            _f(barge["p50"]),
            _f(barge["p99"]),
            f"{r['frames_lost']['up']}/{r['frames_lost']['down']}",
            errors,
            _f(r["cpu"]["target_pct"], 1),
            _f(r["cpu"]["generator_pct"], 1),
            noisy,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if ratios:
        cells = ["product/floor", _f(ratios["cpu_per_call_minute"]), _f(ratios["rss_per_call"])]
        lines.append("| " + " | ".join(cells + ["-"] * (cols - 3)) + " |")
    return "\n".join(lines)


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """product/floor for CPU per call-minute and RSS per call (empty without both)."""
    p, f = rows.get("product"), rows.get("floor")
    if not p or not f or "failed" in p or "failed" in f:
        return {}
    return {
        "cpu_per_call_minute": ratio(p["cpu"]["per_call_minute_s"], f["cpu"]["per_call_minute_s"]),
        "rss_per_call": ratio(p["rss_mb"]["per_call"], f["rss_mb"]["per_call"]),
    }


def _why_not(r: dict[str, Any], limit_ms: float) -> str | None:
    """Why a row does not count as handled (None: it does)."""
    if "failed" in r:
        return "failed"
    if r["errors"]:
        return "errors"
    if any(r["frames_lost"].values()):
        return "frames lost"
    p99 = r["uplink_ms"]["p99"]
    if p99 is None or p99 > limit_ms:
        return f"p99 {_f(p99, 1)} ms"
    return None


def capacity(by_n: dict[int, dict[str, Any]], target: str, limit_ms: float) -> str:
    """Largest tested N at which the target (and every smaller N) kept p99 uplink within
    `limit_ms` with no errors and no frame lost; says which N broke it and why."""
    best = None
    for n in sorted(by_n):
        r = by_n[n].get(target)
        if r is None:
            continue
        why = _why_not(r, limit_ms)
        if why:
            return f"{best if best else f'< {n}'} (N={n}: {why})"
        best = n
    return f">= {best} (every tested N passed)" if best else "-"
