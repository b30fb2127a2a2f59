"""`python -m app.replay`: a fixture's timeline and replay verdict, or `--store` imports.

python -m app.replay FILE            # the call's timeline, then the replay verdict
python -m app.replay --store FILE... # store each as a call record (`app.replay.store`)
python -m app.replay --svg OUT.svg FILE  # the call as an SVG timeline (`app.viewer.svg`)
python -m app.replay --wav OUT.wav FILE  # the call as heard, stereo WAV (`app.viewer.wav`)
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.observability import configure_logging
from app.replay import FixtureError, load, replay, report, timeline
from app.replay.store import main as store_main
from app.viewer.svg import render_svg
from app.viewer.wav import render_wav


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    configure_logging("kv", "WARNING")  # the core's own warnings, structured, on stderr
    if args[:1] == ["--store"]:
        return store_main(args[1:])
    if args[:1] in (["--svg"], ["--wav"]) and len(args) == 3:
        return _render(args[0], Path(args[1]), args[2])
    if len(args) != 1:
        print("usage: python -m app.replay FIXTURE.jsonl", file=sys.stderr)
        print("       python -m app.replay --store FIXTURE.jsonl...", file=sys.stderr)
        print("       python -m app.replay --svg OUT.svg FIXTURE.jsonl", file=sys.stderr)
        print("       python -m app.replay --wav OUT.wav FIXTURE.jsonl", file=sys.stderr)
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


def _render(mode: str, out: Path, path: str) -> int:
    """`--svg`/`--wav`: write the call's timeline or audio to `out` (`app.viewer`)."""
    try:
        fixture = load(path)
    except (OSError, FixtureError) as exc:
        print(f"not a call fixture: {exc}", file=sys.stderr)
        return 2
    data: bytes | None
    if mode == "--svg":
        data = render_svg(fixture).encode("utf-8")
    else:
        data = render_wav(fixture)
        if data is None:
            print(f"{path}: recorded without audio (RECORD_AUDIO=false)", file=sys.stderr)
            return 1
    try:
        out.write_bytes(data)
    except OSError as exc:
        print(f"cannot write {out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
