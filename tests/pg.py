"""PgServer: a throwaway PostgreSQL server for tests, from Debian's `postgresql` binaries.

Why a real server: the call store's PostgreSQL path (asyncpg, JSONB, `ON CONFLICT`, the
advisory lock around migrations, surviving a restart) can only be shown against the real
thing, and a server of our own can be stopped and started again mid-test, which is how a
"database down, then back" test is written without mocks.

- A fresh cluster in a temp dir (`initdb --auth=trust -U postgres --no-sync` once per
  process, then a copy of that cluster for every further server), listening on a free
  loopback TCP port (its Unix socket in the temp dir, so nothing in /var/run is
  touched), tuned for throwaway data (no fsync).
- `postgres` is run directly as our child, so its PID is known: `stop()` sends SIGINT
  (PostgreSQL's fast shutdown: clients are disconnected at once) and waits for it.
  `start()` again reuses the port and the data: the same databases come back.
- initdb and postgres refuse to run as root; under root (as here and on CI) they run as the
  `postgres` system user (`Popen(user=...)`, which sets the ids before exec, like setpriv:
  no wrapper process between us and the PID), and the temp dir is handed to that user.
- `make test` installs the binaries (the Makefile's `tools` target) when they are missing.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_USER = "postgres"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.02
_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=100",
    "shared_buffers=32MB",
    "listen_addresses=127.0.0.1",
)


_template: Path | None = None
"""This process's initdb'd cluster, never started: new servers start from a copy."""


class PgUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (or the server would not start)."""


def find_bin_dir() -> Path:
    """The newest installed `/usr/lib/postgresql/<version>/bin` that has initdb."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise PgUnavailable(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
            "`make test` installs them (apt package `postgresql`)"
        )

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)

    return Path(max(found, key=version)).parent


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, outside the ephemeral range.

    Outside it, because a server here is stopped and started again on the same port: a
    client retrying meanwhile must not be handed that very port as its own source port
    (Linux then connects the socket to itself, and the server can't bind on restart).
    """
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(10000, 32768)
        if port in ephemeral:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PgUnavailable("no free TCP port on 127.0.0.1 outside the ephemeral range")


class PgServer:
    """One PostgreSQL cluster on loopback; `start()`, `stop()`, `start()` again, `close()`."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self._as_root = os.geteuid() == 0
        self._root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data_dir = self._root / "data"
        self.log_path = self._root / "postgres.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._databases = 0
        try:
            if self._as_root:
                entry = pwd.getpwnam(PG_USER)
                os.chown(self._root, entry.pw_uid, entry.pw_gid)
            self._init_data_dir()
        except BaseException:
            shutil.rmtree(self._root, ignore_errors=True)
            raise

    # --- Process control -----------------------------------------------------------------

    def _init_data_dir(self) -> None:
        """A fresh cluster: initdb's once per process (about a second), copied after that
        (a fraction of it); the copy is owned by the same user, so it runs the same."""
        global _template
        if _template is None:
            template = Path(tempfile.mkdtemp(prefix="pgtest-template-"))
            atexit.register(shutil.rmtree, template, True)
            if self._as_root:
                entry = pwd.getpwnam(PG_USER)
                os.chown(template, entry.pw_uid, entry.pw_gid)
            self._run([str(self.bin_dir / "initdb"), *self._initdb_args(template / "data")])
            _template = template / "data"
        self._run(["cp", "-a", str(_template), str(self.data_dir)])

    def _initdb_args(self, data_dir: Path) -> list[str]:
        return [
            "-D",
            str(data_dir),
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]

    @property
    def _user(self) -> str | None:
        """Who runs initdb and postgres: the `postgres` user under root, else ourselves."""
        return PG_USER if self._as_root else None

    @property
    def _groups(self) -> list[str] | None:
        return [] if self._as_root else None  # none of root's supplementary groups

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._as_root:
            env["HOME"] = str(self._root)
        return env

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(
            args,
            cwd=self._root,
            env=self._env(),
            capture_output=True,
            check=False,
            user=self._user,
            group=self._user,
            extra_groups=self._groups,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise PgUnavailable(f"{Path(args[0]).name} failed ({done.returncode}):\n{output}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> None:
        """Start the server (again) on its port and data dir; return once it takes queries."""
        if self.running:
            return
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        args += ["-k", str(self._root)]
        for setting in _SETTINGS:
            args += ["-c", setting]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=self._root,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
                user=self._user,
                group=self._user,
                extra_groups=self._groups,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll postmaster.pid until the server says `ready` (what `pg_ctl -w` reads)."""
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PgUnavailable(f"postgres exited ({self._proc.returncode}):\n{self.log()}")
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            mine = len(lines) >= 8 and lines[0].strip() == str(self._proc.pid)
            if mine and lines[7].strip() == "ready":
                return
            time.sleep(_POLL_S)  # a separate process: there is nothing to await
        self.stop()
        raise PgUnavailable(f"postgres not ready within {START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server by its PID, fast mode (SIGINT: clients are cut off at once)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # pragma: no cover - a wedged server
            proc.kill()  # immediate shutdown of the postmaster; its children follow
            proc.wait(timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Databases -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's `postgres` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name unless given) and return its URL."""
        if name is None:
            self._databases += 1
            name = f"test_{os.getpid()}_{self._databases}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        createdb = str(self.bin_dir / "createdb")
        self._run([createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, name])
        return self.url_for(name)
