"""Public URL derivation and X-Twilio-Signature checks."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from app.security import SignatureChecker, public_base_url, public_url, stream_url

# Known vector from Twilio's docs and twilio-python's tests (PROTOCOL.md 2.2).
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_TOKEN = "12345"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
VECTOR_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
WS_URL = "wss://example.com/media-stream"


def test_known_webhook_vector_validates() -> None:
    checker = SignatureChecker(VECTOR_TOKEN)
    assert checker.enabled
    assert checker.check_webhook(VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)


def test_webhook_rejects_tampering() -> None:
    checker = SignatureChecker(VECTOR_TOKEN)
    assert not checker.check_webhook(VECTOR_URL, {**VECTOR_PARAMS, "To": "+1"}, VECTOR_SIGNATURE)
    assert not checker.check_webhook(VECTOR_URL + "&x=1", VECTOR_PARAMS, VECTOR_SIGNATURE)
    assert not checker.check_webhook(VECTOR_URL, VECTOR_PARAMS, "AAAA" + VECTOR_SIGNATURE[4:])
    assert not SignatureChecker("54321").check_webhook(VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)


@pytest.mark.parametrize("signature", [None, ""])
def test_missing_signature_is_rejected(signature: str | None) -> None:
    checker = SignatureChecker(VECTOR_TOKEN)
    assert not checker.check_webhook(VECTOR_URL, VECTOR_PARAMS, signature)
    assert not checker.check_websocket(WS_URL, signature)


def test_websocket_signature_over_exact_wss_url() -> None:
    signature = RequestValidator("tok-abcdef").compute_signature(WS_URL, {})
    checker = SignatureChecker("tok-abcdef")
    assert checker.check_websocket(WS_URL, signature)
    assert checker.check_websocket("wss://example.com:443/media-stream", signature)
    assert not checker.check_websocket("wss://evil.example.com/media-stream", signature)
    assert not checker.check_websocket("ws://example.com/media-stream", signature)
    assert not checker.check_websocket(WS_URL, signature + "x")


def test_garbage_input_never_raises() -> None:
    checker = SignatureChecker(VECTOR_TOKEN)
    # A JSON string body without bodySHA256 makes twilio raise TypeError (twilio-python#885).
    assert not checker.check_webhook(VECTOR_URL, '{"a": 1}', VECTOR_SIGNATURE)  # type: ignore[arg-type]
    assert not checker.check_webhook(VECTOR_URL, {"a": 1}, VECTOR_SIGNATURE)  # type: ignore[dict-item]
    assert not checker.check_webhook(None, VECTOR_PARAMS, VECTOR_SIGNATURE)  # type: ignore[arg-type]
    assert not checker.check_webhook(VECTOR_URL, VECTOR_PARAMS, 12345)  # type: ignore[arg-type]
    assert not checker.check_websocket("wss://[::1/media-stream", "abc")
    assert not checker.check_websocket(WS_URL, "\x00\xff" * 40)


def test_disabled_checker_accepts_everything() -> None:
    for token in (None, ""):
        checker = SignatureChecker(token)
        assert not checker.enabled
        assert checker.check_webhook(VECTOR_URL, VECTOR_PARAMS, None)
        assert checker.check_websocket(WS_URL, "garbage")


def test_checker_accepts_secretstr_and_hides_token() -> None:
    checker = SignatureChecker(SecretStr(VECTOR_TOKEN + "-long-secret"))
    assert checker.enabled
    assert "long-secret" not in repr(checker)
    signature = RequestValidator(VECTOR_TOKEN + "-long-secret").compute_signature(WS_URL, {})
    assert checker.check_websocket(WS_URL, signature)


def test_configured_public_base_wins_over_headers() -> None:
    headers = {"host": "internal:8000", "x-forwarded-host": "other.example.com"}
    assert public_base_url("https://bridge.example.com/", headers, "http") == (
        "https://bridge.example.com"
    )


def test_public_base_from_host_header_and_scheme() -> None:
    assert public_base_url(None, {"host": "localhost:8000"}, "http") == "http://localhost:8000"
    assert public_base_url(None, {"Host": "h.example.com"}, "wss") == "https://h.example.com"


def test_public_base_from_forwarded_headers() -> None:
    headers = {
        "Host": "10.0.0.5:8000",
        "X-Forwarded-Proto": "https, http",
        "X-Forwarded-Host": "abc.ngrok.app",
    }
    assert public_base_url(None, headers, "http") == "https://abc.ngrok.app"
    assert public_base_url(None, {"host": "[::1]:8000"}, "https") == "https://[::1]:8000"


def test_bad_forwarded_proto_is_ignored() -> None:
    headers = {"host": "h.example.com", "x-forwarded-proto": "gopher"}
    assert public_base_url(None, headers, "https") == "https://h.example.com"


@pytest.mark.parametrize(
    "headers",
    [{}, {"host": ""}, {"host": "evil.com/path"}, {"host": "a b"}, {"host": "user@evil.com"}],
)
def test_public_base_refuses_unusable_host(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        public_base_url(None, headers, "https")


def test_stream_url() -> None:
    assert stream_url("https://bridge.example.com") == "wss://bridge.example.com/media-stream"
    assert stream_url("http://localhost:8000/") == "ws://localhost:8000/media-stream"
    with pytest.raises(ValueError):
        stream_url("ftp://x")
    with pytest.raises(ValueError):
        stream_url("bridge.example.com")


def test_public_url_keeps_raw_query() -> None:
    base = "https://mycompany.com"
    assert public_url(base, "/myapp.php", "foo=1&bar=2") == VECTOR_URL
    assert public_url(base + "/", "incoming-call") == "https://mycompany.com/incoming-call"
    assert public_url(base, "/a", b"x=%20") == "https://mycompany.com/a?x=%20"
    checker = SignatureChecker(VECTOR_TOKEN)
    url = public_url(base, "/myapp.php", "foo=1&bar=2")
    assert checker.check_webhook(url, VECTOR_PARAMS, VECTOR_SIGNATURE)


def test_stream_tokens_bind_a_stream_to_its_call() -> None:
    from app.security import check_stream_token, stream_token

    data = {"From": "+15551230000", "To": "+15559870000"}
    bound = stream_token("auth-token", "CA" + "1" * 32, data)
    assert check_stream_token("auth-token", "CA" + "1" * 32, bound, {**data, "StreamToken": bound})
    for changed in ({**data, "From": "+15550006666"}, {"To": data["To"]}, {**data, "X": "y"}):
        assert not check_stream_token("auth-token", "CA" + "1" * 32, bound, changed)
    token = stream_token("auth-token", "CA" + "1" * 32)
    assert check_stream_token("auth-token", "CA" + "1" * 32, token)
    assert not check_stream_token("auth-token", "CA" + "2" * 32, token)
    assert not check_stream_token("other-token", "CA" + "1" * 32, token)
    for forged in (None, "", 42, "é" * 32, token[:-1]):
        assert not check_stream_token("auth-token", "CA" + "1" * 32, forged)
