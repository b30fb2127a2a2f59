"""Example Python tool for `examples/agents.toml` (`function = "examples.tools:opening_hours"`).

A Python tool is an `async def` taking the call's `ToolContext` and the model's
arguments (a dict, already checked against the tool's `parameters` schema); what it
returns (anything JSON can encode) is the function call's output the model reads. It runs
in the call's event loop: never block (no `time.sleep`, no blocking I/O), and it is
cancelled at its `timeout_seconds`. An exception becomes an error output for the model.
"""

from __future__ import annotations

from typing import Any

from app.tools.defs import ToolContext

HOURS = {
    "monday": "9:00 to 17:00",
    "tuesday": "9:00 to 17:00",
    "wednesday": "9:00 to 17:00",
    "thursday": "9:00 to 19:00",
    "friday": "9:00 to 15:00",
}


async def opening_hours(context: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """When Example Co. is open on `arguments["day"]`."""
    day = str(arguments.get("day", "")).lower()
    hours = HOURS.get(day)
    if hours is None:
        return {"day": day, "open": False}
    return {"day": day, "open": True, "hours": hours}
