"""The functions the bridge offers the Realtime model (GA `tools` entries).

Only their declarations live here; what running them means (waiting for the last word,
then acting on the live call) belongs to the call core and the telephony layer.
"""

from __future__ import annotations

from typing import Any, Final

_REASON: Final = {
    "type": "object",
    "properties": {"reason": {"type": "string", "description": "Short reason, for the call log."}},
    "required": ["reason"],
    "additionalProperties": False,
}

DEFINITIONS: Final[dict[str, dict[str, Any]]] = {
    "end_call": {
        "type": "function",
        "name": "end_call",
        "description": (
            "Hang up the phone call. Call this only after you have said goodbye in the same "
            "response; the line is closed once your last words have been heard."
        ),
        "parameters": _REASON,
    },
    "transfer_call": {
        "type": "function",
        "name": "transfer_call",
        "description": (
            "Transfer the caller to a human colleague. First tell the caller you are "
            "transferring them; the transfer happens once your last words have been heard."
        ),
        "parameters": _REASON,
    },
}


def definitions(names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `tools` list for `session.update`, in the given order."""
    return [DEFINITIONS[name] for name in names]
