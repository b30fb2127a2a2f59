"""`POST /calls`' pure parts: the toll-fraud guard (`app.outbound.destinations`) and the
request's checks (`app.outbound.request`)."""

from __future__ import annotations

from typing import Any

import pytest

from app.agents import Agents
from app.outbound.destinations import allowed, country_code, parse_prefixes
from app.outbound.request import Invalid, PlaceCall, parse

FROM = "+14155550100"


@pytest.mark.parametrize(
    ("number", "code"),
    [
        ("+14155550100", "1"),
        ("+79161234567", "7"),
        ("+447700900123", "44"),
        ("+33612345678", "33"),
        ("+4915112345678", "49"),
        ("+353851234567", "353"),  # Ireland: three digits
        ("+2348031234567", "234"),  # Nigeria
        ("+8613812345678", "86"),
        ("+85291234567", "852"),  # Hong Kong, not 85
    ],
)
def test_country_codes(number: str, code: str) -> None:
    assert country_code(number) == code


@pytest.mark.parametrize(
    ("to", "caller_id", "ok"),
    [
        ("+14155550123", FROM, True),  # domestic
        ("+16045550123", FROM, True),  # Canada shares +1 and is domestic-rate
        ("+18765550123", FROM, False),  # Jamaica: one-ring scam range
        ("+18095550123", FROM, False),  # Dominican Republic
        ("+19005550123", FROM, False),  # premium
        ("+447700900123", FROM, False),  # abroad
        ("+447700900123", "+447700900001", True),  # domestic for a UK caller ID
        ("+33612345678", "+447700900001", False),
    ],
)
def test_the_default_is_the_caller_ids_own_country(to: str, caller_id: str, ok: bool) -> None:
    assert allowed(to, caller_id, None) is ok


def test_listed_prefixes_replace_the_default() -> None:
    prefixes = parse_prefixes(" +1415 , +44")
    assert prefixes == ["+1415", "+44"]
    assert allowed("+14155550123", FROM, prefixes)
    assert not allowed("+16505550123", FROM, prefixes)
    assert allowed("+447700900123", FROM, prefixes)
    assert allowed("+18765550123", FROM, ["*"])  # anywhere, explicitly


@pytest.mark.parametrize("bad", ["", " , ", "1415", "+14a", "+1415,uk"])
def test_bad_prefix_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_prefixes(bad)


def problems(body: Any, **kw: Any) -> dict[str, str]:
    with pytest.raises(Invalid) as caught:
        parse(body, default_from=kw.get("default_from", FROM), agents=Agents())
    return {p["field"]: p["message"] for p in caught.value.problems}


def test_a_good_request() -> None:
    call = parse(
        {
            "to": "+14155550123",
            "context": {"name": "Ada", "count": 3, "vip": True},
            "instructions": "Call {name} ({called_number}).",
            "machine_detection": "voicemail",
            "voicemail_message": "Hi Ada.",
        },
        default_from=FROM,
        agents=Agents(),
    )
    assert call == PlaceCall(
        to="+14155550123",
        from_=FROM,
        agent="default",
        instructions="Call {name} ({called_number}).",
        context={"name": "Ada", "count": "3", "vip": "true"},
        machine_detection="voicemail",
        voicemail_message="Hi Ada.",
    )


def test_each_bad_field_is_named_once() -> None:
    found = problems(
        {
            "to": "+0123",
            "from": 14155550100,
            "agent": "sales",
            "machine_detection": True,
            "context": {"1st": "x", "agent": "y", "deep": {"a": 1}, "long": "x" * 1001},
            "greeting": "Hello {nobody}",
            "instructions": "",
            "voicemail_message": 5,
            "extra": 1,
        }
    )
    assert set(found) == {
        "to",
        "from",
        "agent",
        "machine_detection",
        "context.1st",
        "context.agent",
        "context.deep",
        "context.long",
        "greeting",
        "instructions",
        "voicemail_message",
        "extra",
    }
    assert "nobody" in found["greeting"]


def test_no_caller_id_anywhere_is_a_bad_from() -> None:
    assert set(problems({"to": "+14155550123"}, default_from=None)) == {"from"}


def test_voicemail_needs_its_message() -> None:
    assert set(problems({"to": "+14155550123", "machine_detection": "voicemail"})) == {
        "voicemail_message"
    }


@pytest.mark.parametrize("body", [[], "call", None, 3])
def test_the_body_must_be_an_object(body: Any) -> None:
    assert set(problems(body)) == {"request"}


@pytest.mark.parametrize("to", ["+1\u0668\u0667\u06665550123", "+1\uff18\uff17\uff165550123"])
def test_only_ascii_digits_make_a_number(to: str) -> None:
    assert set(problems({"to": to})) == {"to"}


def test_nulls_mean_the_defaults_but_a_voicemail_needs_its_words() -> None:
    call = parse(
        {"to": "+14155550123", "from": None, "agent": None, "machine_detection": None},
        default_from=FROM,
        agents=Agents(),
    )
    assert (call.from_, call.agent, call.machine_detection) == (FROM, "default", "off")
    found = problems(
        {"to": "+14155550123", "machine_detection": "voicemail", "voicemail_message": None}
    )
    assert set(found) == {"voicemail_message"}
    found = problems(
        {"to": "+14155550123", "machine_detection": "voicemail", "voicemail_message": "Hi {who}"}
    )
    assert set(found) == {"voicemail_message"}  # a placeholder of no value
