"""`OutboundCalls`: placing a call, giving its stream its settings, following its status.

Why it looks like this:

* **Per-call settings in the call store.** Twilio opens an outbound call's media stream to
  whichever replica the load balancer picks, so the settings `POST /calls` was given are
  stored (the `outbound_calls` table, under an id of ours) *before* Twilio is asked to
  dial; the TwiML carries only that id, in a `<Parameter>` covered by the stream token, so
  a stream can claim no other call's settings. The replica that placed the call keeps
  them in memory too, and answers without the database.
* **One call per request.** Twilio's create is retried only when no call can exist: the
  connection failed before the request was sent, or Twilio answered 429 (not created). A
  timeout or a 5xx may have created it, and a second attempt would ring the callee twice.
* **The verdict finds its stream.** Twilio posts the answering-machine verdict to
  `/call-status` on any replica: it goes to the store, and a stream waiting for it is woken
  at once on the same replica, or finds it on its next look (every `VERDICT_POLL_S`).
* **Every call has its record.** A call that never connected (no answer, busy, failed,
  canceled, or answered but its stream never started) gets its record from its final
  status callback; a connected call's record is written by its stream as any call's.

The in-flight limit (`MAX_OUTBOUND_CALLS`) counts the store's open rows, so replicas
sharing a database share it; two replicas placing the last slot at the same instant may
both get it (the check and the insert are one step per process, not across processes).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from app import twiml
from app.agents import Agents
from app.agents.templates import BUILTIN_NAMES, Template, call_values
from app.call.config import CallConfig
from app.call.opening import ANSWERED_BY, DEFAULT_OUTBOUND_GREETING
from app.metrics import Metrics
from app.observability import log_event
from app.outbound.destinations import allowed
from app.outbound.request import PlaceCall
from app.records import iso, unanswered_record
from app.security import (
    OUTBOUND_PARAMETER,
    STREAM_TOKEN_PARAMETER,
    outbound_binding,
    stream_token,
    stream_url,
)
from app.settings import Settings
from app.store import CallStore, StoreUnavailable
from app.telephony import Created, Telephony

logger = logging.getLogger("app.outbound")

#: The `<Parameter>` saying the stream is an outbound call's (for the log and the viewer).
DIRECTION_PARAMETER: Final = "Direction"
#: Twilio's final call statuses, and the outcome of a call that ended in one unconnected.
FINAL: Final = {
    "completed": "failure",  # answered, but its stream never started
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "dial_failed",
    "canceled": "canceled",
}
STATUSES: Final = frozenset({"queued", "initiated", "ringing", "in-progress", *FINAL})
#: Status callback events asked for (all Twilio offers for a call).
EVENTS: Final = ["initiated", "ringing", "answered", "completed"]
#: The create: attempts at most, and the waits between them (only where safe).
CREATE_BACKOFF_S: Final = (0.5, 1.5)
#: How long a stream's `start` waits for its settings in the store (a database blip).
SETTINGS_WAIT_S: Final = 3.0
#: How often a stream waiting for the verdict looks in the store.
VERDICT_POLL_S: Final = 0.25
#: Beyond the call's own limit, how long an open row still counts as in flight (its final
#: status callback may never come: then it stops counting).
IN_FLIGHT_SLACK: Final = timedelta(minutes=15)
#: Twilio rings for 60 s by default (`Timeout`): a stream comes well within this, or never.
_RING_LIMIT: Final = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class Answer:
    """What `POST /calls` answers: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def _error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None, **more: Any
) -> Answer:
    return Answer(status, {"error": error, "detail": detail, **more}, headers)


class OutboundCalls:
    """The outbound calls of a process (and, through the store, of its replicas)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: CallStore,
        telephony: Telephony | None,
        agents: Agents,
        metrics: Metrics,
        base_config: CallConfig,
    ) -> None:
        self.settings = settings
        self.store = store
        self.telephony = telephony
        self.agents = agents
        self.metrics = metrics
        self.base_config = base_config
        #: Rows this process placed, until their stream starts or they end.
        self._placed: dict[str, dict[str, Any]] = {}
        #: Streams waiting for their verdict, by outbound id.
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._place_lock = asyncio.Lock()

    # -- POST /calls ---------------------------------------------------------------------

    async def place(self, call: PlaceCall, base_url: str) -> Answer:
        """Create the call through Twilio, after the destination and limit checks."""
        metrics = self.metrics.outbound_placed
        if not allowed(call.to, call.from_, self.settings.allowed_prefixes):
            metrics.labels("forbidden").inc()
            log_event(logger, logging.WARNING, "outbound.forbidden", to=call.to)
            return _error(
                403,
                "forbidden_destination",
                "the destination is outside OUTBOUND_ALLOWED_PREFIXES",
            )
        if self.settings.public_base_url is None:
            # Twilio must reach our stream and callbacks at the public URL: one derived
            # from the operator's request (`curl localhost:8000/calls`) would have Twilio
            # ring the callee, then fail to connect them.
            metrics.labels("twilio_unreachable").inc()
            return _error(
                503,
                "outbound_unavailable",
                "PUBLIC_BASE_URL must be set: Twilio reaches the call's stream and callbacks there",
            )
        if self.telephony is None:
            metrics.labels("twilio_unreachable").inc()
            return _error(
                503,
                "outbound_unavailable",
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed to place calls",
            )
        outbound_id = "OB" + secrets.token_hex(16)
        now = datetime.now(UTC)
        row = {
            "outbound_id": outbound_id,
            "call_sid": None,
            "created_at": now,
            "to_number": call.to,
            "from_number": call.from_,
            "agent": call.agent,
            "settings": call.settings(),
            "status": "creating",
        }
        try:
            async with self._place_lock:  # the check and the insert, one at a time
                in_flight = await self.store.outbound_in_flight(now - self._in_flight_window())
                limit = self.settings.max_outbound_calls
                if in_flight >= limit:
                    metrics.labels("over_limit").inc()
                    log_event(logger, logging.WARNING, "outbound.over_limit", in_flight=in_flight)
                    return _error(
                        429,
                        "too_many_calls",
                        f"{in_flight} outbound calls are in flight (MAX_OUTBOUND_CALLS={limit})",
                        headers={"Retry-After": "30"},
                    )
                await self.store.add_outbound(row)
        except StoreUnavailable:
            metrics.labels("store_unavailable").inc()
            return _error(503, "store_unavailable", "the call store can't be reached now")
        self._forget_stale(now)
        self._placed[outbound_id] = row
        created = await self._create(self._create_params(call, outbound_id, base_url))
        if created.status == 201 and created.call_sid:
            row["call_sid"], row["status"] = created.call_sid, "queued"
            await self._update(outbound_id, {"call_sid": created.call_sid, "status": "queued"})
            metrics.labels("created").inc()
            log_event(
                logger,
                logging.INFO,
                "outbound.created",
                call_sid=created.call_sid,
                to=call.to,
                agent=call.agent,
                machine_detection=call.machine_detection,
            )
            return Answer(
                201,
                {
                    "call_sid": created.call_sid,
                    "outbound_id": outbound_id,
                    "status": "queued",
                    "to": call.to,
                    "from": call.from_,
                    "agent": call.agent,
                    "machine_detection": call.machine_detection,
                },
            )
        return await self._not_created(outbound_id, created)

    async def _not_created(self, outbound_id: str, created: Created) -> Answer:
        """Twilio refused, or never answered: 502. A row no call can exist for (a 4xx, or
        a request that never left) is closed, and no longer counts in flight; one that may
        have a call (no answer, a 5xx, a 201 without a CallSid) stays open for its status
        callbacks to tell, and the answer says so, with its `outbound_id`."""
        refused = 400 <= created.status < 500
        if refused or not created.reached:
            self._placed.pop(outbound_id, None)
            await self._update(outbound_id, {"status": "refused", "ended_at": datetime.now(UTC)})
        result = "twilio_refused" if refused else "twilio_unreachable"
        self.metrics.outbound_placed.labels(result).inc()
        log_event(
            logger,
            logging.WARNING,
            "outbound.not_created",
            status=created.status,
            code=created.code,
            error=created.error or None,
        )
        if refused:
            return _error(
                502,
                "twilio_refused",
                created.error or f"Twilio answered {created.status}",
                twilio_status=created.status,
                twilio_code=created.code,
            )
        maybe = "" if not created.reached else " (the call may have been placed)"
        said = created.error or (f"HTTP {created.status}" if created.status else "no answer")
        return _error(
            502,
            "twilio_unreachable",
            f"Twilio did not answer as expected: {said}{maybe}",
            outbound_id=outbound_id,
            twilio_status=created.status or None,
            twilio_code=created.code,
        )

    def _forget_stale(self, now: datetime) -> None:
        """Drop placed rows whose stream went to another replica (or never came): past
        the ring limit it won't come here, and the store still has them."""
        stale = [oid for oid, row in self._placed.items() if now - row["created_at"] > _RING_LIMIT]
        for oid in stale:
            del self._placed[oid]

    def _in_flight_window(self) -> timedelta:
        longest = self.settings.max_call_seconds or 3600.0
        return timedelta(seconds=longest) + _RING_LIMIT + IN_FLIGHT_SLACK

    def _create_params(
        self, call: PlaceCall, outbound_id: str, base_url: str
    ) -> dict[str, str | list[str]]:
        settings = self.settings
        parameters = twiml.stream_parameters(
            {
                OUTBOUND_PARAMETER: outbound_id,
                DIRECTION_PARAMETER: "outbound",
                "From": call.from_,
                "To": call.to,
            }
        )
        token = settings.twilio_auth_token
        if settings.stream_token_enforced and token is not None:
            parameters[STREAM_TOKEN_PARAMETER] = stream_token(
                token.get_secret_value(), outbound_binding(outbound_id), parameters
            )
        document = twiml.connect_stream(
            stream_url(base_url), parameters, settings.fallback_message, settings.fallback_number
        )
        status_url = f"{base_url}/call-status?outbound={outbound_id}"
        params: dict[str, str | list[str]] = {
            "To": call.to,
            "From": call.from_,
            "Twiml": document,
            "StatusCallback": status_url,
            "StatusCallbackMethod": "POST",
            "StatusCallbackEvent": list(EVENTS),
        }
        if call.machine_detection != "off":
            detect = "DetectMessageEnd" if call.machine_detection == "voicemail" else "Enable"
            params["MachineDetection"] = detect
            params["AsyncAmd"] = "true"
            params["AsyncAmdStatusCallback"] = status_url
            params["AsyncAmdStatusCallbackMethod"] = "POST"
            params["MachineDetectionTimeout"] = str(settings.outbound_detection_timeout_seconds)
        return params

    async def _create(self, params: dict[str, str | list[str]]) -> Created:
        """Twilio's create, retried only when no call can have been made."""
        assert self.telephony is not None
        rest = self.metrics.rest
        attempt = 0
        while True:
            created = await self.telephony.create_call(params)
            ok = created.status == 201
            rest.labels(
                "create", "ok" if ok else "error" if created.status else "unreachable"
            ).inc()
            safe = not created.reached or created.status == 429
            if ok or not safe or attempt >= len(CREATE_BACKOFF_S):
                return created
            log_event(
                logger,
                logging.INFO,
                "outbound.create_retry",
                status=created.status,
                attempt=attempt + 1,
            )
            await asyncio.sleep(CREATE_BACKOFF_S[attempt])
            attempt += 1

    # -- the stream ----------------------------------------------------------------------

    async def config_for(self, call_sid: str, parameters: dict[str, str]) -> CallConfig | str:
        """The configuration of an outbound call's stream (its `start` already passed the
        stream token check), or why it is refused."""
        outbound_id = parameters.get(OUTBOUND_PARAMETER, "")
        placed = self._placed.pop(outbound_id, None)
        # The store's row first, even on the replica that placed the call: it alone knows
        # whether a stream has started elsewhere (a replayed `start`). Memory serves when
        # the database can't be reached.
        row = await self._find(outbound_id, 0.0 if placed is not None else SETTINGS_WAIT_S)
        row = row or placed
        if row is None:
            log_event(logger, logging.ERROR, "outbound.unknown", outbound_id=outbound_id[:40])
            return "unknown_outbound_call"
        if row.get("call_sid") not in (None, call_sid):
            return "outbound_call_mismatch"
        if row.get("stream_at") is not None:
            return "duplicate_call"
        await self._update(outbound_id, {"call_sid": call_sid, "stream_at": datetime.now(UTC)})
        return self._config(row, parameters)

    async def _find(self, outbound_id: str, wait_s: float) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                return await self.store.outbound(outbound_id)
            except StoreUnavailable:
                if loop.time() >= deadline:
                    return None
                await asyncio.sleep(0.2)

    def _config(self, row: dict[str, Any], parameters: dict[str, str]) -> CallConfig:
        chosen: dict[str, Any] = row["settings"]
        context: dict[str, str] = dict(chosen.get("context") or {})
        now = datetime.now(UTC)
        config = self.agents.for_call(
            parameters, self.base_config, now, context, agent=chosen.get("agent")
        )
        values = call_values(
            parameters,
            agent=config.agent,
            now=now,
            timezone=self.agents.timezone(config.agent) or self.settings.timezone,
            context=context,
            context_names=list(context),
        )
        known = {*BUILTIN_NAMES, *context}
        changes: dict[str, Any] = {
            "direction": "outbound",
            "machine_detection": chosen.get("machine_detection") or "off",
            "voicemail_message": chosen.get("voicemail_message") or "",
        }
        for name in ("instructions", "greeting"):
            text = chosen.get(name)
            if text:
                changes[name] = Template.parse(text, known).render(values)
        voicemail = chosen.get("voicemail_message")
        if voicemail:  # said word for word: the values go in as they are, not quoted
            changes["voicemail_message"] = Template.parse(voicemail, known).fill(values)
        if not chosen.get("greeting") and config.greeting == self.base_config.greeting:
            # Not the agent's own: the settings' greeting is an inbound one ("how can I
            # help?"); the person called is told who calls and why.
            changes["greeting"] = DEFAULT_OUTBOUND_GREETING
        return replace(config, **changes)

    async def answered_by(self, outbound_id: str, limit_s: float) -> str | None:
        """The detection's verdict for `outbound_id`, waited for up to `limit_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        woken = self._waiting.setdefault(outbound_id, loop.create_future())
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    row = await self.store.outbound(outbound_id)
                except StoreUnavailable:
                    row = None
                if row is not None and row.get("answered_by"):
                    return str(row["answered_by"])
                try:
                    return await asyncio.wait_for(
                        asyncio.shield(woken), min(VERDICT_POLL_S, remaining)
                    )
                except TimeoutError:
                    continue
            return None
        finally:
            self._waiting.pop(outbound_id, None)

    # -- POST /call-status ---------------------------------------------------------------

    async def status(self, outbound_id: str | None, params: dict[str, str]) -> None:
        """A signed status or AMD callback from Twilio."""
        call_sid = params.get("CallSid") or None
        try:
            row = await self._row_for(outbound_id, call_sid)
        except StoreUnavailable:
            log_event(
                logger, logging.ERROR, "outbound.status_lost", status=params.get("CallStatus")
            )
            return
        if row is None:
            log_event(logger, logging.WARNING, "outbound.status_unknown_call")
            return
        oid = row["outbound_id"]
        changes: dict[str, Any] = {}
        if call_sid and row.get("call_sid") is None:
            changes["call_sid"] = call_sid
        answered_by = params.get("AnsweredBy") or None
        if answered_by is not None:
            self._verdict(oid, row, answered_by[:32], changes)
        status = params.get("CallStatus") or None
        if status is not None and status not in STATUSES:
            log_event(logger, logging.WARNING, "outbound.bad_status", status=status[:40])
            status = None
        ended = row.get("ended_at") is not None
        now = datetime.now(UTC)
        if status is not None and not ended:
            changes["status"] = status
            if status == "in-progress" and row.get("answered_at") is None:
                changes["answered_at"] = now
                created = row["created_at"]
                self.metrics.answer_time.observe(max(0.0, (now - created).total_seconds()))
            if status in FINAL:
                changes["ended_at"] = now
        closed = True
        if changes:
            closed = await self._update(oid, changes, only_if_open="ended_at" in changes)
        # Only the callback that closed the row counts it (two final callbacks racing,
        # on two replicas, count once); a store that is away doesn't cost the record.
        if status in FINAL and not ended and closed:
            self._placed.pop(oid, None)
            self._finished(row, status, now, params, changes.get("answered_by"))

    def _verdict(
        self, outbound_id: str, row: dict[str, Any], answered_by: str, changes: dict[str, Any]
    ) -> None:
        if row.get("answered_by"):
            return
        changes["answered_by"] = answered_by
        self.metrics.answered_by.labels(
            answered_by if answered_by in ANSWERED_BY else "other"
        ).inc()
        log_event(logger, logging.INFO, "outbound.answered_by", answered_by=answered_by)
        waiting = self._waiting.get(outbound_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(answered_by)

    async def _row_for(
        self, outbound_id: str | None, call_sid: str | None
    ) -> dict[str, Any] | None:
        if outbound_id:
            row = await self.store.outbound(outbound_id)
            if row is not None:
                return row
        if call_sid:
            return await self.store.outbound_by_call_sid(call_sid)
        return None

    def _finished(
        self,
        row: dict[str, Any],
        status: str,
        now: datetime,
        params: dict[str, str],
        answered_by: str | None,
    ) -> None:
        """The final status: counted, and the record of a call that never connected."""
        self.metrics.outbound_results.labels(status).inc()
        log_event(logger, logging.INFO, "outbound.finished", status=status)
        if row.get("stream_at") is not None:
            return  # its stream writes its record
        call_sid = row.get("call_sid") or params.get("CallSid")
        if not call_sid:
            return
        outcome = FINAL[status]
        answered = status == "completed"
        detail = "no_media_stream" if answered else f"twilio_{status.replace('-', '_')}"
        record = unanswered_record(
            {"CallSid": call_sid, "From": row.get("from_number"), "To": row.get("to_number")},
            now,
            outcome=outcome,
            detail=detail,
            agent=row.get("agent") or self.agents.default,
            direction="outbound",
        )
        # An answered call's record starts now, not at its creation: should its stream
        # have run after all (its start unrecorded in a database blip), the stream's own
        # record started earlier, and the earliest start wins (`app.store.writer`).
        record["started_at"] = iso(now if answered else row["created_at"])
        record["answered_by"] = answered_by or row.get("answered_by")
        record["duration_s"] = float(_int(params.get("CallDuration")))
        sip = params.get("SipResponseCode")
        if sip:
            record["sip_response_code"] = _int(sip)
        self.metrics.calls.labels(outcome).inc()
        self.store.submit(record)

    async def _update(
        self, outbound_id: str, values: dict[str, Any], *, only_if_open: bool = False
    ) -> bool:
        """Whether the row was updated (True too when the store is away: logged)."""
        try:
            return await self.store.update_outbound(outbound_id, values, only_if_open=only_if_open)
        except StoreUnavailable:
            log_event(
                logger, logging.ERROR, "outbound.store_update_failed", fields=",".join(values)
            )
            return True


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
