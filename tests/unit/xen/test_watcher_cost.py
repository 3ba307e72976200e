"""What the watcher costs as the number of guests grows: a start costs one XenStore read and no
listing; events cost a XenStore directory and at most one listing per interval, however many
arrive; and no guest is lost on the way (one that died before it was subscribed, one destroyed
before it was subscribed, one destroyed while another shut down)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.xen.xen_fakes import FakeBackend, FakeXenstored
from xen_driver.xen.backend import DomainState, ExitReason
from xen_driver.xen.watcher import DomainWatcher
from xen_driver.xen.xenstore import XenStore


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def run(tmp_path: Path, body, **watcher_kw) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        server = await FakeXenstored(str(tmp_path / "xs.sock")).start()
        be = FakeBackend()
        try:
            async with XenStore(server.path) as xs:

                async def create(name: str, domid: int, state: DomainState = DomainState.BLOCKED) -> None:
                    be.set(name, domid, state)
                    await xs.write(f"/local/domain/{domid}/name", name)

                async def destroy(name: str) -> None:
                    info = be.domains.pop(name)
                    await xs.rm(f"/local/domain/{info.domid}")
                    server.fire_special("@releaseDomain")

                kw = {"rescan_interval_s": 3600, "coalesce_s": 0.0, **watcher_kw}
                async with DomainWatcher(be, xenstore=xs, **kw) as w:
                    await _until(lambda: w.events >= 1 and not w._changed)  # the watch's first event
                    await body(w, be, server, create, destroy)
        finally:
            await server.stop()

    asyncio.run(main())


def test_starts_cost_no_listing(tmp_path: Path) -> None:
    async def body(w, be, server, create, destroy):  # type: ignore[no-untyped-def]
        futs = []
        for i in range(1, 201):
            await create(f"g{i}", i)
            futs.append(w.subscribe(f"g{i}", domid=i))
        await _until(lambda: not w._fresh and w.checks >= 1)
        await asyncio.sleep(0.05)
        assert be.list_calls == 0 and not any(f.done() for f in futs)

    run(tmp_path, body)


def test_domain_destroyed_before_its_subscription_is_reported_without_a_listing(tmp_path: Path) -> None:
    async def body(w, be, server, create, destroy):  # type: ignore[no-untyped-def]
        await create("live", 1)
        live = w.subscribe("live", domid=1)
        # "gone" was created (domid 2) and destroyed before StartTask subscribed it
        gone = w.subscribe("gone", domid=2)
        exit_ = await asyncio.wait_for(gone, 5)
        assert (exit_.reason, exit_.requested) == (ExitReason.DESTROYED, False)
        assert be.list_calls == 0 and not live.done()

    run(tmp_path, body)


def test_guest_that_died_before_its_subscription_is_reported_at_once(tmp_path: Path) -> None:
    async def body(w, be, server, create, destroy):  # type: ignore[no-untyped-def]
        await create("other", 1)
        other = w.subscribe("other", domid=1)
        await create("early", 2)
        be.set("early", 2, DomainState.SHUTDOWN, shutdown_reason=ExitReason.CRASH)
        server.fire_special("@releaseDomain")  # its event is spent on a listing ...
        await _until(lambda: be.list_calls >= 1 and not w._changed)
        early = w.subscribe("early", domid=2)  # ... before StartTask subscribes it
        exit_ = await asyncio.wait_for(early, 5)
        assert exit_.reason is ExitReason.CRASH and not other.done()

    run(tmp_path, body)


def test_a_burst_of_stops_costs_about_one_listing_per_interval(tmp_path: Path) -> None:
    async def body(w, be, server, create, destroy):  # type: ignore[no-untyped-def]
        n = 60
        futs = {}
        for i in range(1, n + 1):
            await create(f"g{i}", i)
            futs[f"g{i}"] = w.subscribe(f"g{i}", domid=i)
        await _until(lambda: not w._fresh)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(1, n + 1):  # guests power off one after another over ~0.6 s
            be.set(f"g{i}", i, DomainState.SHUTDOWN, shutdown_reason=ExitReason.POWEROFF)
            server.fire_special("@releaseDomain")
            await asyncio.sleep(0.01)
        exits = await asyncio.wait_for(asyncio.gather(*futs.values()), 10)
        took = loop.time() - t0
        assert {e.reason for e in exits} == {ExitReason.POWEROFF}
        assert be.list_calls <= 2 + took / w.min_list_interval_s, (be.list_calls, took)

    run(tmp_path, body, min_list_interval_s=0.3)


def test_destroy_and_shutdown_in_one_burst_are_both_reported(tmp_path: Path) -> None:
    async def body(w, be, server, create, destroy):  # type: ignore[no-untyped-def]
        await create("a", 1)
        await create("b", 2)
        a, b = w.subscribe("a", domid=1), w.subscribe("b", domid=2)
        await _until(lambda: not w._fresh)
        be.set("b", 2, DomainState.SHUTDOWN, shutdown_reason=ExitReason.CRASH)
        await destroy("a")  # one event for both, as xenstored may send
        ea, eb = await asyncio.wait_for(asyncio.gather(a, b), 5)
        assert (ea.reason, eb.reason) == (ExitReason.DESTROYED, ExitReason.CRASH)

    run(tmp_path, body)
