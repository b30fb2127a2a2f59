"""Base64 facts without decoding: the length every audio count relies on, and the check
the recorder makes before replacing a payload by its length."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from app.protocol.b64 import decoded_len, is_b64


@given(st.binary(max_size=3000))
def test_decoded_len_is_the_decoded_length_for_any_audio(raw: bytes) -> None:
    text = base64.b64encode(raw).decode()
    assert decoded_len(text) == len(raw)
    assert is_b64(text) is (len(raw) > 0)


def test_is_b64_refuses_what_is_not_padded_standard_base64() -> None:
    for bad in ("", "@@@@", "AAA", "AA=A", "AAAA====", "AA-_", "AAAA\n", None, 1234, b"AAAA"):
        assert not is_b64(bad), bad
