"""The call viewer's browser session: a signed cookie, the login's CSRF check, `next`.

Why a cookie of our own: a browser can't be made to send `Authorization: Bearer` with a
page's links, images and `<audio>`, and Basic auth's prompt can't be logged out of. So a
correct key typed into the login form earns a cookie that stands for it for 12 hours.

The cookie holds no secret and no server-side state: `<issued_at>.<hmac>`, the HMAC being
HMAC-SHA256(operator key, "ui-session" + issued_at). Only whoever knows the key can make
one, a changed OPERATOR_API_KEY ends every session at once, and every replica accepts the
others' cookies. Logging out clears the cookie in the browser; a copy taken before (it is
HttpOnly, so not by a script) stays valid until it expires.

CSRF: the only requests that change anything are login and logout (POST). The cookie is
SameSite=Strict, and a POST must also come from a page of this site: its `Origin` (or,
without one, its `Referer`) names this request's host (or PUBLIC_BASE_URL's).
"""

from __future__ import annotations

import hashlib
import hmac
import time
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
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
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


def secure_wanted(request: Request) -> bool:
    """Whether the cookie gets `Secure`: always, except over plain http to a loopback
    host (`make demo` on http://127.0.0.1), where a browser would never send it back."""
    if request.url.scheme == "https":
        return True
    host = (request.url.hostname or "").lower()
    return host not in _LOOPBACK


def same_origin(request: Request, public_base_url: str | None = None) -> bool:
    """Whether a POST comes from a page of this site (its `Origin`, else its `Referer`,
    names the request's `Host` or PUBLIC_BASE_URL's host). Neither header: refused."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    try:
        netloc = urlsplit(source).netloc.lower()
    except ValueError:
        return False
    if not netloc:
        return False
    hosts = {request.headers.get("host", "").lower()}
    if public_base_url:
        hosts.add(urlsplit(public_base_url).netloc.lower())
    hosts.discard("")
    return netloc in hosts


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
