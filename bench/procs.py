"""Starting and stopping the benchmark's processes, by PID and within bounded time.

Every process is started in its own session (so a leftover child can be killed with its
group), pinned to one CPU (taskset, which execs the program: the PID is the program's
own), and asked to die with the runner (PR_SET_PDEATHSIG), so that even a runner killed
outright leaves nothing behind. `stop_all()` runs on exit, on errors and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

LIVE: dict[int, subprocess.Popen] = {}
_PR_SET_PDEATHSIG = 1


def _die_with_parent(cpu: int | None) -> None:
    """Runs in the child before exec."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # taskset's system call, where taskset is missing


def can_pin() -> bool:
    """Pinning needs two CPUs (the target gets one to itself)."""
    return (os.cpu_count() or 1) >= 2


def spawn(
    argv: Sequence[str | Path | int | float],
    *,
    cpu: int | None,
    cwd: Path,
    env: dict[str, str],
    stdout: int | object = subprocess.DEVNULL,
    stderr: int | object = subprocess.DEVNULL,
) -> subprocess.Popen:
    """Start `argv` pinned to `cpu` (None: unpinned) and remember it for `stop_all()`."""
    args = [str(x) for x in argv]
    affinity = None
    if cpu is not None and can_pin():
        if shutil.which("taskset"):
            args = ["taskset", "-c", str(cpu), *args]
        else:
            affinity = cpu
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=lambda: _die_with_parent(affinity),
    )
    LIVE[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> float | None:
    """SIGTERM `proc`, wait up to `timeout`, then SIGKILL it and its process group.
    Returns the seconds it took to exit on SIGTERM (None if it had to be killed)."""
    if proc is None:
        return None
    took = None
    if proc.poll() is None:
        t0 = time.monotonic()
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
            took = time.monotonic() - t0
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the session we created
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    LIVE.pop(proc.pid, None)
    return took


def stop_all() -> None:
    """Stop every process this runner started and has not stopped yet."""
    for proc in list(LIVE.values()):
        stop(proc, timeout=3)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """True once 127.0.0.1:port accepts connections; False if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line `proc` prints on its stdout pipe (empty if none within `timeout`)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode() if ready else ""
    proc.stdout.close()
    return line.strip()
