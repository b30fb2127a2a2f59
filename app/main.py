"""The ASGI application: Twilio's webhook, the media stream, health and readiness.

`uvicorn app.main:app` serves the product (and `python -m app`, `app/__main__.py`, which
also takes HOST and PORT from the settings); `app` is built on first access from the
environment (and `.env`), so importing this module has no side effects and tests build
their own apps with `create_app(settings)`. A wrong setting stops the process at start
with a message naming it. `startup.ready` is logged once uvicorn listens.

The application is a thin ASGI dispatcher (`BridgeApp`): the media-stream websocket goes
straight to its handler, with no framework object or middleware wrapped around each of
its 60-odd frames a second; everything else (webhook, health, lifespan) is a FastAPI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers

from app import ledger, server_guard, twiml
from app.admission import Admission
from app.agents import TEMPLATE_PARAMETERS, Agents, fill
from app.bridge import Bridge, BridgeLimits
from app.call.config import CallConfig
from app.call.session import CallSession
from app.lifecycle import Drain
from app.limits import LimitHits
from app.metrics import CONTENT_TYPE, Metrics
from app.observability import configure_logging, log_event, register_secret
from app.operator_api import (
    OperatorAuth,
    docs_routes,
    install_error_handlers,
    operator_router,
)
from app.outbound.calls import OutboundCalls
from app.outbound.routes import place_route, status_route
from app.realtime_socket import RealtimeEndpoint, RealtimeTransport, WebsocketTransport
from app.recording import CallRecorder, RecordingWriter, directory_problem
from app.records import DEFAULT_AGENT, model_of
from app.security import (
    MEDIA_STREAM_PATH,
    STREAM_TOKEN_PARAMETER,
    SignatureChecker,
    public_base_url,
    stream_token,
    stream_url,
)
from app.settings import Settings, SettingsError, load_settings
from app.store import CallStore, database_url, redacted
from app.telephony import Telephony
from app.tools.runner import ToolRunner
from app.twilio_socket import Receive, Send, TwilioSocket
from app.ui import mount_ui
from app.webhooks import signed_params

logger = logging.getLogger("app.main")

#: Call data passed to the media stream as `<Parameter>`s (never in the URL): what the
#: agents' instruction templates may use (`app.agents.templates`).
_STREAM_PARAMETERS = tuple(dict.fromkeys(("CallSid", "From", "To", *TEMPLATE_PARAMETERS)))
_XML = "application/xml"
#: On shutdown, how long pending call records may take to reach the database.
STORE_FLUSH_SECONDS = 10.0
#: At start, how long the call store may take to be reached and migrated.
STORE_START_SECONDS = 5.0
_TITLE = "Twilio <-> OpenAI Realtime bridge"


@dataclass(slots=True)
class AppState:
    """What the process knows across calls: live bridges, and whether it takes new ones."""

    settings: Settings
    call_config: CallConfig
    checker: SignatureChecker
    #: How calls reach the Realtime service (None: no OPENAI_API_KEY).
    transport: RealtimeTransport | None
    telephony: Telephony | None
    recordings: RecordingWriter | None
    admission: Admission
    #: Where finished calls are kept (README "Operating it").
    store: CallStore
    metrics: Metrics
    #: Who answers which number, and their tools (`AGENTS_FILE`; `app.agents`).
    agents: Agents
    #: The calls this process (and its replicas) placed (`POST /calls`).
    outbound: OutboundCalls | None = None
    #: Runs the agents' HTTP and Python tools (None: the agents have none).
    tool_runner: ToolRunner | None = None
    #: Refusals by limit (README "Security").
    hits: LimitHits = field(default_factory=LimitHits)
    calls: set[Bridge] = field(default_factory=set)
    #: Set whenever no call is live (drain and tests wait on it).
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    ready: bool = False
    draining: bool = False

    def agent_for(self, parameters: dict[str, str]) -> CallConfig:
        """A call's configuration, from its `start` parameters: its agent's."""
        return self.agents.for_call(parameters, self.call_config, datetime.now(UTC))

    def fill_secrets(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The `session.update` as sent: the MCP servers' `${ENV}` references filled in
        (the core, its recordings and its logs only ever hold the references)."""
        env = self.agents.env
        tools = msg.get("session", {}).get("tools")
        if not env or not tools:
            return msg
        filled = []
        for tool in tools:
            if tool.get("type") == "mcp":
                tool = dict(tool)
                if "headers" in tool:
                    tool["headers"] = {k: fill(v, env) for k, v in tool["headers"].items()}
                if "authorization" in tool:
                    tool["authorization"] = fill(tool["authorization"], env)
            filled.append(tool)
        return {**msg, "session": {**msg["session"], "tools": filled}}

    def books(self) -> dict[str, Any]:
        """Where a finished stream is accounted for (`app.ledger`)."""
        return {
            "hits": self.hits,
            "metrics": self.metrics,
            "store": self.store,
            "settings": self.settings,
            "signed": self.checker.enabled,
        }


class BridgeApp:
    """The product's ASGI application: media streams to `MediaStream`, the rest to FastAPI."""

    def __init__(self, api: FastAPI, media: MediaStream) -> None:
        self.api = api
        self.media = media
        self.state = api.state

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == MEDIA_STREAM_PATH:
            await self.media(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            self._guard_server(receive)
        await self.api(scope, receive, send)  # type: ignore[arg-type]

    def _guard_server(self, receive: Receive) -> None:
        """Apply the connection limits to the uvicorn server we start in (before it
        accepts a connection), or warn that the server must apply them."""
        state: AppState = self.state.bridge
        settings = state.settings
        config = server_guard.uvicorn_config(receive)
        if config is None:
            log_event(
                logger,
                logging.WARNING,
                "startup.warning",
                detail="not served by uvicorn: connection limits (MAX_CONNECTIONS, "
                "REQUEST_TIMEOUT_SECONDS, TWILIO_MAX_FRAME_BYTES) are the server's to apply",
            )
            return
        server_guard.guard(
            config,
            max_connections=settings.connection_limit,
            max_calls=settings.max_concurrent_calls,
            request_timeout_s=settings.request_timeout_seconds,
            max_frame_bytes=settings.twilio_max_frame_bytes,
            hits=state.hits,
        )


def create_app(
    settings: Settings | None = None, *, transport: RealtimeTransport | None = None
) -> BridgeApp:
    """Build the application for `settings` (default: from the environment).

    `transport` replaces the websocket to the Realtime service (tests drive the whole app
    in-process with a double, `tests/fakes/realtime_transport.py`)."""
    settings = settings if settings is not None else load_settings()
    configure_logging(
        settings.log_format, settings.log_level, max_field_chars=settings.log_max_field_chars
    )
    for secret in settings.secret_values():
        register_secret(secret)
    agents = Agents.from_settings(settings)  # a bad AGENTS_FILE: SettingsError (exit 2)
    for secret in agents.secrets():
        register_secret(secret)
    if settings.record_dir is not None and (problem := directory_problem(settings.record_dir)):
        # Refused at start, like a bad value: otherwise every call's recording would fail.
        got = str(settings.record_dir)
        raise SettingsError([f"invalid setting RECORD_DIR: {problem} (got {got!r})"])
    key = settings.openai_api_key
    if transport is None and key is not None:
        endpoint = RealtimeEndpoint(
            settings.openai_realtime_url,
            key.get_secret_value(),
            max_message_bytes=settings.realtime_max_frame_bytes,
        )
        transport = WebsocketTransport(endpoint)
    raw_url = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        store_url = database_url(raw_url)
    except ValueError as exc:
        raise SettingsError([f"invalid setting DATABASE_URL: {exc}"]) from None
    state = AppState(
        settings=settings,
        call_config=CallConfig.from_settings(settings),
        checker=SignatureChecker(settings.twilio_auth_token),
        transport=transport,
        telephony=_telephony(settings),
        recordings=RecordingWriter(settings.record_dir) if settings.record_dir else None,
        admission=Admission(
            settings.max_concurrent_calls,
            auth_token=token.get_secret_value() if (token := settings.twilio_auth_token) else None,
            account_sid=settings.twilio_account_sid,
            require_token=settings.stream_token_enforced,
        ),
        store=CallStore(
            store_url,
            retry_seconds=settings.call_records_retry_seconds,
            retention_days=settings.call_records_retention_days,
        ),
        metrics=Metrics(_version()),
        agents=agents,
    )
    if agents.executors:
        signing = settings.tools_signing_secret
        state.tool_runner = ToolRunner(
            agents.executors, signing.get_secret_value() if signing else None
        )
    metrics = state.metrics
    state.outbound = OutboundCalls(
        settings=settings,
        store=state.store,
        telephony=state.telephony,
        agents=agents,
        metrics=metrics,
        base_config=state.call_config,
    )
    metrics.read_limit_hits(state.hits.counts)
    metrics.read_calls(
        lambda: len(state.calls), lambda: len(state.admission.calls), settings.max_concurrent_calls
    )
    metrics.read_ready(lambda: state.ready and not state.draining and not state.admission.full)
    metrics.read_store(lambda: state.store)
    operator_key = settings.operator_api_key
    auth = OperatorAuth(operator_key.get_secret_value() if operator_key else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log_event(logger, logging.INFO, "store.opening", url=redacted(store_url))
        # Migrations before the first call, but a database that is down must not keep the
        # process from taking calls: past the wait, the writer retries in the background.
        await state.store.start(STORE_START_SECONDS)
        for warning in [*settings.warnings(), *agents.warnings]:
            log_event(logger, logging.WARNING, "startup.warning", detail=warning)
        server = server_guard.uvicorn_server()  # before the drain takes its SIGTERM handler
        drain = Drain(state, settings.shutdown_drain_seconds)
        drain.install()
        state.ready = True
        state.idle.set()
        announce = None
        if server is None:
            _log_ready(state)
        else:
            announce = asyncio.create_task(_ready_when_listening(state, server))
        yield
        if announce is not None:
            announce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announce
        drain.uninstall()
        state.ready = False
        if state.recordings is not None:
            state.recordings.stop()
        await state.store.close(STORE_FLUSH_SECONDS)  # a rolling deploy loses no record
        if state.tool_runner is not None:
            await state.tool_runner.aclose()

    # No redirect from `/incoming-call/`: its `Location` would be built from the Host
    # header, and Twilio doesn't follow a POST redirect anyway.
    # The docs describe the operator API only, and only to whoever has its key.
    app = FastAPI(
        title=_TITLE,
        version=_version(),
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.bridge = state
    install_error_handlers(app)
    if auth.enabled:
        router = operator_router(state.store, auth)
        place_route(router, state.outbound, settings, metrics)
        app.include_router(router)
        docs_routes(app, router, auth, _TITLE)
    if auth.enabled and operator_key is not None:  # the call viewer (README "Operating it")
        mount_ui(
            app,
            state.store,
            auth,
            operator_key.get_secret_value(),
            record_dir=settings.record_dir,
            public_base_url=settings.public_base_url,
            request_timeout_s=settings.request_timeout_seconds,
        )

    status_route(app, state.outbound, settings, state.checker, metrics, state.hits)

    @app.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        """Prometheus' scrape (the operator key when one is set)."""
        if auth.enabled:
            auth.check(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """503 while starting, draining, or full (MAX_CONCURRENT_CALLS): a load balancer
        then sends new calls to a replica with room instead of one that answers busy."""
        ok = state.ready and not state.draining
        status = "ready" if ok else "not_ready"
        if ok and state.admission.full:
            ok, status = False, "full"
        body = {"status": status, "calls": len(state.calls)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/incoming-call")
    async def incoming_call(request: Request) -> Response:
        signed = await signed_params(
            request, settings=settings, checker=state.checker, metrics=metrics, hits=state.hits
        )
        if isinstance(signed, Response):
            return signed
        params, base = signed.params, signed.base
        if not params.get("CallSid"):
            log_event(logger, logging.WARNING, "webhook.missing_call_sid")
        if state.transport is None:
            log_event(logger, logging.WARNING, "webhook.apology", reason="no OPENAI_API_KEY")
            metrics.webhooks.labels("apology").inc()
            ledger.turned_away(params, "failure", "no_openai_key", **state.books())
            return Response(twiml.apology(settings.apology_message), media_type=_XML)
        if state.admission.full:
            state.hits.hit("calls", limit_value=settings.max_concurrent_calls)
            log_event(logger, logging.WARNING, "webhook.busy", calls=len(state.admission.calls))
            document = twiml.busy(settings.fallback_message, settings.fallback_number)
            metrics.webhooks.labels("busy").inc()
            detail = "fallback_number" if settings.fallback_number else "at_capacity"
            ledger.turned_away(params, "busy", detail, **state.books())
            return Response(document, media_type=_XML)
        log_event(logger, logging.INFO, "webhook.incoming_call", caller=params.get("From"))
        parameters = twiml.stream_parameters(
            {name: params.get(name, "") for name in _STREAM_PARAMETERS}
        )
        token = settings.twilio_auth_token
        if settings.stream_token_enforced and token is not None and params.get("CallSid"):
            # Over the parameters as the TwiML carries them: a `start` that changes the
            # caller's number or the dialled one (which picks the agent) is refused.
            parameters[STREAM_TOKEN_PARAMETER] = stream_token(
                token.get_secret_value(), params["CallSid"], parameters
            )
        document = twiml.connect_stream(
            stream_url(base),
            parameters,
            settings.fallback_message,
            settings.fallback_number,
        )
        metrics.webhooks.labels("connect").inc()
        return Response(document, media_type=_XML)

    return BridgeApp(app, MediaStream(state))


class MediaStream:
    """`WS /media-stream`, a raw ASGI handler: check the upgrade, then run one call."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        state, settings = self.state, self.state.settings
        socket = TwilioSocket(receive, send)
        headers = Headers(scope=scope)
        try:
            base = public_base_url(settings.public_base_url, headers, scope.get("scheme", "ws"))
        except ValueError as exc:
            log_event(logger, logging.WARNING, "stream.bad_request", reason=str(exc))
            await socket.refuse()
            return
        url = stream_url(base)
        if not state.checker.check_websocket(url, headers.get("x-twilio-signature")):
            log_event(logger, logging.WARNING, "stream.bad_signature", url=url)
            state.metrics.streams_refused.labels("bad_signature").inc()
            await socket.refuse()  # before accept: the upgrade is refused (403)
            return
        ticket = state.admission.open_stream()
        if ticket is None:
            state.hits.hit("calls", limit_value=settings.max_concurrent_calls)
            log_event(logger, logging.WARNING, "stream.refused", reason="at_capacity")
            state.metrics.streams_refused.labels("at_capacity").inc()
            await socket.refuse()
            return
        await socket.accept()
        if state.transport is None:
            log_event(logger, logging.WARNING, "stream.refused", reason="no OPENAI_API_KEY")
            state.metrics.streams_refused.labels("no_openai_key").inc()
            await socket.aclose()
            return
        recorder = None
        if state.recordings is not None:
            recorder = CallRecorder(
                state.recordings,
                state.call_config,
                settings.record_audio,
                max_bytes=settings.record_max_bytes,
                secrets=state.agents.secrets(),
            )
        bridge = Bridge(
            socket,
            CallSession(state.call_config),
            state.transport,
            telephony=state.telephony,
            verify_start=ticket,
            recorder=recorder,
            log_transcripts=settings.log_transcripts,
            limits=BridgeLimits.from_settings(settings),
            meter=state.metrics.observe,
            call_facts={"agent": DEFAULT_AGENT, "model": model_of(settings.openai_realtime_url)},
            configure=state.agent_for,
            tools=state.tool_runner,
            outgoing=state.fill_secrets,
            outbound=state.outbound,
        )
        state.calls.add(bridge)
        state.idle.clear()
        try:
            await bridge.run()
        finally:
            state.calls.discard(bridge)
            # A stream its outbound call's settings refused is no call either.
            admitted = ticket.call_sid is not None and bridge.refused is None
            ticket.release()  # the CallSid it took, before anyone waiting for idle looks
            try:
                ledger.stream_over(
                    bridge, admitted=admitted, close_code=socket.close_code, **state.books()
                )
            finally:  # whatever happened: a drain waiting for idle must not wait in vain
                if not state.calls:
                    state.idle.set()  # after the record is queued: the drain flushes it


def _log_ready(state: AppState, **where: object) -> None:
    log_event(
        logger,
        logging.INFO,
        "startup.ready",
        **where,
        tools=",".join(state.call_config.tools) or "none",
        signatures="on" if state.checker.enabled else "off",
    )


async def _ready_when_listening(state: AppState, server: Any) -> None:
    """Log `startup.ready` once uvicorn listens, with the address it bound.

    uvicorn runs the lifespan's startup before it binds its sockets: logged at the end of
    the startup, `startup.ready` would come before an `Errno 98` (port in use) and an exit.
    On a bind failure this task is cancelled by the lifespan's shutdown, never logging."""
    _log_ready(state, **await server_guard.wait_listening(server))


def _version() -> str:
    try:
        return importlib.metadata.version("twilio-realtime-bridge")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _telephony(settings: Settings) -> Telephony | None:
    if settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        return None
    return Telephony(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        settings.twilio_api_base_url,
    )


def default_app() -> BridgeApp:
    """The product's app, from the environment and `.env` (read once, here): what
    `uvicorn app.main:app` and `python -m app` serve. A bad setting (a RECORD_DIR that
    can't take files included) exits with code 2 and a message naming it."""
    try:
        application = create_app()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Everything imported and built so far lives as long as the process: moved out of the
    # garbage collector's sight, so its full collections only walk the calls' own objects.
    # Measured at 400 calls (../shared/perf): the longest pause fell from 130 to 39 ms, a
    # gap every call would hear. (Not in `create_app`: tests build many apps per process.)
    gc.collect()
    gc.freeze()
    return application


def __getattr__(name: str) -> BridgeApp:
    """`app.main:app` is created on first access (PEP 562), not at import."""
    if name == "app":
        application = default_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
