"""Awaiting a condition over a fake's mutable state, without polling or sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Watch:
    """Await a condition over mutable state without polling or sleeping.

    ``notify()`` is called after every state change; waiters whose predicate now returns a
    value other than None/False are resolved with it (so plain boolean predicates work).
    """

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    def notify(self) -> None:
        for entry in list(self._waiters):
            pred, fut = entry
            if fut.done():
                self._waiters.remove(entry)
                continue
            try:
                result = pred()
            except Exception as exc:  # surface predicate bugs in the waiting test
                self._waiters.remove(entry)
                fut.set_exception(exc)
                continue
            if result is not None and result is not False:
                self._waiters.remove(entry)
                fut.set_result(result)

    async def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:  # noqa: ASYNC109
        result = pred()
        if result is not None and result is not False:
            return result
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
