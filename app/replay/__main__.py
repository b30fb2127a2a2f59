"""`python -m app.replay`: a fixture's timeline and replay verdict, or `--store` imports.

python -m app.replay FILE            # the call's timeline, then the replay verdict
python -m app.replay --store FILE... # store each as a call record (`app.replay.store`)
"""

from __future__ import annotations

import sys

from app.observability import configure_logging
from app.replay import FixtureError, load, replay, report, timeline
from app.replay.store import main as store_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    configure_logging("kv", "WARNING")  # the core's own warnings, structured, on stderr
    if args[:1] == ["--store"]:
        return store_main(args[1:])
    if len(args) != 1:
        print("usage: python -m app.replay FIXTURE.jsonl", file=sys.stderr)
        print("       python -m app.replay --store FIXTURE.jsonl...", file=sys.stderr)
        return 2
    try:
        fixture = load(args[0])
    except (OSError, FixtureError) as exc:
        print(f"not a call fixture: {exc}", file=sys.stderr)
        return 2
    h = fixture.header
    print(f"call {h.get('call_sid')} recorded {h.get('recorded_at')} ({h.get('audio')} audio)")
    print("\n".join(timeline(fixture.entries)))
    result = replay(fixture)
    print()
    print(report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
