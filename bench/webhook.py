"""How a simulated call begins, as Twilio begins one: the signed voice webhook and the
`<Connect><Stream>` TwiML it returns.

Signatures are computed with twilio's own RequestValidator over the public URL, exactly
as the target checks them: the webhook over its URL and form parameters, the websocket
upgrade over the stream URL with no parameters.
"""

from __future__ import annotations

import asyncio
import random
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from bench.wire import parse_head


def random_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return f"{prefix}{random.getrandbits(128):032x}"


def call_form(account_sid: str, call_sid: str, index: int) -> dict[str, str]:
    """The form fields Twilio posts for a new inbound call."""
    caller = f"+1415555{index % 10000:04d}"
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": "+15005550006",
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "FromCountry": "US",
        "To": "+15005550006",
        "ToCountry": "US",
    }


def sign(validator: RequestValidator | None, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature for `url` and `params` (empty when no auth token is known)."""
    return validator.compute_signature(url, params) if validator is not None else ""


async def post_form(
    host: str, port: int, path: str, form: dict[str, str], signature: str
) -> tuple[int, bytes]:
    """POST `form` to http://host:port/path; (status, body). The caller bounds the time."""
    body = urlencode(form).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n"
        "User-Agent: TwilioProxy/1.1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode() + body)
        data = await reader.read()
    finally:
        writer.close()
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    status, fields = parse_head(raw_head)
    code = int(status.split(" ", 2)[1])
    if "chunked" in fields.get("transfer-encoding", "").lower():
        rest = _dechunk(rest)
    elif "content-length" in fields:
        rest = rest[: int(fields["content-length"])]
    return code, rest


def _dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
    return b"".join(out)


def parse_stream(twiml: bytes) -> tuple[str, dict[str, str]]:
    """The `<Stream url>` and its `<Parameter>`s from a TwiML document."""
    stream = ET.fromstring(twiml).find(".//Stream")
    if stream is None or not stream.get("url"):
        raise RuntimeError("twiml_without_stream")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params
