"""The metrics registry (`app.metrics`): each core observation lands in its series."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from app.call.actions import Measure, Metric
from app.metrics import MAX_LABEL_VALUES, TELEPHONY_BUCKETS, Metrics
from app.store import StoreStats


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_every_core_metric_has_its_series() -> None:
    m = Metrics("1.2.3")
    for measure in (
        Measure(Metric.BARGE_IN, 0.02),
        Measure(Metric.RESPONSE_LATENCY, 0.8),
        Measure(Metric.TRUNCATED_AUDIO, 1.5),
        Measure(Metric.REPROMPT),
        Measure(Metric.ENDING_CALLED_OFF, labels=("hangup",)),
        Measure(Metric.REALTIME_ERROR, labels=("rate_limit_exceeded",)),
        Measure(Metric.TOOL_CALL, labels=("end_call", "ok")),
        Measure(Metric.REST, labels=("transfer", "error")),
    ):
        m.observe(measure)
    got = samples(m)
    assert got[("bridge_barge_ins_total", ())] == 1
    assert got[("bridge_barge_in_reaction_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("bridge_barge_in_reaction_seconds_bucket", (("le", "0.01"),))] == 0
    assert got[("bridge_response_latency_seconds_sum", ())] == 0.8
    assert got[("bridge_response_latency_seconds_bucket", (("le", "1.0"),))] == 1
    assert got[("bridge_truncated_audio_seconds_total", ())] == 1.5
    assert got[("bridge_reprompts_total", ())] == 1
    assert got[("bridge_endings_called_off_total", (("kind", "hangup"),))] == 1
    assert got[("bridge_realtime_errors_total", (("code", "rate_limit_exceeded"),))] == 1
    assert got[("bridge_tool_calls_total", (("result", "ok"), ("tool", "end_call")))] == 1
    assert got[("bridge_rest_requests_total", (("action", "transfer"), ("result", "error")))] == 1
    assert got[("bridge_build_info", (("version", "1.2.3"),))] == 1
    assert ("process_cpu_seconds_total", ()) in got


def test_buckets_span_telephony_times() -> None:
    assert TELEPHONY_BUCKETS[0] <= 0.01 and TELEPHONY_BUCKETS[-1] >= 5
    assert list(TELEPHONY_BUCKETS) == sorted(TELEPHONY_BUCKETS)


def test_peer_given_label_values_are_bounded() -> None:
    m = Metrics()
    for n in range(MAX_LABEL_VALUES + 25):
        m.observe(Measure(Metric.REALTIME_ERROR, labels=(f"code_{n}",)))
    m.observe(Measure(Metric.REALTIME_ERROR, labels=("insufficient_quota",)))  # known: kept
    codes = {labels for name, labels in samples(m) if name == "bridge_realtime_errors_total"}
    assert len(codes) == MAX_LABEL_VALUES + 2
    assert samples(m)[("bridge_realtime_errors_total", (("code", "other"),))] == 25
    assert samples(m)[("bridge_realtime_errors_total", (("code", "insufficient_quota"),))] == 1


def test_a_finished_call_counts_its_outcome_duration_drops_and_bad_input() -> None:
    m = Metrics()
    m.call_ended(
        "caller_hung_up",
        42.0,
        dropped={"flood": 3, "realtime_not_reading": 0},
        bad_input={"twilio.unknown_event": 2, "realtime.not_json": 1},
        usage={"input_tokens": 120, "output_tokens": 30, "total_tokens": 150},
    )
    m.call_ended("failure", 3.0, dropped={}, bad_input={}, detail="realtime_unavailable")
    got = samples(m)
    assert got[("bridge_calls_total", (("outcome", "failure"),))] == 1
    assert got[("bridge_call_failures_total", (("detail", "realtime_unavailable"),))] == 1
    assert got[("bridge_realtime_tokens_total", (("kind", "input"),))] == 120
    assert got[("bridge_realtime_tokens_total", (("kind", "output"),))] == 30
    assert got[("bridge_calls_total", (("outcome", "caller_hung_up"),))] == 1
    assert got[("bridge_call_duration_seconds_bucket", (("le", "60.0"),))] == 2
    assert got[("bridge_call_duration_seconds_bucket", (("le", "30.0"),))] == 1  # the 3 s one
    assert got[("bridge_audio_frames_dropped_total", (("reason", "flood"),))] == 3
    assert got[("bridge_audio_frames_dropped_total", (("reason", "realtime_not_reading"),))] == 0
    assert got[("bridge_bad_input_total", (("source", "twilio"),))] == 2
    assert got[("bridge_bad_input_total", (("source", "realtime"),))] == 1


def test_live_counts_are_read_at_scrape_time() -> None:
    m = Metrics()
    live = [1, 2]
    hits = {"calls": 4}
    stats = StoreStats(written=7, lost=1, write_errors=3, pending=2)
    store = SimpleNamespace(stats=stats, available=False)
    m.read_calls(lambda: len(live), lambda: len(live) - 1, capacity=400)
    m.read_ready(lambda: len(live) < 3)
    m.read_limit_hits(hits)
    m.read_store(lambda: store)
    live.append(3)
    hits["webhook_body"] = 1
    got = samples(m)
    assert got[("bridge_calls_active", ())] == 3
    assert got[("bridge_calls_admitted", ())] == 2
    assert got[("bridge_calls_capacity", ())] == 400
    assert got[("bridge_ready", ())] == 0  # read when scraped: 3 live now
    assert got[("bridge_limit_hits_total", (("limit", "connections"),))] == 0  # known: 0
    assert got[("bridge_limit_hits_total", (("limit", "calls"),))] == 4
    assert got[("bridge_limit_hits_total", (("limit", "webhook_body"),))] == 1
    assert got[("bridge_call_records_written_total", ())] == 7
    assert got[("bridge_call_records_failed_total", ())] == 1
    assert got[("bridge_call_record_write_errors_total", ())] == 3
    assert got[("bridge_call_records_pending", ())] == 2
    assert got[("bridge_call_store_up", ())] == 0


def test_known_label_values_are_there_as_zero_before_any_event() -> None:
    got = samples(Metrics())
    assert got[("bridge_calls_total", (("outcome", "transferred"),))] == 0
    assert got[("bridge_webhook_requests_total", (("result", "busy"),))] == 0
    assert got[("bridge_rest_requests_total", (("action", "hangup"), ("result", "error")))] == 0
    assert got[("bridge_streams_refused_total", (("reason", "bad_stream_token"),))] == 0
    assert not any(name.endswith("_created") for name, _ in got)


def test_two_apps_keep_their_own_series() -> None:
    a, b = Metrics(), Metrics()
    a.observe(Measure(Metric.REPROMPT))
    assert samples(a)[("bridge_reprompts_total", ())] == 1
    assert samples(b)[("bridge_reprompts_total", ())] == 0
