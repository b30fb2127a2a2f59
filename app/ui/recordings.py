"""A call's recording for the viewer: found safely under RECORD_DIR, rendered off the loop.

A record's `recording` is the call fixture's file name (`app.recording`, `app.replay.store`).
It comes from the database, so it is not trusted as a path: only a plain file name is
looked up, and only a regular file that resolves inside RECORD_DIR (no `..`, no absolute
path, no symlink out of it) is read.

Rendering the timeline and the WAV replays a whole fixture: CPU work of tens of ms for a
long call, run in a worker thread (`asyncio.to_thread`) so that live calls on the event
loop aren't held up, and kept for a few files (keyed by path, size and modification time)
so that the page and its `<audio>` request render a fixture once. The viewer's modules
(`app.viewer`) are imported when first needed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from app.observability import log_event

logger = logging.getLogger("app.ui")

#: Rendered fixtures kept (a long call's WAV is a few MB).
CACHE_ENTRIES = 8


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


@dataclass(frozen=True, slots=True)
class Rendered:
    """A fixture as the viewer shows it: the timeline (None: could not be drawn) and the
    audio as WAV (None: the fixture kept no audio, or it could not be made)."""

    svg: str | None
    wav: bytes | None
    problem: str | None = None


def _render(path: Path) -> Rendered:
    """Load and render one fixture (in a worker thread)."""
    from app.replay import FixtureError, load

    try:
        fixture = load(path)
    except (OSError, FixtureError) as exc:
        return Rendered(None, None, f"the recording can't be read: {exc}")
    svg: str | None = None
    wav: bytes | None = None
    problem: str | None = None
    try:
        from app.viewer.svg import render_svg

        svg = render_svg(fixture)
    except ImportError:
        problem = "the timeline viewer is not installed"
    except Exception as exc:  # a viewer bug must not take the page down
        log_event(logger, logging.WARNING, "ui.render_failed", what="svg", error=repr(exc))
        problem = "the timeline could not be drawn"
    try:
        from app.viewer.wav import render_wav

        wav = render_wav(fixture)
    except ImportError:
        wav = None
    except Exception as exc:
        log_event(logger, logging.WARNING, "ui.render_failed", what="wav", error=repr(exc))
        wav = None
    return Rendered(svg, wav, problem)


class Renderer:
    """Renders fixtures in a worker thread, remembering the last few."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._cache: OrderedDict[tuple[str, int, int], Rendered] = OrderedDict()
        self._lock = threading.Lock()

    async def render(self, path: Path) -> Rendered:
        """`path` rendered (from the cache when the file has not changed)."""
        try:
            stat = await asyncio.to_thread(path.stat)
        except OSError as exc:
            return Rendered(None, None, f"the recording can't be read: {exc}")
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if (hit := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return hit
        rendered = await asyncio.to_thread(_render, path)
        with self._lock:
            self._cache[key] = rendered
            while len(self._cache) > self._entries:
                self._cache.popitem(last=False)
        return rendered
