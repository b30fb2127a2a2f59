"""The process's Prometheus metrics: `GET /metrics` (README "Operating it").

Why prometheus-client: it is the reference implementation of the text format every
scraper reads (and of histograms that aggregate across replicas), so we write no exposition
code of our own. Each app gets its own registry (tests run many apps in one process).

What is counted where:

- the call core emits a `Measure` once per event (a barge-in and its reaction time, a heard
  latency from mark echoes, a REST answer, a tool call...: `app.call.measures`); the live
  driver hands it to `observe`. Nothing here runs per audio frame;
- a call's totals (its outcome and duration, dropped frames, bad input) are counted as it
  ends (`call_ended`);
- live gauges and the totals other parts already keep (calls live, limit hits, the call
  store's writer) are read when Prometheus scrapes, at no cost between scrapes.

Label values that come from peers (a Realtime error code, a tool name the model made up)
are bounded: past `MAX_LABEL_VALUES` distinct values per series a new one is counted as
`other`, so a misbehaving peer can't grow the series without end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from app.call import opening
from app.call.actions import Measure
from app.call.actions import Metric as CallMetric
from app.protocol import realtime as rt

#: Telephony latencies: tens of ms (a barge-in's clear) to seconds (a slow answer).
TELEPHONY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
#: Call durations: seconds to the hour the Realtime service allows a session.
DURATION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
#: Tool run times: a fast lookup (tens of ms) to a timeout (the 8 s default, 60 s at most).
TOOL_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0, 60.0)
#: Distinct peer-given label values kept per series; more are counted as `other`.
MAX_LABEL_VALUES: Final = 50
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Label values known in advance are exported as 0 from the start, so a rate or a ratio over
# them has data before the first event (an alert on "no data" is an alert on nothing).
OUTCOMES: Final = (
    "caller_hung_up", "bot_hung_up", "transferred", "max_duration", "shutdown", "failure",
    "bridge_error", "busy", "machine", "voicemail", "no_answer", "dial_failed", "canceled",
)  # fmt: skip
WEBHOOK_RESULTS: Final = (
    "connect", "busy", "apology", "bad_signature", "bad_request", "refused_body",
)  # fmt: skip
STREAM_REFUSALS: Final = (
    "bad_signature", "at_capacity", "no_openai_key", "bad_stream_token", "account_mismatch",
    "duplicate_call", "no_start",
)  # fmt: skip
REST_ACTIONS: Final = ("hangup", "transfer", "create")
#: `POST /calls`: the call created, or why not (README "Outbound calls").
PLACED_RESULTS: Final = (
    "created", "invalid", "forbidden", "over_limit", "twilio_refused", "twilio_unreachable",
    "store_unavailable",
)  # fmt: skip
#: How an outbound call ended, as Twilio's final `CallStatus` says.
OUTBOUND_RESULTS: Final = ("completed", "busy", "no-answer", "failed", "canceled")
ANSWERED_BY: Final = tuple(sorted(opening.ANSWERED_BY))
#: Ringing to answer: seconds (a quick pick-up) to a minute (Twilio's ring timeout).
ANSWER_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
REST_RESULTS: Final = ("ok", "error", "unreachable")
DROP_REASONS: Final = ("realtime_not_reading", "flood")
INPUT_SOURCES: Final = ("twilio", "realtime", "rest")
#: Realtime error codes an operator must always see by name (README "Metrics").
KNOWN_REALTIME_CODES: Final = frozenset(
    {
        *rt.BENIGN_ERROR_CODES,
        *rt.FATAL_RESPONSE_CODES,
        "conversation_already_has_active_response",
        "rate_limit_exceeded",
        "server_error",
        "None",  # an error event without a code
    }
)
LIMITS: Final = (
    "webhook_body", "connections", "request_timeout", "calls", "twilio_frame",
    "twilio_stalled", "twilio_idle", "duplicate_call", "caller_audio", "recording_bytes",
)  # fmt: skip


class _Bounded:
    """Label values from peers, bounded in number (the rest become `other`). `known`
    values are always kept, outside the bound: junk can't push them into `other`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES, known: frozenset[str] = frozenset()) -> None:
        self.limit = limit
        self.known = known
        self.seen: set[tuple[str, ...]] = set()

    def __call__(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if labels in self.seen or (len(labels) == 1 and labels[0] in self.known):
            return labels
        if len(self.seen) < self.limit:
            self.seen.add(labels)
            return labels
        return tuple("other" for _ in labels)


class _Totals(Collector):
    """Series read at scrape time from counts other parts keep."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


class Metrics:
    """Every series of one app (names: CONTRACT.md "Metrics", plus the README's list)."""

    def __init__(self, version: str = "0") -> None:
        disable_created_metrics()  # `_created` series double the count and nobody graphs them
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("bridge_build", "The bridge's version.", registry=r).info({"version": version})
        self.calls_active = Gauge("bridge_calls_active", "Live media streams.", registry=r)
        self.calls_admitted = Gauge(
            "bridge_calls_admitted",
            "Live calls holding a slot (their `start` was accepted).",
            registry=r,
        )
        self.calls_capacity = Gauge(
            "bridge_calls_capacity", "MAX_CONCURRENT_CALLS: slots for calls.", registry=r
        )
        self.ready = Gauge(
            "bridge_ready",
            "1 while `/readyz` would answer 200 (ready, not draining, not full).",
            registry=r,
        )
        self.calls = Counter(
            "bridge_calls", "Finished calls by outcome (`end_reason`).", ["outcome"], registry=r
        )
        self.failures = Counter(
            "bridge_call_failures",
            "Calls that ended in `failure`, by `end_detail` (realtime_unavailable, ...).",
            ["detail"],
            registry=r,
        )
        self.tokens = Counter(
            "bridge_realtime_tokens",
            "Realtime tokens used by finished calls (`usage`), by kind: input or output.",
            ["kind"],
            registry=r,
        )
        self.duration = Histogram(
            "bridge_call_duration_seconds",
            "Length of finished calls, `start` to the end.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.streams_refused = Counter(
            "bridge_streams_refused",
            "Media streams that never became a call, by reason.",
            ["reason"],
            registry=r,
        )
        self.webhooks = Counter(
            "bridge_webhook_requests",
            "Voice webhook requests by what they were answered with.",
            ["result"],
            registry=r,
        )
        self.barge_ins = Counter("bridge_barge_ins", "Times a caller cut the bot off.", registry=r)
        self.reaction = Histogram(
            "bridge_barge_in_reaction_seconds",
            "`speech_started` received to `clear` sent.",
            buckets=TELEPHONY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "bridge_response_latency_seconds",
            "End of the caller's turn (`speech_stopped`) to the answer's first audio heard "
            "(its first mark echo).",
            buckets=TELEPHONY_BUCKETS,
            registry=r,
        )
        self.truncated = Counter(
            "bridge_truncated_audio_seconds",
            "Bot audio sent to the caller but cut by a barge-in before it was heard.",
            registry=r,
        )
        self.speech_over_bot = Counter(
            "bridge_speech_over_bot",
            "Resume mode: caller speech over the bot, by verdict (real: a barge-in; false: the "
            'answer resumed) and the rule that decided it (README "Noisy lines").',
            ["verdict", "reason"],
            registry=r,
        )
        self.reprompts = Counter(
            "bridge_reprompts", "Times the bot asked again after the caller's silence.", registry=r
        )
        self.called_off = Counter(
            "bridge_endings_called_off",
            "Goodbyes and transfers called off because the caller spoke over them.",
            ["kind"],
            registry=r,
        )
        self.rest = Counter(
            "bridge_rest_requests",
            "Twilio REST actions by result (`ok`, `error`, `unreachable`).",
            ["action", "result"],
            registry=r,
        )
        self.realtime_errors = Counter(
            "bridge_realtime_errors",
            "`error` events from the Realtime service, by code.",
            ["code"],
            registry=r,
        )
        self.tool_calls = Counter(
            "bridge_tool_calls",
            "Tool calls by result (`ok`, `error`, `timeout`, `cancelled`).",
            ["tool", "result"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "bridge_tool_call_duration_seconds",
            "How long business tools ran (HTTP, Python and MCP calls), by tool.",
            ["tool"],
            buckets=TOOL_BUCKETS,
            registry=r,
        )
        self.mcp_errors = Counter(
            "bridge_mcp_errors",
            "MCP failures the Realtime service reported, by server and kind (`list_tools`, "
            "`call`).",
            ["server", "kind"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "bridge_audio_frames_dropped",
            "Caller audio frames not forwarded: `realtime_not_reading` (the service's socket "
            "was full) or `flood` (faster than real time). Counted as each call ends.",
            ["reason"],
            registry=r,
        )
        self.bad_input = Counter(
            "bridge_bad_input",
            "Messages skipped as malformed, by the side that sent them. Counted as each call ends.",
            ["source"],
            registry=r,
        )
        self.outbound_placed = Counter(
            "bridge_outbound_calls",
            "`POST /calls` by result: `created`, or why not (`invalid`, `forbidden`, "
            "`over_limit`, `twilio_refused`, `twilio_unreachable`, `store_unavailable`).",
            ["result"],
            registry=r,
        )
        self.outbound_results = Counter(
            "bridge_outbound_results",
            "Outbound calls by Twilio's final status (`completed`, `busy`, `no-answer`, "
            "`failed`, `canceled`).",
            ["status"],
            registry=r,
        )
        self.answered_by = Counter(
            "bridge_outbound_answered_by",
            "Answering-machine detection verdicts (Twilio's `AnsweredBy`).",
            ["answered_by"],
            registry=r,
        )
        self.answer_time = Histogram(
            "bridge_outbound_answer_seconds",
            "Outbound calls: created -> answered (Twilio's `in-progress` status callback).",
            buckets=ANSWER_BUCKETS,
            registry=r,
        )
        self._codes = _Bounded(known=KNOWN_REALTIME_CODES)
        self._tools = _Bounded()
        self._tool_names = _Bounded()
        self._mcp = _Bounded()
        self._details = _Bounded()
        for series, values in (
            (self.calls, OUTCOMES),
            (self.webhooks, WEBHOOK_RESULTS),
            (self.streams_refused, STREAM_REFUSALS),
            (self.frames_dropped, DROP_REASONS),
            (self.bad_input, INPUT_SOURCES),
            (self.tokens, ("input", "output")),
            (self.outbound_placed, PLACED_RESULTS),
            (self.outbound_results, OUTBOUND_RESULTS),
            (self.answered_by, ANSWERED_BY),
        ):
            for label in values:
                series.labels(label)
        for action in REST_ACTIONS:
            for result in REST_RESULTS:
                self.rest.labels(action, result)
        self._limit_hits: Mapping[str, int] = {}
        self._store: Callable[[], Any] | None = None
        r.register(_Totals(self._totals))
        self._observers: dict[CallMetric, Callable[[Measure], None]] = {
            CallMetric.BARGE_IN: self._barge_in,
            CallMetric.RESPONSE_LATENCY: lambda m: self.latency.observe(m.value),
            CallMetric.TRUNCATED_AUDIO: lambda m: self.truncated.inc(m.value),
            CallMetric.REPROMPT: lambda m: self.reprompts.inc(),
            CallMetric.ENDING_CALLED_OFF: lambda m: self.called_off.labels(*m.labels).inc(),
            CallMetric.REALTIME_ERROR: self._realtime_error,
            CallMetric.TOOL_CALL: lambda m: self.tool_calls.labels(*self._tools(m.labels)).inc(),
            CallMetric.REST: lambda m: self.rest.labels(*m.labels).inc(),
            CallMetric.TOOL_DURATION: lambda m: self.tool_duration.labels(
                *self._tool_names(m.labels)
            ).observe(m.value),
            CallMetric.MCP_ERROR: lambda m: self.mcp_errors.labels(*self._mcp(m.labels)).inc(),
            CallMetric.FALSE_TURN: lambda m: self.speech_over_bot.labels(*m.labels).inc(),
        }

    # -- wiring -----------------------------------------------------------------------------

    def read_limit_hits(self, counts: Mapping[str, int]) -> None:
        """Expose `counts` (limit name -> refusals, `app.limits.LimitHits`) at scrape time."""
        self._limit_hits = counts

    def read_calls(
        self, streams: Callable[[], int], admitted: Callable[[], int], capacity: int
    ) -> None:
        """Live streams and admitted calls, counted at scrape time, out of `capacity`."""
        self.calls_active.set_function(lambda: float(streams()))
        self.calls_admitted.set_function(lambda: float(admitted()))
        self.calls_capacity.set(capacity)

    def read_ready(self, ready: Callable[[], bool]) -> None:
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)

    def read_store(self, store: Callable[[], Any]) -> None:
        """Expose the call store's writer counts at scrape time: `store()` gives an object
        with `stats` (`app.store.StoreStats`) and `available`."""
        self._store = store

    # -- events -----------------------------------------------------------------------------

    def observe(self, measure: Measure) -> None:
        """One `Measure` from a call's core."""
        self._observers[measure.metric](measure)

    def _barge_in(self, measure: Measure) -> None:
        self.barge_ins.inc()
        self.reaction.observe(measure.value)

    def _realtime_error(self, measure: Measure) -> None:
        self.realtime_errors.labels(*self._codes(measure.labels)).inc()

    def call_ended(
        self,
        outcome: str,
        duration_s: float,
        *,
        dropped: Mapping[str, int],
        bad_input: Mapping[str, int],
        detail: str | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> None:
        """A call (one that had started) is over."""
        usage = usage or {}
        self.calls.labels(outcome).inc()
        self.duration.observe(duration_s)
        if outcome == "failure":
            self.failures.labels(*self._details((detail or "unknown",))).inc()
        for kind in ("input", "output"):
            if used := usage.get(f"{kind}_tokens"):
                self.tokens.labels(kind).inc(used)
        for reason, count in dropped.items():
            if count:
                self.frames_dropped.labels(reason).inc(count)
        for kind, count in bad_input.items():  # `twilio.unknown_event` -> twilio
            self.bad_input.labels(kind.partition(".")[0]).inc(count)

    # -- the scrape -------------------------------------------------------------------------

    def _totals(self) -> Iterable[Metric]:
        hits = CounterMetricFamily(
            "bridge_limit_hits", 'Refusals by limit (README "Security").', labels=["limit"]
        )
        counts = {limit: 0 for limit in LIMITS}
        counts.update(self._limit_hits)
        for limit, count in sorted(counts.items()):
            hits.add_metric([limit], count)
        yield hits
        if self._store is None:
            return
        store = self._store()
        stats = store.stats
        for name, attribute, text in (
            ("bridge_call_records_written", "written", "Call records stored."),
            (
                "bridge_call_records_failed",
                "lost",
                "Call records given up after their retries (each logged with its CallSid).",
            ),
            (
                "bridge_call_record_write_errors",
                "write_errors",
                "Failed attempts to write call records (retried).",
            ),
            (
                "bridge_call_records_dropped",
                "dropped_full",
                "Call records dropped because the writer's queue was full.",
            ),
            ("bridge_call_records_pruned", "pruned", "Call records deleted by the retention."),
            (
                "bridge_call_records_duplicate",
                "duplicates",
                "Call records skipped: their CallSid was stored already (the first one stays).",
            ),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], getattr(stats, attribute))
            yield family
        pending = GaugeMetricFamily(
            "bridge_call_records_pending", "Call records waiting to be written."
        )
        pending.add_metric([], stats.pending)
        yield pending
        up = GaugeMetricFamily(
            "bridge_call_store_up", "1 when the last operation on the call store worked."
        )
        up.add_metric([], 1.0 if store.available else 0.0)
        yield up

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)
