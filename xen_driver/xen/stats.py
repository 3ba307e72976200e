"""A shared resource-usage sampler: one ``list_domains()`` per interval for the whole host.

Nomad opens one TaskStats stream per task and expects a sample every collection interval
(1 s by default).  Running ``xl list`` per task per second would be thousands of processes a
second on a busy host, so one sampler lists all domains once per tick and fans the numbers out
to per-domain subscribers.

CPU percent is derived from the cumulative CPU time between two samples.  ``xl list`` prints
CPU time in tenths of a second, which over a 1 s interval would make the percentage jump in
10-point steps; the sampler therefore computes the rate over a sliding window (default 5 s,
i.e. about 2 % resolution) once enough history exists.  Percent is of one physical CPU, so a
busy 2-vCPU guest can show 200 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import structlog

from xen_driver.xen.backend import Backend, DomainInfo, XenBackendError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DomainSample:
    name: str
    domid: int | None
    timestamp_ns: int  # wall clock, for Nomad's TaskResourceUsage.timestamp
    cpu_seconds: float  # cumulative
    cpu_percent: float | None  # None until two samples exist
    memory_kib: int
    max_memory_kib: int
    vcpus: int


class StatsSampler:
    """Samples every domain once per ``interval_s`` while anyone is subscribed."""

    def __init__(self, backend: Backend, *, interval_s: float = 1.0, window_s: float = 5.0):
        self.backend = backend
        self.interval_s = interval_s
        self.window_s = window_s
        self._history: dict[str, deque[tuple[float, float, int | None]]] = {}
        self._latest: dict[str, DomainSample] = {}
        self._subs: dict[str, set[asyncio.Queue[DomainSample]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.samples_taken = 0

    # ------------------------------------------------------------ interface
    def subscribe(self, name: str) -> asyncio.Queue[DomainSample]:
        """A queue that always holds the newest sample of ``name`` (older ones are dropped)."""
        queue: asyncio.Queue[DomainSample] = asyncio.Queue(maxsize=1)
        self._subs.setdefault(name, set()).add(queue)
        if name in self._latest:
            queue.put_nowait(self._latest[name])
        return queue

    def unsubscribe(self, name: str, queue: asyncio.Queue[DomainSample]) -> None:
        subs = self._subs.get(name)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subs[name]

    def latest(self, name: str) -> DomainSample | None:
        return self._latest.get(name)

    # -------------------------------------------------------------- sampling
    async def sample_once(self) -> dict[str, DomainSample]:
        domains = await self.backend.list_domains()
        now = time.monotonic()
        wall = time.time_ns()
        self.samples_taken += 1
        seen = set()
        for info in domains:
            seen.add(info.name)
            sample = self._compute(info, now, wall)
            self._latest[info.name] = sample
            for queue in self._subs.get(info.name, ()):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(sample)
        for gone in set(self._history) - seen:
            self._history.pop(gone, None)
            self._latest.pop(gone, None)
        return dict(self._latest)

    def _compute(self, info: DomainInfo, now: float, wall: int) -> DomainSample:
        hist = self._history.get(info.name)
        if hist is None or (hist and hist[-1][2] != info.domid):
            hist = self._history[info.name] = deque()
        hist.append((now, info.cpu_seconds, info.domid))
        # Keep one sample at least window_s old as the base, drop anything older.
        while len(hist) >= 3 and now - hist[1][0] >= self.window_s:
            hist.popleft()
        percent = None
        if len(hist) >= 2:
            t0, c0, _ = hist[0]
            if now > t0:
                percent = max(0.0, (info.cpu_seconds - c0) / (now - t0) * 100.0)
        return DomainSample(
            name=info.name,
            domid=info.domid,
            timestamp_ns=wall,
            cpu_seconds=info.cpu_seconds,
            cpu_percent=percent,
            memory_kib=info.memory_kib,
            max_memory_kib=info.max_memory_kib,
            vcpus=info.vcpus,
        )

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            if self._subs:
                try:
                    await self.sample_once()
                except XenBackendError as exc:
                    log.warning("stats sample failed", error=str(exc))
                except Exception:  # keep sampling for everyone else
                    log.exception("stats sample crashed")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
