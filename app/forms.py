"""Twilio's form-encoded webhook bodies, read within a size and a time bound.

A webhook is reachable by anyone before its signature is checked, and the signature
covers the parsed parameters, so the body must be read first: it is read as it streams
in, refused the moment it passes WEBHOOK_MAX_BODY_BYTES (a declared `Content-Length`
over the limit is refused without reading a byte), and given REQUEST_TIMEOUT_SECONDS in
all. Twilio's voice and status webhooks are a few kilobytes; 64 KiB is the default.
Bounded bytes parse in well under a millisecond, so no call's audio waits behind it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request


class FormRefused(Exception):
    """Why a body was not read: `status` is the HTTP answer (413, 408 or 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_form(request: Request, max_bytes: int, timeout_s: float) -> dict[str, str]:
    """The body's parameters (the last value of a repeated name), or raise FormRefused."""
    body = await read_body(request, max_bytes, timeout_s)
    text = body.decode("utf-8", errors="replace")
    return dict(parse_qsl(text, keep_blank_values=True))


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body's bytes within the bounds (any content type), or raise FormRefused."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise FormRefused(400, "bad_content_length")
        if int(declared) > max_bytes:
            raise FormRefused(413, "body_too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > max_bytes:
                    raise FormRefused(413, "body_too_large")
                body += chunk
    except TimeoutError:
        raise FormRefused(408, "body_timeout") from None
    except ClientDisconnect:
        raise FormRefused(400, "client_disconnected") from None
    return bytes(body)
