"""`ToolRunner`: run a business tool by name, for every call of the process.

Why one object: the tools are built once at start (`app.tools.defs`, from the agents
file), and HTTP tools share one connection pool (`httpx.AsyncClient`), so a busy endpoint
is not dialled afresh for every call, and the number of connections the bridge holds open
to tool endpoints is bounded (`max_connections`) whatever the number of calls. The pool is
created on the first HTTP run (a bridge without HTTP tools never makes one) and closed by
`aclose` at shutdown.

The pool never follows redirects and ignores the environment's proxy settings
(`trust_env=False`): the tool's URL is where the call's data goes, nowhere else.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Final

import httpx

from app.observability import log_event
from app.tools.defs import PythonTool, ToolContext, ToolDef, ToolOutcome
from app.tools.http import call_http
from app.tools.python import call_python

logger = logging.getLogger("app.tools")

UNKNOWN_OUTPUT: Final = '{"error": "unknown tool"}'
CLOSED_OUTPUT: Final = '{"error": "the tool failed"}'
KEEPALIVE_FRACTION: Final = 5
"""One idle connection kept for every this many allowed (at least one)."""


class ToolRunner:
    """Runs the tools in `tools` (by name); signs HTTP requests when `signing_secret` is
    set (`app.tools.signing`).

    `client` replaces the runner's own pool (tests, or a custom transport); it stays the
    caller's to close. `max_connections` bounds the runner's own pool: a run waiting for a
    connection waits within its timeout.
    """

    def __init__(
        self,
        tools: Mapping[str, ToolDef],
        signing_secret: str | None,
        *,
        client: httpx.AsyncClient | None = None,
        max_connections: int = 100,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be positive, not {max_connections}")
        self._tools = dict(tools)
        self._secret = signing_secret or None
        self._client = client
        self._own_client = client is None
        self._max_connections = max_connections
        self._closed = False

    def __repr__(self) -> str:  # never the secret
        signed = "signed" if self._secret else "unsigned"
        return f"ToolRunner(tools={sorted(self._tools)!r}, {signed})"

    @property
    def names(self) -> frozenset[str]:
        """The tools this runner knows."""
        return frozenset(self._tools)

    async def run(
        self,
        name: str,
        arguments: dict[str, Any],
        context: ToolContext,
        timeout_s: float | None = None,
    ) -> ToolOutcome:
        """Run tool `name` with `arguments` for the call `context` describes.

        `timeout_s` (the call's own limit for this run) shortens the tool's timeout, never
        lengthens it. Never raises but `asyncio.CancelledError` (cancelling the run is how
        the bridge stops it): an unknown name is `("error", '{"error": "unknown tool"}',
        "unknown_tool")`, and every failure of the tool an outcome of its own.
        """
        tool = self._tools.get(name)
        if tool is None:
            log_event(logger, logging.WARNING, "tool.failed", tool=name, detail="unknown_tool")
            return ToolOutcome("error", UNKNOWN_OUTPUT, "unknown_tool")
        if timeout_s is not None and timeout_s < tool.timeout_s:
            tool = dataclasses.replace(tool, timeout_s=timeout_s)
        if isinstance(tool, PythonTool):
            return await call_python(tool, arguments, context)
        if self._closed:
            log_event(logger, logging.WARNING, "tool.failed", tool=name, detail="runner_closed")
            return ToolOutcome("error", CLOSED_OUTPUT, "runner_closed")
        return await call_http(tool, arguments, context, self._http(), self._secret)

    def _http(self) -> httpx.AsyncClient:
        """The shared pool, made on first use."""
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=max(1, self._max_connections // KEEPALIVE_FRACTION),
            )
            # No client-wide timeout: each run passes its own (`call_http`).
            self._client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False, limits=limits, timeout=None
            )
        return self._client

    async def aclose(self) -> None:
        """Close the runner's own pool (idempotent); HTTP runs after this fail at once."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._own_client:
            await client.aclose()
