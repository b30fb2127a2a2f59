"""Public URLs and X-Twilio-Signature checks.

Twilio signs the URL *it* requested: the public `https://` webhook URL or the `wss://`
stream URL from our TwiML. Behind a proxy or TLS terminator the server sees another
scheme, host or port, so signatures are always checked against the public URL built from
PUBLIC_BASE_URL (or, in development only, derived from forwarded headers), never against
the URL of the request as the server received it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import SecretStr
from twilio.request_validator import RequestValidator

MEDIA_STREAM_PATH = "/media-stream"

_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$"
)
"""host[:port] or [ipv6][:port]; anything else (paths, spaces, userinfo) is refused."""
_WS_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts and Starlette Headers."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    if value is None:
        return None
    # Proxies may append: "X-Forwarded-Proto: https, http". The first hop is the client's.
    first = value.split(",")[0].strip()
    return first or None


def public_base_url(configured: str | None, headers: Mapping[str, str], scheme: str) -> str:
    """The public `scheme://host[:port]` that Twilio uses to reach this server.

    `configured` (PUBLIC_BASE_URL) always wins. Without it the URL is derived from
    `X-Forwarded-Proto` / `X-Forwarded-Host` / `Host`, falling back to the request's own
    `scheme` (ws/wss map to http/https). That fallback trusts client-supplied headers, so
    it is for development only. Raises ValueError when no usable host header exists.
    """
    if configured:
        return configured.rstrip("/")
    proto = (_header(headers, "x-forwarded-proto") or "").lower()
    if proto not in _WS_TO_HTTP:
        proto = scheme.lower()
    http_scheme = _WS_TO_HTTP.get(proto)
    if http_scheme is None:
        raise ValueError(f"unsupported scheme {scheme!r}")
    host = _header(headers, "x-forwarded-host") or _header(headers, "host")
    if not host or not _HOST_RE.match(host):
        raise ValueError("no usable Host header to derive the public URL from")
    return f"{http_scheme}://{host}"


def stream_url(public_base: str) -> str:
    """The media-stream websocket URL: `https://h` -> `wss://h/media-stream` (http -> ws)."""
    scheme, sep, rest = public_base.rstrip("/").partition("://")
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme.lower())
    if not sep or ws_scheme is None:
        raise ValueError("public base URL must start with http:// or https://")
    return f"{ws_scheme}://{rest}{MEDIA_STREAM_PATH}"


def public_url(public_base: str, path: str, query: str | bytes = "") -> str:
    """The public URL of a request: base + path + raw query string, as Twilio signed it.

    Pass the query exactly as received (e.g. Starlette's `request.url.query`), since the
    signature covers its exact bytes.
    """
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    path = path if path.startswith("/") else "/" + path
    url = public_base.rstrip("/") + path
    return f"{url}?{query}" if query else url


class SignatureChecker:
    """Validates X-Twilio-Signature for webhooks and the media-stream upgrade.

    Disabled (every check passes) when no auth token is configured; the settings emit a
    loud warning at start in that case. Checks never raise: any malformed input is simply
    an invalid signature. The `url` given to each check must be the PUBLIC url (see
    `public_url` / `stream_url`), never the URL the server itself saw.
    """

    def __init__(self, auth_token: str | SecretStr | None) -> None:
        if isinstance(auth_token, SecretStr):
            auth_token = auth_token.get_secret_value()
        self._validator = RequestValidator(auth_token) if auth_token else None

    def __repr__(self) -> str:
        return f"SignatureChecker(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        """True when an auth token is configured and signatures are enforced."""
        return self._validator is not None

    def _validate(self, url: str, params: Any, signature: str | None) -> bool:
        if self._validator is None:
            return True
        if not signature or not isinstance(signature, str) or not isinstance(url, str):
            return False
        try:
            return bool(self._validator.validate(url, params, signature))
        except Exception:
            # twilio raises TypeError for some inputs (e.g. a JSON string body without
            # bodySHA256, twilio-python#885); anything malformed is just a bad signature.
            return False

    def check_webhook(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        """Check a form-encoded webhook: `url` is the public URL including its query."""
        return self._validate(url, params, signature)

    def check_websocket(self, url: str, signature: str | None) -> bool:
        """Check the media-stream upgrade: Twilio signs the exact `wss://` URL, no params."""
        return self._validate(url, {}, signature)


#: The `<Parameter>` that carries a call's stream token.
STREAM_TOKEN_PARAMETER = "StreamToken"
#: The `<Parameter>` naming an outbound call the bridge placed (`app.outbound`): its
#: TwiML is made before Twilio gives the call a CallSid, so its stream token is bound to
#: this id (`outbound_binding`) instead, and its settings are found in the call store by it.
OUTBOUND_PARAMETER = "OutboundId"


def outbound_binding(outbound_id: str) -> str:
    """What an outbound call's stream token is bound to, in place of a CallSid."""
    return "outbound:" + outbound_id


#: Parameters a stream token does not cover: itself, and the CallSid (covered as the call).
_UNBOUND_PARAMETERS: Final = frozenset({STREAM_TOKEN_PARAMETER, "CallSid"})


def _bound(parameters: Mapping[str, object]) -> bytes:
    """The stream's other parameters, canonically: what the token vouches for too."""
    pairs = sorted(
        (name, value)
        for name, value in parameters.items()
        if name not in _UNBOUND_PARAMETERS and isinstance(value, str) and value != ""
    )
    return json.dumps(pairs, ensure_ascii=True, separators=(",", ":")).encode()


def stream_token(
    auth_token: str,
    call_sid: str,
    parameters: Mapping[str, str] = {},
) -> str:
    """A token binding one media stream to one call and to the call's data.

    Twilio signs the media-stream upgrade over the fixed `wss://host/media-stream` URL, so
    that signature says "Twilio, some call" and is the same for every call. The webhook
    (itself signed over the call's parameters) puts this HMAC of the CallSid and of the
    stream's other `<Parameter>`s (`parameters`, as the TwiML carries them: the caller's
    number, the dialled number that picks the agent, the location fields the instructions
    quote) into the TwiML; the bridge accepts a stream's `start` only with the token of
    the call it claims and of exactly those values, so a replayed upgrade can neither open
    streams for other calls nor pass itself off as another caller or number.
    """
    message = b"media-stream:" + call_sid.encode() + b"\n" + _bound(parameters)
    mac = hmac.new(auth_token.encode(), message, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode()


def check_stream_token(
    auth_token: str,
    call_sid: str,
    token: object,
    parameters: Mapping[str, object] = {},
) -> bool:
    """Whether `token` is the stream token of `call_sid` with these `parameters` (the
    `start`'s custom parameters; the token itself among them is left out)."""
    if not isinstance(token, str):
        return False
    bound = {k: v for k, v in parameters.items() if isinstance(v, str)}
    expected = stream_token(auth_token, call_sid, bound).encode()
    return hmac.compare_digest(token.encode("utf-8", "replace"), expected)
