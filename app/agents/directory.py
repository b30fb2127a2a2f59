"""`Agents`: who answers a dialled number, and the `CallConfig` a call of theirs runs with.

This is what the rest of the app uses of the agents file. It is built once at start
(`Agents.from_settings`, which raises `SettingsError` on any mistake in the file), and is
read-only afterwards: each call asks `for_call` for its configuration, picked by the
dialled number (`To`), with the agent's instructions and greeting rendered for that call
(`app.agents.templates`). Without `AGENTS_FILE` there is one agent, `default`, and
`for_call` hands the settings' configuration back unchanged, so a deployment without a
file behaves exactly as before there were agents.

An agent's fields override the settings' field by field: whatever it leaves out (voice,
greeting, turn detection...) is the environment's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from app.agents.envrefs import process_environment
from app.agents.load import Agent, LoadedAgents, load
from app.agents.model import TURN_FIELDS
from app.agents.templates import call_values
from app.call.backchannel import phrases_for
from app.call.config import DEFAULT_AGENT, CallConfig
from app.settings import Settings
from app.tools.defs import ToolDef


class Agents:
    """The agents of the process, by name, and the tools they run."""

    def __init__(self, loaded: LoadedAgents | None = None, path: Path | None = None) -> None:
        """`loaded`: the checked file (`app.agents.load.load`); None: no agents file."""
        self.path = path
        self._loaded = loaded
        self._agents: dict[str, Agent] = dict(loaded.agents) if loaded else {}
        self.default: str = loaded.default if loaded else DEFAULT_AGENT
        self._numbers: dict[str, str] = dict(loaded.numbers) if loaded else {}
        #: Agent names, the default first, then in the file's order.
        self.names: tuple[str, ...] = (
            self.default,
            *(name for name in self._agents if name != self.default),
        )
        #: Start-up warnings about the file (logged with the settings' own).
        self.warnings: list[str] = list(loaded.warnings) if loaded else []
        #: HTTP and Python tools by name (headers resolved, functions imported).
        self.executors: dict[str, ToolDef] = dict(loaded.executors) if loaded else {}
        #: Values of every `${VAR}` the MCP entries reference, for `envrefs.fill` as the
        #: driver sends the `session.update` (the call's config keeps the references).
        self.env: Mapping[str, str] = dict(loaded.env) if loaded else {}

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Agents:
        """The agents of `settings.agents_file` (none set: one default agent that changes
        nothing). `environ` resolves `${VAR}` references (default: the process
        environment over `.env`, `envrefs.process_environment`). Raises `SettingsError`
        listing every mistake in the file."""
        path = settings.agents_file
        if path is None:
            return cls()
        if environ is None:
            environ = process_environment()
        return cls(load(path, settings, environ), path)

    @property
    def configured(self) -> bool:
        """True when an agents file was loaded."""
        return self._loaded is not None

    def secrets(self) -> list[str]:
        """The header values of tools and MCP servers to scrub from log lines and
        fixtures: what each `${VAR}` reference resolves to (the header's whole value and
        the variable's own), and the literal values of credential headers
        (`Authorization`, `Cookie`, names with `key`, `token`, `secret`, `auth`,
        `password` or `session`). Nothing shorter than 8 characters: masking it would
        mangle ordinary text (`app.agents.load.MIN_SECRET_CHARS`)."""
        return list(self._loaded.secrets) if self._loaded else []

    def pick(self, to_number: str | None) -> str:
        """The name of the agent answering the dialled number `to_number` (the default
        for a number no agent lists, or none)."""
        if to_number is None:
            return self.default
        return self._numbers.get(to_number.strip(), self.default)

    def timezone(self, agent: str) -> str | None:
        """The zone of `agent`'s `{local_time}` (None: no agents file; then the
        settings' `TIMEZONE`, which the caller passes)."""
        found = self._agents.get(agent)
        return found.timezone if found else None

    def context_names(self, agent: str) -> tuple[str, ...]:
        """The outbound context values `agent`'s templates may name."""
        found = self._agents.get(agent)
        return tuple(found.entry.context) if found else ()

    def for_call(
        self,
        parameters: Mapping[str, str],
        base: CallConfig,
        now: datetime,
        context: Mapping[str, str] | None = None,
        *,
        agent: str | None = None,
    ) -> CallConfig:
        """The configuration of one call: `base` (the settings') with the fields of the
        agent answering `parameters["To"]` (or `agent`, when given: an outbound call's
        choice) and its instructions and greeting rendered from `parameters` (the
        stream's custom parameters: `From`, `To`, `FromCity`...), `now` and `context`.
        Without an agents file: `base`, unchanged. An unknown `agent`: `KeyError`."""
        if self._loaded is None:
            if agent is not None and agent != self.default:
                raise KeyError(agent)
            return base
        name = agent if agent is not None else self.pick(parameters.get("To"))
        chosen = self._agents[name]
        entry = chosen.entry
        values = call_values(
            parameters,
            agent=name,
            now=now,
            timezone=chosen.timezone,
            context=context,
            context_names=entry.context,
        )
        transfer = entry.transfer_number or base.transfer_number
        changes: dict[str, Any] = {
            "agent": name,
            "instructions": (
                chosen.instructions.render(values)
                if chosen.instructions is not None
                else base.instructions
            ),
            "greeting": (
                chosen.greeting.render(values) if chosen.greeting is not None else base.greeting
            ),
            "voice": entry.voice or base.voice,
            "transfer_number": transfer,
            "tools": _builtin_tools(base.rest_available, transfer),
            "functions": chosen.functions,
            "mcp_servers": chosen.mcp_servers,
            "reasoning_effort": (
                entry.reasoning_effort
                if entry.reasoning_effort is not None
                else base.reasoning_effort
            ),
            "parallel_tool_calls": (
                entry.parallel_tool_calls
                if entry.parallel_tool_calls is not None
                else base.parallel_tool_calls
            ),
        }
        for key in TURN_FIELDS:
            if (value := getattr(entry, key)) is not None:
                changes[key] = value
        if entry.interrupt_mode is not None:
            changes["interrupt_mode"] = entry.interrupt_mode
            if entry.interrupt_mode == "resume":
                changes["interrupt_min_speech_ms"] = 0  # resume stops at once (load checks)
        elif (entry.interrupt_min_speech_ms or 0) > 0:
            changes["interrupt_mode"] = "cancel"  # as INTERRUPT_MIN_SPEECH_MS alone does
        if entry.backchannel_words is not None:
            listed = ",".join(entry.backchannel_words)
            changes["backchannels"] = phrases_for(None, listed) if listed else ()
        return replace(base, **changes)


def _builtin_tools(rest_available: bool, transfer_number: str | None) -> tuple[str, ...]:
    """The bridge's own tools (as `app.call.config` offers them): end_call whenever REST
    can be used, transfer_call too when there is a number to transfer to."""
    if not rest_available:
        return ()
    return ("end_call", "transfer_call") if transfer_number else ("end_call",)
