"""The Grafana dashboard and the README's PromQL use only series the app exports.

`deploy/grafana/bridge-dashboard.json` and the sample queries in the README's metrics table
are read by people at 3 a.m.: a query on a name the app doesn't export (a typo, a renamed
series, a forgotten `_total`) shows "No data" and looks like a quiet night. So every metric
name in every query is checked against the text a real `Metrics` renders, with every
series driven once so that labelled ones have samples.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.call.actions import Measure, Metric
from app.metrics import Metrics
from app.store.stats import StoreStats

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "bridge-dashboard.json"
README = REPO_ROOT / "README.md"

#: Every selector filters on the dashboard's template variables.
FILTERS = ('job=~"$job"', 'instance=~"$instance"')
#: `bridge_` families deliberately left off the dashboard (name: why). None so far.
NOT_ON_DASHBOARD: dict[str, str] = {}

# --- What the app exports --------------------------------------------------------------------

#: Labels for each kind of `Measure` a call's core emits (every kind must be listed here).
_MEASURE_LABELS: dict[Metric, tuple[str, ...]] = {
    Metric.BARGE_IN: (),
    Metric.RESPONSE_LATENCY: (),
    Metric.TRUNCATED_AUDIO: (),
    Metric.REPROMPT: (),
    Metric.ENDING_CALLED_OFF: ("hangup",),
    Metric.REALTIME_ERROR: ("rate_limit_exceeded",),
    Metric.TOOL_CALL: ("lookup_order", "ok"),
    Metric.REST: ("hangup", "error"),
    Metric.TOOL_DURATION: ("lookup_order",),
    Metric.MCP_ERROR: ("calendar", "call"),
    Metric.FALSE_TURN: ("false", "backchannel"),
}


def _driven_metrics() -> Metrics:
    """A real `Metrics`, wired as `app.main` wires it, with every series moved once."""
    metrics = Metrics("test")
    metrics.read_calls(lambda: 2, lambda: 1, capacity=400)
    metrics.read_ready(lambda: True)
    metrics.read_limit_hits({"calls": 1, "webhook_body": 1})
    stats = StoreStats(written=3, lost=1, write_errors=2, dropped_full=1, pruned=1, pending=1)
    metrics.read_store(lambda: SimpleNamespace(stats=stats, available=True))
    assert set(_MEASURE_LABELS) == set(Metric), "give every new Metric its labels above"
    for kind, labels in _MEASURE_LABELS.items():
        metrics.observe(Measure(kind, 0.4, labels))
    metrics.call_ended(
        "caller_hung_up",
        42.0,
        dropped={"realtime_not_reading": 1, "flood": 1},
        bad_input={"twilio.unknown_mark": 1, "realtime.bad_json": 1},
        usage={"input_tokens": 10, "output_tokens": 5},
    )
    metrics.call_ended("failure", 1.0, dropped={}, bad_input={}, detail="realtime_lost")
    metrics.webhooks.labels("connect").inc()
    metrics.streams_refused.labels("bad_signature").inc()
    return metrics


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
}


@cache
def exported() -> tuple[frozenset[str], dict[str, str]]:
    """(every series name a scrape can hold, {family name: type}).

    The names are the samples' names (`bridge_calls_total`, `..._bucket`): those, not the
    family names, are what Prometheus stores and PromQL selects. A family that still has no
    sample (a labelled series no test drove) counts by its `# TYPE` line, which
    prometheus_client prints even then, so a new labelled series is never missed."""
    text = _driven_metrics().render().decode()
    names: set[str] = set()
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        names.update(sample.name for sample in family.samples)
        if not family.samples:
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return frozenset(names), families


def test_every_series_is_driven() -> None:
    """The labelled series have samples: the names checked below are the real ones."""
    text = _driven_metrics().render().decode()
    empty = [f.name for f in text_string_to_metric_families(text) if not f.samples]
    assert empty == [], f"drive these in _driven_metrics(): {empty}"


# --- Metric names in a PromQL expression ----------------------------------------------------

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
    | {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects: identifiers that are not functions, keywords,
    label names (in `{...}` or `by (...)`), label values, durations or Grafana variables."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def unknown_names(expr: str) -> set[str]:
    names, _ = exported()
    return metric_names(expr) - names


def test_metric_names_parses_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(bridge_response_latency_seconds_bucket"
        '{job=~"$job", instance=~"$instance"}[$__rate_interval])))'
        " / on (instance) group_left sum without (code)"
        " (increase(bridge_calls_total[5m] offset 1h))"
        ' > bool 1e3 and up{le="0.5"}'
    )
    assert metric_names(expr) == {
        "bridge_response_latency_seconds_bucket",
        "bridge_calls_total",
        "up",
    }
    assert metric_names("sum(rate(process_cpu_seconds_total[5m])) by (instance) * 60") == {
        "process_cpu_seconds_total"
    }


def test_a_typo_is_caught() -> None:
    """The check can fail: a misspelt name, a missing `_total`, a bare histogram name."""
    assert unknown_names("sum(rate(bridge_calls_totl[5m]))") == {"bridge_calls_totl"}
    assert unknown_names("rate(bridge_barge_ins[5m])") == {"bridge_barge_ins"}
    assert unknown_names("bridge_response_latency_seconds") == {"bridge_response_latency_seconds"}
    assert unknown_names("rate(bridge_barge_ins_total[5m])") == set()


# --- The dashboard --------------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return result


def _panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = [
        (f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels()
        for t in p.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"])
            assert found, f"variable {variable['name']}: {variable['query']!r}"
            queries.append((f"variable {variable['name']}", found.group(1)))
    return queries


def test_dashboard_shape() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), where
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["title"], where
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{where}: say what it shows"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for t in panel["targets"]:
            assert isinstance(t["expr"], str) and t["expr"].strip(), where


def test_dashboard_uses_only_exported_series() -> None:
    problems = {where: sorted(unknown_names(expr)) for where, expr in _queries()}
    problems = {where: names for where, names in problems.items() if names}
    assert problems == {}, f"not exported by app.metrics: {problems}"


def test_every_query_is_filtered_by_job_and_instance() -> None:
    for where, expr in _queries():
        if where == "variable job":
            continue  # the variable that lists the jobs
        for name in metric_names(expr):
            for found in re.finditer(rf"\b{re.escape(name)}\b(\{{[^}}]*\}})?", expr):
                matchers = found.group(1) or ""
                needed = FILTERS if where != "variable instance" else FILTERS[:1]
                missing = [f for f in needed if f not in matchers]
                assert not missing, f"{where}: {name} lacks {missing}: {expr}"


def test_every_bridge_series_is_on_the_dashboard() -> None:
    """A new series in app.metrics gets a panel (or a reason in NOT_ON_DASHBOARD)."""
    _, families = exported()
    used = set().union(*(metric_names(expr) for _, expr in _queries()))
    missing = sorted(
        name
        for name, kind in families.items()
        if name.startswith("bridge_")
        and not name.endswith("_created")
        and name not in NOT_ON_DASHBOARD
        and not any(name + suffix in used for suffix in _SUFFIXES.get(kind, ("",)))
        and name not in used
    )
    assert missing == [], f"no panel shows {missing}"


# --- The README -----------------------------------------------------------------------------

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE = re.compile(r"`([^`]+)`")


def _table_rows(text: str) -> list[tuple[list[str], list[str]]]:
    """(header cells, row cells) for every row of every Markdown table in `text`."""
    rows = []
    header: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            header = None
            continue
        cells = [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(stripped)[1:-1]]
        if header is None:
            header = cells
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            rows.append((header, cells))
    return rows


def readme_queries(text: str) -> list[tuple[str, str]]:
    """(series cell, PromQL) from every table with a "query" column, plus the `expr:` lines
    of the README's alerting-rule examples."""
    queries = []
    for header, cells in _table_rows(text):
        columns = [i for i, h in enumerate(header) if "query" in h.lower()]
        for column in columns:
            if column < len(cells):
                queries.extend((cells[0], code) for code in _CODE.findall(cells[column]))
    for found in re.finditer(r"^\s*expr:\s*(.+)$", text, re.MULTILINE):
        queries.append(("alert rule", found.group(1).strip().strip("'\"")))
    return queries


def test_readme_queries_use_only_exported_series() -> None:
    text = README.read_text(encoding="utf-8")
    queries = readme_queries(text)
    if not queries:
        pytest.skip("the README has no metrics table with sample queries yet")
    problems = {
        f"{row}: {expr}": sorted(unknown_names(expr))
        for row, expr in queries
        if unknown_names(expr)
    }
    assert problems == {}, f"not exported by app.metrics: {problems}"


def test_readme_table_names_every_bridge_series() -> None:
    """The metrics table lists each `bridge_` series once, under a name the app exports."""
    text = README.read_text(encoding="utf-8")
    names, families = exported()
    listed = [
        code.split("{")[0]
        for row, _ in readme_queries(text)
        if row != "alert rule"
        for code in _CODE.findall(row)
        if code.startswith("bridge_")
    ]
    if not listed:
        pytest.skip("the README has no metrics table with sample queries yet")
    histograms = {n for n, kind in families.items() if kind == "histogram"}
    assert sorted(set(listed) - names - histograms) == []
    wanted = {
        name + ("_total" if kind == "counter" else "")
        for name, kind in families.items()
        if name.startswith("bridge_") and not name.endswith("_created")
    }
    assert sorted(wanted - set(listed)) == []


def test_readme_parsing() -> None:
    """The README checks above read the shape the metrics table has."""
    text = (
        "| Series | Type | Sample query |\n"
        "|---|---|---|\n"
        "| `bridge_calls_total` | counter | `sum by (outcome) (rate(bridge_calls_total[5m]))` |\n"
        "| `bridge_ready` | gauge | `min(bridge_ready)` or `bridge_redy` |\n"
        "\n| Variable | Meaning |\n|---|---|\n| `OPENAI_API_KEY` | `not_a_query` |\n"
        "```yaml\n    expr: rate(bridge_barge_ins_total[5m]) > 1\n```\n"
    )
    queries = readme_queries(text)
    assert [expr for _, expr in queries] == [
        "sum by (outcome) (rate(bridge_calls_total[5m]))",
        "min(bridge_ready)",
        "bridge_redy",
        "rate(bridge_barge_ins_total[5m]) > 1",
    ]
    assert [sorted(unknown_names(expr)) for _, expr in queries] == [[], [], ["bridge_redy"], []]
