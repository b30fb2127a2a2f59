"""What a finished stream leaves behind: the limits it hit, its metrics, its call record.

Called once per stream as it ends (and once per webhook the process turns away), never on
a call's audio path, and never raising: a bug here must not take a stream's teardown, or
the drain waiting for it, down with it. The rules on who gets a record:

- an admitted stream (its `start` was accepted) is a call, however it ended;
- a stream refused at its `start` is no call (a forged token, a second stream for a live
  CallSid) and writes nothing, so it can't overwrite the real call's record; except a real
  call (its stream token checked) that lost the last slot between its webhook and its
  `start`: it heard the fallback;
- a signed webhook the process turned away (busy, no OpenAI key) has a record without
  turns; unsigned, anyone could fill the store with made-up calls.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from app.bridge import Bridge
from app.limits import LimitHits
from app.metrics import Metrics
from app.records import call_record, model_of, unanswered_record
from app.settings import Settings
from app.store import CallStore

logger = logging.getLogger("app.ledger")


def turned_away(
    params: dict[str, str],
    outcome: str,
    detail: str,
    *,
    hits: LimitHits,
    metrics: Metrics,
    store: CallStore,
    settings: Settings,
    signed: bool,
) -> None:
    """A webhook for a call the process won't bridge: its count, and its record."""
    if not params.get("CallSid") or not signed:
        return
    metrics.calls.labels(outcome).inc()
    if outcome == "failure":
        metrics.failures.labels(detail).inc()
    store.submit(unanswered_record(params, datetime.now(UTC), outcome=outcome, detail=detail))


def stream_over(
    bridge: Bridge,
    *,
    admitted: bool,
    close_code: int | None,
    hits: LimitHits,
    metrics: Metrics,
    store: CallStore,
    settings: Settings,
    signed: bool,
) -> None:
    """A media stream is over: its limits, its metrics, and its call's record queued."""
    try:
        _count_limits(hits, bridge, close_code)
        _account(bridge, admitted, metrics, store, settings)
    except Exception:  # a bug of ours must not take the stream's teardown with it
        logger.exception("ledger.failed")


def _account(
    bridge: Bridge, admitted: bool, metrics: Metrics, store: CallStore, settings: Settings
) -> None:
    session, summary = bridge.session, bridge.summary
    if summary is None:
        return  # torn down before its summary: an error of ours, logged as such
    if not admitted:
        reason = session.end_detail or "no_start"
        metrics.streams_refused.labels(reason).inc()
        real = reason == "at_capacity" and settings.stream_token_enforced
        if not (real and session.call_sid):
            return
    dropped = {"realtime_not_reading": bridge.audio_dropped, "flood": bridge.audio_flooded}
    metrics.call_ended(
        summary["ended"],
        summary["duration_s"],
        dropped=dropped,
        bad_input=summary["bad_input"],
        detail=summary["end_detail"],
        usage=summary["usage"],
    )
    record = call_record(
        session,
        bridge.opened_at,
        summary=summary,
        model=model_of(settings.openai_realtime_url),
        recording=summary.get("recording"),
        agent=session.config.agent,
        direction=session.config.direction,
        with_text=settings.store_transcripts,
        extra={"audio_dropped": bridge.audio_dropped, "audio_flooded": bridge.audio_flooded},
    )
    store.submit(record)


def _count_limits(hits: LimitHits, bridge: Bridge, close_code: int | None) -> None:
    """A finished call's own limits, into the process's tally (its summary has the rest)."""
    session = bridge.session
    if close_code == 1009:
        hits.hit("twilio_frame")
    if session.end_detail in ("twilio_stalled", "twilio_idle"):
        hits.hit(session.end_detail)
    if session.end_detail == "duplicate_call":
        hits.hit("duplicate_call")
    if bridge.audio_flooded:
        hits.hit("caller_audio", dropped=bridge.audio_flooded)
    if bridge.recorder is not None and bridge.recorder.truncated:
        hits.hit("recording_bytes")
