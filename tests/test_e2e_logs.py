"""What the server writes, and when, as an operator sees it: the real server as a process.

`uvicorn app.main:app` (the product's contract) and `python -m app` (`make run`) run as
subprocesses on loopback, and every line they write (stdout and stderr, merged) is read:
with LOG_FORMAT=json each one must be JSON, uvicorn's included; probes' access lines are
DEBUG; `startup.ready` comes only once the port is bound; a RECORD_DIR that can't take
files, or a bad setting, stops the process with code 2. Nothing sleeps to synchronise:
the tests wait on the lines themselves (`startup.ready` means the port listens) and on
the process's exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.fakes.watch import Watch

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "https://bridge.example.com"
#: The servers' TWILIO_AUTH_TOKEN, a registered secret. Not conftest's AUTH_TOKEN: this
#: process's own client logs the URLs it requests, and the suite checks those never hold it.
AUTH_TOKEN = "e2e-logs-auth-token-4242"
UVICORN = ("-m", "uvicorn", "app.main:app", "--log-level", "info", "--host", "127.0.0.1")
_KV_LINE = re.compile(r"ts=\S+Z level=(debug|info|warning|error|critical) logger=\S+ .*")


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick; it can't be handed over here, as
    the server must bind it itself for the tests that are about binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Output:
    """The lines a server process writes, read as they come, to wait on and check."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.ended = False
        self._watch = Watch()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            self._watch.notify()
        self.ended = True
        self._watch.notify()

    def records(self) -> list[dict[str, Any]]:
        """Every line as JSON (fails the test on the first line that is not)."""
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\nall output:\n" + "\n".join(self.lines))
        return out

    async def wait_line(self, pred: Callable[[str], bool], what: str, within: float = 20) -> str:
        def find() -> str | None:
            found = next((line for line in self.lines if pred(line)), None)
            if found is None and self.ended:
                raise AssertionError(f"exited without {what}:\n" + "\n".join(self.lines))
            return found

        line: str = await self._watch.wait(find, within, what)
        return line

    async def wait_event(self, name: str, level: str | None = None) -> dict[str, Any]:
        """The first JSON line with `event` `name` (and `level`, if given)."""

        def match(line: str) -> bool:
            try:
                record = json.loads(line)
            except ValueError:
                return False
            return record.get("event") == name and level in (None, record.get("level"))

        return json.loads(await self.wait_line(match, f"event {name}"))  # type: ignore[no-any-return]

    async def finish(self, within: float = 20) -> int:
        """Wait for the process to exit and for its last line; its exit code."""
        code = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.wait_for(self._reader, within)
        return code

    async def stop(self) -> int:
        """SIGTERM (the drain, with no call live, exits at once), then `finish`."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.finish()


@asynccontextmanager
async def running(args: tuple[str, ...], cwd: Path, **env: str) -> AsyncIterator[Output]:
    """`python *args` in `cwd` with only `env` set (and PATH, PYTHONPATH): no developer's
    .env or settings reach it. Killed at the end if it is still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = Output(proc)
    try:
        yield output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        output._reader.cancel()


def signed_upgrade() -> dict[str, str]:
    """The media-stream upgrade's headers as Twilio signs them (PUBLIC_BASE_URL=PUBLIC)."""
    url = PUBLIC.replace("https", "wss") + "/media-stream"
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, {})}


async def open_and_close_streams(port: int) -> None:
    """A signed media stream that the app accepts and, with no OPENAI_API_KEY, ends; then
    an unsigned one, refused (403)."""
    url = f"ws://127.0.0.1:{port}/media-stream"
    async with connect(url, additional_headers=signed_upgrade()) as ws:
        await asyncio.wait_for(ws.wait_closed(), 10)
    with pytest.raises(InvalidStatus):
        await connect(url)


def index(records: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> int:
    return next(i for i, record in enumerate(records) if pred(record))


def running_on(record: dict[str, Any]) -> bool:
    return str(record.get("msg", "")).startswith("Uvicorn running on")


# --- 1, 2, 3: JSON lines, probes at DEBUG, ready once bound ------------------------------


async def test_with_json_every_line_is_json_and_probes_log_nothing_at_info(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {"LOG_FORMAT": "json", "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": PUBLIC}
    async with running((*UVICORN, "--port", str(port)), tmp_path, **env) as out:
        ready = await out.wait_event("startup.ready")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            # A query string carrying a registered secret: masked like anywhere else.
            assert (await client.get(f"/no-such-page?token={AUTH_TOKEN}")).status_code == 404
        await open_and_close_streams(port)
        await out.wait_event("stream.bad_signature")
        assert await out.stop() == 0
    records = out.records()

    uvicorns = [r for r in records if r["logger"].startswith("uvicorn")]
    assert uvicorns and all("event" in r for r in uvicorns), uvicorns
    assert {r["level"] for r in records} <= {"info", "warning"}, records
    assert ready["host"] == "127.0.0.1" and ready["port"] == port
    # 3: ready only once uvicorn listens (it logs "Uvicorn running on" right after binding).
    assert index(records, running_on) < index(records, lambda r: r.get("event") == "startup.ready")

    access = [r for r in records if r.get("event") == "http.access"]
    [page] = access  # 2: no line for either probe at INFO
    assert page["logger"] == "uvicorn.access" and page["level"] == "info"
    assert page["client"].startswith("127.0.0.1:") and page["method"] == "GET"
    assert page["path"] == "/no-such-page?token=***" and page["status"] == 404
    assert page["http_version"] == "1.1" and "msg" not in page
    assert AUTH_TOKEN not in "\n".join(out.lines)

    accepted, refused = [r for r in records if r.get("event") == "ws.access"]
    assert accepted["path"] == "/media-stream" and accepted["status"] == "accepted"
    assert accepted["msg"].endswith('"WebSocket /media-stream" [accepted]')
    assert refused["status"] == 403 and refused["client"].startswith("127.0.0.1:")
    server_lines = {
        re.sub(r" \[\d+\]$", "", r["msg"]) for r in records if r.get("event") == "server.log"
    }
    assert {
        "Started server process",
        "Waiting for application startup.",
        "connection open",  # the websocket library's, on uvicorn's logger
        "Finished server process",
    } <= server_lines, server_lines


async def test_at_debug_the_probes_access_lines_are_there_at_debug(tmp_path: Path) -> None:
    port = free_port()
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "debug"}
    async with running((*UVICORN, "--port", str(port)), tmp_path, **env) as out:
        await out.wait_event("startup.ready")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz?from=lb")).status_code == 200
            assert (await client.get("/elsewhere")).status_code == 404
        await out.wait_line(lambda line: "/elsewhere" in line, "the 404's access line")
        assert await out.stop() == 0
    access = {r["path"]: r["level"] for r in out.records() if r.get("event") == "http.access"}
    assert access == {"/healthz": "debug", "/readyz?from=lb": "debug", "/elsewhere": "info"}


async def test_in_kv_uvicorns_lines_are_kv_events_too(tmp_path: Path) -> None:
    port = free_port()
    async with running((*UVICORN, "--port", str(port)), tmp_path, LOG_FORMAT="kv") as out:
        await out.wait_line(lambda line: " event=startup.ready " in line, "startup.ready")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/nope")).status_code == 404
        await out.wait_line(lambda line: "path=/nope" in line, "the 404's access line")
        assert await out.stop() == 0
    assert all(_KV_LINE.fullmatch(line) for line in out.lines), out.lines
    [page] = [line for line in out.lines if "event=http.access" in line]
    assert re.search(
        r" level=info logger=uvicorn\.access event=http\.access client=127\.0\.0\.1:\d+ "
        r"method=GET path=/nope http_version=1\.1 status=404$",
        page,
    ), page
    ready = next(i for i, line in enumerate(out.lines) if " event=startup.ready " in line)
    running_line = next(i for i, line in enumerate(out.lines) if "Uvicorn running on" in line)
    assert running_line < ready
    assert f" host=127.0.0.1 port={port} " in out.lines[ready]
    assert 'event=server.log msg="Uvicorn running on' in out.lines[running_line]


async def test_a_port_in_use_exits_non_zero_without_startup_ready(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        async with running((*UVICORN, "--port", str(port)), tmp_path, LOG_FORMAT="json") as out:
            code = await out.finish()
    records = out.records()
    assert code != 0
    assert not [r for r in records if r.get("event") == "startup.ready"], records
    [error] = [r for r in records if r["level"] == "error"]
    assert error.get("event") == "server.log" and "address already in use" in error["msg"]


# --- 4: an unusable RECORD_DIR is refused at start ----------------------------------------


async def test_a_record_dir_that_cannot_be_created_stops_the_start_with_code_2(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    record_dir = blocker / "recordings"
    port = free_port()
    env = {"LOG_FORMAT": "json", "RECORD_DIR": str(record_dir)}
    async with running((*UVICORN, "--port", str(port)), tmp_path, **env) as out:
        code = await out.finish()
    assert code == 2
    text = "\n".join(out.lines)
    assert (
        f"configuration error: invalid setting RECORD_DIR: cannot be created (Not a directory) "
        f"(got {str(record_dir)!r})"
    ) in text
    assert "startup.ready" not in text and "Uvicorn running" not in text


# --- 5: python -m app, on HOST and PORT from .env ------------------------------------------


async def test_the_launcher_serves_on_host_and_port_from_dotenv(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"HOST=127.0.0.1\nPORT={port}\nLOG_FORMAT=json\n")
    async with running(("-m", "app"), tmp_path) as out:
        ready = await out.wait_event("startup.ready")
        assert (ready["host"], ready["port"]) == ("127.0.0.1", port)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.json() == {"status": "ok"}
        assert await out.stop() == 0
    records = out.records()  # the launcher's lines are all ours too: no `Loading environment`
    assert index(records, running_on) < index(records, lambda r: r.get("event") == "startup.ready")
    assert [r["path"] for r in records if r.get("event") == "http.access"] == []  # a probe


async def test_the_launcher_refuses_a_bad_setting_with_code_2(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=70000\n")
    async with running(("-m", "app"), tmp_path) as out:
        assert await out.finish() == 2
    assert any(
        line.startswith("configuration error: invalid setting PORT:") for line in out.lines
    ), out.lines
