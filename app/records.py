"""A finished call as its call record (CONTRACT.md "Call records"), from its core's state.

One function, `call_record`, used by the live server when a call ends and by
`python -m app.replay --store` for recorded calls, so both store the same shape. It reads
the core (`CallSession`) and adds what only the driver knows: the wall-clock time the
media stream opened, the recording's file name, the model.

Per bot turn the record keeps what was *said* (the model's transcript of the audio it
generated) and what was *heard* (`heard_ms` from mark echoes; `heard_text`, the said text
cut at the word nearest to the heard share of its audio, an estimate: speech is not spoken
at an even rate). Key presses are never in a record, only their number: the same rule as
call fixtures, where digits are redacted. With `with_text` false (STORE_TRANSCRIPTS=false)
no turn carries text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from app.call.config import DEFAULT_AGENT
from app.call.session import CallSession


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`: `2026-12-02T01:21:17.123Z`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def model_of(realtime_url: str) -> str | None:
    """The model named in a Realtime URL's query (`?model=gpt-realtime`)."""
    values = parse_qs(urlsplit(realtime_url).query).get("model")
    return values[0] if values else None


def heard_text(text: str, sent_ms: int, heard_ms: int) -> str:
    """The part of `text` the caller heard, estimated from the heard share of its audio
    and cut back to a word boundary (all of it when all was heard)."""
    if heard_ms <= 0 or sent_ms <= 0:
        return ""  # nothing of it was played (an answer cut off before its audio)
    if heard_ms >= sent_ms:
        return text
    cut = round(len(text) * heard_ms / sent_ms)
    if cut < len(text) and text[cut : cut + 1] == " ":
        return text[:cut].rstrip()
    space = text.rfind(" ", 0, cut)
    return text[:space].rstrip() if space > 0 else ""  # not even its first word


def _turns(session: CallSession, with_text: bool) -> list[dict[str, Any]]:
    turns = []
    for row in session.transcript.to_list(with_text=True):
        if row["who"] == "bot":
            said = row.get("text", "")
            turn: dict[str, Any] = {
                "who": "bot",
                "sent_ms": row["sent_ms"],
                "heard_ms": row["heard_ms"],
                "interrupted": bool(row.get("interrupted", False)),
            }
            if with_text:
                turn["text"] = said
                turn["heard_text"] = heard_text(said, row["sent_ms"], row["heard_ms"])
        else:
            turn = {"who": "caller"}
            if with_text:
                turn["text"] = row.get("text", "")
        turns.append(turn)
    return turns


def call_record(
    session: CallSession,
    opened_at: datetime,
    *,
    summary: dict[str, Any],
    model: str | None,
    recording: str | None = None,
    direction: str = "inbound",
    agent: str = DEFAULT_AGENT,
    with_text: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a finished call whose media stream opened at `opened_at` (wall
    clock); `summary` is its `session.summary()` (computed once by the caller)."""
    started = opened_at + timedelta(milliseconds=session.started_ms)
    ended = opened_at + timedelta(milliseconds=max(session.ended_ms, session.started_ms))
    params = session.parameters
    measures = session.measures
    record: dict[str, Any] = {
        "call_sid": session.call_sid,
        "stream_sid": session.stream_sid,
        "direction": direction,
        "from": params.get("From") or None,
        "to": params.get("To") or None,
        "agent": agent,
        "model": model,
        "started_at": iso(started),
        "ended_at": iso(ended),
        "duration_s": summary["duration_s"],
        "outcome": summary["ended"],
        "end_detail": summary["end_detail"],
        "barge_ins": summary["barge_ins"],
        "barge_in_reaction_ms": list(measures.reactions_ms),
        "response_latency_ms": list(measures.latencies_ms),
        "heard_latency_ms": summary["heard_latency_ms"],
        "reprompts": summary["reprompts"],
        "turns": _turns(session, with_text),
        "usage": summary["usage"],
        "tool_calls": [
            call if with_text else {k: v for k, v in call.items() if k != "arguments"}
            for call in measures.tool_calls
        ],
        "rest_actions": list(measures.rest),
        "answered_by": summary.get("answered_by"),
        "recording": recording,
        "caller_audio_ms": summary["caller_audio_ms"],
        "bot_audio_ms": summary["bot_audio_ms"],
        "unheard_audio_ms": summary["unheard_audio_ms"],
        "key_presses": session.nudges.key_presses,
        "bad_input": summary["bad_input"],
        "realtime_errors": summary["realtime_errors"],
    }
    if extra:
        record.update(extra)
    return record


def unanswered_record(
    params: Mapping[str, str | None],
    at: datetime,
    *,
    outcome: str,
    detail: str,
    agent: str = DEFAULT_AGENT,
    direction: str = "inbound",
) -> dict[str, Any]:
    """The record of a call that never had a media stream: an inbound call the webhook
    turned away (the process full: `busy`; no OpenAI key: the apology), or an outbound
    call that never connected (`app.outbound`), so that it can be looked up too."""
    moment = iso(at)
    return {
        "call_sid": params.get("CallSid") or "",
        "stream_sid": None,
        "direction": direction,
        "from": params.get("From") or None,
        "to": params.get("To") or None,
        "agent": agent,
        "model": None,
        "started_at": moment,
        "ended_at": moment,
        "duration_s": 0.0,
        "outcome": outcome,
        "end_detail": detail,
        "barge_ins": 0,
        "barge_in_reaction_ms": [],
        "response_latency_ms": [],
        "heard_latency_ms": None,
        "reprompts": 0,
        "turns": [],
        "usage": {},
        "tool_calls": [],
        "rest_actions": [],
        "answered_by": None,
        "recording": None,
    }
