"""`python -m app.demo` (`make demo`): the call viewer on this machine, with calls to see.

A developer without a phone line or a database still gets a viewer full of calls: this
starts the server (`python -m app`) on 127.0.0.1:PORT (PORT from the environment, else
8000) with a freshly generated OPERATOR_API_KEY, printed here to log in with, a call store
of its own (a SQLite file in a temporary directory, deleted at the end), and RECORD_DIR a
copy of the fixture library (`tests/fixtures/calls`) in that directory, whose records name
those very files, so each imported call shows its timeline (and a call that does reach
the demo server is recorded there, never into the library). Once the server is ready,
the copies are imported (`python -m app.replay --store`, into the same database) and the
viewer's URL printed.
It runs until Ctrl-C.

The server is a child process, so what is tried here is what `make run` serves; it runs
in a session of its own, so Ctrl-C stops it through this script (SIGTERM, its drain).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "tests" / "fixtures" / "calls"
#: How long the server may take to answer `/readyz`.
READY_SECONDS = 30.0
#: How long the server may take to stop after Ctrl-C before it is terminated.
STOP_SECONDS = 15.0


def _ready(url: str, server: subprocess.Popen[bytes], within: float) -> bool:
    """Wait until `url` answers 200 (False: the server exited or took too long)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Ask the server to stop as a deploy would (SIGTERM: its drain, no call to wait
    for), then insist."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.terminate()
        server.wait(5)


def main() -> int:
    """Run the demo until Ctrl-C; the server's exit code (0 when stopped by Ctrl-C)."""
    fixtures = sorted(LIBRARY.glob("*.jsonl"))
    if not fixtures:
        print(f"no call fixtures in {LIBRARY}", file=sys.stderr)
        return 2
    port = os.environ.get("PORT") or "8000"
    key = secrets.token_urlsafe(24)
    data = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    recordings = data / "recordings"
    recordings.mkdir()
    for path in fixtures:
        shutil.copy2(path, recordings / path.name)
    fixtures = sorted(recordings.glob("*.jsonl"))
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": port,
        "OPERATOR_API_KEY": key,
        "DATABASE_URL": f"sqlite:///{data / 'demo.db'}",
        "RECORD_DIR": str(recordings),
    }
    base = f"http://127.0.0.1:{port}"
    # A session of its own: Ctrl-C reaches this script only, which then stops the server.
    server = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        if not _ready(f"{base}/readyz", server, READY_SECONDS):
            print(f"the server did not get ready on {base}", file=sys.stderr)
            return 1
        names = [str(path) for path in fixtures]
        imported = subprocess.run(
            [sys.executable, "-m", "app.replay", "--store", *names], cwd=ROOT, env=env
        )
        if imported.returncode != 0:
            print("some fixtures were not imported (see above)", file=sys.stderr)
        print()
        print(f"  The call viewer: {base}/ui/")
        print(f"  Operator key:    {key}")
        print("  (a new key each run; Ctrl-C stops the server)")
        print(flush=True)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            _stop(server)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
