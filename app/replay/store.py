"""`python -m app.replay --store FIXTURE...`: recorded calls into the call store.

A developer without a phone line still gets calls to look at (`GET /calls`, and the call
viewer): each fixture is replayed through the call core, exactly as the test suite does,
and the record the live server would have written for it is stored in the database the
settings name (DATABASE_URL, `.env` included; the SQLite file under `./data/` by default).

The record's times come from the fixture's header (`recorded_at` is when the call's `start`
arrived), else from the file's modification time. A call already in the store is left as
it is (records are written once per CallSid), so importing a library twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.call.session import CallSession
from app.records import call_record
from app.replay import Fixture, FixtureError, load, replay
from app.settings import SettingsError, load_settings
from app.store import CallStore, database_url, redacted

#: How long the import waits for the database to take every record.
FLUSH_SECONDS = 30.0


def _opened_at(fixture: Fixture, session: CallSession) -> datetime:
    """Wall-clock time of the stream's opening (call time 0)."""
    recorded = fixture.header.get("recorded_at")
    try:
        at = datetime.fromisoformat(recorded) if isinstance(recorded, str) else None
    except ValueError:
        at = None
    if at is None:
        mtime = fixture.path.stat().st_mtime if fixture.path is not None else 0.0
        at = datetime.fromtimestamp(mtime, UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at - timedelta(milliseconds=session.started_ms)


def record_of(fixture: Fixture, with_text: bool = True) -> tuple[dict[str, Any] | None, str]:
    """The call record of a fixture, or None and why it has none."""
    captured: list[CallSession] = []

    def keep(session: CallSession, _t_ms: float, _actions: object) -> None:
        if not captured:
            captured.append(session)

    result = replay(fixture, keep)
    if not captured or not captured[0].call_sid:
        return None, "no call (the stream never started)"
    session = captured[0]
    if not session.ended_ms:
        last = fixture.entries[-1].t_ms if fixture.entries else session.started_ms
        session.ended_ms = max(last, session.started_ms)
    name = fixture.path.name if fixture.path is not None else None
    record = call_record(
        session,
        _opened_at(fixture, session),
        summary=session.summary(),
        model=None,
        recording=name,
        with_text=with_text,
        extra={"imported": True},
    )
    note = "" if result.ok else " (its replay differs from the recording: today's core decides)"
    return record, note


async def store_fixtures(paths: list[str]) -> int:
    """Import `paths`; 0 when every file was a fixture, else 1 (2: bad settings)."""
    try:
        settings = load_settings()
        raw = settings.database_url.get_secret_value() if settings.database_url else None
        url = database_url(raw)
    except (SettingsError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    store = CallStore(url)
    if not await store.start():
        print(f"the call store at {redacted(url)} can't be reached", file=sys.stderr)
        await store.close(0)
        return 1
    failed = stored = 0
    try:
        for path in paths:
            try:
                record, note = record_of(load(path), settings.store_transcripts)
            except (OSError, FixtureError) as exc:
                print(f"{path}: not a call fixture: {exc}", file=sys.stderr)
                failed += 1
                continue
            if record is None:
                print(f"{path}: skipped, {note}")
            elif await store.get(record["call_sid"]) is not None:
                print(f"{path}: {record['call_sid']} is already stored")
            else:
                store.submit(record)
                stored += 1
                print(f"{path}: {record['call_sid']} ({record['outcome']}){note}")
    finally:
        lost = await store.close(FLUSH_SECONDS)
    print(f"stored {stored - lost} call(s) in {redacted(url)}")
    return 1 if failed or lost else 0


def main(paths: list[str]) -> int:
    # The replayed calls' own warnings (a service error the fixture recorded) are not news.
    logging.getLogger("app.call").setLevel(logging.CRITICAL)
    if not paths:
        print("usage: python -m app.replay --store FIXTURE.jsonl...", file=sys.stderr)
        return 2
    return asyncio.run(store_fixtures([str(Path(p)) for p in paths]))
