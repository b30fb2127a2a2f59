"""The call viewer's browser session: a signed cookie, the login's CSRF check, `next`.

Why a cookie of our own: a browser can't be made to send `Authorization: Bearer` with a
page's links, images and `<audio>`, and Basic auth's prompt can't be logged out of. So a
correct key typed into the login form earns a cookie that stands for it for 12 hours.

The cookie holds no secret and no server-side state: `<issued_at>.<hmac>`, the HMAC being
HMAC-SHA256(operator key, "ui-session" + issued_at). Only whoever knows the key can make
one, a changed OPERATOR_API_KEY ends every session at once, and every replica accepts the
others' cookies. Logging out clears the cookie in the browser; a copy taken before (it is
HttpOnly, so not by a script) stays valid until it expires.

Guessing: a client address with 5 failed logins within 5 minutes gets 429 (with
`Retry-After`) until the window passes (`LoginLimiter`).

CSRF: the only requests that change anything are login and logout (POST). The cookie is
SameSite=Strict, and a POST must also come from a page of this site: its `Origin` (or,
without one, its `Referer`) has PUBLIC_BASE_URL's scheme and host when that is set, else
this request's scheme and `Host`. A POST with neither header is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request

#: The cookie's name, and the path it is sent for (the viewer's pages only).
COOKIE = "ui_session"
COOKIE_PATH = "/ui"
#: How long a session lasts from the login.
SESSION_SECONDS = 12 * 3600
#: How far in the future an `issued_at` may be (clocks of replicas differ a little).
CLOCK_SKEW_SECONDS = 60
_CONTEXT = b"ui-session"
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Failed logins a client may make within the window before it gets 429.
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW_SECONDS = 300.0
#: Clients whose failures are remembered at most (the oldest is forgotten first).
LOGIN_MAX_CLIENTS = 10_000
#: Where a login goes when `next` is missing or not one of ours.
HOME = "/ui/"


class SessionSigner:
    """Issues and checks session cookie values for one operator key."""

    def __init__(self, key: str, clock: Callable[[], float] = time.time) -> None:
        self._key = key.encode()
        self._clock = clock

    def _mac(self, issued: str) -> str:
        return hmac.new(self._key, _CONTEXT + issued.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new session's cookie value."""
        issued = str(int(self._clock()))
        return f"{issued}.{self._mac(issued)}"

    def valid(self, value: str | None) -> bool:
        """Whether `value` is a cookie this key issued, less than 12 hours ago."""
        if not value or len(value) > 100:
            return False
        issued, _, mac = value.partition(".")
        if not issued.isascii() or not issued.isdigit() or len(issued) > 12:
            return False
        age = self._clock() - int(issued)
        if not -CLOCK_SKEW_SECONDS <= age < SESSION_SECONDS:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(issued).encode())


class LoginLimiter:
    """Failed logins per client address: after `attempts` failures within `window_s`
    seconds, that client is refused (429) until the oldest of them is `window_s` old. A
    success clears the client's count. At most `max_clients` are tracked (the least
    recently seen is dropped), so memory stays bounded whoever knocks."""

    def __init__(
        self,
        attempts: int = LOGIN_ATTEMPTS,
        window_s: float = LOGIN_WINDOW_SECONDS,
        max_clients: int = LOGIN_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, client: str) -> list[float]:
        cutoff = self._clock() - self.window_s
        times = [t for t in self._failures.get(client, ()) if t > cutoff]
        if times:
            self._failures[client] = times
        else:
            self._failures.pop(client, None)
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None if it may now."""
        times = self._recent(client)
        if len(times) < self.attempts:
            return None
        wait = times[-self.attempts] + self.window_s - self._clock()
        return max(1, math.ceil(wait))

    def failed(self, client: str) -> None:
        """Count a failed login from `client`."""
        times = self._recent(client)
        times.append(self._clock())
        self._failures[client] = times[-self.attempts :]
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """A correct key from `client`: its count starts again."""
        self._failures.pop(client, None)

    def __len__(self) -> int:
        return len(self._failures)


def _is_loopback(host: str | None) -> bool:
    """Whether `host` (a name or an address, maybe bracketed) is this machine."""
    if not host:
        return False
    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_wanted(request: Request, public_base_url: str | None = None) -> bool:
    """Whether the cookie gets `Secure`: always when PUBLIC_BASE_URL is https (or set at
    all), or the request is https. The one exception is `make demo` on
    http://127.0.0.1 (no PUBLIC_BASE_URL, plain http, a loopback Host, and the client on
    loopback too), where a browser would never send a Secure cookie back."""
    if public_base_url:
        return True
    if request.url.scheme == "https":
        return True
    client = request.client.host if request.client else None
    return not (_is_loopback(request.url.hostname) and _is_loopback(client))


def _origin(url: str) -> tuple[str, str] | None:
    """`url`'s scheme and host (with the port, default ports dropped), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return scheme, host
    return scheme, f"{host}:{port}"


def same_origin(request: Request, public_base_url: str | None = None) -> bool:
    """Whether a POST comes from a page of this site: its `Origin` (else its `Referer`)
    has the scheme and host of PUBLIC_BASE_URL when set, else of the request itself
    (its scheme and `Host`). Neither header: refused."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    theirs = _origin(source)
    if theirs is None:
        return False
    if public_base_url:
        ours = _origin(public_base_url)
    else:
        host = request.headers.get("host", "")
        ours = _origin(f"{request.url.scheme}://{host}") if host else None
    return ours is not None and theirs == ours


def safe_next(target: str | None) -> str:
    """`target` if it is a path of the viewer (`/ui/...`, no scheme, no host, no `//`
    or backslash that a browser might read as another host), else the calls list."""
    if not target or len(target) > 2000 or not target.startswith(HOME):
        return HOME
    if "\\" in target or "//" in target or any(ord(c) < 0x21 for c in target):
        return HOME
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return HOME
    return target
