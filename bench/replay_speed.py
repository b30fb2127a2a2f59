"""How fast call fixtures replay on the virtual clock: `make bench`.

Replays every fixture in tests/fixtures/calls/ and prints, per fixture and in total, the
call's recorded length, the replay's wall time, and the ratio (how many seconds of call
replay per second), plus what a one-minute call costs to replay.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from app.replay import load, replay

LIBRARY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "calls"


def main() -> None:
    logging.disable(logging.CRITICAL)  # the replayed calls' own log lines are expected
    total_call_s = total_wall_s = 0.0
    for path in sorted(LIBRARY.glob("*.jsonl")):
        fixture = load(path)
        call_s = (fixture.entries[-1].t_ms if fixture.entries else 0) / 1000
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            result = replay(fixture)
            best = min(best, time.perf_counter() - started)
        assert result.ok, path
        total_call_s += call_s
        total_wall_s += best
        print(f"{path.stem:36} call {call_s:6.1f} s  replay {best * 1000:7.1f} ms")
    ratio = total_call_s / total_wall_s
    print(f"{'all':36} call {total_call_s:6.1f} s  replay {total_wall_s * 1000:7.1f} ms")
    print(f"replay speed: {ratio:,.0f}x real time; a one-minute call: {60_000 / ratio:.0f} ms")


if __name__ == "__main__":
    main()
