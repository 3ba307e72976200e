"""One watcher for the death of every domain the driver runs.

Why this shape:

* **One XenStore watch on ``@releaseDomain``, not a poll loop per task.**  xenstored fires that
  special watch whenever *any* introduced domain shuts down (poweroff, reboot, crash, watchdog:
  it checks the hypervisor's shutdown flag on every ``VIRQ_DOM_EXC``) and again when a domain is
  destroyed.  The event carries no domid (per-domain ``@releaseDomain/<domid>`` only exists from
  Xen 4.22; we target 4.17).
* **Cost follows what changed, not how many guests run.**  Starting a task costs no listing:
  with XenStore the new subscription is checked with one read of ``/local/domain/<domid>/name``
  (the toolstack writes it before ``xl create`` returns and removes it when the domain is
  destroyed), so a guest destroyed before it was subscribed is still reported.  An event costs
  one XenStore ``directory`` of ``/local/domain`` (which domains still exist: a vanished one
  was destroyed) and one ``list_domains()`` for the shut-down states only the hypervisor knows;
  bursts of events are coalesced, and listings for events are at most one per
  ``min_list_interval_s``, so a thousand stops cost about one listing a second, not a
  thousand.  Without XenStore every subscription and event falls back to a listing.
* **A listing judges only what it could have seen.**  ``xl list`` reads the domain table when it
  starts and answers up to seconds later; a domain created and subscribed in between is absent
  from the answer although it is alive.  Every subscription takes a number from a counter, every
  listing (and every XenStore check) notes the counter when it starts, and judges *absence* only
  for subscriptions older than itself.  A domain the answer shows shut down (same domid) is
  judged whatever its age: a shut-down domain never runs again, so that answer cannot be stale.
  The shut-down domains of the last listing are remembered, so a guest that died before its
  subscription (its event already spent) is reported at once.
* **A slow safety re-scan** (default 30 s) covers anything a watch can miss: a xenstored restart,
  a backend without XenStore (libvirt's test driver), a bug.
* **Reason detection on Xen 4.17.**  The xl backend creates domains without an xl monitor and
  with ``on_* = "preserve"``, so a guest that calls ``SCHEDOP_shutdown`` stays in the
  shut-down state and ``xl list -v`` shows its reason code (``s`` flag plus the reason letter
  and hex code).  The watcher reports that reason.  A domain that disappears (or starts dying)
  without ever having been seen shut down was destroyed: by us (the driver announced it with
  :meth:`DomainWatcher.expect_exit` first, so ``requested`` is True) or behind our back
  (``requested`` False).  Either way the reason is ``DESTROYED``.
* **Reporting, not destroying.**  The watcher only reports an exit; the driver decides what
  happens to the preserved domain (a crash dump first, ``on_crash = "preserve"``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from xen_driver.xen.backend import Backend, DomainInfo, DomainState, ExitReason
from xen_driver.xen.xenstore import XenStore, XenStoreError

log = structlog.get_logger(__name__)

RELEASE_DOMAIN = "@releaseDomain"


@dataclass(frozen=True)
class DomainExit:
    """A tracked domain stopped running.

    ``requested`` is True when the driver had announced a stop/destroy of this domain before it
    went away (see :meth:`DomainWatcher.expect_exit`), so "destroyed by us" and "destroyed
    behind our back" can be told apart.  ``last_seen`` is the last snapshot of the domain (None
    if it was never seen).
    """

    name: str
    domid: int | None
    reason: ExitReason
    requested: bool = False
    last_seen: DomainInfo | None = None
    detected_at: float = field(default_factory=time.time)


@dataclass
class _Tracked:
    name: str
    domid: int | None
    future: asyncio.Future[DomainExit]
    #: The subscription's number: only listings that started after it may judge this domain.
    since: int = 0
    requested: bool = False
    last: DomainInfo | None = None


class DomainWatcher:
    """Track named domains and resolve one future per domain when it exits."""

    def __init__(
        self,
        backend: Backend,
        *,
        xenstore: XenStore | None = None,
        rescan_interval_s: float = 30.0,
        coalesce_s: float = 0.02,
        min_list_interval_s: float = 1.0,
    ):
        self.backend = backend
        self.xenstore = xenstore
        self.rescan_interval_s = rescan_interval_s
        self.coalesce_s = coalesce_s
        self.min_list_interval_s = min_list_interval_s
        self._tracked: dict[str, _Tracked] = {}
        #: Subscriptions not yet checked by anything that started after them.
        self._fresh: set[str] = set()
        #: An event (or kick) arrived that no listing has covered yet.
        self._changed = False
        #: Domains the last listing showed shut down or dying (final states), by name.
        self._final: dict[str, DomainInfo] = {}
        self._last_list = -1e9
        self._listeners: list[Callable[[DomainExit], object]] = []
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions = 0  # counter numbering subscriptions (see _Tracked.since)
        self.scans = 0  # full listings
        self.checks = 0  # XenStore checks (directory reads and subscription reads)
        self.events = 0

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Register the ``@releaseDomain`` watch (if XenStore is available) and start scanning."""
        if self.xenstore is not None:
            watch = await self.xenstore.watch(RELEASE_DOMAIN)
            self._tasks.append(asyncio.create_task(self._watch_loop(watch), name="domain-watcher-events"))
        self._tasks.append(asyncio.create_task(self._scan_loop(), name="domain-watcher-scan"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def __aenter__(self) -> DomainWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ interface
    def subscribe(self, name: str, domid: int | None = None) -> asyncio.Future[DomainExit]:
        """Start tracking ``name`` (optionally only the incarnation with ``domid``).

        Returns a future that resolves with the :class:`DomainExit`; await it through
        ``asyncio.shield`` when several waiters share it.  Subscribing again returns the same
        future.  Call after the domain was created: a name that is absent at the next scan is
        reported as destroyed; a listing that was already under way when ``subscribe`` was
        called does not judge it.
        """
        entry = self._tracked.get(name)
        if entry is not None:
            same = domid is None or entry.domid in (None, domid)
            if same:
                if domid is not None:
                    entry.domid = domid
                return entry.future
            if not entry.future.done():
                # A new incarnation was subscribed before the old one's exit was seen.
                self._finish(
                    entry, DomainExit(name, entry.domid, self._vanished_reason(entry), entry.requested, entry.last)
                )
        fut: asyncio.Future[DomainExit] = asyncio.get_running_loop().create_future()
        self._subscriptions += 1
        self._tracked[name] = _Tracked(name=name, domid=domid, future=fut, since=self._subscriptions)
        if self.xenstore is None or domid is None:
            self.kick()  # only a listing can tell
        else:
            self._fresh.add(name)
            self._kick.set()
        return fut

    def unsubscribe(self, name: str) -> None:
        entry = self._tracked.pop(name, None)
        if entry is not None and not entry.future.done():
            entry.future.cancel()

    def expect_exit(self, name: str) -> None:
        """The driver is about to stop or destroy ``name``: mark its exit as requested."""
        entry = self._tracked.get(name)
        if entry is not None:
            entry.requested = True

    def add_listener(self, callback: Callable[[DomainExit], object]) -> None:
        """Call ``callback(exit)`` for every exit (in the watcher's task; keep it quick)."""
        self._listeners.append(callback)

    def kick(self) -> None:
        """Something may have changed (an event, our own destroy): look soon."""
        self._changed = True
        self._kick.set()

    def _following(self) -> bool:
        """Whether any tracked domain is still running (stops at the first: no walk over all)."""
        return any(not e.future.done() for e in self._tracked.values())

    @property
    def tracked(self) -> list[str]:
        return [n for n, e in self._tracked.items() if not e.future.done()]

    # ---------------------------------------------------------------- loops
    async def _watch_loop(self, watch) -> None:  # type: ignore[no-untyped-def]
        try:
            async for _event in watch:
                self.events += 1
                self.kick()
        except XenStoreError as exc:
            log.warning("releaseDomain watch ended; relying on periodic re-scan", error=str(exc))

    async def _scan_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that
            # arrives as the event fires, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rescan_interval_s):
                    await self._kick.wait()
            periodic = not self._kick.is_set()
            if self.coalesce_s:
                await asyncio.sleep(self.coalesce_s)  # let a burst of events collapse into one scan
            self._kick.clear()
            if not self._following():
                self._fresh.clear()
                self._changed = False
                continue
            try:
                await self._look(full=periodic or self.xenstore is None)
            except Exception as exc:  # the one watcher must survive anything a backend throws
                log.warning("domain re-scan failed; retrying", error=str(exc), error_type=type(exc).__name__)
                await asyncio.sleep(1.0)
                self.kick()
            if self._fresh or self._changed:
                self._kick.set()

    async def _look(self, *, full: bool) -> None:
        """One round: check new subscriptions and, after events, what changed."""
        fresh, self._fresh = self._fresh, set()
        if fresh and not full:
            try:
                await self._check_fresh(fresh)
            except XenStoreError as exc:
                log.debug("xenstore check of new domains failed; listing instead", error=str(exc))
                full = True
        if self._changed and not full:
            with contextlib.suppress(XenStoreError):
                await self._check_present()
            wait = self._last_list + self.min_list_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # more events may arrive meanwhile: this listing covers them
            full = True
        if full:
            self._changed = False
            await self.rescan()

    async def _check_fresh(self, names: set[str]) -> None:
        """Is each newly subscribed domain still there?  One XenStore read each, issued after the
        subscription, so an absent ``name`` node is a domain destroyed before anyone watched it."""
        assert self.xenstore is not None
        horizon = self._subscriptions
        entries = [e for n in names if (e := self._tracked.get(n)) is not None and not e.future.done()]
        for entry in entries:
            final = self._final.get(entry.name)
            if final is not None and final.domid == entry.domid:  # died before it was subscribed
                exit_ = self._judge(entry, final)
                if exit_ is not None:
                    self._finish(entry, exit_)
        entries = [e for e in entries if not e.future.done()]
        if not entries:
            return
        self.checks += 1
        names_read = await asyncio.gather(
            *(self.xenstore.read_or_none(f"/local/domain/{e.domid}/name") for e in entries)
        )
        for entry, value in zip(entries, names_read, strict=True):
            if entry.future.done() or entry.since > horizon:
                continue
            # Present is alive: a domid is not handed out again while anything could still be
            # waiting on the old one, and a renamed domain (a claimed pool member the toolstack
            # now lists under its task's name) is still the domain subscribed.
            if value is None:
                self._finish(
                    entry,
                    DomainExit(entry.name, entry.domid, self._vanished_reason(entry), entry.requested, entry.last),
                )

    async def _check_present(self) -> None:
        """Which tracked domains no longer exist, from one XenStore directory of /local/domain."""
        assert self.xenstore is not None
        horizon = self._subscriptions
        self.checks += 1
        present = {int(c) for c in await self.xenstore.directory("/local/domain") if c.isdigit()}
        for entry in list(self._tracked.values()):
            if entry.future.done() or entry.since > horizon or entry.domid is None:
                continue
            if entry.domid not in present:
                self._finish(
                    entry,
                    DomainExit(entry.name, entry.domid, self._vanished_reason(entry), entry.requested, entry.last),
                )

    async def rescan(self) -> list[DomainExit]:
        """List all domains once and resolve the futures of tracked domains that exited.

        Only subscriptions made before the listing started are judged absent: a domain
        subscribed while the listing was under way may be missing from it although it is alive.
        A domain the listing shows shut down (with the subscribed domid) is judged regardless.
        """
        horizon = self._subscriptions
        self._last_list = time.monotonic()
        domains = await self.backend.list_domains()
        self.scans += 1
        by_name = {d.name: d for d in domains}
        self._final = {d.name: d for d in domains if d.state in (DomainState.SHUTDOWN, DomainState.DYING)}
        exits = []
        for entry in list(self._tracked.values()):
            if entry.future.done():
                continue
            info = by_name.get(entry.name)
            if entry.since > horizon:
                final = self._final.get(entry.name)
                if final is None or entry.domid is None or final.domid != entry.domid:
                    continue
            exit_ = self._judge(entry, info)
            if exit_ is not None:
                exits.append(exit_)
                self._finish(entry, exit_)
        return exits

    def _judge(self, entry: _Tracked, info: DomainInfo | None) -> DomainExit | None:
        if info is not None and entry.domid is not None and info.domid not in (None, entry.domid):
            # Same name, new domain: the incarnation we tracked is gone.
            return DomainExit(entry.name, entry.domid, self._vanished_reason(entry), entry.requested, entry.last)
        if info is None:
            return DomainExit(entry.name, entry.domid, self._vanished_reason(entry), entry.requested, entry.last)
        if entry.domid is None:
            entry.domid = info.domid
        if info.state is DomainState.SHUTDOWN:
            entry.last = info
            return DomainExit(entry.name, info.domid, info.shutdown_reason or ExitReason.UNKNOWN, entry.requested, info)
        if info.state is DomainState.DYING:
            reason = info.shutdown_reason or self._vanished_reason(entry)
            entry.last = info
            return DomainExit(entry.name, info.domid, reason, entry.requested, info)
        entry.last = info
        return None

    @staticmethod
    def _vanished_reason(entry: _Tracked) -> ExitReason:
        if entry.last is not None and entry.last.state is DomainState.SHUTDOWN and entry.last.shutdown_reason:
            return entry.last.shutdown_reason
        return ExitReason.DESTROYED

    def _finish(self, entry: _Tracked, exit_: DomainExit) -> None:
        log.info(
            "domain exited",
            domain=exit_.name,
            domid=exit_.domid,
            reason=exit_.reason.value,
            requested=exit_.requested,
        )
        if not entry.future.done():
            entry.future.set_result(exit_)
        for cb in self._listeners:
            try:
                cb(exit_)
            except Exception:  # a listener bug must not stop the watcher
                log.exception("domain exit listener failed", domain=exit_.name)
