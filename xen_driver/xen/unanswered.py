"""A call to a peer that may never answer (a hung libvirtd, a stalled toolstack).

:class:`Unanswered` awaits such a call for a bounded time.  A call that timed out keeps running
(its worker thread cannot be taken back), and while it does, :attr:`Unanswered.waiting` says so,
so that the caller answers at once instead of starting another that would wait behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Unanswered:
    """Calls of one kind, each awaited at most ``timeout_s``; see the module's docstring."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[object] | None = None

    @property
    def waiting(self) -> bool:
        """A call that timed out has not returned yet."""
        return self._pending is not None and not self._pending.done()

    async def call(self, call: Awaitable[T], timeout_s: float) -> T:
        """``call``'s result, or ``TimeoutError`` after ``timeout_s`` (the call goes on)."""
        future = asyncio.ensure_future(call)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            self._pending = future  # type: ignore[assignment]
            future.add_done_callback(lambda f: None if f.cancelled() else f.exception())  # retrieved, never raised
            raise
