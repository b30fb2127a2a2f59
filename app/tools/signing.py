"""Signing the bridge's tool requests, so a receiver can tell they came from the bridge.

Why: a tool endpoint is reachable by anyone who learns its URL, and it acts on a caller's
behalf (looks up an order, books a slot). With a signing secret set, every request the
bridge sends carries two headers:

    X-Bridge-Timestamp: <unix seconds, integer>
    X-Bridge-Signature: v1=<lowercase hex HMAC-SHA256(secret, b"<timestamp>." + body)>

The timestamp is inside the MAC, so a captured request cannot be replayed later than the
receiver's tolerance. The signature header may hold several comma-separated `v1=` values
(during a key rotation, one per secret); a request is genuine when any one matches.

A receiver verifies the *raw* body bytes, before parsing them, in a few lines of stdlib:

    import hashlib, hmac, time

    def from_bridge(secret: str, headers: dict[str, str], body: bytes) -> bool:
        ts = headers.get("X-Bridge-Timestamp", "")
        if not (ts.isascii() and ts.isdigit()) or abs(time.time() - int(ts)) > 300:
            return False
        mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256)
        want = f"v1={mac.hexdigest()}".encode()
        sent = headers.get("X-Bridge-Signature", "").split(",")
        return any(hmac.compare_digest(want, v.strip().encode()) for v in sent)

(`verify` below is the same check, used by the tests' fake tool server.)
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

TIMESTAMP_HEADER: Final = "X-Bridge-Timestamp"
SIGNATURE_HEADER: Final = "X-Bridge-Signature"
SCHEME: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300.0
"""How far a timestamp may be from the receiver's clock, either way: clock skew plus
transit, while a replay of a captured request soon goes stale."""
_MAX_TIMESTAMP_DIGITS: Final = 12
"""Longer timestamps are malformed (unix seconds have 10 digits until the year 2286)."""
_MAX_SIGNATURES: Final = 8
"""Most `v1=` values checked in one header: enough for any rotation, and it bounds the work
an attacker can make a receiver do."""


def _mac(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Bridge-Signature` value for `body` sent at `timestamp`: `v1=<hex>`."""
    if not secret:
        raise ValueError("the signing secret is empty")
    return f"{SCHEME}={_mac(secret, str(int(timestamp)), body)}"


def headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Both signature headers for `body` sent at `timestamp`."""
    return {TIMESTAMP_HEADER: str(int(timestamp)), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether `signature` (the header's value) signs `body` at `timestamp` with `secret`,
    and `timestamp` is within `tolerance_s` of `now` (unix seconds) either way.

    False, never an exception, for a missing or malformed header, an empty secret, a stale
    or future timestamp. Every `v1=` value is compared in constant time
    (`hmac.compare_digest`), and all of them are compared, so the time taken says nothing
    about which one (or how much of one) matched.
    """
    if not secret or timestamp is None or signature is None:
        return False
    stamp = timestamp.strip()
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > _MAX_TIMESTAMP_DIGITS:
        return False
    if abs(now - int(stamp)) > tolerance_s:
        return False
    candidates = signature.split(",")
    if len(candidates) > _MAX_SIGNATURES:
        return False
    expected = f"{SCHEME}={_mac(secret, stamp, body)}".encode()
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.strip().encode("utf-8", "replace"))
    return matched
