"""Self-tests of the fake Realtime service's tool support: function calls and MCP.

They drive ``FakeRealtime`` with a plain websockets client and check the GA event shapes of
parallel function calls, a call cut off by a cancel, the MCP calls and listings the service
makes itself, approvals, and what the fake records for tests (function outputs, MCP server
entries, approval responses).  Every server event sent is validated against the
``openai.types.realtime.RealtimeServerEvent`` union.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.fakes.audio import silence, tone
from tests.fakes.realtime_client import (
    SERVER_EVENT,
    connect_to,
    recv,
    recv_until,
    send,
)
from tests.fakes.realtime_server import FakeRealtime, RealtimeConnection, ScriptedResponse

CRM = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://crm.example.com/mcp",
    "headers": {"X-Tenant": "acme", "Authorization": "Bearer crm-token"},
    "allowed_tools": ["lookup_customer", "create_ticket"],
    "require_approval": "never",
}
CALENDAR = {
    "type": "mcp",
    "server_label": "calendar",
    "server_url": "https://calendar.example.com/mcp",
    "require_approval": {"always": {"tool_names": ["cancel_booking"]}},
}


def _session_update(*tools: dict[str, Any], turn_detection: Any = None) -> dict[str, Any]:
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": turn_detection},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
            "tools": list(tools),
        },
    }


async def _start(ws: ClientConnection, *tools: dict[str, Any]) -> None:
    """Read session.created, configure the session and read up to session.updated."""
    await recv(ws)
    await send(ws, _session_update(*tools))
    await recv_until(ws, "session.updated")


def _check_sent(fake: FakeRealtime, conn: RealtimeConnection) -> None:
    """Everything the fake sent is a valid GA server event; the fake itself had no bug and
    saw no invalid client event."""
    for ev in conn.sent:
        SERVER_EVENT.validate_python(ev)
    assert fake.invalid_events == [] and fake.handler_errors == []


def _of_item(events: list[dict[str, Any]], item_id: str) -> list[str]:
    """The types of the events about one item, in order."""
    return [
        e["type"]
        for e in events
        if e.get("item_id") == item_id or (e.get("item") or {}).get("id") == item_id
    ]


FUNCTION_ITEM_EVENTS = [
    "response.output_item.added",
    "conversation.item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "conversation.item.done",
]


# ---------------------------------------------------------------------------- functions


async def test_parallel_function_calls_follow_the_audio() -> None:
    script = ScriptedResponse(
        audio=tone(200),
        transcript="Let me check both.",
        function_call={"name": "end_call", "arguments": {}, "call_id": "call_0"},
        function_calls=[
            {"name": "lookup_order", "arguments": {"order": "A1"}, "call_id": "call_1"},
            {"name": "check_stock", "arguments": '{"sku": "X"}'},
        ],
    )
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await _start(ws)
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        conn = fake.connections[0]
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", *["function_call"] * 3]
    assert [o["name"] for o in output[1:]] == ["end_call", "lookup_order", "check_stock"]
    assert [o["status"] for o in output] == ["completed"] * 4
    assert output[1]["call_id"] == "call_0" and output[2]["call_id"] == "call_1"
    assert output[3]["call_id"].startswith("call_")
    assert json.loads(output[2]["arguments"]) == {"order": "A1"}
    assert output[3]["arguments"] == '{"sku": "X"}'
    resp = conn.responses[0]
    assert resp.function_item_ids == [o["id"] for o in output[1:]]
    assert resp.function_item_id == output[1]["id"]
    types = [e["type"] for e in events]
    message_done = types.index("response.output_item.done")
    for index, item in enumerate(output[1:], start=1):
        assert _of_item(events, item["id"]) == FUNCTION_ITEM_EVENTS
        about = [
            n
            for n, e in enumerate(events)
            if e.get("item_id") == item["id"] or (e.get("item") or {}).get("id") == item["id"]
        ]
        assert about[0] > message_done
        assert {events[n].get("output_index", index) for n in about} == {index}
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["call_id"] for e in done] == [o["call_id"] for o in output[1:]]
    _check_sent(fake, conn)


async def test_cancel_while_arguments_stream_leaves_the_call_incomplete() -> None:
    arguments = {"order": "A1", "note": "a long note " * 4}
    script = ScriptedResponse(
        function_calls=[
            {"name": "lookup_order", "arguments": arguments, "call_id": "call_1"},
            {"name": "never_sent", "arguments": {}},
        ],
        function_call_delay_ms=5000,
    )
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await _start(ws)
        loop = asyncio.get_running_loop()
        await send(ws, {"type": "response.create"})
        first = (await recv_until(ws, "response.function_call_arguments.delta"))[-1]
        t0 = loop.time()
        await send(ws, {"type": "response.cancel"})
        events = await recv_until(ws, "response.done")
        assert loop.time() - t0 < 1  # the cancel woke the pause up
        conn = fake.connections[0]
    full = json.dumps(arguments)
    assert first["delta"] == full[: len(full) // 2]
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args_done["arguments"] == first["delta"]  # truncated, as the service does
    item_done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert item_done["status"] == "incomplete" and item_done["arguments"] == first["delta"]
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert [(o["name"], o["status"]) for o in done["output"]] == [("lookup_order", "incomplete")]
    assert not any(e["type"] == "response.function_call_arguments.delta" for e in events)
    _check_sent(fake, conn)


async def test_barge_in_while_arguments_stream_leaves_the_call_incomplete() -> None:
    script = ScriptedResponse(
        function_calls=[{"name": "lookup_order", "arguments": {"order": "A1"}}],
        function_call_delay_ms=5000,
    )
    vad = {"type": "server_vad", "create_response": False, "interrupt_response": True}
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await recv(ws)
        await send(ws, _session_update(turn_detection=vad))
        await recv_until(ws, "session.updated")
        await send(ws, {"type": "response.create"})
        await recv_until(ws, "response.function_call_arguments.delta")
        audio = base64.b64encode(silence(100) + tone(300)).decode()
        await send(ws, {"type": "input_audio_buffer.append", "audio": audio})
        events = await recv_until(ws, "response.done")
        conn = fake.connections[0]
    types = [e["type"] for e in events]
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    item_done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert item_done["type"] == "function_call" and item_done["status"] == "incomplete"
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "turn_detected"
    _check_sent(fake, conn)


async def test_function_outputs_are_recorded_and_kept_in_the_conversation() -> None:
    script = ScriptedResponse(
        function_calls=[
            {"name": "lookup_order", "arguments": {}, "call_id": "call_1"},
            {"name": "check_stock", "arguments": {}, "call_id": "call_2"},
        ]
    )
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await _start(ws)
        await send(ws, {"type": "response.create"})
        await recv_until(ws, "rate_limits.updated")
        ids = []
        for call_id, output in (("call_2", '{"stock": 3}'), ("call_1", '{"status": "sent"}')):
            item = {"type": "function_call_output", "call_id": call_id, "output": output}
            await send(ws, {"type": "conversation.item.create", "item": item})
            added = await recv(ws)
            assert added["type"] == "conversation.item.added"
            assert (await recv(ws))["type"] == "conversation.item.done"
            ids.append(added["item"]["id"])
        await send(ws, {"type": "conversation.item.retrieve", "item_id": ids[0]})
        retrieved = (await recv(ws))["item"]
        conn = fake.connections[0]
    assert conn.function_outputs == [
        {"call_id": "call_2", "output": '{"stock": 3}'},
        {"call_id": "call_1", "output": '{"status": "sent"}'},
    ]
    assert retrieved["type"] == "function_call_output" and retrieved["call_id"] == "call_2"
    assert conn.item_order[-2:] == ids
    assert [conn.items[i]["output"] for i in ids] == ['{"stock": 3}', '{"status": "sent"}']
    _check_sent(fake, conn)


async def test_tool_choice_none_is_recorded_and_makes_no_calls() -> None:
    with_call = ScriptedResponse(
        audio=tone(100),
        transcript="Done.",
        function_calls=[{"name": "end_call", "arguments": {}}],
        mcp_calls=[{"server_label": "crm", "name": "lookup_customer", "output": "{}"}],
    )
    async with FakeRealtime([with_call, with_call]) as fake, await connect_to(fake) as ws:
        await _start(ws, CRM)
        create = {"type": "response.create", "response": {"tool_choice": "none"}}
        await send(ws, create)
        first = (await recv_until(ws, "response.done"))[-1]["response"]
        await send(ws, {"type": "response.create"})
        second = (await recv_until(ws, "response.done"))[-1]["response"]
        conn = fake.connections[0]
    assert [o["type"] for o in first["output"]] == ["message"]
    assert [o["type"] for o in second["output"]] == ["mcp_call", "message", "function_call"]
    assert conn.responses[0].create_event == create
    assert conn.responses[0].tool_choice == "none"
    assert conn.responses[1].tool_choice == "auto"  # the session's
    _check_sent(fake, conn)


# ---------------------------------------------------------------------------- MCP


async def test_mcp_listing_at_session_update_records_servers() -> None:
    async with (
        FakeRealtime(
            mcp_tools={"calendar": ["find_slot", "cancel_booking"]},
            failing_mcp_servers={"broken"},
        ) as fake,
        await connect_to(fake) as ws,
    ):
        broken = {"type": "mcp", "server_label": "broken", "server_url": "https://x.example/mcp"}
        function = {"type": "function", "name": "end_call", "parameters": {"type": "object"}}
        await recv(ws)
        await send(ws, _session_update(function, CRM, CALENDAR, broken))
        events = await recv_until(ws, "session.updated")
        assert [e["type"] for e in events] == ["session.updated"]
        listing = [await recv(ws) for _ in range(12)]
        conn = fake.connections[0]
    assert conn.mcp_servers == [CRM, CALENDAR, broken]
    assert conn.mcp_servers[0]["headers"] == {
        "X-Tenant": "acme",
        "Authorization": "Bearer crm-token",
    }
    per_server = [listing[i : i + 4] for i in range(0, 12, 4)]
    for (added, progress, end, done), label in zip(
        per_server, ["crm", "calendar", "broken"], strict=True
    ):
        assert added["type"] == "conversation.item.added"
        assert added["item"]["type"] == "mcp_list_tools"
        assert added["item"]["server_label"] == label and added["item"]["tools"] == []
        item_id = added["item"]["id"]
        assert progress == {**progress, "type": "mcp_list_tools.in_progress", "item_id": item_id}
        want = "mcp_list_tools.failed" if label == "broken" else "mcp_list_tools.completed"
        assert end["type"] == want and end["item_id"] == item_id
        assert done["type"] == "conversation.item.done" and done["item"]["id"] == item_id
    tools = [[t["name"] for t in s[3]["item"]["tools"]] for s in per_server]
    assert tools == [["lookup_customer", "create_ticket"], ["find_slot", "cancel_booking"], []]
    assert per_server[0][3]["item"]["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {},
    }
    _check_sent(fake, conn)


async def test_mcp_tools_are_narrowed_to_allowed_tools() -> None:
    async with (
        FakeRealtime(mcp_tools={"crm": ["lookup_customer", "delete_everything"]}) as fake,
        await connect_to(fake) as ws,
    ):
        await recv(ws)
        await send(ws, _session_update(CRM))
        events = await recv_until(ws, "conversation.item.done")
        conn = fake.connections[0]
    assert [t["name"] for t in events[-1]["item"]["tools"]] == ["lookup_customer"]
    _check_sent(fake, conn)


async def test_mcp_calls_ok_and_failed() -> None:
    ok = {
        "server_label": "crm",
        "name": "lookup_customer",
        "arguments": {"phone": "+15550100"},
        "output": '{"name": "Ada"}',
        "duration_ms": 200,
    }
    failed = {
        "server_label": "crm",
        "name": "create_ticket",
        "arguments": '{"subject": "x"}',
        "error": {"type": "http_error", "code": 503, "message": "Service Unavailable"},
    }
    script = ScriptedResponse(audio=tone(200), transcript="Ada, hello.", mcp_calls=[ok, failed])
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await _start(ws, CRM)
        await recv_until(ws, "conversation.item.done")  # the listing
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        elapsed = loop.time() - t0
        conn = fake.connections[0]
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["mcp_call", "mcp_call", "message"]
    first, second = output[0], output[1]
    assert first["status"] == "completed" and first["output"] == '{"name": "Ada"}'
    assert first["error"] is None and json.loads(first["arguments"]) == ok["arguments"]
    assert second["status"] == "failed" and second["output"] is None
    assert second["error"] == failed["error"]
    assert elapsed >= 0.2  # the call's duration
    for index, (item, end) in enumerate(
        [(first, "response.mcp_call.completed"), (second, "response.mcp_call.failed")]
    ):
        assert _of_item(events, item["id"]) == [
            "response.output_item.added",
            "conversation.item.added",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            end,
            "response.output_item.done",
            "conversation.item.done",
        ]
        added = next(e for e in events if (e.get("item") or {}).get("id") == item["id"])
        assert added["output_index"] == index
        assert added["item"]["status"] == "in_progress" and added["item"]["output"] is None
        deltas = [e for e in events if e["type"] == "response.mcp_call_arguments.delta"]
        assert (
            "".join(d["delta"] for d in deltas if d["item_id"] == item["id"]) == (item["arguments"])
        )
    assert conn.responses[0].mcp_item_ids == [first["id"], second["id"]]
    _check_sent(fake, conn)


async def test_mcp_call_after_audio_and_cancelled_mid_call() -> None:
    slow = {"server_label": "crm", "name": "lookup_customer", "output": "{}", "duration_ms": 5000}
    script = ScriptedResponse(
        audio=tone(100), transcript="One moment.", mcp_calls=[slow, slow], mcp_after_audio=True
    )
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await _start(ws, CRM)
        await recv_until(ws, "conversation.item.done")
        await send(ws, {"type": "response.create"})
        await recv_until(ws, "response.mcp_call.in_progress")
        await send(ws, {"type": "response.cancel"})
        events = await recv_until(ws, "response.done")
        conn = fake.connections[0]
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert [(o["type"], o["status"]) for o in done["output"]] == [
        ("message", "completed"),
        ("mcp_call", "incomplete"),
    ]
    assert done["output"][1]["output"] is None and done["output"][1]["error"] is None
    types = [e["type"] for e in events]
    assert "response.mcp_call.completed" not in types and "response.mcp_call.failed" not in types
    _check_sent(fake, conn)


async def test_mcp_approval_request_and_recorded_response() -> None:
    cancel = {
        "server_label": "calendar",
        "name": "cancel_booking",
        "arguments": {"booking": "B7"},
        "output": '{"cancelled": true}',
        "approval": True,
    }
    script = [
        ScriptedResponse(audio=tone(100), transcript="Shall I?", mcp_calls=[cancel]),
        ScriptedResponse(audio=tone(100), transcript="Cancelled."),
        ScriptedResponse(audio=tone(100), transcript="I may not.", mcp_calls=[cancel]),
        ScriptedResponse(audio=tone(100), transcript="Not cancelled."),
    ]
    async with FakeRealtime(script) as fake, await connect_to(fake) as ws:
        await _start(ws, CALENDAR)
        await recv_until(ws, "conversation.item.done")
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        request = events[-1]["response"]["output"][0]
        assert _of_item(events, request["id"]) == [
            "response.output_item.added",
            "conversation.item.added",
            "response.output_item.done",
            "conversation.item.done",
        ]
        approve = {
            "type": "mcp_approval_response",
            "id": "approval_1",
            "approval_request_id": request["id"],
            "approve": True,
        }
        await send(ws, {"type": "conversation.item.create", "item": approve})
        await recv_until(ws, "conversation.item.done")
        await send(ws, {"type": "response.create"})
        approved = (await recv_until(ws, "response.done"))[-1]["response"]["output"]
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        second_request = events[-1]["response"]["output"][0]
        deny = {
            "type": "mcp_approval_response",
            "id": "approval_2",
            "approval_request_id": second_request["id"],
            "approve": False,
            "reason": "Nobody can approve during a call.",
        }
        await send(ws, {"type": "conversation.item.create", "item": deny})
        await recv_until(ws, "conversation.item.done")
        await send(ws, {"type": "response.create"})
        denied = (await recv_until(ws, "response.done"))[-1]["response"]["output"]
        conn = fake.connections[0]
    assert request == {
        "id": request["id"],
        "type": "mcp_approval_request",
        "server_label": "calendar",
        "name": "cancel_booking",
        "arguments": json.dumps({"booking": "B7"}),
    }
    assert [o["type"] for o in events[-1]["response"]["output"]] == [
        "mcp_approval_request",
        "message",
    ]
    assert conn.approval_responses == [approve, deny]
    assert [o["type"] for o in approved] == ["mcp_call", "message"]
    assert approved[0]["approval_request_id"] == request["id"]
    assert approved[0]["output"] == '{"cancelled": true}'
    assert [o["type"] for o in denied] == ["message"]
    assert conn.approval_requests == {} and not conn.approved_calls
    assert fake.problems == []
    _check_sent(fake, conn)


async def test_unknown_approval_response_is_a_problem() -> None:
    async with FakeRealtime() as fake, await connect_to(fake) as ws:
        await _start(ws)
        item = {
            "type": "mcp_approval_response",
            "id": "approval_1",
            "approval_request_id": "mcpr_nope",
            "approve": True,
        }
        await send(ws, {"type": "conversation.item.create", "item": item})
        await recv_until(ws, "conversation.item.done")
        conn = fake.connections[0]
    assert conn.approval_responses == [item]
    assert len(fake.problems) == 1 and "mcpr_nope" in fake.problems[0]
    _check_sent(fake, conn)
