"""StoreStats: the call store's counters, as plain ints for the metrics endpoint.

Why a snapshot: the metrics endpoint reads them at scrape time from another task, and a
copy taken at once is consistent (`pending` included) and can't be changed by its reader.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class StoreStats:
    """What happened to the records submitted so far (counts since the store was made)."""

    written: int = 0
    """Records inserted, or stored in place of one whose call started later."""
    lost: int = 0
    """Records given up: invalid, rejected by the database, out of retry time, shut down."""
    write_errors: int = 0
    """Failed write attempts (each retry that failed counts once, a record that failed
    alone as one more)."""
    dropped_full: int = 0
    """Records refused because the queue was full."""
    pruned: int = 0
    """Records deleted by retention."""
    duplicates: int = 0
    """Records skipped because their CallSid was already stored, by a call that started at
    the same time or earlier (the earliest start wins; of equal ones, the first written)."""
    pending: int = 0
    """Records submitted and not yet written or lost (at the time of the snapshot)."""
