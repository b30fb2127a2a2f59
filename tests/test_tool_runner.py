"""`ToolRunner`: HTTP tools over real loopback sockets (`ToolServer`), Python tools in-loop.

No sleep synchronises anything here: the tests await the server's recorded requests and
its events; time bounds are generous timeouts only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from app.tools.defs import (
    MAX_OUTPUT_BYTES,
    HttpTool,
    PythonTool,
    ToolContext,
    ToolDef,
    ToolOutcome,
)
from app.tools.http import TOO_LARGE_OUTPUT, call_http
from app.tools.runner import ToolRunner
from app.tools.signing import verify
from tests.fakes.tool_server import ToolServer

SECRET = "s3cret-signing-key"
API_KEY = "tool-api-key-8f2d1c77"
CONTEXT = ToolContext(
    call_sid="CA" + "1" * 32,
    agent="support",
    from_number="+15550001111",
    to_number="+15550002222",
    parameters={"city": "Lyon"},
)
#: Bound on anything that should be prompt; generous, a loaded CI box is slow.
PROMPT_S = 5.0

RunnerFactory = Callable[..., ToolRunner]


@pytest.fixture
async def server() -> AsyncIterator[ToolServer]:
    async with ToolServer(secret=SECRET) as fake:
        yield fake


@pytest.fixture
async def make_runner() -> AsyncIterator[RunnerFactory]:
    """Runners over `tools`, signed with SECRET unless told; closed at the end (before
    `server` when a test asks for `server` first)."""
    runners: list[ToolRunner] = []

    def make(*tools: ToolDef, signing_secret: str | None = SECRET, **kwargs: Any) -> ToolRunner:
        runner = ToolRunner({t.name: t for t in tools}, signing_secret, **kwargs)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        await runner.aclose()


def failures(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of every `tool.failed` event logged."""
    return [
        r.__dict__["fields"]
        for r in caplog.records
        if r.getMessage() == "tool.failed" and r.levelno == logging.WARNING
    ]


async def run_http(
    make_runner: RunnerFactory,
    url: str,
    *,
    signing_secret: str | None = SECRET,
    **tool: Any,
) -> ToolOutcome:
    """Run an HTTP tool at `url` (`tool`: HttpTool's fields) once, for order A-17."""
    runner = make_runner(HttpTool("lookup_order", url, **tool), signing_secret=signing_secret)
    return await runner.run("lookup_order", {"order_id": "A-17"}, CONTEXT)


# --- HTTP: success -------------------------------------------------------------------------


async def test_ok_reply_body_shape_and_signature(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    outcome = await run_http(make_runner, server.url("/order"), headers={"X-Api-Key": API_KEY})
    assert outcome == ToolOutcome("ok", '{"order_id":"A-17","status":"shipped"}', "")

    [req] = server.requests
    assert req.method == "POST"
    assert req.json == {
        "call_sid": CONTEXT.call_sid,
        "agent": "support",
        "from": "+15550001111",
        "to": "+15550002222",
        "tool": "lookup_order",
        "arguments": {"order_id": "A-17"},
    }
    assert req.body == orjson.dumps(req.json)  # compact, as signed
    assert req.signature_ok is True
    assert req.headers["x-bridge-signature"].startswith("v1=")
    assert req.headers["x-bridge-timestamp"].isdigit()
    assert req.headers["x-api-key"] == API_KEY
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("twilio-realtime-bridge/")


async def test_a_reply_is_passed_on_as_written_but_stripped(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    server.script(
        "/pretty", body=b' \r\n{ "a" : [1, 2,\n 3], "b": "\\u00e9", "c": "\xc3\xa9" }\n\t'
    )
    outcome = await run_http(make_runner, server.url("/pretty"))
    assert outcome == ToolOutcome("ok", '{ "a" : [1, 2,\n 3], "b": "\\u00e9", "c": "é" }')


async def test_integers_past_64_bits_reach_the_model_exactly(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    """orjson reads them as floats: re-encoding its reading would round them."""
    reply = '{"id":123456789012345678901234567890,"neg":-18446744073709551617,"x":1.5e300}'
    server.script("/big", body=reply.encode())
    outcome = await run_http(make_runner, server.url("/big"))
    assert outcome == ToolOutcome("ok", reply)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not UTF-8",
        b'"\xed\xa0\x80"',  # a UTF-8-encoded surrogate
        b"[" * 2000 + b"]" * 2000,  # past orjson's depth limit
        b'{"a": 1} trailing',
        b"NaN",
    ],
    ids=["bad_utf8", "surrogate", "too_deep", "trailing", "nan"],
)
async def test_a_reply_orjson_rejects_is_invalid_json(
    server: ToolServer, make_runner: RunnerFactory, body: bytes
) -> None:
    server.script("/odd", body=body)
    outcome = await run_http(make_runner, server.url("/odd"))
    assert (outcome.result, outcome.detail) == ("error", "invalid_json")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_the_tools_method_is_used(
    server: ToolServer, make_runner: RunnerFactory, method: str
) -> None:
    outcome = await run_http(make_runner, server.url("/order"), method=method)
    assert outcome.result == "ok"
    assert server.requests[0].method == method


async def test_no_secret_no_signature_headers(make_runner: RunnerFactory) -> None:
    async with ToolServer() as plain:
        outcome = await run_http(make_runner, plain.url("/order"), signing_secret=None)
        [req] = plain.requests
    assert outcome.result == "ok"
    assert req.signature_ok is None
    assert "x-bridge-signature" not in req.headers
    assert "x-bridge-timestamp" not in req.headers


async def test_a_wrong_secret_is_refused_by_the_receiver(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    outcome = await run_http(make_runner, server.url("/order"), signing_secret="not-it-0000")
    output = '{"error": "the tool failed (HTTP 401)", "reply": {"error":"bad signature"}}'
    assert outcome == ToolOutcome("error", output, "http_401")
    assert server.requests[0].signature_ok is False


async def test_the_signature_timestamp_comes_from_the_clock(server: ToolServer) -> None:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        tool = HttpTool("lookup_order", server.url("/order"))
        outcome = await call_http(
            tool, {"order_id": "A-1"}, CONTEXT, client, SECRET, clock=lambda: 1_700_000_000.9
        )
    [req] = server.requests
    assert req.headers["x-bridge-timestamp"] == "1700000000"
    assert req.signature_ok is False  # stale for the receiver's clock...
    assert outcome.detail == "http_401"
    # ...but genuine for one in 2023.
    timestamp, signature = req.headers["x-bridge-timestamp"], req.headers["x-bridge-signature"]
    assert verify(SECRET, timestamp, signature, req.body, now=1_700_000_030)


# --- HTTP: failures ------------------------------------------------------------------------


async def test_timeout(
    server: ToolServer, make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(PROMPT_S):  # a generous bound: the run's own is 0.3 s
        outcome = await run_http(make_runner, server.url("/hang"), timeout_s=0.3)
    assert outcome == ToolOutcome(
        "timeout", '{"error": "the tool did not answer in time"}', "timeout"
    )
    assert loop.time() - started >= 0.29  # it waited its timeout, not less
    [req] = await server.wait_requests(1)
    # The bridge hung up on the endpoint: its request is over, not left dangling.
    async with asyncio.timeout(PROMPT_S):
        await req.disconnected.wait()
        await req.handled.wait()
    [fields] = failures(caplog)
    assert fields["tool"] == "lookup_order"
    assert fields["detail"] == "timeout"
    assert "status" not in fields
    assert isinstance(fields["ms"], int) and fields["ms"] >= 290


async def test_the_deadline_bounds_the_whole_run_not_each_read(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    """One byte every 100 ms satisfies every per-read timeout of 0.5 s, and the reply
    completes after 10 s (it would then be `ok` or `invalid_json`): only a deadline on the
    whole run makes it a timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(PROMPT_S):  # short of the trickle's 10 s
        outcome = await run_http(
            make_runner, server.url("/trickle?every_ms=100&bytes=100"), timeout_s=0.5
        )
    assert outcome == ToolOutcome(
        "timeout", '{"error": "the tool did not answer in time"}', "timeout"
    )
    assert loop.time() - started >= 0.49  # it waited its timeout, not less
    [req] = server.requests
    assert req.status == 200  # the head came at once: the reply was under way
    async with asyncio.timeout(PROMPT_S):
        await req.disconnected.wait()  # and the bridge hung up on it


async def test_a_slow_tool_within_its_timeout_is_ok(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    outcome = await run_http(make_runner, server.url("/slow?ms=100"), timeout_s=PROMPT_S)
    assert outcome == ToolOutcome("ok", '{"slept_ms":100.0}')


async def test_the_runs_timeout_shortens_the_tools_never_lengthens(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    runner = make_runner(
        HttpTool("patient", server.url("/hang"), timeout_s=60),
        HttpTool("hasty", server.url("/hang"), timeout_s=0.2),
    )
    async with asyncio.timeout(PROMPT_S):  # far short of either 60 s
        shortened = await runner.run("patient", {}, CONTEXT, timeout_s=0.2)
        kept = await runner.run("hasty", {}, CONTEXT, timeout_s=60)
    assert shortened.result == kept.result == "timeout"


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_non_2xx(
    server: ToolServer,
    make_runner: RunnerFactory,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    outcome = await run_http(make_runner, server.url(f"/fail?status={status}"))  # text body
    output = f'{{"error": "the tool failed (HTTP {status})"}}'
    assert outcome == ToolOutcome("error", output, f"http_{status}")
    [fields] = failures(caplog)
    assert fields["status"] == status
    assert fields["detail"] == f"http_{status}"


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_a_small_json_error_body_goes_to_the_model(
    server: ToolServer, make_runner: RunnerFactory, status: int
) -> None:
    outcome = await run_http(make_runner, server.url(f"/fail?status={status}&body=json"))
    reply = '{"error":"failed on purpose"}'
    output = f'{{"error": "the tool failed (HTTP {status})", "reply": {reply}}}'
    assert outcome == ToolOutcome("error", output, f"http_{status}")
    assert orjson.loads(outcome.output)["reply"] == {"error": "failed on purpose"}


@pytest.mark.parametrize(
    ("content_type", "body", "passed"),
    [
        ("application/problem+json; charset=utf-8", b'{"detail": "no such order"}', True),
        ("application/json", b'{"n": 123456789012345678901234567890}', True),  # as written
        ("application/json", b"x" * 4097, False),  # too long: not read
        ("application/json", b"not json", False),
        ("text/html", b'{"looks": "like json"}', False),  # says it is not JSON
    ],
    ids=["problem_json", "big_int", "too_long", "not_json", "not_said_json"],
)
async def test_which_error_bodies_go_to_the_model(
    server: ToolServer,
    make_runner: RunnerFactory,
    content_type: str,
    body: bytes,
    passed: bool,
) -> None:
    server.script("/no", status=404, body=body, headers={"content-type": content_type})
    outcome = await run_http(make_runner, server.url("/no"))
    assert (outcome.result, outcome.detail) == ("error", "http_404")
    if passed:
        assert (
            outcome.output == f'{{"error": "the tool failed (HTTP 404)", "reply": {body.decode()}}}'
        )
    else:
        assert outcome.output == '{"error": "the tool failed (HTTP 404)"}'


async def test_a_large_json_error_body_is_not_read(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    outcome = await run_http(make_runner, server.url("/fail?status=500&body=big"))
    assert outcome == ToolOutcome("error", '{"error": "the tool failed (HTTP 500)"}', "http_500")


async def test_an_error_body_that_stalls_is_still_the_status(
    server: ToolServer, make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = await run_http(make_runner, server.url("/fail?status=404&body=stall"), timeout_s=0.3)
    assert outcome == ToolOutcome("error", '{"error": "the tool failed (HTTP 404)"}', "http_404")
    [fields] = failures(caplog)
    assert (fields["detail"], fields["status"]) == ("http_404", 404)


async def test_invalid_json(server: ToolServer, make_runner: RunnerFactory) -> None:
    outcome = await run_http(make_runner, server.url("/badjson"))
    assert outcome.result == "error"
    assert outcome.detail == "invalid_json"
    assert "error" in orjson.loads(outcome.output)


@pytest.mark.parametrize(("status", "body"), [(204, b""), (200, b""), (201, b" \r\n")])
async def test_an_empty_2xx_is_ok(
    server: ToolServer, make_runner: RunnerFactory, status: int, body: bytes
) -> None:
    """The action succeeded and there is nothing to say: not an invalid answer."""
    server.script("/empty", status=status, body=body)
    outcome = await run_http(make_runner, server.url("/empty"))
    assert outcome == ToolOutcome("ok", '{"ok": true}')


async def test_a_reply_at_the_limit_is_fine(server: ToolServer, make_runner: RunnerFactory) -> None:
    outcome = await run_http(make_runner, server.url("/huge?bytes=1000"), max_reply_bytes=1000)
    assert outcome.result == "ok"
    assert len(outcome.output) == 1000


@pytest.mark.parametrize(
    "query",
    [
        "bytes=1001",  # Content-Length, the whole body sent
        "bytes=1001&chunked=1",  # chunked, the whole body sent
        "bytes=50000&chunked=1",  # chunked, several chunks
        # The body never ends: only a client that stops early returns before its timeout.
        "bytes=5000&stall=1",  # rejected on the Content-Length, no body read
        "bytes=5000&chunked=1&stall=1",  # rejected once past the limit
    ],
)
async def test_too_large(
    server: ToolServer, make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    outcome = await run_http(
        make_runner, server.url(f"/huge?{query}"), max_reply_bytes=1000, timeout_s=30
    )
    assert outcome == ToolOutcome(
        "error", '{"error": "the tool\'s answer was too large"}', "too_large"
    )
    [fields] = failures(caplog)
    assert (fields["detail"], fields["status"]) == ("too_large", 200)
    [req] = server.requests
    if "stall" in query:  # the bridge hung up instead of waiting for the rest
        async with asyncio.timeout(PROMPT_S):
            await req.disconnected.wait()


async def test_a_redirect_is_not_followed(
    server: ToolServer, make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = await run_http(make_runner, server.url("/redirect"))
    # Its small JSON body goes along, as any failed request's does.
    output = '{"error": "the tool failed (HTTP 302)", "reply": {"moved":true}}'
    assert outcome == ToolOutcome("error", output, "http_302")
    assert [r.path for r in server.requests] == ["/redirect"]  # /order never asked
    assert failures(caplog)[0]["status"] == 302


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_port(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = await run_http(make_runner, f"http://127.0.0.1:{_free_port()}/order")
    assert outcome == ToolOutcome(
        "error", '{"error": "the tool could not be reached"}', "unreachable"
    )
    [fields] = failures(caplog)
    assert fields["detail"] == "unreachable"
    assert "status" not in fields


async def test_unknown_host(make_runner: RunnerFactory) -> None:
    outcome = await run_http(make_runner, "http://no-such-host.invalid/order", timeout_s=PROMPT_S)
    assert outcome.detail in ("unreachable", "timeout")  # a resolver may be slow to say no
    assert outcome.result in ("error", "timeout")


async def test_a_protocol_error_is_unreachable(make_runner: RunnerFactory) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        outcome = await run_http(make_runner, f"http://127.0.0.1:{port}/order")
    finally:
        listener.close()
        await listener.wait_closed()
    assert outcome.detail == "unreachable"


async def test_arguments_that_are_not_json_are_an_outcome(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    runner = make_runner(HttpTool("lookup_order", server.url("/order")))
    outcome = await runner.run("lookup_order", {"when": object()}, CONTEXT)
    assert (outcome.result, outcome.detail) == ("error", "bad_arguments")
    assert server.requests == []


async def test_a_bad_method_is_refused_without_a_request(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    outcome = await run_http(make_runner, server.url("/order"), method="GET")
    assert (outcome.result, outcome.detail) == ("error", "bad_method")
    assert server.requests == []


async def test_headers_are_sent_but_never_logged(
    server: ToolServer, make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever happens, the tool's header values (secrets) reach no log record."""
    caplog.set_level(logging.DEBUG)
    secret_headers = {"Authorization": f"Bearer {API_KEY}", "X-Api-Key": API_KEY}
    paths = ["/order", "/fail?status=500", "/badjson", "/huge?bytes=100000", "/redirect", "/hang"]
    for path in paths:
        await run_http(make_runner, server.url(path), headers=secret_headers, timeout_s=0.5)
    await run_http(make_runner, f"http://127.0.0.1:{_free_port()}/", headers=secret_headers)
    assert len(server.requests) == len(paths)
    for req in server.requests:
        assert req.headers["authorization"] == f"Bearer {API_KEY}"
        assert req.headers["x-api-key"] == API_KEY
    assert len(failures(caplog)) == len(paths)  # all but /order, plus the unreachable one
    for record in caplog.records:
        rendered = f"{record.getMessage()} {record.args!r} {record.__dict__!r}"
        assert API_KEY not in rendered, record
        assert SECRET not in rendered, record


# --- Python tools --------------------------------------------------------------------------


async def test_python_tool_ok(make_runner: RunnerFactory) -> None:
    seen: list[tuple[ToolContext, dict[str, Any]]] = []

    async def lookup(context: ToolContext, arguments: dict[str, Any]) -> Any:
        seen.append((context, arguments))
        return {
            "order_id": arguments["order_id"],
            "items": [1, 2],
            "city": context.parameters["city"],
        }

    runner = make_runner(PythonTool("lookup_order", lookup))
    outcome = await runner.run("lookup_order", {"order_id": "A-17"}, CONTEXT)
    assert outcome == ToolOutcome("ok", '{"order_id":"A-17","items":[1,2],"city":"Lyon"}')
    assert seen == [(CONTEXT, {"order_id": "A-17"})]


async def test_python_tool_returning_none_is_null(make_runner: RunnerFactory) -> None:
    async def nothing(context: ToolContext, arguments: dict[str, Any]) -> None:
        return None

    outcome = await make_runner(PythonTool("noop", nothing)).run("noop", {}, CONTEXT)
    assert outcome == ToolOutcome("ok", "null")


async def test_python_tool_exception(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(context: ToolContext, arguments: dict[str, Any]) -> Any:
        raise ValueError(f"card {arguments['card']} declined")

    runner = make_runner(PythonTool("pay", broken))
    outcome = await runner.run("pay", {"card": "4111111111111111"}, CONTEXT)
    assert outcome == ToolOutcome("error", '{"error": "the tool failed"}', "ValueError")
    [fields] = failures(caplog)
    assert fields["detail"] == "ValueError"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None and r.exc_text is None for r in warnings)  # no traceback
    for record in caplog.records:
        assert "4111111111111111" not in f"{record.getMessage()} {record.__dict__!r}"
    [frames] = [r.__dict__["fields"]["frames"] for r in caplog.records if r.msg == "tool.frames"]
    assert any("broken" in frame for frame in frames)  # where it failed, at DEBUG


async def test_python_tools_own_timeout_error_is_an_exception(make_runner: RunnerFactory) -> None:
    async def inner_timeout(context: ToolContext, arguments: dict[str, Any]) -> Any:
        raise TimeoutError

    outcome = await make_runner(PythonTool("t", inner_timeout)).run("t", {}, CONTEXT)
    assert (outcome.result, outcome.detail) == ("error", "TimeoutError")


async def test_python_tool_timeout(make_runner: RunnerFactory) -> None:
    cancelled = asyncio.Event()

    async def forever(context: ToolContext, arguments: dict[str, Any]) -> Any:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = make_runner(PythonTool("forever", forever, timeout_s=0.2))
    async with asyncio.timeout(PROMPT_S):
        outcome = await runner.run("forever", {}, CONTEXT)
    assert outcome == ToolOutcome(
        "timeout", '{"error": "the tool did not answer in time"}', "timeout"
    )
    assert cancelled.is_set()  # the function was stopped, not left running


def _returning(value: Any) -> PythonTool:
    async def give(context: ToolContext, arguments: dict[str, Any]) -> Any:
        return value

    return PythonTool("give", give)


def _nested(depth: int) -> Any:
    value: Any = 10**30  # orjson refuses it first, so json gets to try the rest
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> Any:
    looped: list[Any] = [10**30]
    looped.append(looped)
    return looped


@pytest.mark.parametrize(
    "value",
    [
        {"when": object()},
        {1: "an int key"},  # orjson's refusal, and not for a big int: no second try
        {"big": 10**30, "when": object()},
        {"big": 10**30, "nan": float("nan")},  # json would write NaN, which is not JSON
        {"big": 10**30, "text": "\ud800"},  # a lone surrogate: not UTF-8
        _cycle(),
        _nested(100_000),  # json recurses past the interpreter's limit
    ],
    ids=["object", "int_key", "big_and_object", "big_and_nan", "surrogate", "cycle", "deep"],
)
async def test_python_tool_non_serialisable(make_runner: RunnerFactory, value: Any) -> None:
    outcome = await make_runner(_returning(value)).run("give", {}, CONTEXT)
    assert outcome == ToolOutcome("error", '{"error": "the tool failed"}', "bad_result")


async def test_python_tool_integers_past_64_bits_are_exact(make_runner: RunnerFactory) -> None:
    value = {"id": 123456789012345678901234567890, "name": "é", "list": [1, -(2**70)]}
    outcome = await make_runner(_returning(value)).run("give", {}, CONTEXT)
    text = '{"id":123456789012345678901234567890,"name":"é","list":[1,-1180591620717411303424]}'
    assert outcome == ToolOutcome("ok", text)


@pytest.mark.parametrize("big_int", [False, True], ids=["orjson", "json"])
async def test_python_tool_output_over_the_cap_is_too_large(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture, big_int: bool
) -> None:
    """A Python tool's output is bounded like an HTTP reply (the same output text): it
    must fit a fixture line. Counted in UTF-8 bytes, whichever encoder wrote it."""

    def value(text: str) -> Any:
        return [123456789012345678901234567890, text] if big_int else [text]

    envelope = len('[123456789012345678901234567890,""]' if big_int else '[""]')
    at_cap = value("é" + "x" * (MAX_OUTPUT_BYTES - envelope - 2))  # é: 2 bytes
    outcome = await make_runner(_returning(at_cap)).run("give", {}, CONTEXT)
    assert outcome.result == "ok"
    assert len(outcome.output.encode()) == MAX_OUTPUT_BYTES

    over = value("é" + "x" * (MAX_OUTPUT_BYTES - envelope - 1))
    outcome = await make_runner(_returning(over)).run("give", {}, CONTEXT)
    assert outcome == ToolOutcome("error", TOO_LARGE_OUTPUT, "too_large")
    assert TOO_LARGE_OUTPUT == '{"error": "the tool\'s answer was too large"}'
    assert failures(caplog)[-1]["detail"] == "too_large"


async def test_unknown_tool(make_runner: RunnerFactory) -> None:
    outcome = await make_runner().run("nope", {}, CONTEXT)
    assert outcome == ToolOutcome("error", '{"error": "unknown tool"}', "unknown_tool")


# --- Cancellation and concurrency ----------------------------------------------------------


async def test_cancelling_a_run_propagates_and_leaves_nothing_behind(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    runner = make_runner(HttpTool("hang", server.url("/hang"), timeout_s=60))
    before = asyncio.all_tasks()
    run = asyncio.create_task(runner.run("hang", {}, CONTEXT))
    [req] = await server.wait_requests(1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    async with asyncio.timeout(PROMPT_S):
        await req.disconnected.wait()  # the connection was closed, not left open
        await req.handled.wait()
    leftover = {t for t in asyncio.all_tasks() - before - server.tasks if not t.done()}
    assert leftover == set()
    # The pool still works after a cancelled run.
    runner = make_runner(HttpTool("lookup_order", server.url("/order")))
    assert (await runner.run("lookup_order", {"order_id": "A-2"}, CONTEXT)).result == "ok"


async def test_cancelling_a_python_run_propagates(make_runner: RunnerFactory) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(context: ToolContext, arguments: dict[str, Any]) -> Any:
        started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = make_runner(PythonTool("forever", forever, timeout_s=60))
    run = asyncio.create_task(runner.run("forever", {}, CONTEXT))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert cancelled.is_set()


async def test_runs_overlap(server: ToolServer, make_runner: RunnerFactory) -> None:
    """Every request is in at the server before any is answered: they ran in parallel."""
    gate = asyncio.Event()
    server.script("/order", json={"status": "shipped"}, gate=gate)
    runner = make_runner(HttpTool("lookup_order", server.url("/order")))
    runs = [
        asyncio.create_task(runner.run("lookup_order", {"order_id": f"A-{i}"}, CONTEXT))
        for i in range(5)
    ]
    requests = await server.wait_requests(5)
    assert all(req.status == 0 for req in requests)  # none answered yet
    assert not any(run.done() for run in runs)
    gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*runs), PROMPT_S)
    assert [o.result for o in outcomes] == ["ok"] * 5
    assert sorted(r.json["arguments"]["order_id"] for r in requests) == [f"A-{i}" for i in range(5)]


async def test_the_pool_bounds_connections(server: ToolServer, make_runner: RunnerFactory) -> None:
    """With one connection allowed, a run queued behind a held one never reaches the
    endpoint: it ends at its own timeout (waiting for the pool counts against it) with
    the server still holding the one request. Ignore the bound and the queued run's
    request is in at the server by then, on a second connection."""
    gate = asyncio.Event()
    server.script("/order", json={"ok": True}, gate=gate)
    runner = make_runner(
        HttpTool("lookup_order", server.url("/order"), timeout_s=60),
        HttpTool("queued", server.url("/order"), timeout_s=0.5),
        max_connections=1,
    )
    first = asyncio.create_task(runner.run("lookup_order", {}, CONTEXT))
    [held] = await server.wait_requests(1)
    queued = await runner.run("queued", {}, CONTEXT)  # the event: the queued run is over
    assert (queued.result, queued.detail) == ("timeout", "timeout")
    assert server.requests == [held] and held.status == 0  # one request, still held
    gate.set()
    assert (await asyncio.wait_for(first, PROMPT_S)).result == "ok"
    # The connection is free again: the next run gets it (the same one, kept alive).
    assert (await runner.run("lookup_order", {}, CONTEXT)).result == "ok"
    assert len(server.requests) == 2
    assert server.requests[1].client == held.client is not None


async def test_aclose_is_idempotent_and_later_runs_fail(
    server: ToolServer, make_runner: RunnerFactory
) -> None:
    runner = make_runner(HttpTool("lookup_order", server.url("/order")))
    assert (await runner.run("lookup_order", {}, CONTEXT)).result == "ok"
    await runner.aclose()
    await runner.aclose()
    outcome = await runner.run("lookup_order", {}, CONTEXT)
    assert (outcome.result, outcome.detail) == ("error", "runner_closed")
    assert "s3cret" not in repr(runner)
