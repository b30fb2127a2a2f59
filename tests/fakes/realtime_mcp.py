"""MCP for the fake Realtime service: the tool listings and calls the *service* makes.

With ``{"type": "mcp", ...}`` tools the Realtime API itself talks to the remote MCP server
and only reports what it does (https://developers.openai.com/api/docs/guides/realtime-mcp;
the shapes are the ``openai.types.realtime`` models ``RealtimeMcpListTools``,
``RealtimeMcpToolCall``, ``RealtimeMcpApprovalRequest`` and the ``mcp_list_tools.*`` and
``response.mcp_call*`` events).  ``RealtimeConnection`` calls these helpers:

* ``list_tools`` after a ``session.update`` that holds MCP tools: one ``mcp_list_tools``
  item per server (``conversation.item.added`` with no tools, ``mcp_list_tools.in_progress``,
  ``.completed`` or ``.failed``, ``conversation.item.done`` with the tools);
* ``run_calls`` / ``run_call`` during a response, for ``ScriptedResponse.mcp_calls``: an
  ``mcp_call`` item (arguments streamed, ``response.mcp_call.in_progress``, the call's
  ``duration_ms``, then ``.completed`` or ``.failed``), or with ``approval: True`` an
  ``mcp_approval_request`` item and no call;
* ``record_approval_response`` for an ``mcp_approval_response`` item the client creates: an
  approved call runs at the start of the connection's next response.

Item ids use the service's MCP prefixes (``mcpl_``, ``mcp_``, ``mcpr_``).
"""

from __future__ import annotations

import copy
import json
import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.realtime_server import FakeResponse, RealtimeConnection

DEFAULT_INPUT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
"""The ``input_schema`` of a listed tool given by name only."""


def _mcp_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _arguments(call: dict[str, Any]) -> str:
    args = call.get("arguments", {})
    return args if isinstance(args, str) else json.dumps(args)


def listed_tools(conn: RealtimeConnection, server: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools a server's listing returns: ``FakeRealtime.mcp_tools[label]`` (narrowed to
    the entry's ``allowed_tools``, as the service does), else the ``allowed_tools`` names."""
    allowed = server.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    names = list(allowed) if isinstance(allowed, list) else None
    configured = conn.server.mcp_tools.get(server["server_label"])
    tools: list[dict[str, Any]] = []
    for tool in configured if configured is not None else names or []:
        entry = copy.deepcopy(tool) if isinstance(tool, dict) else {"name": tool}
        entry.setdefault("input_schema", copy.deepcopy(DEFAULT_INPUT_SCHEMA))
        entry.setdefault("description", None)
        entry.setdefault("annotations", None)
        if configured is None or names is None or entry["name"] in names:
            tools.append(entry)
    return tools


async def list_tools(conn: RealtimeConnection, servers: list[dict[str, Any]]) -> None:
    """Record the MCP tool entries of a ``session.update`` and list each server's tools."""
    for server in servers:
        conn.mcp_servers.append(copy.deepcopy(server))
        label = server["server_label"]
        item: dict[str, Any] = {
            "id": _mcp_id("mcpl"),
            "type": "mcp_list_tools",
            "server_label": label,
            "tools": [],
        }
        previous = conn._add_item(item)
        await conn._send(
            {
                "type": "conversation.item.added",
                "previous_item_id": previous,
                "item": copy.deepcopy(item),
            }
        )
        await conn._send({"type": "mcp_list_tools.in_progress", "item_id": item["id"]})
        if label in conn.server.failing_mcp_servers:
            await conn._send({"type": "mcp_list_tools.failed", "item_id": item["id"]})
        else:
            item["tools"] = listed_tools(conn, server)
            await conn._send({"type": "mcp_list_tools.completed", "item_id": item["id"]})
        await conn._send(
            {
                "type": "conversation.item.done",
                "previous_item_id": previous,
                "item": copy.deepcopy(item),
            }
        )


async def run_calls(
    conn: RealtimeConnection,
    resp: FakeResponse,
    outputs: list[dict[str, Any]],
    calls: list[dict[str, Any]],
) -> None:
    """Run a response's scripted MCP calls in order, appending their items to ``outputs``;
    once the response is stopped, no further call starts."""
    for call in calls:
        if resp._stop_reason is not None:
            return
        if call.get("approval"):
            outputs.append(await request_approval(conn, resp, len(outputs), call))
        else:
            outputs.append(await run_call(conn, resp, len(outputs), call))


async def _item_added(
    conn: RealtimeConnection, resp: FakeResponse, output_index: int, item: dict[str, Any]
) -> str | None:
    previous = conn._add_item(item)
    resp.mcp_item_ids.append(item["id"])
    await conn._send(
        {
            "type": "response.output_item.added",
            "response_id": resp.id,
            "output_index": output_index,
            "item": copy.deepcopy(item),
        }
    )
    await conn._send(
        {
            "type": "conversation.item.added",
            "previous_item_id": previous,
            "item": copy.deepcopy(item),
        }
    )
    return previous


async def _item_done(
    conn: RealtimeConnection,
    resp: FakeResponse,
    output_index: int,
    item: dict[str, Any],
    previous: str | None,
) -> None:
    await conn._send(
        {
            "type": "response.output_item.done",
            "response_id": resp.id,
            "output_index": output_index,
            "item": copy.deepcopy(item),
        }
    )
    await conn._send(
        {
            "type": "conversation.item.done",
            "previous_item_id": previous,
            "item": copy.deepcopy(item),
        }
    )


async def run_call(
    conn: RealtimeConnection,
    resp: FakeResponse,
    output_index: int,
    call: dict[str, Any],
    *,
    approval_request_id: str | None = None,
) -> dict[str, Any]:
    """One ``mcp_call`` item.  ``call["error"]`` (an ``http_error``, ``protocol_error`` or
    ``tool_execution_error`` dict; ``type`` defaults to ``tool_execution_error``) makes it
    fail; else its ``output`` (``None`` gives ``""``) is the result.  The call takes
    ``duration_ms`` of wall-clock time; a stop (cancel, barge-in) during it ends the item
    ``incomplete`` with neither output nor error, and no completed/failed event."""
    arguments = _arguments(call)
    item: dict[str, Any] = {
        "id": _mcp_id("mcp"),
        "type": "mcp_call",
        "status": "in_progress",
        "server_label": call["server_label"],
        "name": call["name"],
        "arguments": "",
        "approval_request_id": approval_request_id,
        "output": None,
        "error": None,
    }
    previous = await _item_added(conn, resp, output_index, item)
    ids = {"response_id": resp.id, "item_id": item["id"], "output_index": output_index}
    half = len(arguments) // 2
    for piece in (arguments[:half], arguments[half:]):
        if piece:
            await conn._send({"type": "response.mcp_call_arguments.delta", **ids, "delta": piece})
    await conn._send({"type": "response.mcp_call_arguments.done", **ids, "arguments": arguments})
    item["arguments"] = arguments
    progress = {"item_id": item["id"], "output_index": output_index}
    await conn._send({"type": "response.mcp_call.in_progress", **progress})
    await conn._sleep(resp, call.get("duration_ms", 0) / 1000)
    if resp._stop_reason is not None:
        item["status"] = "incomplete"
    elif call.get("error") is not None:
        item["error"] = {"type": "tool_execution_error", **call["error"]}
        item["status"] = "failed"
        await conn._send({"type": "response.mcp_call.failed", **progress})
    else:
        item["output"] = call.get("output") or ""
        item["status"] = "completed"
        await conn._send({"type": "response.mcp_call.completed", **progress})
    await _item_done(conn, resp, output_index, item, previous)
    return item


async def request_approval(
    conn: RealtimeConnection, resp: FakeResponse, output_index: int, call: dict[str, Any]
) -> dict[str, Any]:
    """An ``mcp_approval_request`` item for ``call``; the call itself waits for approval."""
    item: dict[str, Any] = {
        "id": _mcp_id("mcpr"),
        "type": "mcp_approval_request",
        "server_label": call["server_label"],
        "name": call["name"],
        "arguments": _arguments(call),
    }
    conn.approval_requests[item["id"]] = dict(call)
    previous = await _item_added(conn, resp, output_index, item)
    await _item_done(conn, resp, output_index, item, previous)
    return item


def record_approval_response(conn: RealtimeConnection, item: dict[str, Any]) -> None:
    """Record a client ``mcp_approval_response`` item; queue the call if it was approved.

    An answer to an unknown or already answered request is recorded in
    ``FakeRealtime.problems`` (the live service's reaction is unknown)."""
    conn.approval_responses.append(copy.deepcopy(item))
    request_id = item["approval_request_id"]
    call = conn.approval_requests.pop(request_id, None)
    if call is None:
        conn.server.problems.append(
            f"mcp_approval_response for unknown or already answered request {request_id!r}"
        )
        return
    if item["approve"]:
        conn.approved_calls.append((request_id, {**call, "approval": False}))
