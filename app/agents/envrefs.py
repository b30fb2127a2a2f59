"""`${VAR}` references in the agents file's header values, resolved from the environment.

Tokens for tool endpoints and MCP servers belong in the environment (a secret store, a
`.env` file), not in a TOML file that is copied around and checked in. So a header value
may say `Bearer ${CRM_TOKEN}`: at start every reference must resolve (`${VAR}` needs VAR
set, `${VAR:-fallback}` falls back), and a missing one stops the boot naming the variable,
never a value. As everywhere in the settings, an empty variable counts as unset, and the
variables come from the environment and from `.env` (`process_environment`), the
environment winning, so a token can sit in `.env` beside the settings.

HTTP tools get their headers resolved once, at start (`resolve`). MCP entries keep the
text as written in the call's configuration (which a fixture records), and the driver
fills the values in as it sends the `session.update` (`fill`), so a token never reaches
a recording.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

#: `${NAME}` or `${NAME:-fallback}` (the fallback may be empty, and holds no `}`).
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvRefError(ValueError):
    """Base of the problems a header value's references can have."""


class MissingVariable(EnvRefError):
    """`${name}` names a variable that is not set (or empty) and has no fallback."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"${{{name}}} is not set in the environment")


class MalformedReference(EnvRefError):
    """A `${` that does not start a valid `${NAME}` or `${NAME:-fallback}` reference."""

    def __init__(self, fragment: str) -> None:
        self.fragment = fragment
        super().__init__(
            f"{fragment!r} is not a valid reference: write ${{NAME}} or ${{NAME:-fallback}} "
            "with NAME of letters, digits and _"
        )


@dataclass(frozen=True, slots=True)
class Reference:
    """One `${name}` / `${name:-fallback}` in a text."""

    name: str
    #: None: no fallback (the variable must be set).
    fallback: str | None


def references(text: str) -> list[Reference]:
    """Every reference in `text`, in order. Raises `MalformedReference` for a `${` that
    starts none (an unclosed `${TOKEN`, `${1ST}`, `${lower-case}`)."""
    found: list[Reference] = []
    position = 0
    while (start := text.find("${", position)) >= 0:
        match = _REFERENCE.match(text, start)
        if match is None:
            end = text.find("}", start)
            raise MalformedReference(text[start : end + 1 if end >= 0 else len(text)][:40])
        found.append(Reference(match[1], match[2]))
        position = match.end()
    return found


def _value(reference: Reference, values: Mapping[str, str]) -> str:
    value = values.get(reference.name)
    if value:
        return value
    if reference.fallback is not None:
        return reference.fallback
    raise MissingVariable(reference.name)


def fill(text: str, values: Mapping[str, str]) -> str:
    """`text` with each `${VAR}` / `${VAR:-x}` replaced by `values[VAR]` (or `x` when VAR
    is missing or empty there). Raises `MissingVariable` for a VAR with neither, and
    `MalformedReference` for a broken reference."""
    references(text)  # malformed references are errors, never sent as written
    return _REFERENCE.sub(lambda m: _value(Reference(m[1], m[2]), values), text)


def used_values(texts: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The set, non-empty environment values the references in `texts` name."""
    names = {ref.name for text in texts for ref in references(text)}
    return {name: environ[name] for name in sorted(names) if environ.get(name)}


def process_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The variables references resolve from: the process environment over the values of
    `env_file` (the settings' `.env`, when it exists), as the settings read theirs."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    values.update(os.environ)
    return values
