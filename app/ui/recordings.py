"""A call's recording for the viewer: found safely under RECORD_DIR, rendered off the loop.

A record's `recording` is the call fixture's file name (`app.recording`, `app.replay.store`).
It comes from the database, so it is not trusted as a path: only a plain file name is
looked up, and only a regular file that resolves inside RECORD_DIR (no `..`, no absolute
path, no symlink out of it) is read.

Rendering the timeline and the WAV replays a whole fixture: CPU work of tens of ms for a
long call, run in a worker thread (`asyncio.to_thread`) so that live calls on the event
loop aren't held up. At most one render runs at a time per process, identical requests in
flight share one render, and a fixture over `MAX_RENDER_BYTES` is not rendered at all
(`python -m app.replay --svg/--wav` draws it offline). Results are kept (keyed by path,
size and modification time) within a byte budget; a WAV is written to a per-process
cache directory so that it can be served as a file, with byte ranges. Whether a call has
audio to play is read from the fixture's header line alone. The viewer's modules
(`app.viewer`) are imported when first needed.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.observability import log_event

logger = logging.getLogger("app.ui")

#: A fixture bigger than this is not rendered by the viewer (memory, CPU).
MAX_RENDER_BYTES = 32 * 1024 * 1024
#: What the rendered results kept may add up to (SVG text and WAV files).
CACHE_BUDGET_BYTES = 64 * 1024 * 1024
#: How much of a fixture's first line is read to find its header.
HEADER_MAX_BYTES = 256 * 1024
#: What the page says instead of a timeline for a fixture over `MAX_RENDER_BYTES`.
TOO_LONG = "This recording is too long to draw here; use `python -m app.replay --svg/--wav`"

Kind = Literal["svg", "wav"]


def recording_path(record_dir: Path | None, name: object) -> Path | None:
    """The recording file `name` under `record_dir`, or None: no RECORD_DIR, no name, a
    name that is not a plain file name, or no such regular file inside the directory."""
    if record_dir is None or not isinstance(name, str) or not name or len(name) > 255:
        return None
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return None
    if Path(name).name != name:
        return None
    try:
        root = record_dir.resolve(strict=True)
        path = (root / name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root) or path.parent != root or not path.is_file():
        return None
    return path


def audio_kept(path: Path) -> bool:
    """Whether the fixture's header (its first line only) says it kept the audio."""
    try:
        with path.open("rb") as file:
            line = file.readline(HEADER_MAX_BYTES)
        header = json.loads(line)
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and header.get("audio") == "kept"


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendering of a fixture: the timeline or the WAV file (None: not drawn, no
    audio, or it could not be made), why not, and whether the file was too big."""

    svg: str | None = None
    wav: Path | None = None
    problem: str | None = None
    too_long: bool = False
    #: The WAV file's size.
    wav_bytes: int = 0

    @property
    def size(self) -> int:
        """What this result holds, for the cache's budget."""
        return (len(self.svg.encode()) if self.svg else 0) + self.wav_bytes


def _render_svg(path: Path) -> Rendered:
    """Load a fixture and draw its timeline (in a worker thread)."""
    from app.replay import FixtureError, load

    try:
        fixture = load(path)
    except (OSError, FixtureError) as exc:
        return Rendered(problem=f"the recording can't be read: {exc}")
    try:
        from app.viewer.svg import render_svg

        return Rendered(svg=render_svg(fixture))
    except ImportError:
        return Rendered(problem="the timeline viewer is not installed")
    except Exception as exc:  # a viewer bug must not take the page down
        log_event(logger, logging.WARNING, "ui.render_failed", what="svg", error=repr(exc))
        return Rendered(problem="the timeline could not be drawn")


#: The one problem that is the recording's, not the server's (404 rather than 503).
NO_AUDIO = "no audio in this recording"

#: The server couldn't write the WAV file it made (503: a disk or mount problem).
NOT_STORED = "the audio could not be stored"

#: A read-only root filesystem with no writable /tmp (the image run `--read-only`).
NO_TEMP_DIR = (
    "the audio could not be stored: no writable temporary directory "
    "(mount one at /tmp, or set TMPDIR)"
)


def _render_wav(path: Path, target: Path) -> Rendered:
    """Load a fixture and write its audio to `target` (in a worker thread)."""
    from app.replay import FixtureError, load

    try:
        fixture = load(path)
    except (OSError, FixtureError) as exc:
        return Rendered(problem=f"the recording can't be read: {exc}")
    try:
        from app.viewer.wav import render_wav

        wav = render_wav(fixture)
    except ImportError:
        return Rendered(problem="the audio renderer is not installed")
    except Exception as exc:
        log_event(logger, logging.WARNING, "ui.render_failed", what="wav", error=repr(exc))
        return Rendered(problem="the audio could not be made")
    if wav is None:
        return Rendered(problem=NO_AUDIO)
    partial = target.with_suffix(".part")
    try:
        partial.write_bytes(wav)
        os.replace(partial, target)
    except OSError as exc:
        log_event(logger, logging.WARNING, "ui.render_failed", what="wav", error=repr(exc))
        return Rendered(problem=NOT_STORED)
    return Rendered(wav=target, wav_bytes=len(wav))


_Key = tuple[str, str, int, int]


class Renderer:
    """Renders fixtures in a worker thread, one at a time, keeping results in a budget."""

    def __init__(
        self,
        budget_bytes: int = CACHE_BUDGET_BYTES,
        max_render_bytes: int | None = None,
    ) -> None:
        self._budget = budget_bytes
        #: None: `MAX_RENDER_BYTES` as it is at each request.
        self.max_render_bytes = max_render_bytes
        self._cache: OrderedDict[_Key, tuple[Rendered, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._one_at_a_time = asyncio.Semaphore(1)
        self._in_flight: dict[_Key, asyncio.Task[Rendered]] = {}
        self._dir: Path | None = None
        #: The last WAV too big for the cache: served, not kept, removed at the next one
        #: (a response already reading it keeps its open file), so disk use stays bounded.
        self._transient: Path | None = None
        #: How many renders actually ran (for tests and logs).
        self.renders = 0

    def _cache_dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ui-render-"))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def close(self) -> None:
        """Remove the cache directory and forget every result."""
        with self._lock:
            self._cache.clear()
            self._held = 0
            self._transient = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def svg(self, path: Path) -> Rendered:
        """`path`'s timeline (from the cache when the file has not changed)."""
        return await self._get("svg", path)

    async def wav(self, path: Path) -> Rendered:
        """`path`'s audio as a WAV file in the cache directory."""
        return await self._get("wav", path)

    async def _get(self, kind: Kind, path: Path) -> Rendered:
        try:
            stat = await asyncio.to_thread(path.stat)
        except OSError as exc:
            return Rendered(problem=f"the recording can't be read: {exc}")
        limit = MAX_RENDER_BYTES if self.max_render_bytes is None else self.max_render_bytes
        if stat.st_size > limit:
            return Rendered(problem=TOO_LONG, too_long=True)
        key: _Key = (kind, str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if (hit := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return hit[0]
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(key, kind, path))
            self._in_flight[key] = task
            task.add_done_callback(lambda _done: self._in_flight.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, key: _Key, kind: Kind, path: Path) -> Rendered:
        async with self._one_at_a_time:
            self.renders += 1
            if kind == "svg":
                rendered = await asyncio.to_thread(_render_svg, path)
            else:
                name = hashlib.sha256(repr(key).encode()).hexdigest() + ".wav"
                try:
                    target = self._cache_dir() / name
                except OSError as exc:
                    log_event(
                        logger, logging.ERROR, "ui.render_failed", what="wav", error=repr(exc)
                    )
                    return Rendered(problem=NO_TEMP_DIR)  # not kept: a mount may fix it
                rendered = await asyncio.to_thread(_render_wav, path, target)
        self._keep(key, rendered)
        return rendered

    def _keep(self, key: _Key, rendered: Rendered) -> None:
        size = rendered.size
        if size > self._budget:  # served this once, not kept
            with self._lock:
                previous, self._transient = self._transient, rendered.wav
            if previous is not None and previous != rendered.wav:
                previous.unlink(missing_ok=True)
            return
        with self._lock:
            self._cache[key] = (rendered, size)
            self._held += size
            while self._held > self._budget and self._cache:
                _, (old, old_size) = self._cache.popitem(last=False)
                self._held -= old_size
                if old.wav is not None:
                    old.wav.unlink(missing_ok=True)
