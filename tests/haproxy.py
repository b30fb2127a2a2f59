"""HAProxy for tests: the deploy's own balancer config, on loopback, stopped by PID.

Why a real balancer: what a rolling deploy needs of it (health checks on `/readyz` taking a
draining replica out while its websockets go on, webhooks and media streams of one call
landing on different replicas, a refused connection retried elsewhere) is HAProxy's
behaviour, not ours, and only the real thing shows ours works with it.

- The config is `deploy/compose/haproxy.cfg`, the file compose runs, with exactly three
  changes: the `bind` takes a listening socket the test made (`fd@N`, so its port is known
  without a race), the `server-template` over Docker's DNS becomes one `server` line per
  loopback slot, and the `resolvers docker` section goes (no Docker DNS here). A global
  `stats socket` is added to read each server's state (`show stat`). Every other line
  (timeouts, checks, balancing, retries) is the deploy's: if the file stops having the lines
  replaced here, `balancer_config` fails rather than testing some other config.
- `haproxy -db` runs in the foreground as our child, so its PID is known; `stop()` sends
  SIGUSR1 (soft stop) and then SIGKILL if it lingers.
- `make test` installs it (the Makefile's `tools` target) when it is missing.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
import signal
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONFIG = ROOT / "deploy" / "compose" / "haproxy.cfg"
BACKEND = "replicas"

_BIND = re.compile(r"^(\s*)bind :8000\s*$", re.M)
_TEMPLATE = re.compile(r"^(\s*)server-template app \d+ app:8000 (.*)$", re.M)
_RESOLVERS = re.compile(r"^resolvers docker\n(?:[ \t]+.*\n?)*", re.M)
_GLOBAL = re.compile(r"^global\n", re.M)


class HaproxyUnavailable(RuntimeError):
    """The haproxy binary is not installed."""


def haproxy_binary() -> str:
    """Debian's haproxy (in /usr/sbin, off a non-root user's PATH), or raise saying how to
    get it."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None:
        raise HaproxyUnavailable("haproxy is not installed (`make tools` installs it)")
    return found


def balancer_config(listen_fd: int, servers: dict[str, int], admin_socket: Path) -> str:
    """The deploy's config, bound to `listen_fd`, balancing over loopback `servers`."""
    text = DEPLOY_CONFIG.read_text()
    for pattern in (_BIND, _TEMPLATE, _RESOLVERS, _GLOBAL):
        if len(pattern.findall(text)) != 1:
            raise AssertionError(f"{DEPLOY_CONFIG}: expected one match of {pattern.pattern!r}")
    text = _BIND.sub(lambda m: f"{m.group(1)}bind fd@{listen_fd}", text)

    def slots(m: re.Match[str]) -> str:
        options = m.group(2).replace("resolvers docker", "").replace("init-addr none", "")
        return "\n".join(
            f"{m.group(1)}server {name} 127.0.0.1:{port} {' '.join(options.split())}"
            for name, port in servers.items()
        )

    text = _TEMPLATE.sub(slots, text)
    text = _RESOLVERS.sub("", text)
    return _GLOBAL.sub(f"global\n    stats socket {admin_socket} mode 600 level admin\n", text)


class Haproxy:
    """One HAProxy process in front of `servers` (name -> loopback port)."""

    def __init__(self, workdir: Path, servers: dict[str, int]) -> None:
        self.binary = haproxy_binary()
        self.workdir = workdir
        self.servers = dict(servers)
        self.admin = workdir / "admin.sock"
        self.log = workdir / "haproxy.log"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self._sock.set_inheritable(True)
        self.port: int = self._sock.getsockname()[1]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        config = self.workdir / "haproxy.cfg"
        config.write_text(balancer_config(self._sock.fileno(), self.servers, self.admin))
        check = await asyncio.create_subprocess_exec(
            self.binary, "-c", "-q", "-f", str(config), pass_fds=(self._sock.fileno(),)
        )
        assert await check.wait() == 0, f"haproxy -c rejected {config}"
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-db",
                "-f",
                str(config),
                pass_fds=(self._sock.fileno(),),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self._sock.close()  # HAProxy holds it now

    async def command(self, line: str) -> str:
        """One runtime API command over the admin socket; its answer."""
        for _ in range(200):  # the socket appears once HAProxy has parsed its config
            if self.admin.exists():
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_unix_connection(str(self.admin))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()

    async def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it: `UP`, `DOWN`, `UP 1/2`, `MAINT`..."""
        text = await self.command(f"show stat {BACKEND} 4 -1")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["svname"] in self.servers}

    async def wait_states(self, want: dict[str, str], within: float = 30.0) -> None:
        """Until every server in `want` has that status (polled: HAProxy has no events)."""
        seen: dict[str, str] = {}
        try:
            async with asyncio.timeout(within):
                while True:
                    seen = await self.states()
                    if all(seen.get(name) == status for name, status in want.items()):
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"HAProxy states {seen}, waited for {want}") from None

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGUSR1)  # soft stop
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
