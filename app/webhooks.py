"""A Twilio webhook's parameters, read and checked the one way every webhook needs.

The body is read within its bounds (`app.forms`), the call's SID is bound to the log
context, the public URL is rebuilt (`PUBLIC_BASE_URL`, never the request's own) and the
`X-Twilio-Signature` is checked over it. The voice webhook (`/incoming-call`) and the
status callbacks (`/call-status`) both go through here, so a limit, a log line or a
metric of one is the other's too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from app.forms import FormRefused, read_form
from app.limits import LimitHits
from app.metrics import Metrics
from app.observability import bind_call, log_event
from app.security import SignatureChecker, public_base_url, public_url
from app.settings import Settings

logger = logging.getLogger("app.main")


@dataclass(frozen=True, slots=True)
class Signed:
    """A webhook that passed: its parameters, and the public base URL it was signed for."""

    params: dict[str, str]
    base: str


async def signed_params(
    request: Request,
    *,
    settings: Settings,
    checker: SignatureChecker,
    metrics: Metrics,
    hits: LimitHits,
) -> Signed | Response:
    """The webhook's parameters, or the refusal to answer with (413/408/400/403)."""
    try:
        params = await read_form(
            request, settings.webhook_max_body_bytes, settings.request_timeout_seconds
        )
    except FormRefused as refused:
        hits.hit("webhook_body", reason=refused.reason)
        metrics.webhooks.labels("refused_body").inc()
        return Response(status_code=refused.status)
    bind_call(call_sid=params.get("CallSid") or None)
    try:
        base = public_base_url(settings.public_base_url, request.headers, request.url.scheme)
    except ValueError as exc:
        log_event(logger, logging.WARNING, "webhook.bad_request", reason=str(exc))
        metrics.webhooks.labels("bad_request").inc()
        return Response(status_code=400)
    url = public_url(base, request.url.path, request.url.query)
    if not checker.check_webhook(url, params, request.headers.get("x-twilio-signature")):
        log_event(logger, logging.WARNING, "webhook.bad_signature", url=url)
        metrics.webhooks.labels("bad_signature").inc()
        return Response(status_code=403)
    return Signed(params, base)
