"""Watches: the events xenstored sends when a watched path changes, and their per-watch queue.

:meth:`XenStore.watch <.client.XenStore.watch>` registers one; the client's reader task puts
each WATCH_EVENT into the matching :class:`Watch`, whose consumer takes them with
``async for`` or :meth:`Watch.get`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xen_driver.xen.xenstore.client import XenStore


@dataclass(frozen=True)
class WatchEvent:
    path: str
    token: str


class Watch:
    """A registered watch: ``async for event in watch`` or ``await watch.get()``.

    The queue is bounded; when a consumer falls behind, the oldest events are dropped
    (``dropped`` counts them).  Watch events are hints that something changed, so a consumer
    re-reads state on each one anyway; losing a duplicate hint loses nothing.
    """

    def __init__(self, client: XenStore, path: str, token: str, maxsize: int):
        self.client = client
        self.path = path
        self.token = token
        self.dropped = 0
        self._queue: asyncio.Queue[WatchEvent] = asyncio.Queue(maxsize)
        self.closed = False

    def _deliver(self, event: WatchEvent) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> WatchEvent:
        return await self._queue.get()

    def pending(self) -> int:
        return self._queue.qsize()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[WatchEvent]:
        while not self.closed:
            yield await self._queue.get()

    async def close(self) -> None:
        await self.client.unwatch(self)
