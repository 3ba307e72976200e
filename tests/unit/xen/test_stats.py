"""StatsSampler: one list per tick for all domains, windowed CPU percent, latest-only queues."""

from __future__ import annotations

import asyncio

import pytest
from xen_fakes import FakeBackend

from xen_driver.xen.backend import DomainState
from xen_driver.xen.stats import StatsSampler


def test_cpu_percent_over_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("xen_driver.xen.stats.time.monotonic", lambda: clock[0])

    async def main() -> None:
        be = FakeBackend()
        s = StatsSampler(be, interval_s=1, window_s=5)
        be.set("g", 3, DomainState.RUNNING, cpu_seconds=10.0, memory_kib=16384, vcpus=1)
        first = (await s.sample_once())["g"]
        assert first.cpu_percent is None and first.memory_kib == 16384
        for i in range(1, 11):  # 0.25 s of CPU per wall second = 25 %
            clock[0] = 100.0 + i
            be.set("g", 3, DomainState.RUNNING, cpu_seconds=10.0 + 0.25 * i, memory_kib=16384, vcpus=1)
            sample = (await s.sample_once())["g"]
            assert sample.cpu_percent == pytest.approx(25.0)
        # The base sample is never older than the window plus one interval.
        assert len(s._history["g"]) <= 7
        assert be.list_calls == 11

    asyncio.run(main())


def test_new_incarnation_resets_history(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("xen_driver.xen.stats.time.monotonic", lambda: clock[0])

    async def main() -> None:
        be = FakeBackend()
        s = StatsSampler(be)
        be.set("g", 3, DomainState.RUNNING, cpu_seconds=50.0)
        await s.sample_once()
        clock[0] = 1.0
        be.set("g", 4, DomainState.RUNNING, cpu_seconds=0.1)  # same name, new domain
        assert (await s.sample_once())["g"].cpu_percent is None

    asyncio.run(main())


def test_subscribers_get_latest_and_one_list_serves_all() -> None:
    async def main() -> None:
        be = FakeBackend()
        for i in range(20):
            be.set(f"g{i}", i + 1, DomainState.BLOCKED, cpu_seconds=float(i))
        s = StatsSampler(be, interval_s=0.02)
        queues = {f"g{i}": s.subscribe(f"g{i}") for i in range(20)}
        s.start()
        try:
            samples = await asyncio.wait_for(asyncio.gather(*(q.get() for q in queues.values())), 2)
            assert [x.name for x in samples] == list(queues)
            await asyncio.sleep(0.1)
            assert all(q.qsize() <= 1 for q in queues.values())
            calls = be.list_calls
            assert calls >= 2
            # One list per tick regardless of the number of subscribers.
            await asyncio.sleep(0.2)
            assert be.list_calls - calls <= 0.2 / 0.02 + 2
            s.unsubscribe("g0", queues["g0"])
            assert s.latest("g0") is not None
            del be.domains["g0"]
            await asyncio.sleep(0.05)
            assert s.latest("g0") is None
        finally:
            await s.stop()

    asyncio.run(main())


def test_no_subscribers_no_listing() -> None:
    async def main() -> None:
        be = FakeBackend()
        s = StatsSampler(be, interval_s=0.01)
        s.start()
        await asyncio.sleep(0.05)
        await s.stop()
        assert be.list_calls == 0

    asyncio.run(main())
