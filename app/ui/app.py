"""The call viewer's routes: a small Starlette app mounted at `/ui` (`mount_ui`).

Server-rendered pages (Jinja2, autoescaped: transcripts are what callers said), one static
stylesheet, no script. Every page needs the operator key: the session cookie a login
sets (`app.ui.session`), or the operator API's own `Authorization` header (Bearer, or
Basic's password). Without either a page redirects to the login and a data endpoint
(audio, timeline, fixture) answers 401, so no audio or transcript leaves without the key.

Every response under `/ui` (errors and 404s included) carries the security headers of
`SECURITY_HEADERS`, added by an ASGI wrapper around the whole app.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import app.ui.views as views
from app.forms import FormRefused, read_form
from app.observability import log_event
from app.operator_api import OperatorAuth
from app.store import BadCursor, CallStore, StoreUnavailable
from app.ui.recordings import (
    NO_AUDIO,
    NO_TEMP_DIR,
    NOT_STORED,
    TOO_LONG,
    Renderer,
    audio_kept,
    recording_path,
)
from app.ui.session import (
    COOKIE,
    COOKIE_PATH,
    HOME,
    SESSION_SECONDS,
    LoginLimiter,
    SessionSigner,
    safe_next,
    same_origin,
    secure_wanted,
)

logger = logging.getLogger("app.ui")

_HERE = Path(__file__).resolve().parent
#: Calls per page of the list.
PAGE_SIZE = 50
#: The longest `before` cursor taken (the store's cursors are far shorter).
MAX_CURSOR_CHARS = 512
#: A login form is a key and a path: anything bigger is not one.
LOGIN_MAX_BYTES = 4096
#: The pages use no script, no inline style and no data: URL (the SVG is drawn with
#: presentation attributes); the audio comes from this site.
CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; "
    "media-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
#: On every response under /ui: no framing, no sniffing, no caching of call data.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
)
_NAMES = {name for name, _ in SECURITY_HEADERS}
_FILTERS = ("number", "outcome", "since", "until")


class SecurityHeaders:
    """ASGI wrapper: sets `SECURITY_HEADERS` on every HTTP response of the app inside."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message["headers"] = [*kept, *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        sid=_path_segment,
        when=views.when,
        duration=views.duration,
        millis=views.millis,
        usage=views.usage,
    )
    return env


def _path_segment(value: object) -> str:
    """`value` quoted as one URL path segment (a `/` in a CallSid stays inside it)."""
    return quote(str(value), safe="")


def _utc(text: str) -> datetime:
    """A filter's time (`datetime-local`'s `2026-11-21T14:06`, or ISO 8601), UTC if naive."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class CallViewer:
    """The viewer's handlers, over one call store and one operator key."""

    def __init__(
        self,
        store: CallStore,
        auth: OperatorAuth,
        key: str,
        *,
        record_dir: Path | None,
        public_base_url: str | None = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        self.store = store
        self.auth = auth
        self.signer = SessionSigner(key)
        self.limiter = LoginLimiter()
        self.record_dir = record_dir
        self.public_base_url = public_base_url
        self.request_timeout_s = request_timeout_s
        self.renderer = Renderer()
        self.templates = _environment()
        self.css = (_HERE / "static" / "ui.css").read_bytes()

    # --- helpers -------------------------------------------------------------------------

    def signed_in(self, request: Request) -> bool:
        """Whether `request` carries the key: a valid session cookie, or the header."""
        if self.signer.valid(request.cookies.get(COOKIE)):
            return True
        header = request.headers.get("authorization")
        if header is None:
            return False
        if self.auth.allowed(header):
            return True
        self.auth.note_refusal(request)  # a wrong key, as the API logs it
        return False

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A rendered template."""
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    def error(self, status: int, heading: str, message: str) -> HTMLResponse:
        return self.page("error.html", status, heading=heading, message=message, signed_in=True)

    @staticmethod
    def to_login(request: Request) -> RedirectResponse:
        """303 to the login page, coming back here afterwards."""
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(safe_next(here), safe='/')}", 303)

    @staticmethod
    def unauthorized() -> Response:
        """A data endpoint's answer without the key (no Basic prompt: the page logs in)."""
        headers = {"WWW-Authenticate": 'Bearer realm="operator"'}
        return Response("a valid operator key is required\n", 401, headers, "text/plain")

    def unavailable(self, exc: Exception) -> HTMLResponse:
        log_event(logger, logging.ERROR, "ui.store_unavailable", error=type(exc).__name__)
        return self.error(503, "Call store unavailable", "The call store can't be reached now.")

    def forbidden_origin(self, request: Request) -> Response:
        log_event(
            logger,
            logging.WARNING,
            "ui.cross_origin_post",
            path=request.url.path,
            origin=request.headers.get("origin"),
        )
        return Response("cross-origin request refused\n", 403, media_type="text/plain")

    # --- login -----------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        """`GET /ui/login`: the form."""
        target = safe_next(request.query_params.get("next"))
        return self.page("login.html", next=target, error=None, signed_in=False)

    async def login(self, request: Request) -> Response:
        """`POST /ui/login`: check the key (constant time), set the session cookie."""
        if not same_origin(request, self.public_base_url):
            return self.forbidden_origin(request)
        client = request.client.host if request.client else "unknown"
        if (wait := self.limiter.retry_after(client)) is not None:
            log_event(logger, logging.WARNING, "ui.login_limited", retry_after_s=wait)
            headers = {"Retry-After": str(wait)}
            return Response("too many failed logins: try later\n", 429, headers, "text/plain")
        try:
            form = await read_form(request, LOGIN_MAX_BYTES, self.request_timeout_s)
        except FormRefused as refused:
            return Response(status_code=refused.status)
        target = safe_next(form.get("next"))
        key = form.get("key", "")
        if not key or not self.auth.allowed(f"Bearer {key}"):
            self.auth.note_refusal(request)
            self.limiter.failed(client)
            error = "That is not the operator key."
            return self.page("login.html", 401, next=target, error=error, signed_in=False)
        self.limiter.succeeded(client)
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            self.signer.issue(),
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            secure=secure_wanted(request, self.public_base_url),
            httponly=True,
            samesite="strict",
        )
        log_event(logger, logging.INFO, "ui.login")
        return response

    async def logout(self, request: Request) -> Response:
        """`POST /ui/logout`: clear the cookie, back to the login."""
        if not same_origin(request, self.public_base_url):
            return self.forbidden_origin(request)
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(
            COOKIE,
            path=COOKIE_PATH,
            secure=secure_wanted(request, self.public_base_url),
            httponly=True,
            samesite="strict",
        )
        return response

    async def stylesheet(self, _request: Request) -> Response:
        """`GET /ui/static/ui.css` (no key needed: the login page uses it)."""
        return Response(self.css, media_type="text/css")

    # --- pages -----------------------------------------------------------------------

    async def calls(self, request: Request) -> Response:
        """`GET /ui/`: the calls, newest first, filtered, a page at a time."""
        if not self.signed_in(request):
            return self.to_login(request)
        query = request.query_params
        filters = {name: query.get(name, "").strip()[:200] for name in _FILTERS}
        before = query.get("before") or None
        context: dict[str, Any] = {
            "filters": filters,
            "filtered": any(filters.values()),
            "paged": before is not None,
            "first_url": "/ui/?" + urlencode({k: v for k, v in filters.items() if v}),
            "calls": [],
            "next_url": None,
            "error": None,
            "signed_in": True,
        }
        if before is not None and len(before) > MAX_CURSOR_CHARS:
            context["error"] = "That page link is not valid: start from the newest."
            return self.page("calls.html", 400, **context)
        try:
            since = _utc(filters["since"]) if filters["since"] else None
            until = _utc(filters["until"]) if filters["until"] else None
        except ValueError:
            context["error"] = "Since and until must be dates and times (2026-11-21T14:06)."
            return self.page("calls.html", 400, **context)
        try:
            calls, cursor = await self.store.list_calls(
                limit=PAGE_SIZE,
                before=before,
                outcome=filters["outcome"] or None,
                number=filters["number"] or None,
                since=since,
                until=until,
            )
        except BadCursor:
            context["error"] = "That page link is not valid any more: start from the newest."
            return self.page("calls.html", 400, **context)
        except StoreUnavailable as exc:
            return self.unavailable(exc)
        context["calls"] = calls
        if cursor is not None:
            kept = {k: v for k, v in filters.items() if v}
            context["next_url"] = "/ui/?" + urlencode({**kept, "before": cursor})
        return self.page("calls.html", **context)

    async def _record(self, request: Request) -> dict[str, Any] | Response:
        """The record named by the path, or the error response to give instead."""
        try:
            record = await self.store.get(request.path_params["call_sid"])
        except StoreUnavailable as exc:
            return self.unavailable(exc)
        if record is None:
            return self.error(404, "No such call", "No call with that CallSid is on record.")
        return record

    async def call(self, request: Request) -> Response:
        """`GET /ui/calls/{call_sid}`: summary, transcript, timeline, audio, fixture."""
        if not self.signed_in(request):
            return self.to_login(request)
        record = await self._record(request)
        if isinstance(record, Response):
            return record
        turns = [views.turn_view(t) for t in record.get("turns") or [] if isinstance(t, dict)]
        context: dict[str, Any] = {
            "call": record,
            "turns": turns,
            "with_text": all(t.has_text for t in turns),
            "recording": None,
            "svg": None,
            "problem": None,
            "too_long": False,
            "has_audio": False,
            "signed_in": True,
        }
        path = await self._find(record)
        if path is not None:
            rendered = await self.renderer.svg(path)
            kept = False if rendered.too_long else await asyncio.to_thread(audio_kept, path)
            context.update(
                recording=path.name,
                # The viewer's own SVG (it escapes the text it draws); CSP allows no script.
                svg=Markup(rendered.svg) if rendered.svg else None,
                problem=rendered.problem,
                too_long=rendered.too_long,
                has_audio=kept,
            )
        return self.page("call.html", **context)

    async def _find(self, record: dict[str, Any]) -> Path | None:
        """The record's recording file (looked up in a worker thread), or None."""
        return await asyncio.to_thread(recording_path, self.record_dir, record.get("recording"))

    @staticmethod
    def too_long() -> Response:
        """413: the fixture is over `MAX_RENDER_BYTES`, the viewer does not render it."""
        return Response(f"{TOO_LONG}\n", 413, media_type="text/plain")

    # --- data endpoints ----------------------------------------------------------------

    async def _recording(self, request: Request) -> Path | Response:
        """The call's recording file, or the 401/404 to answer instead."""
        if not self.signed_in(request):
            return self.unauthorized()
        record = await self._record(request)
        if isinstance(record, Response):
            return Response("no such call\n", record.status_code, media_type="text/plain")
        path = await self._find(record)
        if path is None:
            return Response("no recording\n", 404, media_type="text/plain")
        return path

    async def fixture(self, request: Request) -> Response:
        """`GET /ui/calls/{call_sid}/fixture.jsonl`: the call fixture, as a download."""
        path = await self._recording(request)
        if isinstance(path, Response):
            return path
        return FileResponse(path, media_type="application/x-ndjson", filename=path.name)

    async def audio(self, request: Request) -> Response:
        """`GET /ui/calls/{call_sid}/audio.wav`: the call's audio (404 if none was kept)."""
        path = await self._recording(request)
        if isinstance(path, Response):
            return path
        rendered = await self.renderer.wav(path)
        if rendered.too_long:
            return self.too_long()
        if rendered.wav is None:
            if rendered.problem in (NO_TEMP_DIR, NOT_STORED):  # the server's, not the call's
                return Response(rendered.problem + "\n", 503, media_type="text/plain")
            return Response(NO_AUDIO + "\n", 404, media_type="text/plain")
        # A file, so that Range requests get 206 (seeking in the player).
        return FileResponse(rendered.wav, media_type="audio/wav")

    async def timeline(self, request: Request) -> Response:
        """`GET /ui/calls/{call_sid}/timeline.svg`: the call's timeline on its own."""
        path = await self._recording(request)
        if isinstance(path, Response):
            return path
        rendered = await self.renderer.svg(path)
        if rendered.too_long:
            return self.too_long()
        if rendered.svg is None:
            reason = rendered.problem or "no timeline"
            return Response(f"{reason}\n", 404, media_type="text/plain")
        return Response(rendered.svg, media_type="image/svg+xml")

    def app(self) -> ASGIApp:
        """The viewer as an ASGI app, to mount at `/ui`."""
        routes = [
            Route("/", self.calls, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/static/ui.css", self.stylesheet, methods=["GET"]),
            Route("/calls/{call_sid}", self.call, methods=["GET"]),
            Route("/calls/{call_sid}/fixture.jsonl", self.fixture, methods=["GET"]),
            Route("/calls/{call_sid}/audio.wav", self.audio, methods=["GET"]),
            Route("/calls/{call_sid}/timeline.svg", self.timeline, methods=["GET"]),
        ]
        return SecurityHeaders(Starlette(routes=routes))


async def _home(_request: Request) -> RedirectResponse:
    """`/ui` (outside the mount): to `/ui/`, with the viewer's headers."""
    headers = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}
    return RedirectResponse(HOME, 308, headers=headers)


def mount_ui(
    app: Starlette,
    store: CallStore,
    auth: OperatorAuth,
    key: str,
    *,
    record_dir: Path | None,
    public_base_url: str | None = None,
    request_timeout_s: float = 10.0,
) -> None:
    """Serve the call viewer under `/ui/` of `app` (only with an operator key: without
    one, `/ui/...` doesn't exist)."""
    viewer = CallViewer(
        store,
        auth,
        key,
        record_dir=record_dir,
        public_base_url=public_base_url,
        request_timeout_s=request_timeout_s,
    )
    app.add_route("/ui", _home, methods=["GET"], include_in_schema=False)
    app.mount("/ui", viewer.app(), name="ui")
