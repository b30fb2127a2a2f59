"""The HTTP side of outbound calls: `POST /calls` (operator key) and `POST /call-status`
(Twilio's status and answering-machine callbacks, signed like the voice webhook)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.forms import FormRefused, read_body
from app.limits import LimitHits
from app.metrics import Metrics
from app.outbound.calls import OutboundCalls
from app.outbound.request import Invalid, parse
from app.security import SignatureChecker, public_base_url
from app.settings import Settings
from app.webhooks import signed_params


class PlaceCallBody(BaseModel):
    """`POST /calls` (for the docs: the body is checked by `app.outbound.request`)."""

    to: str = Field(description="Whom to call (E.164).", examples=["+14155550123"])
    from_: str | None = Field(
        None, alias="from", description="Caller ID (E.164); default TWILIO_FROM_NUMBER."
    )
    agent: str | None = Field(None, description="An agent of the agents file; default its default.")
    instructions: str | None = Field(None, description="Replace the agent's (a template).")
    greeting: str | None = Field(None, description="Replace the agent's (a template).")
    context: dict[str, str | int | float | bool] | None = Field(
        None, description="Template values: {name} in instructions and greeting."
    )
    machine_detection: Literal["off", "hangup", "voicemail"] = "off"
    voicemail_message: str | None = Field(
        None, description="Said after the beep (machine_detection voicemail)."
    )


#: The largest request every field's own limit allows (instructions, greeting, voicemail,
#: 50 context values), with room for JSON's escapes.
_MAX_CALL_BODY = 256 * 1024


def _body_limit(settings: Settings) -> int:
    return max(settings.webhook_max_body_bytes, _MAX_CALL_BODY)


class PlacedCall(BaseModel):
    call_sid: str
    outbound_id: str
    status: str
    to: str
    from_: str = Field(alias="from")
    agent: str
    machine_detection: str


def place_route(
    router: APIRouter, calls: OutboundCalls, settings: Settings, metrics: Metrics
) -> None:
    """`POST /calls` on the operator router (its key check and its docs)."""

    @router.post(
        "/calls",
        status_code=201,
        response_model=PlacedCall,
        summary="Place an outbound call",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PlaceCallBody.model_json_schema()}},
            }
        },
        responses={
            403: {"description": "Destination outside OUTBOUND_ALLOWED_PREFIXES."},
            422: {"description": "Names each bad field."},
            429: {"description": "MAX_OUTBOUND_CALLS in flight."},
            502: {"description": "Twilio refused (`twilio_code`) or did not answer."},
        },
    )
    async def place_call(request: Request) -> Response:
        try:
            raw = await read_body(request, _body_limit(settings), settings.request_timeout_seconds)
        except FormRefused as refused:
            return JSONResponse(
                {"error": "bad_body", "detail": refused.reason}, status_code=refused.status
            )
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
            problems = [{"field": "request", "message": "the body must be JSON"}]
        else:
            problems = []
        if not problems:
            try:
                call = parse(body, default_from=settings.twilio_from_number, agents=calls.agents)
            except Invalid as invalid:
                problems = invalid.problems
        if problems:
            metrics.outbound_placed.labels("invalid").inc()
            return JSONResponse({"error": "invalid_request", "fields": problems}, status_code=422)
        try:
            base = public_base_url(settings.public_base_url, request.headers, request.url.scheme)
        except ValueError as exc:
            return JSONResponse({"error": "bad_request", "detail": str(exc)}, status_code=400)
        answer = await calls.place(call, base)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def status_route(
    app: FastAPI,
    calls: OutboundCalls,
    settings: Settings,
    checker: SignatureChecker,
    metrics: Metrics,
    hits: LimitHits,
) -> None:
    """`POST /call-status`: Twilio's status and AMD callbacks for the calls we placed."""

    @app.post("/call-status", include_in_schema=False)
    async def call_status(request: Request) -> Response:
        signed = await signed_params(
            request, settings=settings, checker=checker, metrics=metrics, hits=hits
        )
        if isinstance(signed, Response):
            return signed
        await calls.status(request.query_params.get("outbound"), signed.params)
        return Response(status_code=204)
