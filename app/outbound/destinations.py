"""Which numbers `POST /calls` may dial: the toll-fraud guard (`OUTBOUND_ALLOWED_PREFIXES`).

Toll fraud (International Revenue Share Fraud) is someone with the operator key making the
bridge dial numbers whose carrier pays them a share of the call: premium ranges, and
countries with high termination rates. The safe default is the one a business nearly
always wants and an attacker can't profit from: **the caller ID's own country only**, its
E.164 country calling code. Within +1 (the North American Numbering Plan, shared by 25
countries) that still reaches the Caribbean area codes of the "one ring" scams, billed as
international calls, so the default excludes the NANP area codes outside the United
States and Canada, and +1 900 (premium). Other countries' premium ranges are not known
here: list prefixes to be stricter (`OUTBOUND_ALLOWED_PREFIXES=+1415,+1212`), or `*` for
any destination (and rely on Twilio's Geo Permissions).
"""

from __future__ import annotations

import re
from typing import Final

_PREFIX = re.compile(r"^\+[0-9]{1,15}$")
#: An E.164 number. ASCII digits only: `\d` would take Arabic-Indic or full-width digits,
#: which no prefix rule would see for what they are.
E164: Final = re.compile(r"^\+[1-9][0-9]{1,14}$")

#: E.164 country codes of two digits (1 and 7 have one; every other code has three).
_TWO_DIGIT: Final = frozenset((
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
    "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
    "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
))  # fmt: skip

#: NANP area codes of the countries other than the US and Canada (billed as international
#: calls; the Caribbean "one ring" scam ranges), and premium +1 900.
NANP_EXCLUDED: Final = tuple("+1" + code for code in (
    "242", "246", "264", "268", "284", "345", "441", "473", "649", "658", "664", "721",
    "758", "767", "784", "809", "829", "849", "868", "869", "876", "900",
))  # fmt: skip

ANY: Final = "*"


def country_code(number: str) -> str:
    """The E.164 country calling code of `number` (`+14155550100` -> `1`)."""
    digits = number.lstrip("+")
    if digits[:1] in ("1", "7"):
        return digits[:1]
    if digits[:2] in _TWO_DIGIT:
        return digits[:2]
    return digits[:3]


def parse_prefixes(value: str) -> list[str]:
    """`OUTBOUND_ALLOWED_PREFIXES`: comma-separated `+digits` prefixes, or `*` for any.
    ValueError naming the entry that is neither."""
    entries = [part.strip() for part in value.split(",") if part.strip()]
    if not entries:
        raise ValueError("must list at least one +prefix, or * for any destination")
    for entry in entries:
        if entry != ANY and not _PREFIX.match(entry):
            raise ValueError(f"{entry!r} is not a +digits prefix (or *)")
    return entries


def allowed(to: str, caller_id: str, prefixes: list[str] | None) -> bool:
    """Whether `to` may be dialled from `caller_id` (both E.164) under `prefixes` (None:
    the default, the caller ID's own country; see the module's doc)."""
    if prefixes is not None:
        return any(entry == ANY or to.startswith(entry) for entry in prefixes)
    code = country_code(caller_id)
    if country_code(to) != code:
        return False
    return not (code == "1" and to.startswith(NANP_EXCLUDED))
