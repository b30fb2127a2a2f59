"""DATABASE_URL: which database the call store uses, in the async-driver form SQLAlchemy needs.

Why: operators write the URL their platform hands them (`postgres://...` from a PaaS,
`postgresql://...` from a cloud console, `sqlite:///...` for a single box), while the store
runs on asyncio drivers only (asyncpg, aiosqlite). This module accepts those spellings,
returns the one driver form, and refuses anything else at start-up with a message that
names the setting, instead of failing on the first call record.

- Unset -> `sqlite+aiosqlite:///./data/calls.db`, relative to the working directory; the
  directory of a SQLite file is created here and checked writable (SQLite makes its WAL
  and lock files beside the database), so a typo'd or read-only path fails at start-up
  too, instead of at every write.
- `?sslmode=` (libpq's spelling, common in hosted URLs) becomes asyncpg's `?ssl=`.
- A URL's password is registered with the log scrubber, and `redacted()` is the form for
  log lines: the password never reaches a log, even inside an error message.
"""

from __future__ import annotations

import os
import secrets

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from app.observability import register_secret

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/calls.db"
SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
_SCHEMES = {
    "sqlite": SQLITE_DRIVER,
    "sqlite+aiosqlite": SQLITE_DRIVER,
    "postgresql": POSTGRES_DRIVER,
    "postgres": POSTGRES_DRIVER,
    "postgresql+asyncpg": POSTGRES_DRIVER,
}
_HINT = "use sqlite:///path/to/calls.db or postgresql://user:password@host:5432/dbname"


def _scheme(raw: str) -> str:
    """The part before `://`, for error messages (never the rest: it may hold a password)."""
    head, sep, _ = raw.partition("://")
    return head if sep and len(head) <= 40 else "?"


def _parse(raw: str) -> URL:
    try:
        return make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"DATABASE_URL is not a database URL ({_HINT})") from exc


def database_url(raw: str | None) -> str:
    """`raw` (DATABASE_URL; None or blank = the default SQLite file) as an async-driver URL.

    Raises ValueError, naming DATABASE_URL, for an unsupported scheme, an in-memory or
    missing SQLite path, a PostgreSQL URL without a host, or a SQLite directory that can't
    be created or written to.
    """
    if raw is None or not raw.strip():
        raw = DEFAULT_DATABASE_URL
    url = _parse(raw)
    driver = _SCHEMES.get(url.drivername)
    if driver is None:
        raise ValueError(f"DATABASE_URL scheme {_scheme(raw.strip())!r} is not supported ({_HINT})")
    url = url.set(drivername=driver)
    register_secret(url.password if isinstance(url.password, str) else None)
    if driver == SQLITE_DRIVER:
        _prepare_sqlite(url)
    else:
        url = _prepare_postgres(url)
    return url.render_as_string(hide_password=False)


def _prepare_sqlite(url: URL) -> None:
    path = url.database or ""
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        raise ValueError(
            "DATABASE_URL names an in-memory SQLite database; the call store needs a file "
            "(sqlite:///path/to/calls.db)"
        )
    directory = os.path.dirname(path) or "."
    problem = _directory_problem(directory)
    if problem is not None:
        raise ValueError(f"DATABASE_URL: the SQLite directory {directory!r} {problem}")


def _directory_problem(directory: str) -> str | None:
    """Why `directory` can't hold the database, or None when it can.

    Creates it when missing (with its parents), then writes and removes a probe file. The
    same check as `app.recording.directory_problem`, which the store can't import: that
    module belongs with the call layer, which the store must not depend on."""
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:  # a file (or a link to one) is in the way
        return "exists but is not a directory"
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    probe = os.path.join(directory, f".write-probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def _prepare_postgres(url: URL) -> URL:
    if not url.host and "host" not in url.query:
        raise ValueError(f"DATABASE_URL has no host ({_HINT})")
    if "sslmode" in url.query:  # libpq's name; asyncpg calls it `ssl`
        query = dict(url.query)
        query.setdefault("ssl", query["sslmode"])
        del query["sslmode"]
        url = url.set(query=query)
    return url


def redacted(url: str) -> str:
    """`url` for a log line: the password shown as `***` (or only the scheme if unparsable)."""
    try:
        return make_url(url.strip()).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return f"{_scheme(url.strip())}://(unparsable)"


def dialect_of(url: str) -> str:
    """`sqlite` or `postgresql`, for a URL `database_url()` returned."""
    return make_url(url).get_backend_name()
