"""Shared fixtures: the real app served by uvicorn on a loopback socket, next to the fakes.

The listening socket is bound before uvicorn starts, so its port is known at once and a
client that connects early simply waits in the kernel's backlog: no polling for start-up.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from twilio.request_validator import RequestValidator

from app.main import create_app
from app.security import STREAM_TOKEN_PARAMETER, stream_token
from app.settings import Settings, load_settings
from app.store import CallStore
from tests.browser import BrowserMissing, Shots, chromium_path, launched, opened_page
from tests.fakes.realtime_server import FakeRealtime
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.pg import PgServer, PgUnavailable
from tests.store_support import OpenStore, StoreLog, capture_store_log, sqlite_url

AUTH_TOKEN = "test-auth-token-0123456789"
ACCOUNT_SID = "AC" + "a" * 32
API_KEY = "sk-test-key-0123456789"


#: Each test app's own SQLite call store (never the developer's `./data/`).
_STORES = Path(tempfile.mkdtemp(prefix="bridge-test-stores-"))
atexit.register(shutil.rmtree, _STORES, ignore_errors=True)


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test app: nothing read from the environment or a `.env`; a call
    store of its own (a fresh SQLite file) unless `database_url` is given."""
    values: dict[str, Any] = {"_env_file": None, "log_level": "DEBUG"}
    values["database_url"] = f"sqlite:///{_STORES / secrets.token_hex(8)}.db"
    values.update(overrides)
    return load_settings(**values)


@dataclass
class RunningApp:
    """The real app, served over loopback."""

    http_url: str
    ws_url: str
    settings: Settings
    public_base: str
    state: Any

    def sign_ws(self) -> dict[str, str]:
        """Headers Twilio would send on the media-stream upgrade."""
        token = self.settings.twilio_auth_token
        if token is None:
            return {}
        url = self.public_base.replace("https://", "wss://") + "/media-stream"
        sig = RequestValidator(token.get_secret_value()).compute_signature(url, {})
        return {"X-Twilio-Signature": sig}

    async def wait_idle(self, within: float = 10.0) -> None:
        """Wait until the app has no live call (every bridge has torn down and logged)."""
        async with asyncio.timeout(within):
            await self.state.idle.wait()

    def call(self, **kwargs: Any) -> FakeTwilioCall:
        """A fake Twilio media stream to this app, as Twilio would open it for a call the
        webhook answered: signed upgrade, the account's SID, the TwiML's `<Parameter>`s
        (including the per-call stream token)."""
        headers = {**self.sign_ws(), **kwargs.pop("headers", {})}
        call_sid = kwargs.pop("call_sid", None) or "CA" + secrets.token_hex(16)
        params = {"CallSid": call_sid, **kwargs.pop("custom_parameters", {})}
        token = self.settings.twilio_auth_token
        if self.settings.stream_token_enforced:
            params.setdefault(
                STREAM_TOKEN_PARAMETER, stream_token(token.get_secret_value(), call_sid, params)
            )
        if self.settings.twilio_account_sid:
            kwargs.setdefault("account_sid", self.settings.twilio_account_sid)  # as Twilio
        return FakeTwilioCall(
            self.ws_url, headers=headers, call_sid=call_sid, custom_parameters=params, **kwargs
        )


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[RunningApp]:
    """Serve `create_app(settings)` on 127.0.0.1 until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    application = create_app(settings)
    config = uvicorn.Config(application, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield RunningApp(
            http_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/media-stream",
            settings=settings,
            public_base=settings.public_base_url or f"http://127.0.0.1:{port}",
            state=application.state.bridge,
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


@pytest.fixture
async def realtime() -> AsyncIterator[FakeRealtime]:
    """A scripted OpenAI Realtime service on loopback."""
    async with FakeRealtime() as fake:
        yield fake


AppFactory = Callable[..., Any]


@pytest.fixture
async def app_with(realtime: FakeRealtime) -> AsyncIterator[AppFactory]:
    """Start the real app against the fake Realtime service, with settings overrides."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> RunningApp:
        values: dict[str, Any] = {
            "openai_api_key": API_KEY,
            "openai_realtime_url": realtime.url,
            "public_base_url": "https://bridge.example.com",
            "twilio_auth_token": AUTH_TOKEN,
        }
        values.update(overrides)
        cm = serve(make_settings(**values))
        running = await cm.__aenter__()
        stack.append(cm)
        return running

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test: no secret ever reaches a log record (checked on the rendered text)."""
    caplog.set_level(logging.DEBUG)
    yield
    text = "\n".join(
        f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.get_records("call")
    )
    for secret in (AUTH_TOKEN, API_KEY):
        assert secret not in text


# --- PostgreSQL (the call store's tests) ---------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (tests/pg.py), stopped by PID at the end.

    Never skipped: without the server binaries the tests fail, saying how to get them."""
    try:
        server = PgServer()
    except PgUnavailable as exc:
        pytest.fail(f"{exc}\n(`make test` installs PostgreSQL when it is missing)")
    try:
        server.start()
    except PgUnavailable as exc:
        server.close()
        pytest.fail(str(exc))
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server: `postgresql://postgres@.../test_N`."""
    return pg_server.create_database()


# --- A real browser (the call viewer's tests; tests/browser.py) ----------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the item (`item.rep_call`), for fixtures that act on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless chromium for the session (Debian's, never a download).

    Never skipped: without chromium the browser tests fail, saying how to get it."""
    try:
        path = chromium_path()
    except BrowserMissing as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        async with launched() as instance:
            yield instance
    except BrowserMissing as exc:  # pragma: no cover - raced removal
        pytest.fail(str(exc))
    except Exception as exc:
        if "Executable doesn't exist" in str(exc) or "Failed to launch" in str(exc):
            pytest.fail(f"chromium at {path} did not start: {exc}")
        raise


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A page in a fresh browser context, desktop-sized unless parametrized indirectly
    (`@pytest.mark.parametrize("page", ["phone"], indirect=True)`). A screenshot of where
    the test left it lands in its `tmp_path` (`last.png`, or `failed.png`), besides the ones
    the test takes with `page.shots.take(page, name)`; an uncaught script error fails it."""
    viewport = getattr(request, "param", "desktop")
    shots = Shots(tmp_path)
    async with opened_page(browser, viewport, shots) as opened:
        yield opened
        report = getattr(request.node, "rep_call", None)
        failed = report is None or report.failed
        try:
            await opened.screenshot(
                path=str(tmp_path / ("failed.png" if failed else "last.png")), full_page=True
            )
        except Exception as exc:  # a page that crashed: the test's own failure says more
            logging.getLogger(__name__).warning("no screenshot of %s: %s", request.node, exc)
        if opened.errors and not failed:
            pytest.fail(f"uncaught script errors on the page: {opened.errors}")


# -- the call store's tests: a database of each kind, the store's log lines --------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a database on the session's server."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store_log() -> Iterator[StoreLog]:
    with capture_store_log() as log:
        yield log


@pytest.fixture
async def open_store(db_url: str) -> AsyncIterator[OpenStore]:
    """Start stores on `db_url` (each must come up); all are closed at the end."""
    stores: list[CallStore] = []

    async def start(**options: Any) -> CallStore:
        store = CallStore(db_url, **options)
        stores.append(store)
        assert await store.start(timeout_s=10)
        assert store.available
        return store

    yield start
    for store in stores:
        await store.close()


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test's own, running; the test may stop and start it."""
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
