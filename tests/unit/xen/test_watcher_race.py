"""A domain listing that was already under way when a task registered must not judge that task.

``xl list`` reads the hypervisor's domain table when it starts and answers some time later (up to
seconds on a loaded host).  A domain created and subscribed in between is absent from the answer
although it is alive; the watcher used to declare it "destroyed outside of Nomad".  The backend
below takes its snapshot when ``list_domains`` is called and answers only when the test lets it,
so each interleaving is reproduced exactly, without timing.
"""

from __future__ import annotations

import asyncio

from tests.unit.xen.xen_fakes import FakeBackend
from xen_driver.xen.backend import DomainInfo, DomainState, ExitReason
from xen_driver.xen.watcher import DomainWatcher


class HeldBackend(FakeBackend):
    """``list_domains`` snapshots the table at once and returns it when ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.release = asyncio.Event()
        self.listing = asyncio.Event()  # set while a held listing waits
        self.answered = asyncio.Condition()

    async def list_domains(self) -> list[DomainInfo]:
        snapshot = await super().list_domains()
        if self.hold:
            self.listing.set()
            await self.release.wait()
        async with self.answered:
            self.answered.notify_all()
        return snapshot

    async def wait_calls(self, n: int) -> None:
        async with self.answered:
            await self.answered.wait_for(lambda: self.list_calls >= n)


def test_listing_started_before_a_domain_existed_does_not_judge_it() -> None:
    async def main() -> None:
        be = HeldBackend()
        be.set("old", 1, DomainState.RUNNING)
        w = DomainWatcher(be)
        old = w.subscribe("old", domid=1)
        be.hold = True
        listing = asyncio.create_task(w.rescan())
        await be.listing.wait()  # the snapshot is taken: "new" does not exist yet
        be.set("new", 2, DomainState.BLOCKED)  # xl create returns ...
        new = w.subscribe("new", domid=2)  # ... and StartTask registers the domain
        be.release.set()
        assert await listing == []
        assert not new.done() and not old.done()
        assert sorted(w.tracked) == ["new", "old"]

        be.hold = False
        assert await w.rescan() == []  # a listing that started after the subscription sees it alive
        assert not new.done()

        del be.domains["new"]  # a real death is still reported
        [exit_] = await w.rescan()
        assert (exit_.name, exit_.reason, exit_.requested) == ("new", ExitReason.DESTROYED, False)
        assert new.result() is exit_ and not old.done()

    asyncio.run(main())


def test_listing_under_way_during_a_name_reuse_does_not_end_the_new_incarnation() -> None:
    async def main() -> None:
        be = HeldBackend()
        be.set("n", 10, DomainState.RUNNING)
        w = DomainWatcher(be)
        first = w.subscribe("n", domid=10)
        await w.rescan()
        be.hold = True
        listing = asyncio.create_task(w.rescan())
        await be.listing.wait()  # the snapshot still shows domid 10
        be.set("n", 11, DomainState.RUNNING)  # old one gone, a new domain took the name
        second = w.subscribe("n", domid=11)
        assert first.result().domid == 10  # the old incarnation ends when the new one registers
        be.release.set()
        await listing
        assert not second.done()
        be.hold = False
        be.set("n", 11, DomainState.SHUTDOWN, shutdown_reason=ExitReason.POWEROFF)
        await w.rescan()
        assert (second.result().domid, second.result().reason) == (11, ExitReason.POWEROFF)

    asyncio.run(main())


def test_scan_loop_judges_a_late_subscription_with_the_next_listing() -> None:
    """The same race through the running watcher: the listing a first start triggers is held
    while a second task starts; the second task survives it, and its real death is reported."""

    async def main() -> None:
        be = HeldBackend()
        be.set("a", 1, DomainState.RUNNING)
        async with DomainWatcher(be, rescan_interval_s=3600, coalesce_s=0) as w:
            be.hold = True
            a = w.subscribe("a", domid=1)  # kicks a listing, which the backend holds
            await be.listing.wait()
            be.set("b", 2, DomainState.RUNNING)
            b = w.subscribe("b", domid=2)
            be.hold = False
            be.release.set()
            await be.wait_calls(2)  # the subscription of "b" asked for a listing of its own
            assert not a.done() and not b.done()
            del be.domains["b"]
            w.kick()  # what @releaseDomain does
            exit_ = await asyncio.wait_for(b, 5)
            assert (exit_.name, exit_.reason, exit_.requested) == ("b", ExitReason.DESTROYED, False)
            assert not a.done()

    asyncio.run(main())


def test_stop_during_a_listing_is_reported_as_requested_once_the_domain_is_gone() -> None:
    """A listing taken before our destroy still shows the guest: no exit from it; the listing
    after the destroy reports it, as requested."""

    async def main() -> None:
        be = HeldBackend()
        be.set("s", 3, DomainState.RUNNING)
        w = DomainWatcher(be)
        fut = w.subscribe("s", domid=3)
        await w.rescan()
        be.hold = True
        listing = asyncio.create_task(w.rescan())
        await be.listing.wait()
        w.expect_exit("s")  # StopTask
        del be.domains["s"]  # xl destroy
        be.release.set()
        assert await listing == [] and not fut.done()
        be.hold = False
        await w.rescan()
        assert (fut.result().reason, fut.result().requested) == (ExitReason.DESTROYED, True)

    asyncio.run(main())


def test_death_seen_by_a_listing_that_started_after_the_subscription_is_reported() -> None:
    """The fix must not hide a guest that dies right after it registered."""

    async def main() -> None:
        be = HeldBackend()
        be.set("c", 4, DomainState.RUNNING)
        w = DomainWatcher(be)
        fut = w.subscribe("c", domid=4)
        be.set("c", 4, DomainState.SHUTDOWN, shutdown_reason=ExitReason.CRASH)
        be.hold = True
        listing = asyncio.create_task(w.rescan())
        await be.listing.wait()
        late = w.subscribe("late", domid=5)  # absent from the snapshot, and not judged by it
        be.release.set()
        [exit_] = await listing
        assert (exit_.name, exit_.reason) == ("c", ExitReason.CRASH) and fut.done()
        assert not late.done()

    asyncio.run(main())
