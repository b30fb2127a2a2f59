"""What one process takes from the outside, and a count of every time a limit was hit.

A public phone number makes every input an attacker's as much as Twilio's, so each way in
is bounded (README "Security"); this module holds the process's tally of refusals, by
limit name, for logs now and metrics later. A hit is logged the first time and then at
every power of two, so a flood of refusals costs a handful of lines, not one each.
"""

from __future__ import annotations

import logging
from collections import Counter

from app.observability import log_event

logger = logging.getLogger("app.limits")


def power_of_two(count: int) -> bool:
    """Whether the `count`-th hit of a limit gets a log line: 1, 2, 4, 8, ..."""
    return count & (count - 1) == 0


class LimitHits:
    """Counts refusals by limit (`webhook_body`, `connections`, `calls`, ...)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def hit(self, limit: str, **fields: object) -> None:
        """Count one refusal; log it when its count is 1, 2, 4, 8, ..."""
        self.counts[limit] += 1
        count = self.counts[limit]
        if power_of_two(count):
            log_event(logger, logging.WARNING, "limit.hit", limit=limit, count=count, **fields)
