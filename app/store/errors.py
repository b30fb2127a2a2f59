"""What went wrong talking to the database: worth retrying or not, and how to log it safely.

Why: the writer retries a write that failed because the database was away (refused,
reset, timed out, shutting down), gives up at once on one the database rejected for its
content, and tries a record alone when its batch failed for a reason of neither kind (so
one record the driver chokes on fails by itself); the query side turns database errors
into `StoreUnavailable` (HTTP 503), and a write the database refused into `StoreConflict`.

Logging an error safely matters as much: SQLAlchemy's text of a failed statement carries
the statement's parameters, i.e. phone numbers and transcripts, and PostgreSQL's detail
of a rejected row quotes the row. So `describe()` gives the error's class and, only for
connection-level failures (whose messages are about hosts and ports), its message.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import copy_context

from asyncpg import exceptions as pg_exc
from sqlalchemy import exc as sa_exc

from app.observability import bind_call, log_event

logger = logging.getLogger("app.store")
_MESSAGE_CHARS = 300
#: PostgreSQL's classes of "the connection, not the statement": connection exceptions,
#: operator intervention (shutting down, restarting), insufficient resources.
_CONNECTION_SQLSTATES = ("08", "57P", "53")


#: What talking to a database can raise: SQLAlchemy's wrapped errors, and what a driver
#: raises unwrapped while connecting (refused, timed out, "the database is starting up").
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.SQLAlchemyError,
    OSError,
    TimeoutError,
    pg_exc.PostgresError,
    pg_exc.InterfaceError,
)


class StoreUnavailable(Exception):
    """The database could not be reached for a query (the API answers 503)."""


class StoreConflict(StoreUnavailable):
    """The database answered and refused a write for its content: a key already taken (a
    second outbound call of one CallSid). A StoreUnavailable to every caller that handles
    only that; unlike one, it leaves the store available."""


class BadCursor(ValueError):
    """A `before` cursor that this store did not hand out."""


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` says the database is away (refused, reset, timed out, shutting down),
    not that it refused or failed on what was sent."""
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError | ConnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if exc.connection_invalidated or (
            isinstance(sqlstate, str) and sqlstate.startswith(_CONNECTION_SQLSTATES)
        ):
            return True
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError)


def is_permanent(exc: BaseException) -> bool:
    """Whether the database answered and refused the statement for its content.

    Anything else (connection trouble, timeouts, errors we don't recognise) counts as
    transient: retried until the record's time is up, never dropped on a guess.
    """
    if is_connection_error(exc):
        return False
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    # A value SQLAlchemy could not even bind (before any database saw it).
    return isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError)


def describe(exc: BaseException) -> dict[str, object]:
    """Log fields for `exc`: `error` (its class), `cause`, and a `detail` when it's safe."""
    fields: dict[str, object] = {"error": type(exc).__name__}
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc.__cause__
    if orig is not None and orig is not exc:
        fields["cause"] = type(orig).__name__
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(sqlstate, str):
            fields["sqlstate"] = sqlstate
    if is_connection_error(exc):
        # A StatementError's own text holds the statement and its parameters: never that.
        source = orig if isinstance(exc, sa_exc.StatementError) else exc
        text = str(source).strip() if source is not None else ""
        if text:
            fields["detail"] = text.splitlines()[0][:_MESSAGE_CHARS]
    return fields


def log_for_call(level: int, event: str, call_sid: str | None, /, **fields: object) -> None:
    """Log `event` as a line of call `call_sid` (the `call_sid=` every call line carries).

    The writer and pruner run outside any call's context; binding the CallSid in a copy of
    the context puts it where every other line of that call has it, without touching the
    caller's context.
    """

    def emit() -> None:
        if call_sid is not None:
            bind_call(call_sid=call_sid)
        log_event(logger, level, event, **fields)

    copy_context().run(emit)
