"""`app.tools.signing`: the bridge signs tool requests; receivers verify them."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from app.tools import signing

SECRET = "whsec_test"
BODY = b'{"order_id":"A-17"}'
TS = 1_700_000_000
#: HMAC-SHA256("whsec_test", b'1700000000.{"order_id":"A-17"}'), computed with openssl:
#: printf '%s' '1700000000.{"order_id":"A-17"}' | openssl dgst -sha256 -hmac whsec_test
VECTOR = "v1=0b1fdf349ad9bfef8c3846e50d15d8bd2f7a80ef855cbd526f2982c7658d3387"


def test_known_vector() -> None:
    assert signing.sign(SECRET, TS, BODY) == VECTOR


def test_headers_carry_the_timestamp_and_the_signature() -> None:
    assert signing.headers(SECRET, TS, BODY) == {
        "X-Bridge-Timestamp": "1700000000",
        "X-Bridge-Signature": VECTOR,
    }


def test_an_empty_secret_cannot_sign() -> None:
    with pytest.raises(ValueError):
        signing.sign("", TS, BODY)


def test_verify_accepts_the_genuine_request() -> None:
    assert signing.verify(SECRET, str(TS), VECTOR, BODY, now=TS)
    assert signing.verify(SECRET, str(TS), VECTOR, BODY, now=TS + 299.9)
    assert signing.verify(SECRET, str(TS), VECTOR, BODY, now=TS - 299.9)  # skewed clock


@pytest.mark.parametrize(
    ("timestamp", "body", "secret"),
    [
        (str(TS), BODY + b" ", SECRET),  # body tampered
        (str(TS), b'{"order_id":"A-18"}', SECRET),
        (str(TS + 1), BODY, SECRET),  # timestamp tampered
        (str(TS), BODY, "whsec_other"),  # another secret
    ],
)
def test_verify_rejects_tampering(timestamp: str, body: bytes, secret: str) -> None:
    assert not signing.verify(secret, timestamp, VECTOR, body, now=TS)


def test_verify_rejects_stale_and_future_timestamps() -> None:
    assert not signing.verify(SECRET, str(TS), VECTOR, BODY, now=TS + 301)
    assert not signing.verify(SECRET, str(TS), VECTOR, BODY, now=TS - 301)
    assert not signing.verify(SECRET, str(TS), VECTOR, BODY, now=TS + 61, tolerance_s=60)


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        (None, VECTOR),
        (str(TS), None),
        ("", VECTOR),
        ("-1700000000", VECTOR),
        ("1700000000.5", VECTOR),
        ("1.7e9", VECTOR),
        ("\uff11\uff17" + "\uff10" * 8, VECTOR),  # fullwidth digits: isdigit(), not ASCII
        ("9" * 5000, VECTOR),  # int() of it would raise
        (str(TS), ""),
        (str(TS), VECTOR.removeprefix("v1=")),  # no scheme
        (str(TS), "v0=" + VECTOR.removeprefix("v1=")),  # another scheme
        (str(TS), VECTOR.upper()),  # the hex is lowercase
        (str(TS), VECTOR[:-1]),  # truncated
        (str(TS), "v1=ü" + VECTOR[4:]),  # not ASCII
        (str(TS), ",".join(["v1=00"] * 20 + [VECTOR])),  # too many values
    ],
)
def test_verify_rejects_malformed_headers(timestamp: str | None, signature: str | None) -> None:
    assert not signing.verify(SECRET, timestamp, signature, BODY, now=TS)


def test_verify_rejects_everything_with_an_empty_secret() -> None:
    empty_mac = hmac.new(b"", f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert not signing.verify("", str(TS), f"v1={empty_mac}", BODY, now=TS)


def test_several_values_for_key_rotation() -> None:
    old = signing.sign("whsec_old", TS, BODY)
    assert signing.verify(SECRET, str(TS), f"{old},{VECTOR}", BODY, now=TS)
    assert signing.verify(SECRET, str(TS), f"{VECTOR}, {old}", BODY, now=TS)
    assert signing.verify("whsec_old", str(TS), f"{VECTOR}, {old}", BODY, now=TS)
    assert not signing.verify("whsec_new", str(TS), f"{VECTOR}, {old}", BODY, now=TS)


def test_the_docstrings_receiver_agrees_with_verify() -> None:
    """The receiver's code in the module docstring is real: run it."""
    doc = signing.__doc__ or ""
    start = doc.index("    import hashlib")
    source = "\n".join(line[4:] for line in doc[start:].split("\n\n(`verify`")[0].splitlines())
    namespace: dict[str, object] = {}
    exec(source, namespace)
    from_bridge = namespace["from_bridge"]
    assert callable(from_bridge)
    now = int(time.time())
    good = signing.headers(SECRET, now, BODY)
    assert from_bridge(SECRET, good, BODY)
    assert not from_bridge(SECRET, good, BODY + b"x")
    assert not from_bridge(SECRET, signing.headers(SECRET, now - 400, BODY), BODY)
    assert not from_bridge(SECRET, {}, BODY)
    rotated = {**good, "X-Bridge-Signature": "v1=00, " + good["X-Bridge-Signature"]}
    assert from_bridge(SECRET, rotated, BODY)
