"""Business tools end to end, over real loopback sockets.

The real app (uvicorn) runs with an agents file written for each test: HTTP tools pointing
at the fake tool server (`tests.fakes.tool_server`, requests signed with
TOOLS_SIGNING_SECRET), Python tools from `tests.tool_functions`, and an MCP server whose
header takes a token from the environment. The fake Realtime service scripts the model's
function calls and the MCP calls the service makes itself; the fake Twilio caller plays
the bot's audio in real time and echoes marks. Order and causality are read from the
fakes' own records (the client events the service received, in order; the tool requests;
the caller's mark log); every wait is on an event, time bounds are only generous timeouts.
Where an order between the fakes matters, they are made to wait for it, never raced: a slow
tool's reply is held (a gate) until the caller has heard what must come first, and
`FillerHeld` keeps a filler's response going until the tool's output is in.

Three of these calls are also recorded (RECORD_DIR) and replayed; their recordings are in
the fixture library (`tests/fixtures/calls/tool_call.jsonl`, `slow_tool_with_filler.jsonl`,
`barge_in_cancels_tool.jsonl`): re-record them with `KEEP_TOOL_FIXTURES=DIR` (see
`test_a_recorded_tool_call_replays_without_the_redacted_card`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.call.mcp import DENIAL
from app.call.session import FILLER
from app.call.toolcalls import CANCELLED_OUTPUT
from app.replay import load, replay, report
from app.tools.http import INVALID_JSON_OUTPUT, TIMEOUT_OUTPUT, TOO_LARGE_OUTPUT
from app.tools.python import FAILED_OUTPUT
from tests.conftest import ACCOUNT_SID, AppFactory, RunningApp
from tests.fakes.audio import speech, tone
from tests.fakes.realtime_server import (
    FakeRealtime,
    FakeResponse,
    RealtimeConnection,
    ScriptedResponse,
)
from tests.fakes.tool_server import ToolServer
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.watch import Watch
from tests.tool_functions import BROKEN_DETAIL

pytestmark = pytest.mark.e2e

SECRET = "tools-signing-secret-0123456789"
MCP_TOKEN = "mcp-bearer-7f3a9c21d4e8b6a5"
OPERATOR_KEY = "operator-key-tools-0123456789ab"
BEARER = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CALLER = "+15551230001"
MAIN_LINE = "+15550199"
CARD = "4111111111111111"

CUT_IN = "Hold on."
LONG_CUT_IN = "Hold on, hold on, I also want to ask you about the other order I placed last week."
LOOKING_IT_UP = (
    "Let me look that up for you. This can take a moment while I check our records, so "
    "please bear with me."
)
FILLER_TEXT = "One moment, I am looking that up."
FILLER_WORDS = "One moment please, I am checking."
LONG_GOODBYE = (
    "Thank you so much for calling today. It was a pleasure to help you, and I hope you "
    "have a wonderful rest of your week. Goodbye!"
)

ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "card": {"type": "string", "pattern": "^[0-9]{16}$"},
    },
    "required": ["order_id"],
}


# -- the agents file ------------------------------------------------------------------------


def toml(value: Any) -> str:
    """`value` as a TOML value (inline tables and arrays; strings as JSON writes them,
    which TOML reads alike)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def write_agents(
    directory: Path, tools: dict[str, dict[str, Any]], agents: dict[str, dict[str, Any]]
) -> Path:
    lines: list[str] = []
    for kind, tables in (("agents", agents), ("tools", tools)):
        for name, table in tables.items():
            lines.append(f"[{kind}.{name}]")
            lines += [f"{key} = {toml(value)}" for key, value in table.items()]
            lines.append("")
    path = directory / "agents.toml"
    path.write_text("\n".join(lines))
    return path


def http_tool(server: ToolServer, path: str, **table: Any) -> dict[str, Any]:
    """An HTTP tool table (no filler unless the test asks for one)."""
    return {
        "description": "Look up an order.",
        "url": server.url(path),
        "parameters": ORDER,
        "filler_after_ms": 0,
        **table,
    }


def python_tool(function: str, **table: Any) -> dict[str, Any]:
    return {
        "description": "A Python tool.",
        "function": f"tests.tool_functions:{function}",
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
        "filler_after_ms": 0,
        **table,
    }


def mcp_server(**table: Any) -> dict[str, Any]:
    return {
        "mcp_url": "https://mcp.example.com/mcp",
        "description": "The team's calendar.",
        "allowed_tools": ["find_slot", "book_slot", "cancel_booking"],
        "headers": {"Authorization": "Bearer ${TEST_MCP_TOKEN}"},
        **table,
    }


def front_desk(tools: list[str], **table: Any) -> dict[str, Any]:
    """The default agent."""
    return {
        "default": True,
        "instructions": "You are the front desk. The caller's number is {caller_number}.",
        "tools": tools,
        **table,
    }


async def start_app(
    app_with: AppFactory,
    directory: Path,
    tools: dict[str, dict[str, Any]],
    agents: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> RunningApp:
    agents = agents if agents is not None else {"front_desk": front_desk(list(tools))}
    path = write_agents(directory, tools, agents)
    return await app_with(  # type: ignore[no-any-return]
        agents_file=str(path),
        tools_signing_secret=SECRET,
        operator_api_key=OPERATOR_KEY,
        **settings,
    )


#: The tests of what a barge-in does to tools run the cancel mode's barge-in, where the
#: service cancels and answers by itself (`turn_detected`); resume mode's real turns act
#: on tools through the same core paths (tests/test_resume.py).
CANCEL_MODE: dict[str, Any] = {"interrupt_mode": "cancel"}


def dial(app: RunningApp, to: str = MAIN_LINE) -> FakeTwilioCall:
    return app.call(custom_parameters={"From": CALLER, "To": to})


# -- the model's script ---------------------------------------------------------------------


def fc(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "arguments": arguments, "call_id": call_id}


def beep(ms: int = 200, **kw: Any) -> ScriptedResponse:
    """A short bot utterance (a tone: nothing listens to its words)."""
    return ScriptedResponse(audio=tone(ms), transcript="Let me see.", **kw)


def said(text: str, **kw: Any) -> ScriptedResponse:
    return ScriptedResponse(audio=speech(text), transcript=text, **kw)


def answer() -> ScriptedResponse:
    """The model's answer after a tool, or to the caller's turn."""
    return ScriptedResponse(audio=tone(300), transcript="Your order has shipped.")


# -- what the fakes saw ---------------------------------------------------------------------


def output_of(call_id: str) -> Callable[[dict[str, Any]], bool]:
    """Matches the `function_call_output` item the bridge created for `call_id`."""

    def match(ev: dict[str, Any]) -> bool:
        item = ev.get("item") or {}
        return item.get("type") == "function_call_output" and item.get("call_id") == call_id

    return match


def position(conn: RealtimeConnection, event: dict[str, Any]) -> int:
    """Where `event` is among the client events the service received."""
    return next(i for i, ev in enumerate(conn.events) if ev is event)


def creates_after(conn: RealtimeConnection, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The `response.create`s received after `event`."""
    return [
        ev for ev in conn.events[position(conn, event) + 1 :] if ev["type"] == "response.create"
    ]


def creates(conn: RealtimeConnection) -> list[dict[str, Any]]:
    return [ev for ev in conn.events if ev["type"] == "response.create"]


def first_event(conn: RealtimeConnection, predicate: Callable[[dict[str, Any]], bool]) -> Any:
    return next(ev for ev in conn.events if predicate(ev))


def echoes_of(call: FakeTwilioCall, item_id: str) -> list[tuple[int, str]]:
    """(position in the caller's mark log, how) of each echo of `item_id`'s marks."""
    return [(i, how) for i, (name, how) in enumerate(call.marks_echoed) if name.startswith(item_id)]


async def nth_response(conn: RealtimeConnection, n: int, timeout: float = 10.0) -> FakeResponse:  # noqa: ASYNC109
    """The service's `n`-th response (0-based), once it has started."""
    found = await conn.wait_until(
        lambda: conn.responses[n] if len(conn.responses) > n else None, timeout
    )
    return found  # type: ignore[no-any-return]


async def heard_in_full(
    call: FakeTwilioCall,
    conn: RealtimeConnection,
    n: int,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> FakeResponse:
    """Wait until the caller has heard every chunk of the `n`-th response (each chunk's
    mark echoed as played); return the response."""
    resp = await nth_response(conn, n, timeout)
    await asyncio.wait_for(resp.done.wait(), timeout)
    chunks = sum(
        1
        for ev in conn.sent
        if ev["type"] == "response.output_audio.delta" and ev["response_id"] == resp.id
    )
    item = resp.item_id or "?"
    await call.wait_until(
        lambda: chunks > 0 and [how for _, how in echoes_of(call, item)] == ["played"] * chunks,
        timeout,
    )
    return resp


def heard_some(call: FakeTwilioCall, resp: FakeResponse) -> bool:
    """Whether the caller has heard (a mark echoed as played) some of `resp`'s audio."""
    return resp.item_id is not None and any(
        how == "played" for _, how in echoes_of(call, resp.item_id)
    )


def is_filler(ev: dict[str, Any]) -> bool:
    """A filler's `response.create` (the only responses the bridge asks to call no tool)."""
    return ev["type"] == "response.create" and ev["response"].get("tool_choice") == "none"


#: How long `FillerHeld` waits at most for the tool's output (a generous timeout).
HOLD_TIMEOUT_S = 20.0


class FillerHeld(RealtimeConnection):
    """The fake service, holding a filler (a response asked with `tool_choice: "none"`)
    half-way through its audio until a tool's output has come in: the filler's response is
    still active when the tool answers, however slow the machine, so the tool's answer has
    to queue behind it (a second active response would be refused). The service generates
    faster than real time, so the half already sent is well ahead of the caller's ear (a
    gap is heard only if the output takes longer than that to come). A stop (barge-in,
    hang-up) ends the hold at once."""

    async def _pace(self, resp: FakeResponse, audio_ms: int) -> None:
        await super()._pace(resp, audio_ms)
        if resp.tool_choice != "none" or self.function_outputs:
            return
        if 2 * resp.audio_bytes_sent < len(resp.script.audio):
            return
        output = asyncio.ensure_future(
            self.wait_until(lambda: bool(self.function_outputs), HOLD_TIMEOUT_S)
        )
        stopped = asyncio.ensure_future(resp._wake.wait())
        try:
            await asyncio.wait({output, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (output, stopped):
                waiting.cancel()
            # A timeout lets the filler go on: the test's own waits and checks then fail.
            await asyncio.gather(output, stopped, return_exceptions=True)


def active_response_errors(conn: RealtimeConnection) -> list[dict[str, Any]]:
    return [
        ev
        for ev in conn.sent
        if ev["type"] == "error"
        and ev["error"].get("code") == "conversation_already_has_active_response"
    ]


class LogWatch(logging.Handler):
    """Every log record of the test, awaitable (`wait`), on the test's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.DEBUG)
        self.loop = loop
        self.records: list[logging.LogRecord] = []
        self._watch = Watch()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.loop.call_soon_threadsafe(self._watch.notify)

    def find(self, message: str, **fields: Any) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if r.getMessage() == message
            and all(getattr(r, "fields", {}).get(k) == v for k, v in fields.items())
        ]

    async def wait(self, message: str, timeout: float = 10.0, **fields: Any) -> logging.LogRecord:  # noqa: ASYNC109
        found = await self._watch.wait(
            lambda: self.find(message, **fields) or None, timeout, message
        )
        return found[0]  # type: ignore[no-any-return]

    def text(self) -> str:
        """Every record as rendered text, with its fields and any traceback."""
        parts = []
        for r in self.records:
            parts.append(f"{r.name} {r.getMessage()} {getattr(r, 'fields', '')}")
            if r.exc_info:
                parts.append(logging.Formatter().formatException(r.exc_info))
        return "\n".join(parts)


@pytest.fixture
async def logs() -> AsyncIterator[LogWatch]:
    handler = LogWatch(asyncio.get_running_loop())
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
async def tool_server() -> AsyncIterator[ToolServer]:
    async with ToolServer(secret=SECRET) as server:
        yield server


@pytest.fixture
async def rest() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest() as fake:
        yield fake


# -- what the operator sees -----------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: RunningApp) -> Samples:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{app.http_url}/metrics", headers=BEARER)
    assert reply.status_code == 200, reply.text
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def record_of(app: RunningApp, call_sid: str, within: float = 20.0) -> dict[str, Any]:
    """The call's record once the store has written it (in the background)."""
    async with httpx.AsyncClient() as client, asyncio.timeout(within):
        while True:
            reply = await client.get(f"{app.http_url}/calls/{call_sid}", headers=BEARER)
            if reply.status_code == 200:
                return reply.json()  # type: ignore[no-any-return]
            assert reply.status_code == 404, reply.text
            await asyncio.sleep(0.05)  # the writer's own pace: nothing to await on


def tool_calls(record: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in record["tool_calls"] if c["name"] == name]


def recording(directory: Path) -> Path:
    (path,) = list(directory.glob("*.jsonl"))
    return path


def assert_replays(path: Path) -> None:
    result = replay(load(path))
    assert result.ok, report(result)


# -- calls the tests share (and the replay test records) -----------------------------------


@dataclass
class Played:
    """A finished call: the app it ran on, both fakes' sides of it, what the test saw."""

    app: RunningApp
    call: FakeTwilioCall
    conn: RealtimeConnection
    seen: dict[str, Any] = field(default_factory=dict)


Scenario = Callable[..., Awaitable[Played]]


async def one_tool_call(app: RunningApp, realtime: FakeRealtime, call_id: str) -> Played:
    """A call whose greeting calls one tool: until the bridge has handed the tool's output
    over and asked for the answer; then the caller hangs up."""
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        output = await conn.wait_for("conversation.item.create", predicate=output_of(call_id))
        await conn.wait_until(lambda: creates_after(conn, output) or None, timeout=10)
        await call.hangup()
    await app.wait_idle()
    return Played(app, call, conn, {"output": output})


async def order_lookup(
    app_with: AppFactory, realtime: FakeRealtime, server: ToolServer, directory: Path, **kw: Any
) -> Played:
    """The model says a word and looks an order up (a card number among the arguments,
    redacted); the tool answers at once, the model answers with its reply."""
    arguments = {"order_id": "A123", "card": CARD}
    realtime.add_responses(
        beep(function_call=fc("lookup_order", arguments, "call_order")), answer()
    )
    tools = {"lookup_order": http_tool(server, "/order", redact=["card"])}
    app = await start_app(app_with, directory, tools, **kw)
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await heard_in_full(call, conn, 1)
        await call.hangup()
    await app.wait_idle()
    return Played(app, call, conn)


async def slow_lookup_with_filler(
    app_with: AppFactory, realtime: FakeRealtime, server: ToolServer, directory: Path, **kw: Any
) -> Played:
    """A slow tool with a filler after 500 ms. Each step waits for the one before: the tool
    answers (its gate) only once the caller has heard the filler begin, and the service
    (`FillerHeld`) is still generating the filler when the tool's output comes in, so the
    answer has to wait for the filler."""
    realtime.connection_class = FillerHeld
    gate = asyncio.Event()
    server.script("/slow_order", json={"order_id": "A123", "status": "shipped"}, gate=gate)
    arguments = {"order_id": "A123", "card": CARD}
    realtime.add_responses(
        beep(function_call=fc("lookup_order", arguments, "call_slow")),
        said(FILLER_WORDS),
        answer(),
    )
    slow = http_tool(
        server, "/slow_order", filler_after_ms=500, filler=FILLER_TEXT, redact=["card"]
    )
    app = await start_app(app_with, directory, {"lookup_order": slow}, **kw)
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await server.wait_requests(1)
        filler = await nth_response(conn, 1, timeout=20)
        await call.wait_until(lambda: heard_some(call, filler), timeout=20)
        gate.set()  # the caller is hearing the filler: now the tool answers
        # Read the moment the output arrives (the predicate runs as the service takes it).
        (filler_done_at_output,) = await conn.wait_until(
            lambda: (filler.done.is_set(),) if conn.function_outputs else None,
            timeout=HOLD_TIMEOUT_S,
        )
        await heard_in_full(call, conn, 2)
        await call.hangup()
    await app.wait_idle()
    return Played(app, call, conn, {"filler_done_at_output": filler_done_at_output})


async def cancelled_by_the_caller(
    app_with: AppFactory, realtime: FakeRealtime, server: ToolServer, directory: Path, **kw: Any
) -> Played:
    """A `cancel` tool that never answers; the caller speaks up while it runs."""
    arguments = {"order_id": "A123", "card": CARD}
    realtime.add_responses(beep(function_call=fc("lookup_order", arguments, "call_1")), answer())
    tools = {
        "lookup_order": http_tool(server, "/hang", on_interrupt="cancel", redact=["card"]),
    }
    app = await start_app(app_with, directory, tools, **{**CANCEL_MODE, **kw})
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        (request,) = await server.wait_requests(1)
        await heard_in_full(call, conn, 0)
        await call.say(speech(CUT_IN))
        await asyncio.wait_for(request.disconnected.wait(), 5)  # the bridge hung up on it
        await heard_in_full(call, conn, 1)
        await call.hangup()
    await app.wait_idle()
    return Played(app, call, conn, {"request": request})


# -- 1-4: an HTTP tool's outcomes ----------------------------------------------------------


async def test_an_http_tool_gets_a_signed_request_and_its_reply_reaches_the_model_first(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    played = await order_lookup(app_with, realtime, tool_server, tmp_path)
    app, call, conn = played.app, played.call, played.conn

    (request,) = tool_server.requests
    assert request.method == "POST" and request.path == "/order"
    assert request.signature_ok is True
    assert request.json == {
        "call_sid": call.call_sid,
        "agent": "front_desk",
        "from": CALLER,
        "to": MAIN_LINE,
        "tool": "lookup_order",
        "arguments": {"order_id": "A123", "card": CARD},  # the tool itself needs the card
    }
    assert conn.function_outputs == [
        {"call_id": "call_order", "output": '{"order_id":"A123","status":"shipped"}'}
    ]
    # The output first, then the bridge asks for an answer: the response the caller heard.
    output = first_event(conn, output_of("call_order"))
    (answer_create,) = creates_after(conn, output)
    answered = conn.responses[1]
    assert answered.trigger == "client" and answered.create_event is answer_create
    assert answered.tool_choice == "auto"
    record = await record_of(app, call.call_sid)
    assert record["agent"] == "front_desk"
    (done,) = tool_calls(record, "lookup_order")
    assert done["ok"] is True and done["result"] == "ok" and done["ms"] > 0
    assert done["arguments"] == {"order_id": "A123", "card": "***"}
    samples = await scrape(app)
    assert metric(samples, "bridge_tool_calls_total", tool="lookup_order", result="ok") == 1
    duration = "bridge_tool_call_duration_seconds"
    assert metric(samples, f"{duration}_count", tool="lookup_order") == 1
    assert metric(samples, f"{duration}_sum", tool="lookup_order") > 0
    assert realtime.invalid_events == [] and call.violations == []


async def test_a_tool_that_hangs_times_out_and_the_model_is_told(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    realtime.add_responses(beep(function_call=fc("lookup_order", {"order_id": "A1"}, "call_1")))
    tools = {"lookup_order": http_tool(tool_server, "/hang", timeout_seconds=0.5)}
    app = await start_app(app_with, tmp_path, tools)
    played = await one_tool_call(app, realtime, "call_1")
    conn = played.conn

    (request,) = tool_server.requests
    assert request.disconnected.is_set() and request.status == 0  # given up, not lingering
    assert conn.function_outputs == [{"call_id": "call_1", "output": TIMEOUT_OUTPUT}]
    assert len(creates_after(conn, played.seen["output"])) == 1
    (done,) = tool_calls(await record_of(app, played.call.call_sid), "lookup_order")
    assert done["result"] == "timeout" and done["ok"] is False and done["ms"] >= 500
    samples = await scrape(app)
    assert metric(samples, "bridge_tool_calls_total", tool="lookup_order", result="timeout") == 1
    duration = "bridge_tool_call_duration_seconds_count"
    assert metric(samples, duration, tool="lookup_order") == 1


@pytest.mark.parametrize(
    ("path", "table", "output", "detail"),
    [
        ("/fail?status=503", {}, '{"error": "the tool failed (HTTP 503)"}', "http_503"),
        ("/badjson", {}, INVALID_JSON_OUTPUT, "invalid_json"),
        ("/huge?bytes=5000", {"max_reply_bytes": 1000}, TOO_LARGE_OUTPUT, "too_large"),
    ],
    ids=["non_2xx", "invalid_json", "too_large"],
)
async def test_a_failing_tool_gives_the_model_an_error_output(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tool_server: ToolServer,
    tmp_path: Path,
    path: str,
    table: dict[str, Any],
    output: str,
    detail: str,
) -> None:
    realtime.add_responses(beep(function_call=fc("lookup_order", {"order_id": "A1"}, "call_1")))
    app = await start_app(
        app_with, tmp_path, {"lookup_order": http_tool(tool_server, path, **table)}
    )
    played = await one_tool_call(app, realtime, "call_1")

    assert len(tool_server.requests) == 1
    assert played.conn.function_outputs == [{"call_id": "call_1", "output": output}]
    assert len(creates_after(played.conn, played.seen["output"])) == 1
    (done,) = tool_calls(await record_of(app, played.call.call_sid), "lookup_order")
    assert (done["ok"], done["result"], done["detail"]) == (False, "error", detail)
    samples = await scrape(app)
    assert metric(samples, "bridge_tool_calls_total", tool="lookup_order", result="error") == 1


async def test_invalid_arguments_never_reach_the_tool_and_the_model_is_told_why(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    wrong = {"order_id": 4242, "card": "12"}
    realtime.add_responses(beep(function_call=fc("lookup_order", wrong, "call_1")))
    app = await start_app(app_with, tmp_path, {"lookup_order": http_tool(tool_server, "/order")})
    played = await one_tool_call(app, realtime, "call_1")

    assert tool_server.requests == []  # the call is over: none will ever come
    (output,) = played.conn.function_outputs
    told = json.loads(output["output"])
    assert told["error"] == "invalid arguments"
    assert told["problems"] == ['$.card: pattern "^[0-9]{16}$"', '$.order_id: type "string"']
    assert "4242" not in output["output"]  # the rules broken, never the values
    assert len(creates_after(played.conn, played.seen["output"])) == 1
    (done,) = tool_calls(await record_of(app, played.call.call_sid), "lookup_order")
    assert (done["result"], done["detail"]) == ("error", "invalid_arguments")


# -- 5-6: cut-off responses, parallel calls -------------------------------------------------


async def test_a_function_call_cut_off_by_a_barge_in_never_runs(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tool_server: ToolServer,
    tmp_path: Path,
    logs: LogWatch,
) -> None:
    slow_args = beep(
        function_call=fc("lookup_order", {"order_id": "A123"}, "call_cut"),
        function_call_delay_ms=5000,
    )
    realtime.add_responses(slow_args, answer())
    app = await start_app(
        app_with, tmp_path, {"lookup_order": http_tool(tool_server, "/order")}, **CANCEL_MODE
    )
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_sent("response.function_call_arguments.delta")  # half written
        await call.say(speech(CUT_IN))
        await logs.wait("tool.ignored_incomplete", tool="lookup_order")
        await heard_in_full(call, conn, 1)
        await call.hangup()
    await app.wait_idle()

    cut = conn.responses[0]
    assert (cut.status, cut.reason) == ("cancelled", "turn_detected")
    (item,) = [
        ev["item"]
        for ev in conn.sent
        if ev["type"] == "response.output_item.done" and ev["item"]["type"] == "function_call"
    ]
    assert item["status"] == "incomplete" and item["call_id"] == "call_cut"
    assert tool_server.requests == []
    assert conn.function_outputs == []
    assert conn.responses[1].trigger == "vad"  # the caller's turn got the service's answer
    assert len(creates(conn)) == 1  # the greeting's: nothing asked for the cut-off call
    (done,) = tool_calls(await record_of(app, call.call_sid), "lookup_order")
    assert (done["result"], done["detail"]) == ("cancelled", "incomplete")


async def test_parallel_calls_run_at_once_and_their_outputs_keep_the_call_order(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tool_server: ToolServer,
    tmp_path: Path,
    logs: LogWatch,
) -> None:
    first_gate, second_gate = asyncio.Event(), asyncio.Event()
    tool_server.script("/first", json={"first": True}, gate=first_gate)
    tool_server.script("/second", json={"second": True}, gate=second_gate)
    both = beep(
        function_calls=[
            fc("order_status", {"order_id": "A1"}, "call_a"),
            fc("stock_level", {"order_id": "B2"}, "call_b"),
        ]
    )
    realtime.add_responses(both, answer())
    tools = {
        "order_status": http_tool(tool_server, "/first"),
        "stock_level": http_tool(tool_server, "/second"),
    }
    app = await start_app(app_with, tmp_path, tools)
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        # Both are in flight at once, and neither has been answered.
        first, second = await tool_server.wait_requests(2)
        assert (first.path, second.path) == ("/first", "/second")
        assert (first.status, second.status) == (0, 0)
        second_gate.set()  # the second one finishes first...
        await logs.wait("tool.done", tool="stock_level")
        assert conn.function_outputs == []  # ...and its output waits for the first one's
        first_gate.set()
        last = await conn.wait_for("conversation.item.create", predicate=output_of("call_b"))
        await heard_in_full(call, conn, 1)
        await call.wait_for_playout_idle(timeout=10)
        await call.hangup()
    await app.wait_idle()

    assert [o["call_id"] for o in conn.function_outputs] == ["call_a", "call_b"]
    assert len(creates_after(conn, last)) == 1  # one answer for the batch
    assert len(creates(conn)) == 2
    assert conn.responses[1].create_event is creates_after(conn, last)[0]


# -- 7-9: fillers, barge-ins, endings ------------------------------------------------------


async def test_a_slow_tool_gets_a_filler_that_plays_before_the_answer(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    played = await slow_lookup_with_filler(app_with, realtime, tool_server, tmp_path)
    call, conn = played.call, played.conn

    output = first_event(conn, output_of("call_slow"))
    greeting, filler, answered = creates(conn)
    assert position(conn, filler) < position(conn, output) < position(conn, answered)
    assert filler["response"]["tool_choice"] == "none"
    assert FILLER.format(text=FILLER_TEXT) in filler["response"]["instructions"]
    assert "tool_choice" not in answered["response"]
    assert [r.create_event for r in conn.responses] == [greeting, filler, answered]
    # The filler was still being generated when the tool answered: the answer waited for
    # it (a second active response would have been refused).
    assert played.seen["filler_done_at_output"] is False
    assert active_response_errors(conn) == []
    filler_heard = echoes_of(call, conn.responses[1].item_id or "?")
    answer_heard = echoes_of(call, conn.responses[2].item_id or "?")
    assert filler_heard and answer_heard
    assert answer_heard[0][0] > filler_heard[-1][0]  # no overlap: the answer after the filler
    assert {how for _, how in filler_heard + answer_heard} == {"played"}
    assert realtime.invalid_events == []


async def test_a_filler_due_while_the_bot_still_speaks_is_said_once_the_line_is_quiet(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    """`filler_after_ms` passes while the model's own words before the call still play
    (the service generates faster than real time): the filler's wait starts again once the
    caller has heard those words out, and the caller hears the filler while the tool runs on
    ("still running after this: the caller hears `filler`", examples/agents.toml), then the
    answer. The tool answers only once the filler is heard (a gate)."""
    preamble = "Let me look that up for you, it takes a moment."  # about 2.9 s
    realtime.add_responses(
        said(preamble, function_call=fc("lookup_order", {"order_id": "A1"}, "call_slow")),
        said(FILLER_WORDS),
        answer(),
    )
    gate = asyncio.Event()
    tool_server.script("/slow_order", json={"status": "shipped"}, gate=gate)
    slow = http_tool(tool_server, "/slow_order", filler_after_ms=300, filler=FILLER_TEXT)
    app = await start_app(app_with, tmp_path, {"lookup_order": slow})
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        # The caller's mark log as it was when the service got the filler's request (the
        # predicate runs as the service takes each event).
        _, marks_at_filler = await conn.wait_until(
            lambda: next(
                ((ev, list(call.marks_echoed)) for ev in conn.events if is_filler(ev)), None
            ),
            timeout=20,
        )
        await tool_server.wait_requests(1)
        filler = await nth_response(conn, 1, timeout=20)
        await call.wait_until(lambda: heard_some(call, filler), timeout=20)
        gate.set()  # the caller is hearing the filler: now the tool answers
        output = await conn.wait_for(
            "conversation.item.create", predicate=output_of("call_slow"), timeout=10
        )
        await heard_in_full(call, conn, 2)
        await call.wait_for_playout_idle(timeout=10)
        await call.hangup()
    await app.wait_idle()

    preamble_item = conn.responses[0].item_id or "?"
    chunks = sum(
        1
        for ev in conn.sent
        if ev["type"] == "response.output_audio.delta" and ev["item_id"] == preamble_item
    )
    # The filler was asked for only once the caller had heard the preamble out.
    preamble_heard = [how for name, how in marks_at_filler if name.startswith(preamble_item)]
    assert chunks > 0 and preamble_heard == ["played"] * chunks
    greeting, asked, answered = creates(conn)
    assert is_filler(asked) and FILLER.format(text=FILLER_TEXT) in asked["response"]["instructions"]
    assert position(conn, asked) < position(conn, output) < position(conn, answered)
    assert [r.create_event for r in conn.responses] == [greeting, asked, answered]
    assert active_response_errors(conn) == []
    # Heard one after the other, in full: the preamble, the filler, the answer.
    heard = [echoes_of(call, r.item_id or "?") for r in conn.responses]
    assert all(heard) and {how for marks in heard for _, how in marks} == {"played"}
    assert heard[0][-1][0] < heard[1][0][0] and heard[1][-1][0] < heard[2][0][0]
    assert realtime.invalid_events == [] and call.violations == []


async def test_a_barge_in_cancels_a_cancel_tool_and_the_caller_gets_the_services_answer(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    played = await cancelled_by_the_caller(app_with, realtime, tool_server, tmp_path)
    app, call, conn = played.app, played.call, played.conn

    assert played.seen["request"].status == 0  # never answered: the bridge dropped it
    assert conn.function_outputs == [{"call_id": "call_1", "output": CANCELLED_OUTPUT}]
    assert conn.responses[1].trigger == "vad"  # the caller's turn: the service answered it
    assert len(creates(conn)) == 1  # the greeting's: nothing asked to answer the tool
    (done,) = tool_calls(await record_of(app, call.call_sid), "lookup_order")
    assert (done["result"], done["detail"]) == ("cancelled", "interrupted")
    samples = await scrape(app)
    assert metric(samples, "bridge_tool_calls_total", tool="lookup_order", result="cancelled") == 1


async def test_a_continue_tool_still_delivers_but_asks_for_no_answer_over_the_callers_turn(
    app_with: AppFactory, realtime: FakeRealtime, tool_server: ToolServer, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    tool_server.script("/gated", json={"status": "shipped"}, gate=gate)
    looking = said(LOOKING_IT_UP, function_call=fc("lookup_order", {"order_id": "A1"}, "call_1"))
    realtime.add_responses(looking, answer())
    app = await start_app(
        app_with, tmp_path, {"lookup_order": http_tool(tool_server, "/gated")}, **CANCEL_MODE
    )
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        (request,) = await tool_server.wait_requests(1)
        await call.wait_for_heard(8 * 800, timeout=20)  # "let me look that up..." is heard
        saying = asyncio.create_task(call.say(speech(LONG_CUT_IN)))
        # The bridge has taken the caller's speech in (its `clear` proves it), and the
        # caller goes on talking for seconds: the tool answers during their turn.
        await call.wait_for_clear(timeout=10)
        gate.set()
        output = await conn.wait_for("conversation.item.create", predicate=output_of("call_1"))
        await saying
        await heard_in_full(call, conn, 1)
        await call.wait_for_playout_idle(timeout=10)
        await call.hangup()
    await app.wait_idle()

    assert request.status == 200
    assert conn.function_outputs == [{"call_id": "call_1", "output": '{"status":"shipped"}'}]
    assert conn.responses[1].trigger == "vad"
    assert creates_after(conn, output) == []
    assert len(creates(conn)) == 1
    (done,) = tool_calls(await record_of(app, call.call_sid), "lookup_order")
    assert done["result"] == "ok"


async def test_end_call_beside_a_business_tool_never_hangs_up_on_a_barge_in(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tool_server: ToolServer,
    rest: FakeTwilioRest,
    tmp_path: Path,
) -> None:
    """tests/test_e2e_ending.py has end_call alone; here the goodbye also looks an order
    up, in the same response."""
    goodbye = said(
        LONG_GOODBYE,
        function_calls=[
            fc("lookup_order", {"order_id": "A1"}, "call_order"),
            fc("end_call", {"reason": "the caller is done"}, "call_end"),
        ],
    )
    realtime.add_responses(goodbye, answer())
    app = await start_app(
        app_with,
        tmp_path,
        {"lookup_order": http_tool(tool_server, "/order")},
        twilio_account_sid=ACCOUNT_SID,
        twilio_api_base_url=rest.base_url,
        **CANCEL_MODE,
    )
    async with dial(app) as call:
        rest.register_call(call)
        await call.start()
        conn = await realtime.wait_connection()
        update = await conn.wait_for("session.update")
        assert [t["name"] for t in update["session"]["tools"]] == ["end_call", "lookup_order"]
        await conn.wait_for("conversation.item.create", predicate=output_of("call_order"))
        await call.wait_for_heard(1000 * 8, timeout=20)  # a second into the goodbye
        await call.say(speech(CUT_IN))
        await call.wait_for_clear(timeout=10)
        told = await conn.wait_for(
            "conversation.item.create",
            timeout=10,
            predicate=lambda e: e["item"].get("role") == "system",
        )
        # The conversation goes on: the next answer plays in full, and nobody hangs up.
        await heard_in_full(call, conn, 1)
        await call.wait_for_playout_idle(timeout=10)
        assert rest.requests == [] and not call.closed.is_set()
        await call.hangup()
    await app.wait_idle()

    assert "called off" in told["item"]["content"][0]["text"]
    # In call order, the built-in's behind the business tool's.
    assert [o["call_id"] for o in conn.function_outputs] == ["call_order", "call_end"]
    assert conn.responses[1].trigger == "vad"
    assert rest.requests == []
    record = await record_of(app, call.call_sid)
    assert record["outcome"] == "caller_hung_up" and record["rest_actions"] == []
    assert [c["result"] for c in tool_calls(record, "lookup_order")] == ["ok"]


# -- 10: MCP --------------------------------------------------------------------------------


async def test_mcp_header_is_filled_as_sent_never_recorded_and_calls_are_recorded(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: LogWatch,
) -> None:
    monkeypatch.setenv("TEST_MCP_TOKEN", MCP_TOKEN)
    calls = [
        {"server_label": "calendar", "name": "find_slot", "arguments": {"day": "monday"},
         "output": '{"slot": "10:00"}', "duration_ms": 30},
        {"server_label": "calendar", "name": "book_slot", "arguments": {"slot": "10:00"},
         "error": {"type": "http_error", "code": 502, "message": "bad gateway"}},
    ]  # fmt: skip
    realtime.add_responses(beep(mcp_calls=calls))
    record_dir = tmp_path / "recordings"
    app = await start_app(
        app_with, tmp_path, {"calendar": mcp_server()}, record_dir=str(record_dir)
    )
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await asyncio.wait_for((await nth_response(conn, 0)).done.wait(), 10)
        await heard_in_full(call, conn, 0)
        await call.hangup()
    await app.wait_idle()

    (server,) = conn.mcp_servers
    assert server["server_label"] == "calendar"
    assert server["headers"] == {"Authorization": f"Bearer {MCP_TOKEN}"}
    record = await record_of(app, call.call_sid)
    (found,) = tool_calls(record, "calendar.find_slot")
    (failed,) = tool_calls(record, "calendar.book_slot")
    assert found["ok"] is True and found["result"] == "ok"
    assert failed["ok"] is False and (failed["result"], failed["detail"]) == ("error", "http_error")
    samples = await scrape(app)
    assert metric(samples, "bridge_mcp_errors_total", server="calendar", kind="call") == 1
    assert metric(samples, "bridge_tool_calls_total", tool="calendar.find_slot", result="ok") == 1
    assert MCP_TOKEN not in logs.text()
    assert MCP_TOKEN not in json.dumps(record)
    app.state.recordings.stop()  # flush the recording
    path = recording(record_dir)
    assert_replays(path)
    lines = path.read_text().splitlines()
    assert "${TEST_MCP_TOKEN}" in lines[0]  # the header's config keeps the reference
    leaks = [
        (n, entry["dir"], entry["msg"].get("type"))
        for n, entry in enumerate(map(json.loads, lines[1:]), start=2)
        if MCP_TOKEN in json.dumps(entry)
    ]
    assert leaks == [], f"the MCP token is in the recording at (line, dir, type) {leaks}"


async def test_a_failing_mcp_listing_is_counted_and_the_call_goes_on(
    app_with: AppFactory, realtime: FakeRealtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MCP_TOKEN", MCP_TOKEN)
    realtime.failing_mcp_servers = {"calendar"}
    realtime.add_responses(beep())
    app = await start_app(app_with, tmp_path, {"calendar": mcp_server()})
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_sent("mcp_list_tools.failed")
        await heard_in_full(call, conn, 0)  # after the failure: the call goes on
        await call.hangup()
    await app.wait_idle()

    samples = await scrape(app)
    assert metric(samples, "bridge_mcp_errors_total", server="calendar", kind="list_tools") == 1
    assert (await record_of(app, call.call_sid))["outcome"] == "caller_hung_up"


async def test_an_mcp_approval_request_is_denied(
    app_with: AppFactory, realtime: FakeRealtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MCP_TOKEN", MCP_TOKEN)
    ask = {"server_label": "calendar", "name": "cancel_booking", "arguments": {"booking": "B7"},
           "approval": True}  # fmt: skip
    realtime.add_responses(beep(mcp_calls=[ask]), answer())
    tools = {"calendar": mcp_server(require_approval=["cancel_booking"])}
    app = await start_app(app_with, tmp_path, tools)
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        denial = await conn.wait_for(
            "conversation.item.create",
            predicate=lambda e: e["item"]["type"] == "mcp_approval_response",
        )
        await conn.wait_until(lambda: creates_after(conn, denial) or None, timeout=10)
        await heard_in_full(call, conn, 1)
        await call.hangup()
    await app.wait_idle()

    (request_id,) = conn.responses[0].mcp_item_ids
    (denied,) = conn.approval_responses
    assert denied["approval_request_id"] == request_id
    assert denied["approve"] is False and denied["reason"] == DENIAL
    assert not conn.approved_calls  # nothing will run it
    (done,) = tool_calls(await record_of(app, call.call_sid), "calendar.cancel_booking")
    assert (done["result"], done["detail"]) == ("error", "approval_denied")


# -- 11-12: agents per number, Python tools -------------------------------------------------


async def test_each_dialled_number_gets_its_agent(
    app_with: AppFactory, realtime: FakeRealtime, tmp_path: Path
) -> None:
    agents = {
        "front_desk": front_desk([], voice="alloy"),
        "sales": {
            "numbers": ["+15550100"],
            "instructions": "You sell widgets to {caller_number}.",
            "voice": "cedar",
        },
        "support": {
            "numbers": ["+15550101"],
            "instructions": "You help {caller_number} with {called_number}.",
            "voice": "sage",
        },
    }
    app = await start_app(app_with, tmp_path, {}, agents, bot_greeting="")
    seen: dict[str, tuple[dict[str, Any], str]] = {}
    for to in ("+15550100", "+15550101", "+15550999"):
        async with dial(app, to) as call:
            await call.start()
            conn = await realtime.wait_connection()
            update = await conn.wait_for("session.update")
            await call.hangup()
            await conn.wait_closed()
        await app.wait_idle()
        seen[to] = update["session"], call.call_sid

    def facts(to: str) -> tuple[str, str]:
        session = seen[to][0]
        return session["instructions"], session["audio"]["output"]["voice"]

    assert facts("+15550100") == (f'You sell widgets to "{CALLER}".', "cedar")
    assert facts("+15550101") == (f'You help "{CALLER}" with "+15550101".', "sage")
    assert facts("+15550999") == (
        f'You are the front desk. The caller\'s number is "{CALLER}".',
        "alloy",
    )
    for to, agent in (
        ("+15550100", "sales"),
        ("+15550101", "support"),
        ("+15550999", "front_desk"),
    ):
        assert (await record_of(app, seen[to][1]))["agent"] == agent


@pytest.mark.parametrize(
    ("function", "table", "result", "output"),
    [
        (
            "opening_hours",
            {},
            "ok",
            '{"day":"saturday","hours":"10:00 to 16:00","agent":"front_desk"}',
        ),
        ("broken", {}, "error", FAILED_OUTPUT),
        ("sleepy", {"timeout_seconds": 0.3}, "timeout", TIMEOUT_OUTPUT),
    ],
)
async def test_a_python_tool_answers_or_fails_into_an_output(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tmp_path: Path,
    logs: LogWatch,
    function: str,
    table: dict[str, Any],
    result: str,
    output: str,
) -> None:
    realtime.add_responses(beep(function_call=fc(function, {"day": "saturday"}, "call_py")))
    app = await start_app(app_with, tmp_path, {function: python_tool(function, **table)})
    async with dial(app) as call:
        await call.start()
        conn = await realtime.wait_connection()
        sent = await conn.wait_for("conversation.item.create", predicate=output_of("call_py"))
        await conn.wait_until(lambda: creates_after(conn, sent) or None, timeout=10)
        await call.hangup()
    await app.wait_idle()

    assert conn.function_outputs == [{"call_id": "call_py", "output": output}]
    (done,) = tool_calls(await record_of(app, call.call_sid), function)
    assert done["result"] == result
    assert BROKEN_DETAIL not in logs.text()  # an exception is logged by its type only


# -- 13: recordings of tool calls replay -----------------------------------------------------

RECORDED: dict[str, Scenario] = {
    "tool_call": order_lookup,
    "slow_tool_with_filler": slow_lookup_with_filler,
    "barge_in_cancels_tool": cancelled_by_the_caller,
}


@pytest.mark.parametrize("name", list(RECORDED))
async def test_a_recorded_tool_call_replays_without_the_redacted_card(
    app_with: AppFactory,
    realtime: FakeRealtime,
    tool_server: ToolServer,
    tmp_path: Path,
    logs: LogWatch,
    name: str,
) -> None:
    """Each scenario's tool has `redact = ["card"]` and the model passes a card number.
    With KEEP_TOOL_FIXTURES=DIR set, the recordings are kept there as `<name>.jsonl`: how
    the library's copies were made."""
    record_dir = tmp_path / "recordings"
    played = await RECORDED[name](app_with, realtime, tool_server, tmp_path, record_dir=record_dir)
    assert tool_server.requests[0].json["arguments"]["card"] == CARD  # the tool got it
    record = await record_of(played.app, played.call.call_sid)
    played.app.state.recordings.stop()  # the file is complete
    path = recording(record_dir)
    text = path.read_text()

    assert_replays(path)
    fixture = load(path)
    # The runs are outputs of the core, their outcomes inputs: a replay calls nothing.
    asked = [e.msg["tool_request"]["call_id"] for e in fixture.entries if "tool_request" in e.msg]
    told = [e.msg["tool_result"]["call_id"] for e in fixture.entries if "tool_result" in e.msg]
    assert asked == [c["call_id"] for c in record["tool_calls"]]
    assert set(told) <= set(asked)
    assert '"card":"***"' in text
    for where, content in (
        ("fixture", text),
        ("record", json.dumps(record)),
        ("logs", logs.text()),
    ):
        assert CARD not in content, f"the card number is in the {where}"
    assert SECRET not in text and tool_server.url("/") not in text
    if keep := os.environ.get("KEEP_TOOL_FIXTURES"):
        shutil.copyfile(path, Path(keep) / f"{name}.jsonl")
