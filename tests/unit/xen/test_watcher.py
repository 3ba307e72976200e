"""DomainWatcher: one re-list per @releaseDomain event, exit reasons, destroyed-by-us vs behind our back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.xen.xen_fakes import FakeBackend, FakeXenstored
from xen_driver.xen.backend import DomainState, ExitReason
from xen_driver.xen.watcher import DomainWatcher
from xen_driver.xen.xenstore import XenStore


def test_reasons_from_preserved_shutdown_states() -> None:
    async def main() -> None:
        be = FakeBackend()
        for i, name in enumerate(["off", "crash", "wd", "reboot", "live"], start=1):
            be.set(name, i, DomainState.BLOCKED)
        w = DomainWatcher(be)
        futs = {n: w.subscribe(n, domid=i) for i, n in enumerate(["off", "crash", "wd", "reboot", "live"], start=1)}
        assert await w.rescan() == []
        be.set("off", 1, DomainState.SHUTDOWN, shutdown_reason=ExitReason.POWEROFF)
        be.set("crash", 2, DomainState.SHUTDOWN, shutdown_reason=ExitReason.CRASH)
        be.set("wd", 3, DomainState.SHUTDOWN, shutdown_reason=ExitReason.WATCHDOG)
        be.set("reboot", 4, DomainState.SHUTDOWN, shutdown_reason=ExitReason.REBOOT)
        exits = await w.rescan()
        assert {e.name: e.reason for e in exits} == {
            "off": ExitReason.POWEROFF,
            "crash": ExitReason.CRASH,
            "wd": ExitReason.WATCHDOG,
            "reboot": ExitReason.REBOOT,
        }
        assert futs["crash"].result().domid == 2 and not futs["crash"].result().requested
        assert not futs["live"].done()
        assert w.tracked == ["live"]
        assert be.destroyed == []  # the watcher reports; the driver decides

    asyncio.run(main())


def test_destroyed_by_us_versus_behind_our_back() -> None:
    async def main() -> None:
        be = FakeBackend()
        be.set("ours", 5, DomainState.RUNNING)
        be.set("theirs", 6, DomainState.RUNNING)
        w = DomainWatcher(be)
        ours, theirs = w.subscribe("ours"), w.subscribe("theirs")
        await w.rescan()
        w.expect_exit("ours")
        del be.domains["ours"]
        del be.domains["theirs"]
        await w.rescan()
        assert (ours.result().reason, ours.result().requested) == (ExitReason.DESTROYED, True)
        assert (theirs.result().reason, theirs.result().requested) == (ExitReason.DESTROYED, False)
        assert ours.result().last_seen is not None and ours.result().domid == 5

    asyncio.run(main())


def test_dying_and_vanished_after_shutdown_keep_reason() -> None:
    async def main() -> None:
        be = FakeBackend()
        be.set("d", 7, DomainState.RUNNING)
        w = DomainWatcher(be)
        fut = w.subscribe("d")
        await w.rescan()
        be.set("d", 7, DomainState.DYING)  # xl destroy in progress
        await w.rescan()
        assert fut.result().reason is ExitReason.DESTROYED

    asyncio.run(main())


def test_recovery_of_already_exited_and_missing_domains() -> None:
    async def main() -> None:
        be = FakeBackend()
        be.set("was-crashed", 8, DomainState.SHUTDOWN, shutdown_reason=ExitReason.CRASH)
        w = DomainWatcher(be)
        crashed, missing = w.subscribe("was-crashed", domid=8), w.subscribe("gone-while-down", domid=9)
        await w.rescan()
        assert crashed.result().reason is ExitReason.CRASH
        assert missing.result().reason is ExitReason.DESTROYED
        assert w.subscribe("was-crashed", domid=8) is crashed  # WaitTask again: same answer at once

    asyncio.run(main())


def test_name_reused_by_new_domid_ends_old_incarnation() -> None:
    async def main() -> None:
        be = FakeBackend()
        be.set("n", 10, DomainState.RUNNING)
        w = DomainWatcher(be)
        fut = w.subscribe("n", domid=10)
        await w.rescan()
        be.set("n", 11, DomainState.RUNNING)
        await w.rescan()
        assert fut.result().reason is ExitReason.DESTROYED and fut.result().domid == 10

    asyncio.run(main())


def test_release_domain_events_drive_coalesced_rescans(tmp_path: Path) -> None:
    async def main() -> None:
        server = await FakeXenstored(str(tmp_path / "xs.sock")).start()
        be = FakeBackend()
        be.set("g", 3, DomainState.BLOCKED)
        async with XenStore(server.path) as xs:
            await xs.write("/local/domain/3/name", "g")  # what the toolstack writes at create
            async with DomainWatcher(be, xenstore=xs, rescan_interval_s=3600) as w:
                while w.events < 1 or w._changed:  # the watch's first event, spent with nothing tracked
                    await asyncio.sleep(0.01)
                fut = w.subscribe("g", domid=3)
                while w.checks < 1:  # the new subscription is checked in XenStore ...
                    await asyncio.sleep(0.01)
                calls = be.list_calls
                assert calls == 0 and not fut.done()  # ... without listing every domain
                be.set("g", 3, DomainState.SHUTDOWN, shutdown_reason=ExitReason.CRASH)
                for _ in range(20):  # a burst of events
                    server.fire_special("@releaseDomain")
                exit_ = await asyncio.wait_for(fut, 2)
                assert exit_.reason is ExitReason.CRASH
                await asyncio.sleep(0.1)
                assert 1 <= be.list_calls - calls <= 3  # coalesced, not one list per event
                assert w.events >= 20
                # No tracked domains: events cost nothing.
                before = be.list_calls
                server.fire_special("@releaseDomain")
                await asyncio.sleep(0.1)
                assert be.list_calls == before
        await server.stop()

    asyncio.run(main())


def test_periodic_rescan_without_xenstore() -> None:
    async def main() -> None:
        be = FakeBackend()
        be.set("p", 4, DomainState.RUNNING)
        async with DomainWatcher(be, rescan_interval_s=0.05) as w:
            fut = w.subscribe("p")
            await asyncio.sleep(0.1)
            del be.domains["p"]
            assert (await asyncio.wait_for(fut, 2)).reason is ExitReason.DESTROYED

    asyncio.run(main())
