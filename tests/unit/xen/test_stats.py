"""StatsSampler: one list per tick for all domains, windowed CPU percent, latest-only queues,
and what subscribers get when listings keep failing."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.xen.xen_fakes import FakeBackend
from xen_driver.xen.backend import DomainState, XenBackendError
from xen_driver.xen.stats import DomainSample, SamplerFailure, StatsSampler


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


class _FlakyBackend(FakeBackend):
    """A FakeBackend whose listing raises while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: Exception | None = None

    async def list_domains(self):  # type: ignore[no-untyped-def]
        if self.failing is not None:
            self.list_calls += 1
            raise self.failing
        return await super().list_domains()


def test_failing_listings_end_in_a_failure_not_a_stale_sample() -> None:
    async def main() -> None:
        be = _FlakyBackend()
        be.set("g", 3, DomainState.RUNNING, cpu_seconds=1.0, memory_kib=16384)
        s = StatsSampler(be, max_failures=3)
        queue = s.subscribe("g")
        await s.tick()
        good = queue.get_nowait()
        assert isinstance(good, DomainSample) and s.failures == 0

        be.failing = XenBackendError("xl list: xenstored gone")
        await s.tick()
        await s.tick()
        # Failing, but not yet for long: nothing is sent, and the old sample is not handed to a
        # stream opened meanwhile.
        assert queue.empty() and s.failures == 2 and s.latest("g") is None
        late = s.subscribe("g")
        assert late.empty()

        await s.tick()  # the third failure in a row
        for q in (queue, late):
            failure = q.get_nowait()
            assert isinstance(failure, SamplerFailure) and failure.failures == 3
            assert "xenstored gone" in str(failure) and "3" in str(failure)
        await s.tick()
        assert late.get_nowait().failures == 4  # reported again while it lasts

        be.failing = None
        await s.tick()
        fresh = queue.get_nowait()
        assert isinstance(fresh, DomainSample) and fresh.timestamp_ns > good.timestamp_ns
        assert s.failures == 0

    asyncio.run(main())


def test_a_hanging_listing_counts_as_a_failure() -> None:
    class Hanging(FakeBackend):
        async def list_domains(self):  # type: ignore[no-untyped-def]
            await asyncio.sleep(3600)

    async def main() -> None:
        s = StatsSampler(Hanging(), max_failures=1, sample_timeout_s=0.05)
        queue = s.subscribe("g")
        await asyncio.wait_for(s.tick(), 2)
        failure = queue.get_nowait()
        assert isinstance(failure, SamplerFailure) and "no answer within 0.05s" in failure.error

    asyncio.run(main())


def test_an_unexpected_exception_is_a_failure_and_sampling_goes_on() -> None:
    async def main() -> None:
        be = _FlakyBackend()
        be.set("g", 3, DomainState.RUNNING)
        be.failing = RuntimeError("boom")
        s = StatsSampler(be, interval_s=0.01, max_failures=2)
        queue = s.subscribe("g")
        s.start()
        try:
            failure = await asyncio.wait_for(queue.get(), 2)
            assert isinstance(failure, SamplerFailure) and failure.error == "RuntimeError: boom"
            be.failing = None
            while not isinstance(item := await asyncio.wait_for(queue.get(), 2), DomainSample):
                pass
            assert item.name == "g"
        finally:
            await s.stop()

    asyncio.run(main())


def test_peak_memory_is_the_highest_allocation_of_this_domain() -> None:
    async def main() -> None:
        be = FakeBackend()
        s = StatsSampler(be)
        for kib in (16384, 32768, 8192):  # a guest that balloons up, then down
            be.set("g", 3, DomainState.RUNNING, memory_kib=kib)
            sample = (await s.sample_once())["g"]
        assert (sample.memory_kib, sample.peak_memory_kib) == (8192, 32768)
        be.set("g", 4, DomainState.RUNNING, memory_kib=8192)  # a new domain of the same name
        assert (await s.sample_once())["g"].peak_memory_kib == 8192

    asyncio.run(main())


def test_sampler_follows_the_interval_subscribers_ask_for() -> None:
    """Nomad's collection_interval sets how often the host is listed: the shortest any open
    stream asks for, back to the default when that stream goes away."""

    async def main() -> None:
        be = FakeBackend()
        be.set("g", 3, DomainState.RUNNING, cpu_seconds=1.0, memory_kib=16384, vcpus=1)
        s = StatsSampler(be, interval_s=10.0)
        slow = s.subscribe("g", 10.0)
        fast = s.subscribe("g", 0.1)
        assert s.current_interval_s == 0.1
        s.start()
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while be.list_calls < 5:  # at 10 s this would take 40 s
                await asyncio.wait_for(fast.get(), 2)
            assert loop.time() - t0 < 3
            s.unsubscribe("g", fast)
            assert s.current_interval_s == 10.0
            calls = be.list_calls
            await asyncio.sleep(0.5)
            assert be.list_calls <= calls + 1  # back to one listing per 10 s
            s.unsubscribe("g", slow)
            assert s.current_interval_s == 10.0
        finally:
            await s.stop()

    asyncio.run(main())


def test_subscribers_of_a_domain_no_longer_listed_are_told_it_is_gone() -> None:
    from xen_driver.xen.stats import DomainGone

    async def main() -> None:
        be = FakeBackend()
        be.set("g", 3, DomainState.RUNNING, cpu_seconds=1.0, memory_kib=16384, vcpus=1)
        s = StatsSampler(be)
        queue = s.subscribe("g")
        await s.sample_once()
        assert isinstance(queue.get_nowait(), DomainSample)
        del be.domains["g"]
        await s.sample_once()
        assert queue.get_nowait() == DomainGone("g")

    asyncio.run(main())
