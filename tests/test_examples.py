"""The examples the README points at work as written: the order server behind the example
agents file's `lookup_order` tool answers the bridge's signed requests, and refuses
unsigned ones."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import HTTPServer

import pytest

from app.tools.defs import HttpTool, ToolContext, ToolOutcome
from app.tools.runner import ToolRunner
from examples.order_server import OrderHandler

SECRET = "example-secret"
CONTEXT = ToolContext(call_sid="CA1", agent="default", from_number="+1555", to_number="+1666")


@pytest.fixture
def order_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TOOLS_SIGNING_SECRET", SECRET)
    server = HTTPServer(("127.0.0.1", 0), OrderHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/order"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def lookup(url: str, secret: str | None) -> ToolOutcome:
    """Order 1001 looked up the way the bridge does it, signed with `secret`."""
    runner = ToolRunner(
        {"lookup_order": HttpTool(name="lookup_order", url=url, timeout_s=5)}, secret
    )
    try:
        return await runner.run("lookup_order", {"order_id": "1001"}, CONTEXT)
    finally:
        await runner.aclose()


async def test_the_example_order_server_answers_signed_requests(order_server: str) -> None:
    outcome = await lookup(order_server, SECRET)
    assert outcome.result == "ok"
    assert json.loads(outcome.output)["status"] == "shipped"


async def test_the_example_order_server_refuses_unsigned_requests(order_server: str) -> None:
    outcome = await lookup(order_server, None)
    assert (outcome.result, outcome.detail) == ("error", "http_401")
