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

Memory is the domain's current allocation (``xl list`` Mem, libvirt's current memory): what Xen
has given the guest, which is all Xen can measure (it does not see inside the guest's own
allocator).  ``peak_memory_kib`` is the highest allocation seen since sampling of this domain
began (it only differs from the current one for a guest that balloons).

A failing sampler never passes an old sample off as a new one.  When a listing fails (the
backend raises, or answers nothing within ``sample_timeout_s``) no sample is sent to anyone,
and the newest samples are forgotten, so a stream opened meanwhile does not start with one.
After ``max_failures`` consecutive failures (3, i.e. about three intervals) every subscriber
receives a :class:`SamplerFailure` instead of a sample, and again after every further failed
listing; the driver ends the task's TaskStats stream with that error.  Nomad then keeps the
last good sample with its own, no longer advancing timestamp, logs the error, and opens a new
stream one interval later, which ends the same way until a listing succeeds again.
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

#: No subscriber makes the sampler list the host more often than this.
MIN_INTERVAL_S = 0.1


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
    peak_memory_kib: int = 0  # highest memory_kib seen for this domain (this domid)


@dataclass(frozen=True)
class SamplerFailure:
    """Sent to subscribers instead of a sample once listings keep failing."""

    failures: int  # consecutive failed listings
    error: str  # the last one's error

    def __str__(self) -> str:
        return f"the last {self.failures} listings of the host's domains failed: {self.error}"


@dataclass(frozen=True)
class DomainGone:
    """Sent to a domain's subscribers when a listing no longer shows it: no sample will follow,
    so a stream can end without a timer of its own to notice."""

    name: str


class StatsSampler:
    """Samples every domain while anyone is subscribed, as often as the most demanding
    subscriber asks (Nomad's ``collection_interval``; ``interval_s`` for those who do not say)."""

    def __init__(
        self,
        backend: Backend,
        *,
        interval_s: float = 1.0,
        window_s: float = 5.0,
        max_failures: int = 3,
        sample_timeout_s: float = 30.0,
    ):
        self.backend = backend
        self.interval_s = interval_s
        self.window_s = window_s
        self.max_failures = max_failures
        self.sample_timeout_s = sample_timeout_s
        self._history: dict[str, deque[tuple[float, float, int | None]]] = {}
        self._peak: dict[str, tuple[int | None, int]] = {}
        self._latest: dict[str, DomainSample] = {}
        self._subs: dict[str, set[asyncio.Queue[DomainSample | SamplerFailure | DomainGone]]] = {}
        #: The interval each subscriber asked for (by queue id).
        self._wanted: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.samples_taken = 0
        #: Consecutive failed listings (0 after a good one), and the last failure's text.
        self.failures = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------ interface
    def subscribe(
        self, name: str, interval_s: float | None = None
    ) -> asyncio.Queue[DomainSample | SamplerFailure | DomainGone]:
        """A queue that always holds the newest sample of ``name`` (older ones are dropped), or a
        :class:`SamplerFailure` while listings keep failing.  ``interval_s``: how often the
        subscriber wants a sample; the sampler lists as often as the most demanding one asks."""
        queue: asyncio.Queue[DomainSample | SamplerFailure | DomainGone] = asyncio.Queue(maxsize=1)
        self._subs.setdefault(name, set()).add(queue)
        self._wanted[id(queue)] = max(MIN_INTERVAL_S, interval_s) if interval_s else self.interval_s
        if name in self._latest:
            queue.put_nowait(self._latest[name])
        return queue

    def unsubscribe(self, name: str, queue: asyncio.Queue[DomainSample | SamplerFailure | DomainGone]) -> None:
        self._wanted.pop(id(queue), None)
        subs = self._subs.get(name)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subs[name]

    def latest(self, name: str) -> DomainSample | None:
        return self._latest.get(name)

    @property
    def current_interval_s(self) -> float:
        """The interval the sampler lists at now: the shortest any subscriber asked for."""
        return min(self._wanted.values(), default=self.interval_s)

    # -------------------------------------------------------------- sampling
    @staticmethod
    def _offer(
        queue: asyncio.Queue[DomainSample | SamplerFailure | DomainGone],
        item: DomainSample | SamplerFailure | DomainGone,
    ) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(item)

    async def sample_once(self) -> dict[str, DomainSample]:
        """List the domains once and hand each subscriber its domain's sample (raises what the
        backend raises; :meth:`tick` counts that as a failure)."""
        domains = await self.backend.list_domains()
        now = time.monotonic()
        wall = time.time_ns()
        self.samples_taken += 1
        self.failures = 0
        seen = set()
        for info in domains:
            seen.add(info.name)
            sample = self._compute(info, now, wall)
            self._latest[info.name] = sample
            for queue in self._subs.get(info.name, ()):
                self._offer(queue, sample)
        for gone in set(self._history) - seen:
            self._history.pop(gone, None)
            self._peak.pop(gone, None)
            self._latest.pop(gone, None)
        for name in [n for n in self._subs if n not in seen]:
            for queue in self._subs[name]:
                self._offer(queue, DomainGone(name))
        return dict(self._latest)

    async def tick(self) -> None:
        """One sampling round as the loop runs it: failures are counted, never raised."""
        try:
            async with asyncio.timeout(self.sample_timeout_s):
                await self.sample_once()
        except XenBackendError as exc:
            self._failed(str(exc))
        except TimeoutError:
            self._failed(f"no answer within {self.sample_timeout_s:g}s")
        except Exception as exc:  # keep sampling for everyone else
            log.exception("stats sample crashed")
            self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        # What was sampled before is not news any more: a stream opened now must not start
        # with it.
        self._latest.clear()
        log.warning("stats sample failed", error=error, consecutive=self.failures)
        if self.failures >= self.max_failures:
            failure = SamplerFailure(self.failures, error)
            for queues in self._subs.values():
                for queue in queues:
                    self._offer(queue, failure)

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
        peak_domid, peak = self._peak.get(info.name, (info.domid, 0))
        if peak_domid != info.domid:
            peak = 0
        peak = max(peak, info.memory_kib)
        self._peak[info.name] = (info.domid, peak)
        return DomainSample(
            name=info.name,
            domid=info.domid,
            timestamp_ns=wall,
            cpu_seconds=info.cpu_seconds,
            cpu_percent=percent,
            memory_kib=info.memory_kib,
            max_memory_kib=info.max_memory_kib,
            vcpus=info.vcpus,
            peak_memory_kib=peak,
        )

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            if self._subs:
                await self.tick()
            await asyncio.sleep(max(0.0, self.current_interval_s - (time.monotonic() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
