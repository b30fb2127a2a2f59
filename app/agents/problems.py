"""Start-up error lines for the agents file: `{file}: {key.path}: {what is wrong}`.

An operator fixing a file wants every mistake at once, each with the key to look at, in
the file's own terms: `agents.sales.tools[1]`, `tools.lookup_order.timeout_seconds`, not
pydantic's location tuples and "Input should be a valid integer". `Problems` collects the
lines (the loader keeps going after a mistake) and raises them together as one
`app.settings.SettingsError`, which stops the boot with exit code 2. Header values are
never echoed (they may hold a token written in the file).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from pydantic import ValidationError

from app.settings import SettingsError

Path = Sequence[str | int]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_SHOWN: Final = 60

#: Short messages for pydantic's type errors (keyed by error type).
_MESSAGES: Final[dict[str, str]] = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}


def key_path(path: Path) -> str:
    """`("agents", "sales", "tools", 1)` -> `agents.sales.tools[1]`; keys that are not
    bare TOML keys are quoted (`headers."X Key"`)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if _BARE_KEY.match(part) else json.dumps(part, ensure_ascii=False)
        text += f".{key}" if text else key
    return text


def shown(value: Any) -> str:
    """A value as TOML writes it, cut short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > _MAX_SHOWN:
            value = value[:_MAX_SHOWN] + "..."
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _message(error: Any, known: Iterable[str]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        loc = error.get("loc", ())
        key = str(loc[-1]) if loc else ""
        keys = sorted(known)
        close = difflib.get_close_matches(key, keys, n=1)
        if close:
            return f"unknown key (did you mean {close[0]}?)"
        return f"unknown key (known keys: {', '.join(keys)})"
    message = _MESSAGES.get(kind)
    if message is None:
        message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
        message = message.replace("Input should be", "must be")
    if kind != "missing" and "headers" not in error.get("loc", ()):
        value = error.get("input")
        if isinstance(value, str | int | float | bool):
            message += f" (got {shown(value)})"
    return message


class Problems:
    """The mistakes found in one agents file, in the order found."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.lines)

    def add(self, path: Path, message: str) -> None:
        """One mistake at `path` (empty: the file as a whole)."""
        where = key_path(path)
        prefix = f"{self.file}: {where}" if where else self.file
        self.lines.append(f"{prefix}: {message}")

    def validation(
        self, path: Path, error: ValidationError, known: Iterable[str], written: Iterable[str]
    ) -> None:
        """Each of a model's errors, at `path` + its location, in the order of the keys as
        `written` in the file; `known` are the table's keys (named for an unknown key)."""
        keys, order = list(known), {key: i for i, key in enumerate(written)}
        items = error.errors()
        items.sort(key=lambda item: order.get(str(next(iter(item["loc"]), "")), len(order)))
        for item in items:
            self.add([*path, *item.get("loc", ())], _message(item, keys))

    def raise_if_any(self) -> None:
        """Raise every line found as one `SettingsError`."""
        if self.lines:
            raise SettingsError(list(self.lines))
