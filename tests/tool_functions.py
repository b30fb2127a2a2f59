"""Python business tools for the end-to-end tool tests (`tests/test_e2e_tools.py`).

The agents files those tests write name them as `function = "tests.tool_functions:NAME"`;
the bridge imports them at start and awaits them in the call's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.tools.defs import ToolContext

HOURS = {"saturday": "10:00 to 16:00", "sunday": "closed"}

#: In the exception `broken` raises: it must never reach a log line.
BROKEN_DETAIL = "back office said: customer 4929-0000-1111 locked"


async def opening_hours(context: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """The opening hours of `arguments["day"]`, and who asked (from the call's context)."""
    day = str(arguments.get("day", "")).lower()
    return {"day": day, "hours": HOURS.get(day, "9:00 to 17:00"), "agent": context.agent}


async def broken(context: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Always fails, with a message that holds the caller's data."""
    raise ValueError(BROKEN_DETAIL)


async def sleepy(context: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Takes far longer than any timeout a test gives it."""
    await asyncio.sleep(30)
    return {"slept": True}
