"""A business tool as the call core sees it: what the model is offered, and how the call
treats a call to it. Plain data, part of a call's `CallConfig` (so a fixture's header
holds it and a replay treats the tool exactly as the live call did).

How a tool is *run* (its URL, headers, Python function) is not the core's business: the
driver's `app.tools` runner owns that, keyed by the tool's name. The core only asks for a
run (`RunTool`) and is told the outcome (a `tool_result` input).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

OnInterrupt = Literal["continue", "cancel"]
ToolKind = Literal["http", "python"]

#: What the caller hears while a slow tool runs (a tool may say its own).
DEFAULT_FILLER: Final = "One moment, I'm checking."
DEFAULT_FILLER_AFTER_MS: Final = 1500
DEFAULT_TIMEOUT_MS: Final = 8000


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One function tool of an agent's (besides the built-in `end_call`/`transfer_call`)."""

    name: str
    description: str = ""
    #: JSON Schema of the arguments (an object schema); checked before the tool runs.
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    kind: ToolKind = "http"
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    #: After this long still running, the caller hears `filler_text`; 0: never.
    filler_after_ms: int = DEFAULT_FILLER_AFTER_MS
    filler_text: str = DEFAULT_FILLER
    #: Barge-in while it runs: "continue" (its result is still delivered) or "cancel".
    on_interrupt: OnInterrupt = "continue"
    #: Top-level argument names whose values never reach a fixture, a log or a record.
    redact: tuple[str, ...] = ()

    def definition(self) -> dict[str, Any]:
        """Its `session.tools` entry (GA `RealtimeFunctionTool`)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["redact"] = list(self.redact)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolSpec:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "redact" in kwargs:
            kwargs["redact"] = tuple(kwargs["redact"])
        return cls(**kwargs)
