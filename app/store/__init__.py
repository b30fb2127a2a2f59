"""The call store: every finished call's record, stored once by CallSid, queryable.

Why its own package: the record of a call outlives the call, and an operator needs to
find it again (by number, outcome, time). Storing must never slow or break a live call,
and the database may be down: see store.py for how the store stays out of the way, and
writer.py for what happens to a record on its way in.

This package depends on nothing of the call layer (`app.call`, `app.bridge`, `app.main`):
it takes records as plain JSON-able dicts.
"""

from app.store.errors import BadCursor, StoreConflict, StoreUnavailable
from app.store.queries import MAX_LIMIT
from app.store.records import InvalidRecord
from app.store.stats import StoreStats
from app.store.store import CallStore
from app.store.urls import DEFAULT_DATABASE_URL, database_url, redacted

__all__ = [
    "DEFAULT_DATABASE_URL",
    "MAX_LIMIT",
    "BadCursor",
    "CallStore",
    "InvalidRecord",
    "StoreConflict",
    "StoreStats",
    "StoreUnavailable",
    "database_url",
    "redacted",
]
