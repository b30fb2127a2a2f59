"""The agents file (AGENTS_FILE): checked at start with exact error lines, and the
per-call configuration of its agents (`app.agents.Agents`)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openai.types.realtime.realtime_function_tool import RealtimeFunctionTool
from openai.types.realtime.realtime_tools_config_union import Mcp, RealtimeToolsConfigUnion
from pydantic import TypeAdapter

from app import observability, recording_lines
from app.agents import TEMPLATE_PARAMETERS, Agents, envrefs, fill
from app.agents.load import MIN_SECRET_CHARS
from app.agents.model import TURN_FIELDS, AgentEntry
from app.call.config import CallConfig
from app.call.toolspec import DEFAULT_FILLER, ToolSpec
from app.main import create_app, default_app
from app.observability import scrub
from app.settings import Settings, SettingsError, load_settings
from app.tools.defs import MAX_OUTPUT_BYTES, HttpTool, PythonTool, ToolContext
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "agents.toml"
ENV_NAMES = [name.upper() for name in Settings.model_fields]
NOW = datetime(2026, 12, 2, 13, 5, tzinfo=UTC)
REST = {"twilio_account_sid": "AC" + "a" * 32, "twilio_auth_token": "token-0123456789"}
TOOLS_ADAPTER: TypeAdapter[Any] = TypeAdapter(RealtimeToolsConfigUnion)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the real environment leaks in; files are written in `tmp_path`,
    the working directory, so they are named as relative paths like an operator would."""
    for key in list(os.environ):
        if key.upper() in ENV_NAMES:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, **overrides)


def agents(text: str, environ: dict[str, str] | None = None, **overrides: Any) -> Agents:
    Path("agents.toml").write_text(text, encoding="utf-8")
    return Agents.from_settings(settings(agents_file="agents.toml", **overrides), environ or {})


def mistakes(text: str, environ: dict[str, str] | None = None, **overrides: Any) -> list[str]:
    with pytest.raises(SettingsError) as info:
        agents(text, environ, **overrides)
    return info.value.problems


def base(**overrides: Any) -> CallConfig:
    return CallConfig.from_settings(settings(**overrides))


# --- no file: nothing changes -----------------------------------------------------------


def test_without_a_file_there_is_one_default_agent_that_changes_nothing() -> None:
    directory = Agents.from_settings(settings())
    assert directory.names == ("default",) and not directory.configured
    assert directory.pick("+15550100") == directory.pick(None) == "default"
    config = base(**REST, transfer_number="+15550199")
    assert directory.for_call({"To": "+15550100"}, config, NOW) is config
    assert (directory.executors, dict(directory.env), directory.secrets()) == ({}, {}, [])
    assert directory.warnings == []


# --- the example --------------------------------------------------------------------------


def test_the_example_loads_with_todays_defaults() -> None:
    directory = Agents.from_settings(settings(agents_file=EXAMPLE), {})
    assert directory.names == ("default", "sales", "reminders", "support")
    reminder = directory.for_call(
        {"To": "+15550123", "From": "+15550100"},
        base(**REST),
        NOW,
        context={"name": "Ada", "slot": "tomorrow at nine"},
        agent="reminders",
    )
    assert 'You call "Ada" on behalf of Example Clinic ("+15550100")' in reminder.instructions
    assert reminder.greeting.endswith('whether "tomorrow at nine" still suits them.')
    assert [directory.pick(n) for n in ("+15550100", "+15550101", "+15550999", None)] == [
        "sales",
        "support",
        "default",
        "default",
    ]
    lookup = directory.executors["lookup_order"]
    assert lookup == HttpTool(
        name="lookup_order",
        url="http://127.0.0.1:8088/order",
        headers={"Authorization": "Bearer demo-token"},  # ${CRM_TOKEN:-demo-token}
        timeout_s=8.0,
    )
    assert isinstance(directory.executors["opening_hours"], PythonTool)
    assert directory.secrets() == ["Bearer demo-token"]
    file = str(EXAMPLE)
    assert directory.warnings == [  # the calendar needs no approval: the sales agent books
        "TOOLS_SIGNING_SECRET is not set: the requests of the HTTP tools of "
        f"{file} (lookup_order) are not signed, so their endpoints can't tell the bridge "
        "from anyone else who reaches them.",
    ]
    support = directory.for_call(
        {"To": "+15550101", "From": "+4930123"}, base(**REST), NOW, context=None
    )
    assert support.agent == "support" and support.greeting == ""
    assert support.instructions.startswith("You are the support line of Example Co.")
    assert 'The caller\'s number is "+4930123" and they dialled "+15550101".' in (
        support.instructions
    )
    assert '"Wednesday 2 December 2026, 13:05 (UTC)"' in support.instructions
    assert [f.name for f in support.functions] == ["lookup_order", "opening_hours"]
    assert support.vad_silence_duration_ms == 700 and support.tools == ("end_call",)
    sales = directory.for_call({"To": "+15550100"}, base(), NOW)
    assert (sales.voice, sales.turn_detection, sales.vad_eagerness) == (
        "cedar",
        "semantic_vad",
        "medium",
    )
    assert sales.mcp_servers == (
        {
            "type": "mcp",
            "server_label": "calendar",
            "server_url": "https://mcp.example.com/mcp",
            "allowed_tools": ["find_slot", "book_slot"],
            "require_approval": "never",
            "server_description": "The sales team's calendar: free slots and bookings.",
        },
    )
    for entry in sales.mcp_servers:
        assert isinstance(TOOLS_ADAPTER.validate_python(entry), Mcp)
    for spec in (*sales.functions, *support.functions):
        assert isinstance(TOOLS_ADAPTER.validate_python(spec.definition()), RealtimeFunctionTool)


async def test_the_example_python_tool_runs() -> None:
    directory = Agents.from_settings(settings(agents_file=EXAMPLE), {})
    tool = directory.executors["opening_hours"]
    assert isinstance(tool, PythonTool)
    context = ToolContext(call_sid="CA1", agent="default", from_number="+1", to_number="+2")
    assert await tool.function(context, {"day": "Thursday"}) == {
        "day": "thursday",
        "open": True,
        "hours": "9:00 to 19:00",
    }
    assert await tool.function(context, {"day": "sunday"}) == {"day": "sunday", "open": False}


def test_the_example_takes_crm_token_from_the_environment() -> None:
    directory = Agents.from_settings(settings(agents_file=EXAMPLE), {"CRM_TOKEN": "crm-secret-1"})
    lookup = directory.executors["lookup_order"]
    assert isinstance(lookup, HttpTool)
    assert lookup.headers == {"Authorization": "Bearer crm-secret-1"}
    assert directory.secrets() == ["Bearer crm-secret-1", "crm-secret-1"]


# --- per-call configs ---------------------------------------------------------------------

FULL = """
[agents.front]
default = true
instructions = "Front desk. Caller {caller_number} from {caller_city}, {caller_country}."
greeting = "Say hello to {caller_number}."
tools = ["lookup", "hours", "calendar"]

[agents.sales]
numbers = ["+1 (555) 0100"]
instructions = "Sales ({agent}) at {local_time}, appointment {appointment_time}."
greeting = ""
voice = "Ash"
transfer_number = "+15550199"
timezone = "Europe/Berlin"
turn_detection = "semantic_vad"
vad_eagerness = "high"
context = ["appointment_time"]
tools = ["calendar"]

[agents.quiet]
numbers = ["+15550102"]
vad_threshold = 0.8
vad_prefix_padding_ms = 100
vad_silence_duration_ms = 900
interrupt_min_speech_ms = 250

[tools.lookup]
description = "Look up an order."
url = "https://crm.example.com/order"
method = "put"
headers = { Authorization = "Bearer ${CRM_TOKEN}", "X-Team" = "${TEAM:-phones}" }
timeout_seconds = 5
max_reply_bytes = 1000
on_interrupt = "cancel"
filler_after_ms = 0
filler = "Hold on."
redact = ["card"]
[tools.lookup.parameters]
type = "object"
properties = { order_id = { type = "string" }, card = { type = "string" } }
required = ["order_id"]

[tools.hours]
function = "examples.tools:opening_hours"
timeout_seconds = 1.5

[tools.calendar]
mcp_url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${CAL_TOKEN}" }
require_approval = "always"
"""
ENV = {"CRM_TOKEN": "crm-token-123", "CAL_TOKEN": "cal-token-456", "TEAM": ""}


def test_for_call_applies_the_agent_answering_the_dialled_number() -> None:
    directory = agents(FULL, ENV, **REST, transfer_number="+15550111", vad_threshold=0.4)
    assert directory.names == ("front", "sales", "quiet")
    config = base(**REST, transfer_number="+15550111", vad_threshold=0.4)
    params = {"To": "+15550999", "From": "+4930123", "FromCity": "BERLIN", "FromCountry": "DE"}
    front = directory.for_call(params, config, NOW)
    assert front == replace(
        config,
        agent="front",
        instructions='Front desk. Caller "+4930123" from "BERLIN", "DE".',
        greeting='Say hello to "+4930123".',
        tools=("end_call", "transfer_call"),
        functions=(
            ToolSpec(
                name="lookup",
                description="Look up an order.",
                parameters={
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}, "card": {"type": "string"}},
                    "required": ["order_id"],
                },
                kind="http",
                timeout_ms=5000,
                filler_after_ms=0,
                filler_text="Hold on.",
                on_interrupt="cancel",
                redact=("card",),
            ),
            ToolSpec(
                name="hours",
                parameters={"type": "object", "properties": {}},
                kind="python",
                timeout_ms=1500,
                filler_text=DEFAULT_FILLER,
            ),
        ),
        mcp_servers=(
            {
                "type": "mcp",
                "server_label": "calendar",
                "server_url": "https://mcp.example.com/mcp",
                "require_approval": "always",
                "headers": {"Authorization": "Bearer ${CAL_TOKEN}"},  # as written
            },
        ),
    )
    sales = directory.for_call(
        {"To": "+15550100"}, config, NOW, context={"appointment_time": "3 pm", "other": "x"}
    )
    assert sales == replace(
        config,
        agent="sales",
        instructions='Sales ("sales") at "Wednesday 2 December 2026, 14:05 (Europe/Berlin)", '
        'appointment "3 pm".',
        greeting="",
        voice="ash",
        transfer_number="+15550199",
        tools=("end_call", "transfer_call"),
        turn_detection="semantic_vad",
        vad_eagerness="high",
        mcp_servers=front.mcp_servers,
    )
    quiet = directory.for_call({"To": "+15550102"}, config, NOW)
    assert quiet == replace(
        config,
        agent="quiet",
        vad_threshold=0.8,
        vad_prefix_padding_ms=100,
        vad_silence_duration_ms=900,
        interrupt_min_speech_ms=250,
        interrupt_mode="cancel",  # as INTERRUPT_MIN_SPEECH_MS alone makes it
    )
    # An outbound call names its agent; its context fills the agent's declared names.
    chosen = directory.for_call({"To": "+15550999"}, config, NOW, agent="sales")
    assert chosen.agent == "sales" and 'appointment "".' in chosen.instructions
    assert directory.context_names("sales") == ("appointment_time",)
    with pytest.raises(KeyError):
        directory.for_call({}, config, NOW, agent="nobody")


def test_builtin_tools_follow_rest_credentials_and_transfer_numbers() -> None:
    text = '[agents.default]\n[agents.t]\nnumbers = ["+15550100"]\ntransfer_number = "+15550199"\n'
    rest = agents(text, **REST)
    with_rest = base(**REST)
    assert rest.for_call({"To": "+15550999"}, with_rest, NOW).tools == ("end_call",)
    own = rest.for_call({"To": "+15550100"}, with_rest, NOW)
    assert own.tools == ("end_call", "transfer_call") and own.transfer_number == "+15550199"
    env_number = base(**REST, transfer_number="+15550111")
    assert rest.for_call({"To": "+15550999"}, env_number, NOW).tools == (
        "end_call",
        "transfer_call",
    )
    no_rest = agents(text)
    assert no_rest.for_call({"To": "+15550100"}, base(), NOW).tools == ()
    assert no_rest.warnings == [
        "agents.toml: agents.t.transfer_number is set but TWILIO_ACCOUNT_SID and "
        "TWILIO_AUTH_TOKEN are not both set: transfer_call is not offered."
    ]


def test_header_references_resolve_at_start_and_mcp_keeps_them_as_written() -> None:
    directory = agents(FULL, ENV)
    lookup = directory.executors["lookup"]
    assert lookup == HttpTool(
        name="lookup",
        url="https://crm.example.com/order",
        method="PUT",
        headers={"Authorization": "Bearer crm-token-123", "X-Team": "phones"},  # TEAM empty
        timeout_s=5.0,
        max_reply_bytes=1000,
    )
    hours = directory.executors["hours"]
    assert isinstance(hours, PythonTool) and hours.timeout_s == 1.5
    assert set(directory.executors) == {"lookup", "hours"}  # MCP servers run remotely
    assert dict(directory.env) == {"CAL_TOKEN": "cal-token-456"}
    [server] = directory.for_call({}, base(), NOW).mcp_servers
    assert isinstance(TOOLS_ADAPTER.validate_python(server), Mcp)
    sent = {k: fill(v, directory.env) for k, v in server["headers"].items()}
    assert sent == {"Authorization": "Bearer cal-token-456"}
    assert directory.secrets() == [  # X-Team's "phones" (a fallback) is too short to scrub
        "Bearer cal-token-456",
        "Bearer crm-token-123",
        "cal-token-456",
        "crm-token-123",
    ]


def test_max_reply_bytes_goes_up_to_256_kib() -> None:
    text = '[agents.default]\n[tools.a]\nurl = "https://x.example"\nmax_reply_bytes = 262144\n'
    tool = agents(text).executors["a"]
    assert isinstance(tool, HttpTool) and tool.max_reply_bytes == MAX_OUTPUT_BYTES == 262144
    default = agents(text.replace("max_reply_bytes = 262144\n", "")).executors["a"]
    assert isinstance(default, HttpTool) and default.max_reply_bytes == 65536


HEADERS = """
[agents.default]
tools = ["lookup", "cal"]
[tools.lookup]
url = "https://crm.example.com/order"
headers = { Authorization = "Bearer ${CRM_TOKEN}", X-Team = "${TEAM}" }
[tools.cal]
mcp_url = "https://mcp.example.com/mcp"
headers = { X-Cal = "${CAL_TOKEN}" }
"""


def test_header_values_from_the_environment_lose_trailing_whitespace() -> None:
    """A secret mounted as a file ends in a newline: it is no part of the value."""
    environ = {"CRM_TOKEN": "crm-token-123\n", "TEAM": "phones \t\r\n", "CAL_TOKEN": "cal-9\n"}
    directory = agents(HEADERS, environ)
    lookup = directory.executors["lookup"]
    assert isinstance(lookup, HttpTool)
    assert lookup.headers == {"Authorization": "Bearer crm-token-123", "X-Team": "phones"}
    assert dict(directory.env) == {"CAL_TOKEN": "cal-9"}  # what the driver fills in
    assert directory.secrets() == ["Bearer crm-token-123", "crm-token-123"]
    # Nothing but whitespace: as unset (and so missing).
    assert mistakes(HEADERS, {**environ, "TEAM": " \n"}) == [
        "agents.toml: tools.lookup.headers.X-Team: ${TEAM} is not set in the environment"
    ]


@pytest.mark.parametrize(
    "bad",
    ["tok\nen-123456", "tok\ren-123456", "tok\x00en-123456", "tok\x1ben-123456", "tøken-123456"],
    ids=["lf", "cr", "nul", "esc", "non_ascii"],
)
def test_a_header_value_from_the_environment_is_checked_at_start(bad: str) -> None:
    """Every request with it would fail (`unreachable`): a start-up error instead, naming
    the header and the variable, never the value."""
    environ = {"CRM_TOKEN": bad + "\n", "TEAM": "phones", "CAL_TOKEN": bad}
    lines = mistakes(HEADERS, environ)
    assert lines == [
        f"agents.toml: tools.{tool}.headers.{header}: the value of ${{{var}}} holds a line "
        "break, another control character or non-ASCII text (past its trailing whitespace, "
        "which is removed): every request would fail"
        for tool, header, var in [
            ("lookup", "Authorization", "CRM_TOKEN"),
            ("cal", "X-Cal", "CAL_TOKEN"),
        ]
    ]
    assert not any(bad.strip() in line or "tok" in line for line in lines)


def test_a_tab_inside_a_header_value_is_allowed() -> None:
    environ = {"CRM_TOKEN": "a\tb-123456", "TEAM": "phones", "CAL_TOKEN": "cal-token-456"}
    lookup = agents(HEADERS, environ).executors["lookup"]
    assert isinstance(lookup, HttpTool) and lookup.headers["Authorization"] == "Bearer a\tb-123456"


SECRET_HEADERS = """
[agents.default]
tools = ["a", "cal"]
[tools.a]
url = "https://x.example"
[tools.a.headers]
Accept = "application/json"
Content-Language = "en-US-x-longer-than-8"
X-Team = "${TEAM}"
X-Region = "${REGION:-eu-west-central}"
X-Short = "${SHORT}"
AUTHORIZATION = "Bearer literal-authorization"
Proxy-Authorization = "Basic literal-proxy-auth"
Cookie = "sid=literal-cookie"
X-Api-Key = "literal-api-key"
X-Auth-Token = "literal-auth-token"
X-Client-Secret = "literal-client-secret"
X-Password = "literal-password"
X-Session-Id = "literal-session"
X-Tiny-Token = "short"
[tools.cal]
mcp_url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer literal-mcp-token", User-Agent = "example-bridge/1.0" }
"""


def test_secrets_are_references_and_credential_headers_only() -> None:
    directory = agents(SECRET_HEADERS, {"TEAM": "phones-team-7", "SHORT": "abc"})
    assert directory.secrets() == sorted(
        [
            "phones-team-7",  # a ${VAR}'s resolved value, whatever the header
            "eu-west-central",  # ...fallback included
            "Bearer literal-authorization",  # credential headers, any case
            "Basic literal-proxy-auth",
            "sid=literal-cookie",
            "literal-api-key",
            "literal-auth-token",
            "literal-client-secret",
            "literal-password",
            "literal-session",
            "Bearer literal-mcp-token",
        ]
    )
    # Not secrets: plain headers written out, and anything under 8 characters (X-Short's
    # "abc", X-Tiny-Token's "short"), which scrubbing would mangle ordinary text with.
    for value in ("application/json", "en-US-x-longer-than-8", "example-bridge/1.0", "abc"):
        assert value not in directory.secrets()
    assert all(len(v) >= MIN_SECRET_CHARS for v in directory.secrets())


def test_the_secret_floor_matches_the_scrubbers() -> None:
    assert MIN_SECRET_CHARS == recording_lines.MIN_SECRET_CHARS  # the fixtures' scrubber
    assert MIN_SECRET_CHARS >= observability.MIN_SECRET_LENGTH  # the log's


def test_a_plain_header_value_is_not_scrubbed_from_logs() -> None:
    """`Accept = "application/json"` is not a secret: a log line saying "must be
    application/json" stays readable; a credential header's value is masked."""
    text = (
        '[agents.default]\ntools = ["a"]\n[tools.a]\nurl = "https://x.example"\n'
        'headers = { Accept = "application/json", X-Api-Key = "key-not-in-any-log-1" }\n'
    )
    Path("agents.toml").write_text(text, encoding="utf-8")
    create_app(make_settings(agents_file="agents.toml"))
    line = "the reply must be application/json; key-not-in-any-log-1"
    assert scrub(line) == "the reply must be application/json; ***"


def test_envrefs_fill() -> None:
    values = {"A": "1", "EMPTY": ""}
    assert fill("x ${A} ${B:-two} ${EMPTY:-three} ${B:-}.", values) == "x 1 two three ."
    assert fill("no references, $A {A} $", values) == "no references, $A {A} $"
    with pytest.raises(envrefs.MissingVariable, match=r"\$\{EMPTY\} is not set"):
        fill("${EMPTY}", values)
    for broken in ("${A", "${1A}", "${a-b}", "${A:x}"):
        with pytest.raises(envrefs.MalformedReference):
            fill(broken, values)


def test_env_references_read_dotenv_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("CRM_TOKEN=from-dotenv\nCAL_TOKEN=cal-from-dotenv\n")
    monkeypatch.setenv("CAL_TOKEN", "cal-from-environment")
    Path("agents.toml").write_text(FULL, encoding="utf-8")
    directory = Agents.from_settings(settings(agents_file="agents.toml"))
    lookup = directory.executors["lookup"]
    assert isinstance(lookup, HttpTool)
    assert lookup.headers["Authorization"] == "Bearer from-dotenv"
    assert dict(directory.env) == {"CAL_TOKEN": "cal-from-environment"}


def test_reasoning_settings_need_a_reasoning_model() -> None:
    text = '[agents.default]\nreasoning_effort = "low"\nparallel_tool_calls = false\n'
    url = "wss://api.openai.com/v1/realtime?model=gpt-realtime-2"
    directory = agents(text, openai_realtime_url=url)
    config = directory.for_call({}, base(openai_realtime_url=url), NOW)
    assert (config.reasoning_effort, config.parallel_tool_calls) == ("low", False)
    assert mistakes(text, openai_realtime_url="wss://api.openai.com/v1/realtime") == [
        "agents.toml: agents.default.reasoning_effort: needs a reasoning model such as "
        "gpt-realtime-2, but OPENAI_REALTIME_URL names no model",
        "agents.toml: agents.default.parallel_tool_calls: needs a reasoning model such as "
        "gpt-realtime-2, but OPENAI_REALTIME_URL names no model",
    ]


def test_the_default_agent_is_named_default_or_flagged() -> None:
    flagged = agents("[agents.default]\ndefault = false\n[agents.main]\ndefault = true\n")
    assert flagged.names == ("main", "default") and flagged.pick(None) == "main"


def test_timezone_setting_and_agent_timezone() -> None:
    text = '[agents.default]\ninstructions = "{local_time}"\n'
    text += '[agents.ny]\nnumbers = ["+15550100"]\ninstructions = "{local_time}"\n'
    text += 'timezone = "America/New_York"\n'
    directory = agents(text, timezone="Europe/Berlin")
    assert directory.for_call({}, base(), NOW).instructions == (
        '"Wednesday 2 December 2026, 14:05 (Europe/Berlin)"'
    )
    assert directory.for_call({"To": "+15550100"}, base(), NOW).instructions == (
        '"Wednesday 2 December 2026, 08:05 (America/New_York)"'
    )
    with pytest.raises(SettingsError) as info:
        settings(timezone="Berlin/Mitte")
    assert info.value.problems == [
        "invalid setting TIMEZONE: must be an IANA time zone name like Europe/Berlin or UTC "
        "(got 'Berlin/Mitte')"
    ]


def test_signing_secret_warning_and_unused_tools() -> None:
    text = '[agents.default]\ntools = ["a"]\n[tools.a]\nurl = "https://x.example/a"\n'
    text += '[tools.b]\nfunction = "examples.tools:opening_hours"\n'
    assert agents(text).warnings == [
        "TOOLS_SIGNING_SECRET is not set: the requests of the HTTP tools of agents.toml (a) "
        "are not signed, so their endpoints can't tell the bridge from anyone else who "
        "reaches them.",
        "agents.toml: tools.b: no agent lists it (it is unused)",
    ]
    signed = settings(tools_signing_secret="sign-0123456789")
    assert "sign-0123456789" in signed.secret_values()
    assert agents(text, tools_signing_secret="sign-0123456789").warnings == [
        "agents.toml: tools.b: no agent lists it (it is unused)"
    ]


def test_agent_turn_fields_have_the_settings_constraints() -> None:
    """Same names, and the same bounds as the settings (read from them, never copied)."""
    for name in TURN_FIELDS:
        ours = AgentEntry.model_fields[name]
        theirs = Settings.model_fields[name]
        assert ours.default is None
        assert [repr(m) for m in ours.metadata] == [repr(m) for m in theirs.metadata], name
        assert name in CallConfig.__dataclass_fields__
    assert "TOOLS_SIGNING_SECRET" in ENV_NAMES and "AGENTS_FILE" in ENV_NAMES


def test_template_parameters_are_twilio_webhook_names() -> None:
    assert TEMPLATE_PARAMETERS[:2] == ("From", "To") and len(TEMPLATE_PARAMETERS) == 10


# --- mistakes: exact lines ------------------------------------------------------------

CASES: list[tuple[str, str, list[str]]] = [
    (
        "toml syntax",
        "[agents.default]\nvoice = marin\n",
        ["agents.toml: line 2, column 9: Invalid value"],
    ),
    (
        "toml syntax at the end",
        '[agents.default]\ntools = ["a",\n',
        ["agents.toml: line 3, column 1: Invalid value"],
    ),
    (
        "unknown top-level table",
        "[agent.default]\n[agents.default]\n",
        ["agents.toml: agent: unknown key (did you mean agents?)"],
    ),
    (
        "misspelt agent key",
        '[agents.default]\ngreating = "Hi"\n',
        ["agents.toml: agents.default.greating: unknown key (did you mean greeting?)"],
    ),
    (
        "bad voice",
        '[agents.default]\nvoice = "robot"\n',
        [
            "agents.toml: agents.default.voice: must be one of alloy, ash, ballad, cedar, "
            'coral, echo, marin, sage, shimmer, verse, or a custom voice_... id (got "robot")'
        ],
    ),
    (
        "number not E.164",
        '[agents.default]\nnumbers = ["+15550100", "555-0100"]\n',
        [
            "agents.toml: agents.default.numbers[1]: must be an E.164 phone number like "
            '+14155550100 (got "555-0100")'
        ],
    ),
    (
        "string for a number",
        '[agents.default]\nvad_silence_duration_ms = "500"\nvad_threshold = 1.5\n',
        [
            "agents.toml: agents.default.vad_silence_duration_ms: must be a whole number "
            '(got "500")',
            "agents.toml: agents.default.vad_threshold: must be less than or equal to 1 (got 1.5)",
        ],
    ),
    (
        "bad turn detection and time zone",
        '[agents.default]\nturn_detection = "push_to_talk"\ntimezone = "Mars/Olympus"\n',
        [
            "agents.toml: agents.default.turn_detection: must be 'server_vad' or "
            "'semantic_vad' (got \"push_to_talk\")",
            "agents.toml: agents.default.timezone: must be an IANA time zone name like "
            'Europe/Berlin or UTC (got "Mars/Olympus")',
        ],
    ),
    (
        "bad transfer number",
        '[agents.default]\ntransfer_number = "reception"\n',
        [
            "agents.toml: agents.default.transfer_number: must be an E.164 phone number like "
            '+14155550100, or a sip: URI (got "reception")'
        ],
    ),
    (
        "unknown, built-in and repeated tools",
        '[agents.default]\n[agents.sales]\ntools = ["lookup", "lookpu", "end_call", "lookup"]\n'
        '[tools.lookup]\nurl = "https://x.example"\n[tools.cal]\nmcp_url = "https://y.example"\n',
        [
            'agents.toml: agents.sales.tools[1]: unknown tool "lookpu" (known: cal, lookup)',
            "agents.toml: agents.sales.tools[2]: end_call is built in: the bridge offers "
            "end_call whenever the Twilio REST credentials are set, and transfer_call when a "
            "transfer number is",
            'agents.toml: agents.sales.tools[3]: "lookup" is listed twice',
        ],
    ),
    (
        "a tool named like a built-in, and a bad name",
        '[agents.default]\n[tools.transfer_call]\nurl = "https://x.example"\n'
        '[tools."look up"]\nurl = "https://x.example"\n',
        [
            "agents.toml: tools.transfer_call: transfer_call is a tool of the bridge's own; "
            "choose another name",
            "agents.toml: tools.\"look up\": the name must be 1 to 64 letters, digits, '_' or '-'",
        ],
    ),
    (
        "no kind, two kinds",
        '[agents.default]\n[tools.a]\ndescription = "?"\n'
        '[tools.b]\nurl = "https://x.example"\nmcp_url = "https://y.example"\n',
        [
            "agents.toml: tools.a: a tool has exactly one of url (an HTTP tool), function (a "
            "Python tool) or mcp_url (an MCP server)",
            "agents.toml: tools.b: has url and mcp_url; a tool has exactly one of url (an HTTP "
            "tool), function (a Python tool) or mcp_url (an MCP server)",
        ],
    ),
    (
        "http tool values",
        '[agents.default]\n[tools.a]\nurl = "ftp://x.example"\nmethod = "GET"\n'
        'timeout_seconds = 90\nmax_reply_bytes = 0\non_interrupt = "stop"\n'
        'filler_after_ms = -1\nfiller = ""\nfunction_name = "x"\n',
        [
            'agents.toml: tools.a.url: must start with http:// or https:// (got "ftp://x.example")',
            "agents.toml: tools.a.method: must be 'POST', 'PUT' or 'PATCH' (got \"GET\")",
            "agents.toml: tools.a.timeout_seconds: must be less than or equal to 60 (got 90)",
            "agents.toml: tools.a.max_reply_bytes: must be greater than or equal to 1 (got 0)",
            "agents.toml: tools.a.on_interrupt: must be 'continue' or 'cancel' (got \"stop\")",
            "agents.toml: tools.a.filler_after_ms: must be greater than or equal to 0 (got -1)",
            'agents.toml: tools.a.filler: must not be empty (got "")',
            "agents.toml: tools.a.function_name: unknown key (known keys: description, filler, "
            "filler_after_ms, headers, max_reply_bytes, method, on_interrupt, parameters, "
            "redact, timeout_seconds, url)",
        ],
    ),
    (
        "parameters not an object schema",
        '[agents.default]\n[tools.a]\nurl = "https://x.example"\nparameters = { type = "array" }\n',
        [
            'agents.toml: tools.a.parameters: must be a JSON Schema with type = "object" '
            '(got "array")'
        ],
    ),
    (
        "parameters not a valid schema",
        '[agents.default]\n[tools.a]\nurl = "https://x.example"\n'
        'parameters = { type = "object", properties = { n = { type = "strin" } } }\n',
        [
            "agents.toml: tools.a.parameters.properties.n.type: is not a valid JSON Schema: "
            "'strin' is not valid under any of the given schemas"
        ],
    ),
    (
        "redact names no property",
        '[agents.default]\n[tools.a]\nfunction = "examples.tools:opening_hours"\n'
        'parameters = { type = "object", properties = { day = { type = "string" } } }\n'
        'redact = ["day", "card"]\n',
        [
            'agents.toml: tools.a.redact[1]: "card" is not a property of parameters '
            "(properties: day)"
        ],
    ),
    (
        "max_reply_bytes past 256 KiB",
        '[agents.default]\n[tools.a]\nurl = "https://x.example"\nmax_reply_bytes = 262145\n',
        [
            "agents.toml: tools.a.max_reply_bytes: must be at most 262144 (256 KiB): a tool's "
            "output must fit in a line of the call's fixture, or a replay can't feed it back "
            "(got 262145)"
        ],
    ),
    (
        "header values with controls or non-ASCII text, as written",
        '[agents.default]\n[tools.a]\nurl = "https://x.example"\n'
        'headers = { X-Nul = "a\\u0000b", X-Esc = "a\\u001bb", X-Del = "a\\u007fb", '
        'X-Accent = "caf\u00e9", X-Tab = "a\\tb" }\n',
        [
            f"agents.toml: tools.a.headers.{name}: must not hold a line break, another control "
            "character or non-ASCII text"
            for name in ("X-Nul", "X-Esc", "X-Del", "X-Accent")
        ],
    ),
    (
        "header references and names",
        '[agents.default]\n[tools.a]\nurl = "https://x.example"\n'
        'headers = { Authorization = "Bearer ${CRM_TOKEN}", X-Key = "${KEY", "X Y" = "1", '
        'X-Ok = "${OK:-fallback}" }\n',
        [
            "agents.toml: tools.a.headers.Authorization: ${CRM_TOKEN} is not set in the "
            "environment",
            "agents.toml: tools.a.headers.X-Key: '${KEY' is not a valid reference: write "
            "${NAME} or ${NAME:-fallback} with NAME of letters, digits and _",
            'agents.toml: tools.a.headers."X Y": is not a valid HTTP header name',
        ],
    ),
    (
        "python tools",
        '[agents.default]\n[tools.a]\nfunction = "json:dumps"\n'
        '[tools.b]\nfunction = "no_such_module_x:run"\n[tools.c]\nfunction = "json:nothing"\n'
        '[tools.d]\nfunction = "examples/tools.py"\n',
        [
            "agents.toml: tools.a.function: json:dumps is not an async function (declare it "
            "with async def)",
            "agents.toml: tools.b.function: cannot import no_such_module_x: there is no module "
            "no_such_module_x (it must be importable from the working directory or the Python "
            "path)",
            'agents.toml: tools.c.function: module json has no attribute "nothing"',
            'agents.toml: tools.d.function: must be "module:function", like '
            '"examples.tools:opening_hours" (got "examples/tools.py")',
        ],
    ),
    (
        "mcp approval outside allowed tools",
        '[agents.default]\n[tools.cal]\nmcp_url = "https://mcp.example"\n'
        'allowed_tools = ["find_slot"]\nrequire_approval = ["book_slot"]\n'
        '[tools.cal2]\nmcp_url = "https://mcp.example"\nrequire_approval = "sometimes"\n',
        [
            'agents.toml: tools.cal.require_approval[0]: "book_slot" is not one of allowed_tools',
            'agents.toml: tools.cal2.require_approval: must be "never", "always" or a list of '
            'tool names (got "sometimes")',
        ],
    ),
    (
        "template names",
        '[agents.default]\ninstructions = "Hi {caller}."\ngreeting = "Hi {caller_number.x}"\n'
        'context = ["agent", "order"]\n',
        [
            "agents.toml: agents.default.context[0]: agent is a built-in template name already",
            "agents.toml: agents.default.instructions: unknown placeholder {caller} (known: "
            "agent, called_city, called_country, called_number, called_state, called_zip, "
            "caller_city, caller_country, caller_number, caller_state, caller_zip, "
            "local_time, order)",
            "agents.toml: agents.default.greeting: placeholder {caller_number.x} is not a plain "
            "name: no '.', '[', '!' or ':' in placeholders (write {{ and }} for literal braces)",
        ],
    ),
    (
        "reasoning on a model without it",
        '[agents.default]\nreasoning_effort = "low"\n',
        [
            "agents.toml: agents.default.reasoning_effort: needs a reasoning model such as "
            "gpt-realtime-2, but the model of OPENAI_REALTIME_URL is gpt-realtime"
        ],
    ),
    (
        "semantic vad with min speech",
        '[agents.default]\nturn_detection = "semantic_vad"\ninterrupt_min_speech_ms = 300\n',
        [
            "agents.toml: agents.default.interrupt_min_speech_ms: interrupt_min_speech_ms = 300 "
            'does not work with turn_detection = "semantic_vad": semantic VAD can take seconds '
            "to end a turn, while the min-speech confirmation assumes server_vad's silence "
            "window"
        ],
    ),
    (
        "instructions twice, a missing instructions file",
        '[agents.default]\ninstructions = "x"\ninstructions_file = "x.md"\n'
        '[agents.b]\ninstructions_file = "prompts/missing.md"\n',
        [
            "agents.toml: agents.default: set instructions or instructions_file, not both",
            "agents.toml: agents.b.instructions_file: cannot read prompts/missing.md (No such "
            "file or directory)",
        ],
    ),
    (
        "one number, two agents",
        '[agents.default]\nnumbers = ["+15550100"]\n[agents.b]\nnumbers = ["+1 555 0100"]\n',
        ["agents.toml: agents.b.numbers[0]: +15550100 is already answered by agents.default"],
    ),
    (
        "no default agent",
        '[agents.sales]\nnumbers = ["+15550100"]\n',
        [
            'agents.toml: agents: no default agent: name one "default" or give one '
            "default = true (it answers the numbers no other agent lists)"
        ],
    ),
    (
        "two default agents",
        "[agents.default]\n[agents.main]\ndefault = true\n",
        [
            "agents.toml: agents: more than one default agent (default, main): exactly one may "
            'be named "default" or have default = true'
        ],
    ),
    (
        "tables of the wrong type",
        'agents = "default"\ntools = []\n',
        [
            'agents.toml: agents: must be a table (got "default")',
            "agents.toml: tools: must be a table",
            'agents.toml: agents: no default agent: name one "default" or give one '
            "default = true (it answers the numbers no other agent lists)",
        ],
    ),
]


@pytest.mark.parametrize(("text", "lines"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_has_its_exact_line(text: str, lines: list[str]) -> None:
    assert mistakes(text) == lines


def test_every_mistake_of_a_file_is_reported_at_once() -> None:
    """One line per mistake, in the file's order, whatever kind of table holds it."""
    text = """
[agents.default]
voice = "robot"
tools = ["lookup", "missing"]

[agents.sales]
numbers = ["+15550100"]
greating = "Hi"
instructions = "Hello {caller_name}"

[tools.lookup]
url = "https://crm.example.com"
timeout_seconds = 0
headers = { Authorization = "Bearer ${CRM_TOKEN}" }

[tools.hours]
function = "json:loads"
"""
    assert mistakes(text) == [
        "agents.toml: agents.default.voice: must be one of alloy, ash, ballad, cedar, coral, "
        'echo, marin, sage, shimmer, verse, or a custom voice_... id (got "robot")',
        "agents.toml: agents.sales.greating: unknown key (did you mean greeting?)",
        "agents.toml: tools.lookup.timeout_seconds: must be greater than 0 (got 0)",
        "agents.toml: tools.hours.function: json:loads is not an async function (declare it "
        "with async def)",
    ]
    # With those fixed, the mistakes they hid show up.
    text = text.replace('voice = "robot"\n', "").replace('greating = "Hi"\n', "")
    text = text.replace("timeout_seconds = 0\n", "").replace("json:loads", "examples.tools:x")
    assert mistakes(text) == [
        'agents.toml: agents.default.tools[1]: unknown tool "missing" (known: hours, lookup)',
        "agents.toml: agents.sales.instructions: unknown placeholder {caller_name} (known: "
        "agent, called_city, called_country, called_number, called_state, called_zip, "
        "caller_city, caller_country, caller_number, caller_state, caller_zip, local_time)",
        "agents.toml: tools.lookup.headers.Authorization: ${CRM_TOKEN} is not set in the "
        "environment",
        'agents.toml: tools.hours.function: module examples.tools has no attribute "x"',
    ]


def test_semantic_vad_against_the_min_speech_setting() -> None:
    text = '[agents.default]\nturn_detection = "semantic_vad"\n'
    assert mistakes(text, interrupt_min_speech_ms=200) == [
        "agents.toml: agents.default.turn_detection: interrupt_min_speech_ms = 200 (from "
        'INTERRUPT_MIN_SPEECH_MS) does not work with turn_detection = "semantic_vad": '
        "semantic VAD can take seconds to end a turn, while the min-speech confirmation "
        "assumes server_vad's silence window"
    ]
    fine = agents(text + "interrupt_min_speech_ms = 0\n", interrupt_min_speech_ms=200)
    assert fine.for_call({}, base(interrupt_min_speech_ms=200), NOW).interrupt_min_speech_ms == 0


def test_unreadable_files(tmp_path: Path) -> None:
    for name, problem in [
        ("missing.toml", "No such file or directory"),
        (".", "Is a directory"),
    ]:
        with pytest.raises(SettingsError) as info:
            Agents.from_settings(settings(agents_file=name), {})
        assert info.value.problems == [f"{name}: cannot read it ({problem})"]
    (tmp_path / "latin1.toml").write_bytes(b'[agents.default]\ninstructions = "M\xfcller"\n')
    with pytest.raises(SettingsError) as info:
        Agents.from_settings(settings(agents_file="latin1.toml"), {})
    assert info.value.problems == ["latin1.toml: cannot read it (not UTF-8 text)"]


def test_instructions_file_is_relative_to_the_agents_file(tmp_path: Path) -> None:
    (tmp_path / "conf" / "prompts").mkdir(parents=True)
    (tmp_path / "conf" / "prompts" / "main.md").write_text("Hello {caller_number}.\n")
    (tmp_path / "conf" / "prompts" / "empty.md").write_text("\n")
    (tmp_path / "conf" / "agents.toml").write_text(
        '[agents.default]\ninstructions_file = "prompts/main.md"\n'
        '[agents.e]\nnumbers = ["+15550100"]\ninstructions_file = "prompts/empty.md"\n'
    )
    directory = Agents.from_settings(settings(agents_file="conf/agents.toml"), {})
    assert directory.for_call({"From": "+1"}, base(), NOW).instructions == 'Hello "+1".'
    assert directory.warnings == [
        "conf/agents.toml: agents.e.instructions_file: conf/prompts/empty.md is empty: the "
        "model gets no instructions"
    ]
    bad = tmp_path / "conf" / "prompts" / "bad.md"
    bad.write_text("Hi {nobody}")
    (tmp_path / "conf" / "agents.toml").write_text(
        '[agents.default]\ninstructions_file = "prompts/bad.md"\n'
    )
    with pytest.raises(SettingsError) as info:
        Agents.from_settings(settings(agents_file="conf/agents.toml"), {})
    [line] = info.value.problems
    assert line.startswith(
        "conf/agents.toml: agents.default.instructions_file: unknown placeholder {nobody} "
        "(known: agent, "
    )


# --- at start: the app ---------------------------------------------------------------


def test_create_app_builds_the_agents_and_registers_their_secrets() -> None:
    Path("agents.toml").write_text(FULL, encoding="utf-8")
    os.environ.update({"CRM_TOKEN": "crm-token-registered-1", "CAL_TOKEN": "cal-token-reg-2"})
    try:
        application = create_app(make_settings(agents_file="agents.toml"))
    finally:
        for key in ("CRM_TOKEN", "CAL_TOKEN"):
            os.environ.pop(key)
    assert application.state.bridge.agents.names == ("front", "sales", "quiet")
    assert scrub("token crm-token-registered-1 and cal-token-reg-2") == "token *** and ***"
    Path("agents.toml").write_text('[agents.default]\nvoice = "robot"\n', encoding="utf-8")
    with pytest.raises(SettingsError, match=r"agents\.toml: agents\.default\.voice: must be"):
        create_app(make_settings(agents_file="agents.toml"))


def test_default_app_exits_2_with_the_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("agents.toml").write_text('[agents.sales]\ntools = ["nope"]\n', encoding="utf-8")
    monkeypatch.setenv("AGENTS_FILE", "agents.toml")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///calls.db")
    with pytest.raises(SystemExit) as info:
        default_app()
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "configuration error: "
        'agents.toml: agents.sales.tools[0]: unknown tool "nope" (known: none: the file has '
        "no [tools])\n"
        'agents.toml: agents: no default agent: name one "default" or give one default = '
        "true (it answers the numbers no other agent lists)\n"
    )


def test_python_m_app_exits_2_before_binding(tmp_path: Path) -> None:
    (tmp_path / "agents.toml").write_text(
        '[agents.default]\nvoice = "robot"\n[agents.b]\ndefault = true\n', encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "AGENTS_FILE": "agents.toml",
            "HOST": "127.0.0.1",
            "PORT": "1",  # a port it could never bind: it must not get that far
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines()[-2:] == [
        "configuration error: agents.toml: agents.default.voice: must be one of alloy, ash, "
        "ballad, cedar, coral, echo, marin, sage, shimmer, verse, or a custom voice_... id "
        '(got "robot")',
        "agents.toml: agents: more than one default agent (default, b): exactly one may be "
        'named "default" or have default = true',
    ]
    assert "Uvicorn running" not in done.stdout + done.stderr


README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_loads_as_written() -> None:
    """The README's "complete example" (its first TOML block under "Agents and tools")
    validates, and its numbers reach their agents."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Agents and tools") :]
    example = section[section.index("```toml\n") + 8 :]
    example = example[: example.index("```")]
    Path("instructions").mkdir()
    Path("instructions/support.md").write_text("You help with orders.", encoding="utf-8")
    env = {"CRM_TOKEN": "crm-token-value", "CALENDAR_TOKEN": "calendar-token-value"}
    loaded = agents(example, env)
    assert loaded.pick("+15550100") == "sales"
    assert loaded.pick("+15550101") == "support"
    assert loaded.pick("+15550999") == loaded.default == "default"
    config = loaded.for_call({"From": "+15551234567", "To": "+15550100"}, base(), datetime.now(UTC))
    assert config.agent == "sales" and '"+15551234567"' in config.instructions
    assert [spec.name for spec in config.functions] == ["lookup_order"]
    assert [entry["server_label"] for entry in config.mcp_servers] == ["calendar"]


def test_an_agent_sets_its_own_turn_taking() -> None:
    front = (
        "[agents.front]\ndefault = true\n"
        'backchannel_words = ["vale", "Mm-hmm"]\n'
        '[agents.old]\nnumbers = ["+15550102"]\ninterrupt_min_speech_ms = 300\n'
    )
    bad = '[agents.bad]\nnumbers = ["+15550103"]\ninterrupt_min_speech_ms = 300\n'
    bad += 'interrupt_mode = "resume"\n'
    assert mistakes(front + bad) == [
        'agents.toml: agents.bad.interrupt_mode: interrupt_mode = "resume" stops the bot at '
        "once, so interrupt_min_speech_ms has no speech to wait for: set interrupt_mode = "
        '"cancel", or drop one of them'
    ]
    directory = agents(front)
    own = directory.for_call({"To": "+15550100"}, base(), NOW)
    assert own.interrupt_mode == "resume" and own.backchannels == ("vale", "mm hmm")
    old = directory.for_call({"To": "+15550102"}, base(), NOW)
    assert old.interrupt_mode == "cancel" and old.interrupt_min_speech_ms == 300


def test_an_agents_resume_mode_wins_over_a_global_min_speech_and_an_empty_list_is_none() -> None:
    text = '[agents.front]\ndefault = true\ninterrupt_mode = "Resume"\nbackchannel_words = []\n'
    directory = agents(text, interrupt_min_speech_ms=300)
    cfg = directory.for_call({"To": "+15550100"}, base(interrupt_min_speech_ms=300), NOW)
    assert (cfg.interrupt_mode, cfg.interrupt_min_speech_ms, cfg.backchannels) == (
        "resume",
        0,
        (),
    )
