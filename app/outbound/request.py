"""`POST /calls`' body: what an operator asks for, checked field by field.

Every mistake is collected, so one 422 names each bad field (`{"field", "message"}`), as
the operator API's other errors do. Instructions and greetings given here are templates
like the agents file's: the built-in names (`caller_number`, `called_number`, `local_time`,
`agent`...) and the keys of `context` may be used, and a placeholder of any other name is
refused here rather than rendered empty on the phone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from app.agents import Agents
from app.agents.templates import BUILTIN_NAMES, Template, TemplateError
from app.outbound.destinations import E164

_CONTEXT_KEY: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DETECTION_MODES: Final = ("off", "hangup", "voicemail")
#: Longest instructions, greeting and voicemail message (characters), and context.
MAX_INSTRUCTIONS_CHARS: Final = 20_000
MAX_GREETING_CHARS: Final = 2_000
MAX_VOICEMAIL_CHARS: Final = 1_000
MAX_CONTEXT_KEYS: Final = 50
MAX_CONTEXT_VALUE_CHARS: Final = 1_000
FIELDS: Final = frozenset(
    {
        "to",
        "from",
        "agent",
        "instructions",
        "greeting",
        "context",
        "machine_detection",
        "voicemail_message",
    }
)


@dataclass(frozen=True, slots=True)
class PlaceCall:
    """A checked request: whom to call, from which number, with what."""

    to: str
    from_: str
    agent: str
    instructions: str | None = None
    greeting: str | None = None
    context: dict[str, str] = field(default_factory=dict)
    machine_detection: str = "off"
    voicemail_message: str | None = None

    def settings(self) -> dict[str, Any]:
        """What the call's stream needs, as kept in the call store."""
        return {
            "agent": self.agent,
            "instructions": self.instructions,
            "greeting": self.greeting,
            "context": self.context,
            "machine_detection": self.machine_detection,
            "voicemail_message": self.voicemail_message,
        }


class Invalid(Exception):
    """The request's problems, one `{"field", "message"}` each."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def _text(
    body: dict[str, Any], name: str, limit: int, problems: list[dict[str, str]]
) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not str or not value.strip():
        problems.append({"field": name, "message": "must be a non-empty string"})
        return None
    if len(value) > limit:
        problems.append({"field": name, "message": f"must be at most {limit} characters"})
        return None
    return value


def _given(body: dict[str, Any], name: str, default: object) -> Any:
    """`body[name]`, or `default` when it is absent or null (null means the default)."""
    value = body.get(name)
    return default if value is None else value


def _context(body: dict[str, Any], problems: list[dict[str, str]]) -> dict[str, str]:
    value = body.get("context")
    if value is None:
        return {}
    if type(value) is not dict:
        problems.append({"field": "context", "message": "must be an object of template values"})
        return {}
    if len(value) > MAX_CONTEXT_KEYS:
        problems.append({"field": "context", "message": f"at most {MAX_CONTEXT_KEYS} values"})
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        where = f"context.{key}"[:80]
        if not _CONTEXT_KEY.match(key) or key in BUILTIN_NAMES:
            problems.append(
                {
                    "field": where,
                    "message": "must be a name of letters, digits and _ "
                    "(not a built-in name like caller_number)",
                }
            )
        elif type(item) not in (str, int, float, bool):
            problems.append({"field": where, "message": "must be a string, number or boolean"})
        elif len(str(item)) > MAX_CONTEXT_VALUE_CHARS:
            problems.append(
                {"field": where, "message": f"must be at most {MAX_CONTEXT_VALUE_CHARS} characters"}
            )
        else:
            out[key] = str(item).lower() if type(item) is bool else str(item)
    return out


def parse(body: object, *, default_from: str | None, agents: Agents) -> PlaceCall:
    """The request `body` (parsed JSON) checked; `Invalid` naming each bad field."""
    if type(body) is not dict:
        raise Invalid([{"field": "request", "message": "must be a JSON object"}])
    problems: list[dict[str, str]] = [
        {"field": str(name)[:80], "message": "is not a field of POST /calls"}
        for name in body
        if name not in FIELDS
    ]
    to = body.get("to")
    if type(to) is not str or not E164.match(to):
        problems.append({"field": "to", "message": "required: an E.164 number like +14155550100"})
    from_ = _given(body, "from", default_from)  # absent or null: the configured caller ID
    if from_ is None:
        problems.append(
            {"field": "from", "message": "required: no TWILIO_FROM_NUMBER is configured"}
        )
    elif type(from_) is not str or not E164.match(from_):
        problems.append({"field": "from", "message": "must be an E.164 number like +14155550100"})
    agent = _given(body, "agent", agents.default)
    if type(agent) is not str or agent not in agents.names:
        names = ", ".join(agents.names)
        problems.append({"field": "agent", "message": f"must be one of the agents: {names}"})
    detection = _given(body, "machine_detection", "off")
    if detection not in DETECTION_MODES:
        problems.append(
            {"field": "machine_detection", "message": "must be one of off, hangup, voicemail"}
        )
    context = _context(body, problems)
    known = {*BUILTIN_NAMES, *context}
    instructions = _text(body, "instructions", MAX_INSTRUCTIONS_CHARS, problems)
    greeting = _text(body, "greeting", MAX_GREETING_CHARS, problems)
    voicemail = _text(body, "voicemail_message", MAX_VOICEMAIL_CHARS, problems)
    templates = (
        ("instructions", instructions),
        ("greeting", greeting),
        ("voicemail_message", voicemail),
    )
    for name, text in templates:
        if text is not None:
            try:
                Template.parse(text, known)
            except TemplateError as exc:
                problems.append({"field": name, "message": str(exc)})
    if detection == "voicemail" and body.get("voicemail_message") is None:
        problems.append(
            {"field": "voicemail_message", "message": "required with machine_detection voicemail"}
        )
    if problems:
        raise Invalid(problems)
    assert type(to) is str and type(from_) is str and type(agent) is str
    return PlaceCall(
        to=to,
        from_=from_,
        agent=agent,
        instructions=instructions,
        greeting=greeting,
        context=context,
        machine_detection=str(detection),
        voicemail_message=voicemail,
    )
