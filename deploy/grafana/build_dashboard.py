"""Generates deploy/grafana/bridge-dashboard.json (scratch script, not part of the repo)."""

import json
import sys

F = 'job=~"$job", instance=~"$instance"'
DS = {"type": "prometheus", "uid": "${datasource}"}

_ids = iter(range(1, 1000))
panels = []


def q(metric: str, extra: str = "") -> str:
    """A selector with the dashboard's job/instance filter (and `extra` matchers)."""
    matchers = F + (", " + extra if extra else "")
    return f"{metric}{{{matchers}}}"


def target(expr, legend="", ref="A", instant=False, fmt=None):
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if fmt:
        t["format"] = fmt
    return t


def targets(*specs):
    return [target(e, lg, chr(ord("A") + i)) for i, (e, lg) in enumerate(specs)]


def row(title, y):
    panels.append(
        {
            "type": "row",
            "id": next(_ids),
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }
    )


def ts(title, desc, unit, tgts, pos, *, stack=False, min0=True, thresholds=None, decimals=None):
    defaults = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "axisSoftMin": 0 if min0 else None,
            "thresholdsStyle": {"mode": "line" if thresholds else "off"},
        },
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}]
            + [{"color": "red", "value": thresholds}] * bool(thresholds),
        },
    }
    if not min0:
        del defaults["custom"]["axisSoftMin"]
    if decimals is not None:
        defaults["decimals"] = decimals
    panels.append(
        {
            "type": "timeseries",
            "id": next(_ids),
            "title": title,
            "description": desc,
            "datasource": DS,
            "gridPos": pos,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
            "targets": tgts,
        }
    )


def stat(title, desc, unit, tgts, pos, steps, decimals=None):
    defaults = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": {"mode": "absolute", "steps": steps},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    panels.append(
        {
            "type": "stat",
            "id": next(_ids),
            "title": title,
            "description": desc,
            "datasource": DS,
            "gridPos": pos,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "auto",
            },
            "targets": tgts,
        }
    )


def states(title, desc, expr, legend, pos, off_text, on_text):
    panels.append(
        {
            "type": "state-timeline",
            "id": next(_ids),
            "title": title,
            "description": desc,
            "datasource": DS,
            "gridPos": pos,
            "fieldConfig": {
                "defaults": {
                    "unit": "none",
                    "color": {"mode": "thresholds"},
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [
                            {"color": "red", "value": None},
                            {"color": "green", "value": 1},
                        ],
                    },
                    "mappings": [
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": off_text, "color": "red", "index": 0},
                                "1": {"text": on_text, "color": "green", "index": 1},
                            },
                        }
                    ],
                    "custom": {"fillOpacity": 80, "lineWidth": 0},
                },
                "overrides": [],
            },
            "options": {
                "showValue": "never",
                "mergeValues": True,
                "rowHeight": 0.9,
                "alignValue": "left",
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
                "tooltip": {"mode": "single", "sort": "none"},
            },
            "targets": [target(expr, legend)],
        }
    )


def pos(x, y, w, h=8):
    return {"h": h, "w": w, "x": x, "y": y}


def per_min(expr_inner: str, by: str = "") -> str:
    group = f"sum by ({by}) " if by else "sum"
    return f"{group}(rate({expr_inner}[5m])) * 60"


def quantile(qv: str, bucket: str, extra: str = "") -> str:
    return f"histogram_quantile({qv}, sum by (le) (rate({q(bucket, extra)}[5m])))"


GREEN = [{"color": "green", "value": None}]
NOT_OK = 'result!="ok"'

# --- Calls ---------------------------------------------------------------------------------
y = 0
row("Calls", y)
y += 1
stat(
    "Calls live",
    "Media streams open right now, summed over the selected instances "
    "(`bridge_calls_active`). Each live call holds one Twilio and one Realtime socket.",
    "short",
    [target(f"sum({q('bridge_calls_active')})", "calls live")],
    pos(0, y, 4, 7),
    GREEN,
    decimals=0,
)
stat(
    "Instances ready",
    "Instances that take new calls (`bridge_ready` = 1) out of those scraped. An instance is "
    "not ready while it starts, drains for a deploy (SIGTERM), or is full "
    "(MAX_CONCURRENT_CALLS): exactly when its `/readyz` answers 503.",
    "short",
    targets(
        (f"sum({q('bridge_ready')})", "ready"),
        (f"count({q('bridge_ready')})", "scraped"),
    ),
    pos(4, y, 4, 7),
    GREEN,
    decimals=0,
)
stat(
    "Heard latency p95",
    "95th percentile over the last 5 minutes, all selected instances: end of the caller's turn "
    "(`speech_stopped`) to the first audio of the answer the caller actually heard (its first "
    "Twilio mark echo). Above 1.5 s callers start talking over the bot.",
    "s",
    [target(quantile("0.95", "bridge_response_latency_seconds_bucket"), "p95")],
    pos(8, y, 4, 7),
    [
        {"color": "green", "value": None},
        {"color": "orange", "value": 1},
        {"color": "red", "value": 1.5},
    ],
    decimals=2,
)
ts(
    "Calls per minute by outcome",
    "Finished calls per minute (5 minute rate), by how they ended (`outcome` is the "
    "`call.summary` line's `ended`: caller_hung_up, bot_hung_up, transferred, max_duration, "
    "shutdown, failure, bridge_error). Counted as each call ends; a rise in `failure` means "
    "callers heard the fallback message.",
    "cpm",
    [target(per_min(q("bridge_calls_total"), "outcome"), "{{outcome}}")],
    pos(12, y, 12, 7),
    stack=True,
)
y += 7
ts(
    "Calls per instance, against capacity",
    "Admitted calls per instance (`bridge_calls_admitted`: their `start` was accepted) and "
    "the instance's MAX_CONCURRENT_CALLS (`bridge_calls_capacity`): at the capacity the "
    "webhook answers busy and `/readyz` turns 503.",
    "short",
    targets(
        (f"sum by (instance) ({q('bridge_calls_admitted')})", "{{instance}} calls"),
        (f"max by (instance) ({q('bridge_calls_capacity')})", "{{instance}} capacity"),
    ),
    pos(0, y, 12),
    decimals=0,
)
ts(
    "Call duration p50 / p95",
    "Length of finished calls, from Twilio's `start` to the end, over the last 5 minutes "
    "(`bridge_call_duration_seconds`; buckets from 5 s to 1 h, so the figures are coarse).",
    "s",
    targets(
        (quantile("0.5", "bridge_call_duration_seconds_bucket"), "p50"),
        (quantile("0.95", "bridge_call_duration_seconds_bucket"), "p95"),
    ),
    pos(12, y, 12),
)
y += 8

# --- What the caller hears -------------------------------------------------------------------
row("What the caller hears", y)
y += 1
ts(
    "Heard latency p50 / p95 / p99",
    "End of the caller's turn (`speech_stopped`) to the first audio of the answer heard by the "
    "caller (first mark echo), over the last 5 minutes (`bridge_response_latency_seconds`). "
    "It includes the model's time to answer and Twilio's playout. The red line is 1.5 s.",
    "s",
    targets(
        (quantile("0.5", "bridge_response_latency_seconds_bucket"), "p50"),
        (quantile("0.95", "bridge_response_latency_seconds_bucket"), "p95"),
        (quantile("0.99", "bridge_response_latency_seconds_bucket"), "p99"),
    ),
    pos(0, y, 12),
    thresholds=1.5,
)
ts(
    "Answers heard per minute",
    "Caller turns answered with audio the caller heard, per minute (the count of "
    "`bridge_response_latency_seconds`). Few answers make the latency percentiles noisy.",
    "cpm",
    [target(per_min(q("bridge_response_latency_seconds_count")), "answers")],
    pos(12, y, 12),
)
y += 8
ts(
    "Barge-ins per minute",
    "Times a caller cut the bot off, per minute (`bridge_barge_ins_total`). Many barge-ins "
    "with short answers can mean noise on the line or a VAD threshold set too low.",
    "cpm",
    [target(per_min(q("bridge_barge_ins_total")), "barge-ins")],
    pos(0, y, 8),
)
ts(
    "Barge-in reaction p95",
    "95th percentile over 5 minutes of `speech_started` received to Twilio `clear` sent "
    "(`bridge_barge_in_reaction_seconds`): how long the bot keeps talking once the caller "
    "starts. Near 0 with INTERRUPT_MIN_SPEECH_MS=0; about that setting otherwise.",
    "s",
    [target(quantile("0.95", "bridge_barge_in_reaction_seconds_bucket"), "p95")],
    pos(8, y, 8),
)
ts(
    "Bot audio cut by barge-ins (seconds per minute)",
    "Seconds of bot audio per minute that were sent to the caller but cut by a barge-in "
    "before they were heard (`bridge_truncated_audio_seconds_total`). The model is told "
    "where it was cut.",
    "s",
    [target(per_min(q("bridge_truncated_audio_seconds_total")), "audio cut per minute")],
    pos(16, y, 8),
)
y += 8
ts(
    "Reprompts and endings called off",
    "Per minute: times the bot checked on a silent caller (`bridge_reprompts_total`), and "
    "goodbyes or transfers called off because the caller spoke over them "
    "(`bridge_endings_called_off_total`, by kind).",
    "cpm",
    targets(
        (per_min(q("bridge_reprompts_total")), "reprompts"),
        (per_min(q("bridge_endings_called_off_total"), "kind"), "{{kind}} called off"),
    ),
    pos(0, y, 24),
)
y += 8

# --- Twilio, OpenAI and tools ------------------------------------------------------------------
row("Twilio, OpenAI and tools", y)
y += 1
ts(
    "Twilio REST actions per minute",
    "Twilio REST updates of live calls (hang-up, transfer) per minute, by action and result "
    "(`ok` 2xx, `error` any other status, `unreachable` no answer) "
    "(`bridge_rest_requests_total`).",
    "reqpm",
    [target(per_min(q("bridge_rest_requests_total"), "action, result"), "{{action}} {{result}}")],
    pos(0, y, 8),
)
ts(
    "Twilio REST error ratio",
    "Share of Twilio REST actions that did not succeed (`error` or `unreachable`) over 5 "
    "minutes, by action. A failed hang-up leaves the caller on the line until Twilio's "
    "fallback; check the credentials and `rest.response` log lines.",
    "percentunit",
    [
        target(
            f"sum by (action) (rate({q('bridge_rest_requests_total', NOT_OK)}[5m]))"
            f" / sum by (action) (rate({q('bridge_rest_requests_total')}[5m]))",
            "{{action}}",
        )
    ],
    pos(8, y, 8),
    thresholds=0.05,
)
ts(
    "Realtime errors per minute by code",
    "`error` events from the OpenAI Realtime service per minute, by code "
    "(`bridge_realtime_errors_total`; past 50 distinct codes the rest count as `other`). "
    "`insufficient_quota` or `invalid_api_key` end every call.",
    "cpm",
    [target(per_min(q("bridge_realtime_errors_total"), "code"), "{{code}}")],
    pos(16, y, 8),
)
y += 8
ts(
    "Tool calls per minute",
    "The model's function calls per minute, by tool and result (`ok`, `error`, `timeout`, "
    "`cancelled`) (`bridge_tool_calls_total`; past 50 distinct tools the rest count as "
    "`other`).",
    "cpm",
    [target(per_min(q("bridge_tool_calls_total"), "tool, result"), "{{tool}} {{result}}")],
    pos(0, y, 12),
)
ts(
    "Tool call failure ratio",
    "Share of each tool's calls over 5 minutes whose result was not `ok` "
    "(`bridge_tool_calls_total`).",
    "percentunit",
    [
        target(
            f"sum by (tool) (rate({q('bridge_tool_calls_total', NOT_OK)}[5m]))"
            f" / sum by (tool) (rate({q('bridge_tool_calls_total')}[5m]))",
            "{{tool}}",
        )
    ],
    pos(12, y, 12),
    thresholds=0.1,
)
y += 8
ts(
    "Tool run time p95",
    "95th percentile of how long business tools ran over 5 minutes, by tool (HTTP, Python "
    "and MCP calls; `bridge_tool_call_duration_seconds`). A tool near its timeout (8 s by "
    "default) leaves callers listening to the filler.",
    "s",
    [
        target(
            "histogram_quantile(0.95, sum by (le, tool) "
            f"(rate({q('bridge_tool_call_duration_seconds_bucket')}[5m])))",
            "{{tool}}",
        )
    ],
    pos(0, y, 12),
)
ts(
    "MCP failures per minute",
    "MCP failures the Realtime service reported, by server and kind (`list_tools`: the "
    "server could not be listed, so its tools were not offered; `call`) "
    "(`bridge_mcp_errors_total`).",
    "cpm",
    [target(per_min(q("bridge_mcp_errors_total"), "server, kind"), "{{server}} {{kind}}")],
    pos(12, y, 12),
)
y += 8

# --- Inputs and limits ---------------------------------------------------------------------
row("Inputs and limits", y)
y += 1
ts(
    "Voice webhook requests per minute by result",
    "`POST /incoming-call` per minute by answer (`bridge_webhook_requests_total`): `connect` "
    "(the stream TwiML), `busy` (MAX_CONCURRENT_CALLS reached), `apology` (no "
    "OPENAI_API_KEY), `bad_signature` (403: PUBLIC_BASE_URL or TWILIO_AUTH_TOKEN wrong), "
    "`bad_request`, `refused_body` (413/408).",
    "reqpm",
    [target(per_min(q("bridge_webhook_requests_total"), "result"), "{{result}}")],
    pos(0, y, 8),
    stack=True,
)
ts(
    "Media streams refused per minute by reason",
    "Media streams that never became a call, per minute, by reason "
    "(`bridge_streams_refused_total`): `bad_signature`, `at_capacity`, `no_openai_key`, "
    "`no_start`, `bad_stream_token`, `account_mismatch`, `duplicate_call`...",
    "cpm",
    [target(per_min(q("bridge_streams_refused_total"), "reason"), "{{reason}}")],
    pos(8, y, 8),
)
ts(
    "Limit hits per minute by limit",
    'Refusals by limit per minute (`bridge_limit_hits_total`; README "Security"): '
    "`webhook_body`, `connections`, `request_timeout`, `calls` as they happen; "
    "`twilio_frame`, `twilio_stalled`, `twilio_idle`, `duplicate_call`, `caller_audio`, "
    "`recording_bytes` as each call ends.",
    "cpm",
    [target(per_min(q("bridge_limit_hits_total"), "limit"), "{{limit}}")],
    pos(16, y, 8),
)
y += 8
ts(
    "Caller audio frames dropped per minute",
    "Caller audio frames not forwarded to the model, per minute, by reason "
    "(`bridge_audio_frames_dropped_total`): `realtime_not_reading` (the service's socket "
    "was full) or `flood` (audio faster than real time). Counted as each call ends.",
    "cpm",
    [target(per_min(q("bridge_audio_frames_dropped_total"), "reason"), "{{reason}}")],
    pos(0, y, 12),
)
ts(
    "Bad input per minute by source",
    "Messages skipped as malformed, per minute, by the side that sent them: `twilio`, "
    "`realtime` or `rest` (`bridge_bad_input_total`). Counted as each call ends; the call's "
    "`call.summary` has the kinds.",
    "cpm",
    [target(per_min(q("bridge_bad_input_total"), "source"), "{{source}}")],
    pos(12, y, 12),
)
y += 8

# --- Call records ----------------------------------------------------------------------------
row("Call records", y)
y += 1
ts(
    "Call records per minute",
    "What the call store's writer did, per minute: records written, records given up after "
    "their retries (`failed`: each is logged with its CallSid), failed write attempts (retried), "
    "records dropped because the queue was full, and records deleted by the retention.",
    "cpm",
    targets(
        (per_min(q("bridge_call_records_written_total")), "written"),
        (per_min(q("bridge_call_records_failed_total")), "failed (lost)"),
        (per_min(q("bridge_call_record_write_errors_total")), "write errors"),
        (per_min(q("bridge_call_records_dropped_total")), "dropped (queue full)"),
        (per_min(q("bridge_call_records_pruned_total")), "pruned"),
        (per_min(q("bridge_call_records_duplicate_total")), "duplicate (kept the first)"),
    ),
    pos(0, y, 12),
)
ts(
    "Call records pending",
    "Records submitted and not yet written, per instance (`bridge_call_records_pending`). "
    "Above 0 for minutes means the database is slow or down; records are retried for "
    "CALL_RECORDS_RETRY_SECONDS, then lost.",
    "short",
    [target(f"sum by (instance) ({q('bridge_call_records_pending')})", "{{instance}}")],
    pos(12, y, 6),
    decimals=0,
)
states(
    "Call store up",
    "1 when the last operation on the call store (SQLite or PostgreSQL) worked "
    "(`bridge_call_store_up`), per instance. Calls go on while it is down.",
    q("bridge_call_store_up"),
    "{{instance}}",
    pos(18, y, 6),
    "down",
    "up",
)
y += 8

ts(
    "Failed calls per minute by detail",
    "Calls that ended in `failure` (the caller heard the fallback), by `end_detail` "
    "(`bridge_call_failures_total`): realtime_unavailable or realtime_lost is the OpenAI "
    "side, twilio_idle or twilio_stalled the caller's, rest_*_failed the Twilio REST API.",
    "cpm",
    [target(per_min(q("bridge_call_failures_total"), "detail"), "{{detail}}")],
    pos(0, y, 12),
    stack=True,
)
ts(
    "Realtime tokens per minute",
    "Tokens the finished calls used, by kind (`bridge_realtime_tokens_total`, from each "
    "call's `usage`): what the calls cost, counted as each call ends.",
    "short",
    [target(per_min(q("bridge_realtime_tokens_total"), "kind"), "{{kind}}")],
    pos(12, y, 12),
    stack=True,
)
y += 8

# --- Process -------------------------------------------------------------------------------
row("Process", y)
y += 1
states(
    "Ready per instance",
    "`bridge_ready` per instance: 1 while it takes new calls, 0 while starting or draining "
    "(`/readyz` is also 503 while full). Read at each scrape.",
    q("bridge_ready"),
    "{{instance}}",
    pos(0, y, 8),
    "not ready",
    "ready",
)
ts(
    "Process CPU",
    "CPU time used per second, per instance (`process_cpu_seconds_total`): 1 = one core "
    "fully busy. The process runs on one core; past about 0.8 latency climbs "
    '(README "Measured").',
    "percentunit",
    [target(f"rate({q('process_cpu_seconds_total')}[5m])", "{{instance}}")],
    pos(8, y, 8),
    thresholds=0.8,
)
ts(
    "Resident memory",
    "Resident set size per instance (`process_resident_memory_bytes`). A call holds about "
    "0.06 MB.",
    "bytes",
    [target(q("process_resident_memory_bytes"), "{{instance}}")],
    pos(16, y, 8),
)
y += 8
ts(
    "Open file descriptors (share of the limit)",
    "Open file descriptors over the process's limit, per instance (`process_open_fds` / "
    "`process_max_fds`). Each call holds two sockets; at 1 new connections fail.",
    "percentunit",
    [
        target(
            f"{q('process_open_fds')} / {q('process_max_fds')}",
            "{{instance}}",
        )
    ],
    pos(0, y, 12),
    thresholds=0.8,
)
panels.append(
    {
        "type": "table",
        "id": next(_ids),
        "title": "Version per instance",
        "description": "The bridge version each instance runs (`bridge_build_info`), "
        "to spot a half-done rolling deploy.",
        "datasource": DS,
        "gridPos": pos(12, y, 12),
        "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "indexByName": {},
                    "renameByName": {},
                },
            }
        ],
        "targets": [
            target(q("bridge_build_info"), "", instant=True, fmt="table"),
        ],
    }
)


def var(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
    }


dashboard = {
    "__inputs": [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes the bridge's /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ],
    "__elements": {},
    "__requires": [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        {"type": "panel", "id": "state-timeline", "name": "State timeline", "version": ""},
        {"type": "panel", "id": "table", "name": "Table", "version": ""},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    ],
    "annotations": {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            }
        ]
    },
    "description": "Twilio Media Streams to OpenAI Realtime bridge: calls, what callers hear, "
    "Twilio/OpenAI/tool errors, refusals and limits, call records, the process. Series from "
    'GET /metrics (README "Operating it"). A panel with no data means that counter has not '
    "moved since the instances started.",
    "editable": True,
    "fiscalYearStartMonth": 0,
    "graphTooltip": 1,
    "id": None,
    "links": [],
    "liveNow": False,
    "panels": panels,
    "refresh": "30s",
    "schemaVersion": 39,
    "tags": ["twilio", "openai-realtime", "voice"],
    "templating": {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {"selected": False, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
                "skipUrlSync": False,
            },
            var("job", "Job", "label_values(bridge_build_info, job)"),
            var("instance", "Instance", 'label_values(bridge_build_info{job=~"$job"}, instance)'),
        ]
    },
    "time": {"from": "now-6h", "to": "now"},
    "timepicker": {},
    "timezone": "browser",
    "title": "Twilio Realtime bridge",
    "uid": "twilio-realtime-bridge",
    "version": 1,
    "weekStart": "",
}

json.dump(dashboard, open(sys.argv[1], "w"), indent=2, ensure_ascii=False)
open(sys.argv[1], "a").write("\n")
print(len(panels), "panels")
