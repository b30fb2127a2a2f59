"""CPU and memory readings from /proc, taken at the edges of the measured window.

CPU time of a process tree (the target may fork helpers) comes from /proc/PID/stat
(utime + stime, plus the reaped children's cutime + cstime); RSS from /proc/PID/status.
Per-core busy time from /proc/stat tells whether anything else used the cores meanwhile.
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the `(comm)` field (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("latin-1")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by `pid`'s tree (None when the process is gone)."""
    ticks, found = 0, False
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is not None:
            found = True
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS if found else None


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid`'s tree in MB (None when the process is gone)."""
    kb, found = 0, False
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb += int(line.split()[1])
                        found = True
                        break
        except OSError:
            continue
    return kb / 1024 if found else None


def core_ticks() -> dict[str, tuple[int, int]]:
    """{'cpu0': (busy, total), ...} in clock ticks since boot (idle + iowait are not busy)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
                total = sum(v)
                out[name] = (total - v[3] - v[4], total)
    return out


def busy_pct(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict:
    """Busy percentage of each core between two `core_ticks()` readings."""
    out = {}
    for core, (busy1, total1) in after.items():
        busy0, total0 = before.get(core, (busy1, total1))
        span = total1 - total0
        out[core] = round(100 * (busy1 - busy0) / span, 1) if span else None
    return out
