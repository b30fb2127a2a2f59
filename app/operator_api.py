"""The operator API: call records and metrics over HTTP, behind OPERATOR_API_KEY.

`GET /calls` (newest first, filtered, paged by an opaque cursor) and `GET /calls/{CallSid}`
answer from the call store (`app.store`); `GET /metrics` is Prometheus' scrape. The key
goes in `Authorization: Bearer <key>`; a browser can send it as Basic auth's password
(any user name), which is how `/docs` works: the browser asks for it once and sends it
with the page's own request for `/openapi.json`. Keys are compared in constant time, and
a wrong key is answered exactly like a missing one.

Without a key configured the operator API and its docs don't exist (404; a start-up
warning says so) and `/metrics` is open, as a scrape inside a private network expects.

Errors are JSON, `{"error": <code>, "detail": <text>}`, and a 422 names each bad field:
`{"error": "invalid_request", "fields": [{"field": "limit", "message": "..."}]}`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.limits import power_of_two
from app.observability import log_event
from app.store import BadCursor, CallStore, StoreUnavailable

logger = logging.getLogger("app.operator")

_BEARER = "bearer "
#: Calls per page at most: a page is encoded on the event loop the live calls share (a
#: long call's record is tens of KB), so a page stays a few MB, a few ms of orjson.
MAX_PAGE = 200
_BEFORE = "The `next` of a previous page."
_NUMBER = "The caller's or the dialled number (E.164)."
_SINCE = "Started at or after (ISO 8601; UTC when no offset)."
_UNTIL = "Started before (ISO 8601; UTC when no offset)."
_BASIC = "basic "


class OperatorError(Exception):
    """An operator API request answered with a JSON error."""

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class OperatorAuth:
    """Checks the operator key of a request (None: no key configured, nothing allowed)."""

    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else None
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def allowed(self, authorization: str | None) -> bool:
        """Whether the `Authorization` header carries the key (Bearer, or Basic's password)."""
        if self._key is None or not authorization:
            return False
        lowered = authorization[:7].lower()
        if lowered.startswith(_BEARER):
            given = authorization[len(_BEARER) :].strip().encode()
        elif lowered.startswith(_BASIC):
            try:
                decoded = base64.b64decode(authorization[len(_BASIC) :].strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]
        else:
            return False
        return hmac.compare_digest(given, self._key)

    def note_refusal(self, request: Request) -> None:
        """Count a refused request and log it (the 1st, 2nd, 4th... one): shared with the
        call viewer's login (`app.ui`), so a wrong key there is logged like one here."""
        self.refused += 1
        if power_of_two(self.refused):
            client = request.client.host if request.client else None
            log_event(
                logger,
                logging.WARNING,
                "operator.unauthorized",
                path=request.url.path,
                client=client,
                count=self.refused,
            )

    def check(self, request: Request, *, browser: bool = False) -> None:
        """Raise a 401 unless `request` carries the key. `browser`: ask for Basic auth,
        so a browser prompts for it (the docs page)."""
        if self.allowed(request.headers.get("authorization")):
            return
        self.note_refusal(request)
        scheme = 'Basic realm="operator", charset="UTF-8"' if browser else 'Bearer realm="operator"'
        raise OperatorError(
            401, "unauthorized", "a valid operator key is required", {"WWW-Authenticate": scheme}
        )


# -- response shapes (documentation of what /calls returns) ---------------------------------


class Turn(BaseModel):
    """One turn: the caller's, or the bot's with what was said and what was heard."""

    model_config = ConfigDict(extra="allow")
    who: Literal["caller", "bot"]
    text: str | None = Field(None, description="Absent with STORE_TRANSCRIPTS=false.")
    heard_text: str | None = Field(
        None, description="Bot: the said text cut at the heard share (an estimate)."
    )
    sent_ms: int | None = Field(None, description="Bot: audio sent to the caller.")
    heard_ms: int | None = Field(None, description="Bot: audio the caller heard (mark echoes).")
    interrupted: bool | None = Field(None, description="Bot: cut off by a barge-in.")


class CallRecord(BaseModel):
    """A finished call (CONTRACT.md "Call records"; README "Operating it" lists every field)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    call_sid: str
    direction: Literal["inbound", "outbound"]
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    agent: str
    started_at: str = Field(description="ISO 8601 UTC")
    ended_at: str = Field(description="ISO 8601 UTC")
    duration_s: float
    outcome: str
    end_detail: str | None
    barge_ins: int
    barge_in_reaction_ms: list[int] = []
    response_latency_ms: list[int] = []
    heard_latency_ms: int | None = Field(None, description="Median of response_latency_ms.")
    turns: list[Turn]
    usage: dict[str, int]
    tool_calls: list[dict[str, Any]]
    answered_by: str | None = None
    recording: str | None = None


class CallPage(BaseModel):
    calls: list[CallRecord]
    next: str | None = Field(description="Pass as `before` for the next (older) page.")


class ErrorBody(BaseModel):
    error: str
    detail: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No key, or a wrong one."},
    503: {"model": ErrorBody, "description": "The call store can't be reached."},
}


# -- routes ---------------------------------------------------------------------------------


def _utc(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def operator_router(store: CallStore, auth: OperatorAuth) -> APIRouter:
    """`/calls` and `/calls/{call_sid}`, answering from `store`."""

    def require_key(request: Request) -> None:
        auth.check(request)

    router = APIRouter(dependencies=[Depends(require_key)], responses=_ERRORS, tags=["calls"])

    @router.get("/calls", response_model=CallPage, summary="List finished calls, newest first")
    async def list_calls(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Calls per page.")] = 50,
        before: Annotated[str | None, Query(description=_BEFORE)] = None,
        outcome: Annotated[str | None, Query(description="e.g. caller_hung_up")] = None,
        number: Annotated[str | None, Query(description=_NUMBER)] = None,
        from_number: Annotated[str | None, Query(alias="from")] = None,
        to_number: Annotated[str | None, Query(alias="to")] = None,
        since: Annotated[datetime | None, Query(description=_SINCE)] = None,
        until: Annotated[datetime | None, Query(description=_UNTIL)] = None,
        direction: Literal["inbound", "outbound"] | None = None,
        agent: str | None = None,
    ) -> Response:
        try:
            calls, cursor = await store.list_calls(
                limit=limit,
                before=before,
                outcome=outcome,
                number=number,
                from_number=from_number,
                to_number=to_number,
                since=_utc(since),
                until=_utc(until),
                direction=direction,
                agent=agent,
            )
        except BadCursor:
            raise _invalid("before", "not a cursor from a previous page") from None
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        return _json({"calls": calls, "next": cursor})

    @router.get(
        "/calls/{call_sid}",
        response_model=CallRecord,
        responses={404: {"model": ErrorBody, "description": "No such call."}},
        summary="One call's record",
    )
    async def get_call(call_sid: str) -> Response:
        try:
            record = await store.get(call_sid)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        if record is None:
            raise OperatorError(404, "not_found", "no call with that CallSid")
        return _json(record)

    return router


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": message}])


def _unavailable(exc: Exception) -> OperatorError:
    log_event(logger, logging.ERROR, "operator.store_unavailable", error=type(exc).__name__)
    return OperatorError(503, "store_unavailable", "the call store can't be reached now")


def docs_routes(app: FastAPI, router: APIRouter, auth: OperatorAuth, title: str) -> None:
    """`/openapi.json` and `/docs` for the operator API only, behind the key."""
    schema: dict[str, Any] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        auth.check(request, browser=True)
        if not schema:
            schema.update(
                get_openapi(
                    title=f"{title}: operator API",
                    version=app.version,
                    description=__doc__.split("\n\n")[1],
                    routes=router.routes,
                )
            )
        return JSONResponse(schema)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        auth.check(request, browser=True)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title}: operator API")


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors for the operator API (and every other route's validation errors)."""

    async def operator_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OperatorError)
        body = {"error": exc.error, "detail": exc.detail}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "path")]
            fields.append({"field": ".".join(loc) or "request", "message": error.get("msg", "")})
        body = {"error": "invalid_request", "fields": fields}
        return JSONResponse(body, status_code=422)

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        OperatorError: operator_error,
        RequestValidationError: invalid,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
