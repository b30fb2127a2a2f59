"""What the Realtime service does with the call's MCP servers, as the bridge records it.

The service itself lists an MCP server's tools and calls them (`session.tools` entries of
type `mcp`); the bridge only watches. It logs each step, puts every MCP call into the
call's record (`server.tool`, result, duration), counts failures for the operator
(`Metric.MCP_ERROR`), and answers approval requests (`mcp_approval_request` items, for the
tools an agent's `require_approval` names) with a denial: nobody can approve on a phone
line mid-call, and a tool that needs approval must not run unapproved. The model is told
so through the denial's reason and can tell the caller.

Events it does not know (a newer MCP event) are ignored by the session, never a failure.
Progress events carry only an `item_id`; the server's label is learned from the items
(`mcp_list_tools`, `mcp_call`) as they are added or done, and is `unknown` before that.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from app.call.actions import Measure, Metric
from app.call.inbound import short
from app.call.measures import Measures
from app.call.outbox import Outbox
from app.observability import log_event

logger = logging.getLogger("app.call")

#: Server events about MCP that the session hands here.
EVENTS: Final = frozenset(
    {
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "mcp_list_tools.failed",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
    }
)
ITEM_TYPES: Final = frozenset({"mcp_list_tools", "mcp_call", "mcp_approval_request"})
DENIAL: Final = "Approval is not possible during a phone call."


class McpCalls:
    """The MCP activity of one call."""

    def __init__(self, outbox: Outbox, measures: Measures, labels: tuple[str, ...]) -> None:
        self.out = outbox
        self.measures = measures
        #: With a single MCP server, every event is about it.
        self._only = labels[0] if len(labels) == 1 else None
        self._labels: dict[str, str] = {}
        self._started: dict[str, float] = {}
        self._recorded: set[str] = set()

    def label(self, item_id: str) -> str:
        return self._labels.get(item_id) or self._only or "unknown"

    def event(self, now: float, kind: str, item_id: str) -> None:
        """A progress event (`EVENTS`)."""
        if kind == "response.mcp_call.in_progress":  # a call's clock (listings have none)
            self._started.setdefault(item_id, now)
            return
        if kind == "mcp_list_tools.in_progress":
            return
        label = self.label(item_id)
        if kind == "mcp_list_tools.failed":
            log_event(logger, logging.WARNING, "mcp.list_tools_failed", server=label)
            self.out.emit(Measure(Metric.MCP_ERROR, labels=(label, "list_tools")))
        elif kind == "mcp_list_tools.completed":
            log_event(logger, logging.INFO, "mcp.tools_listed", server=label)
        elif kind == "response.mcp_call.failed":
            self.out.emit(Measure(Metric.MCP_ERROR, labels=(label, "call")))

    def item(self, now: float, item: dict[str, Any]) -> dict[str, Any] | None:
        """An MCP item added or done (fields checked by the session, `inbound.MCP_ITEM`):
        the client event answering it, if it needs one (an approval request)."""
        kind = item.get("type")
        item_id = item.get("id")
        label = item.get("server_label")
        if type(item_id) is str and type(label) is str:
            self._labels[item_id] = label[:64]
        label = self.label(item_id) if type(item_id) is str else "unknown"
        if kind == "mcp_call" and type(item_id) is str and item.get("name") is not None:
            self._call_done(now, item, item_id, label)
        elif kind == "mcp_approval_request" and type(item_id) is str:
            if item_id in self._recorded:
                return None
            self._recorded.add(item_id)
            name = f"{label}.{short(item.get('name'))}"
            log_event(logger, logging.WARNING, "mcp.approval_denied", tool=name)
            self.measures.tool_call(name, "error", 0, detail="approval_denied", server=label)
            return {
                "type": "conversation.item.create",
                "item": {
                    "id": f"bridge_denial_{len(self._recorded)}",
                    "type": "mcp_approval_response",
                    "approval_request_id": item_id,
                    "approve": False,
                    "reason": DENIAL,
                },
            }
        return None

    def _call_done(self, now: float, item: dict[str, Any], item_id: str, label: str) -> None:
        """An `mcp_call` item: once it has its output or error, it is one call done."""
        error = item.get("error")
        if item.get("output") is None and error is None:
            return  # still running (the item was only added)
        if item_id in self._recorded:
            return
        self._recorded.add(item_id)
        name = f"{label}.{short(item.get('name'))}"
        started = self._started.pop(item_id, now)
        ms = max(0, round(now - started))
        result = "ok" if error is None else "error"
        detail = _error_kind(error)
        extra: dict[str, Any] = {"server": label}
        if detail:
            extra["detail"] = detail
        self.measures.tool_call(name, result, ms, ran=True, **extra)
        if error is None:
            log_event(logger, logging.INFO, "mcp.call_done", tool=name, ms=ms)
        else:
            log_event(logger, logging.WARNING, "mcp.call_failed", tool=name, ms=ms, detail=detail)


def _error_kind(error: object) -> str:
    """A short kind for an MCP call's error (its `type`: protocol_error, tool_execution_error,
    http_error), never its message."""
    if error is None:
        return ""
    if isinstance(error, dict):
        kind = error.get("type")
        if type(kind) is str:
            return kind[:40]
    return "error"
