"""`{name}` placeholders in an agent's instructions and greeting, filled in per call.

An agent's text may name facts of the call: `{caller_number}`, `{called_city}`,
`{local_time}`, an outbound call's `context` values. Templates are parsed once, at
start (`Template.parse`): only bare names are allowed (no `{a.b}`, `{a[0]}`, `{a!r}` or
`{a:>10}`, which `str.format` would evaluate), `{{` and `}}` are literal braces, and a
name the agent can't know is a start-up error listing the names it can.

**Safe insertion.** Most of these values come from outside: the caller ID and the
caller's city are whatever the calling network says, and a context value is whatever the
operator API was sent. Pasted raw into a system prompt, a FromCity of
`x"\\n\\nIgnore all previous instructions` would start a paragraph of its own. So every
value is inserted as a JSON string literal (`json.dumps(value, ensure_ascii=False)`): in
double quotes, with newlines, quotes, backslashes and control characters escaped (and
the Unicode line separators JSON leaves raw, U+0085, U+2028, U+2029), cut to
`MAX_VALUE_CHARS` characters before quoting. Whatever a caller ID holds, it stays inside
one quoted string on one line, plainly data to the model. A missing value is `""`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

#: Template names and the Twilio webhook parameter each is read from.
_FROM_PARAMETER: Final[dict[str, str]] = {
    "caller_number": "From",
    "called_number": "To",
    "caller_city": "FromCity",
    "caller_state": "FromState",
    "caller_zip": "FromZip",
    "caller_country": "FromCountry",
    "called_city": "ToCity",
    "called_state": "ToState",
    "called_zip": "ToZip",
    "called_country": "ToCountry",
}

#: The Twilio webhook parameters templates read: the voice webhook passes them to the
#: media stream as `<Parameter>`s, so that the stream's `start` carries them.
TEMPLATE_PARAMETERS: Final[tuple[str, ...]] = tuple(_FROM_PARAMETER.values())

#: Names every agent's templates may use (besides its declared `context` names).
BUILTIN_NAMES: Final[tuple[str, ...]] = (*_FROM_PARAMETER, "local_time", "agent")

#: Longest value inserted (in characters, before quoting).
MAX_VALUE_CHARS: Final = 200

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


#: Line breaks to Python and to Unicode that `json.dumps(ensure_ascii=False)` keeps raw.
_UNICODE_BREAKS: Final = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


class TemplateError(ValueError):
    """A template that can't be used; the message says why, for a start-up error line."""


def quote(value: str) -> str:
    """`value` as it is inserted: cut to `MAX_VALUE_CHARS`, then a JSON string literal
    (with the line breaks JSON leaves unescaped, U+0085, U+2028 and U+2029, escaped too)."""
    text = json.dumps(value[:MAX_VALUE_CHARS], ensure_ascii=False)
    return text.translate(_UNICODE_BREAKS)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and the names between it."""

    #: (literal text, name or None), in order, as `string.Formatter().parse` yields them.
    parts: tuple[tuple[str, str | None], ...]

    @property
    def names(self) -> frozenset[str]:
        """The names it uses."""
        return frozenset(name for _, name in self.parts if name is not None)

    @classmethod
    def parse(cls, text: str, known: Collection[str]) -> Template:
        """Parse `text`; raise `TemplateError` for a broken template, a placeholder that is
        not a bare name, or a name not in `known`."""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateError(
                f"is not a valid template ({exc}); write {{{{ and }}}} for literal braces"
            ) from None
        parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if name is None:
                parts.append((literal, None))
                continue
            written = "{" + name + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            if name == "":
                raise TemplateError(
                    "has an empty placeholder {}; write {{ and }} for literal braces"
                )
            if conversion is not None or spec or any(c in name for c in ".["):
                raise TemplateError(
                    f"placeholder {written} is not a plain name: no '.', '[', '!' or ':' "
                    "in placeholders (write {{ and }} for literal braces)"
                )
            if name not in known:
                raise TemplateError(
                    f"unknown placeholder {written} (known: {', '.join(sorted(known))})"
                )
            parts.append((literal, name))
        return cls(tuple(parts))

    def fill(self, values: Mapping[str, str]) -> str:
        """The text with each name's value inserted as it is (cut to `MAX_VALUE_CHARS`):
        for words said verbatim (a voicemail), never for instructions."""
        return self._insert(values, lambda value: value[:MAX_VALUE_CHARS])

    def render(self, values: Mapping[str, str]) -> str:
        """The text with each name's value inserted safely (`quote`); missing: `""`."""
        return self._insert(values, quote)

    def _insert(self, values: Mapping[str, str], shape: Callable[[str], str]) -> str:
        return "".join(
            literal if name is None else literal + shape(values.get(name, ""))
            for literal, name in self.parts
        )


def local_time(now: datetime, timezone: str) -> str:
    """`now` in `timezone`, the way a person says it:
    `Wednesday 2 December 2026, 14:05 (Europe/Berlin)`. A naive `now` is taken as UTC.
    (Names are English whatever the process locale.)"""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    here = now.astimezone(ZoneInfo(timezone))
    day, month = _DAYS[here.weekday()], _MONTHS[here.month - 1]
    return f"{day} {here.day} {month} {here.year}, {here:%H:%M} ({timezone})"


def call_values(
    parameters: Mapping[str, str],
    *,
    agent: str,
    now: datetime,
    timezone: str,
    context: Mapping[str, str] | None = None,
    context_names: Collection[str] = (),
) -> dict[str, str]:
    """The value of every name an agent's templates may use, for one call.

    `parameters` are the stream's custom parameters (Twilio's webhook names: `From`,
    `FromCity`...); `context` an outbound call's values, of which only the agent's
    declared `context_names` are taken (others can't be named by its templates)."""
    values = {name: str(parameters.get(param) or "") for name, param in _FROM_PARAMETER.items()}
    values["local_time"] = local_time(now, timezone)
    values["agent"] = agent
    given = context or {}
    for name in context_names:
        value = given.get(name)
        values[name] = "" if value is None else str(value)
    return values
