"""TaskStats of a running task: CPU in Nomad's MHz (total_ticks), memory, and what a stream does
when the host's domain listing keeps failing (the shared sampler: xen/stats.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.unit.driver.test_lifecycle import _lifecycle, host, make_spec  # noqa: F401 - host is a fixture
from tests.unit.xen.test_probe import XL_INFO
from xen_driver.driver.errors import HostUnavailable
from xen_driver.driver.lifecycle import TaskLifecycle
from xen_driver.driver.state import DriverState
from xen_driver.xen.backend import XenBackendError
from xen_driver.xen.xl import XlBackend


def _burning(fake, name: str, share: float) -> None:
    """The fake domain ``name`` uses ``share`` of a CPU from now on (cumulative CPU time as
    xl would list it)."""
    t0 = time.monotonic()
    real = fake.list_domains

    async def list_domains():
        fake._set(name, cpu_seconds=round(share * (time.monotonic() - t0), 1))
        return await real()

    fake.list_domains = list_domains


async def _started(host, mhz: float | None = 2000.0):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    lc._sampler.interval_s = 0.05
    lc._sampler.window_s = 1.0
    lc.host_cpu_mhz = mhz
    spec = make_spec(tmp_path)
    handle = await lc.start_task(spec)
    return lc, spec, DriverState.decode(handle.driver_state).domain_name


async def test_cpu_is_reported_in_mhz_and_memory_as_the_allocation(host):
    lc, spec, name = await _started(host, mhz=2000.0)
    fake = host[2]
    try:
        _burning(fake, name, 0.5)
        stream = lc.task_stats(spec.id, 0.5)
        samples = [await asyncio.wait_for(anext(stream), 5) for _ in range(4)]
        await stream.aclose()
        last = samples[-1]
        assert last.cpu.percent == pytest.approx(50, abs=15)
        # Nomad counts CPU in MHz: the share of one host CPU times that CPU's clock.
        assert last.cpu.total_ticks == pytest.approx(last.cpu.percent / 100 * 2000.0)
        assert last.cpu.total_ticks > 0
        # Memory: the domain's allocation (16 MiB from the task's resources), as RSS and usage.
        assert last.memory.rss == last.memory.usage == last.memory.max_usage == 16 * 2**20
        stamps = [s.timestamp for s in samples]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    finally:
        await lc.close()


async def test_without_host_mhz_cpu_is_percent_only(host):
    lc, spec, name = await _started(host, mhz=None)
    try:
        lc._host_facts_asked = time.monotonic()  # the fake backend has no MHz to tell
        _burning(host[2], name, 0.5)
        stream = lc.task_stats(spec.id, 0.5)
        samples = [await asyncio.wait_for(anext(stream), 5) for _ in range(3)]
        await stream.aclose()
        assert samples[-1].cpu.percent is not None and samples[-1].cpu.total_ticks is None
    finally:
        await lc.close()


async def test_a_failing_sampler_ends_the_stream_instead_of_repeating_a_sample(host):
    lc, spec, name = await _started(host)
    fake = host[2]
    try:
        stream = lc.task_stats(spec.id, 0.5)
        good = await asyncio.wait_for(anext(stream), 5)

        healthy = fake.list_domains
        failed_since = None

        async def failing():
            nonlocal failed_since
            failed_since = failed_since or time.time()
            raise XenBackendError("xl list: cannot connect to xenstored")

        fake.list_domains = failing
        late = []
        with pytest.raises(HostUnavailable, match="cannot connect to xenstored"):
            async for sample in stream:  # at most what was sampled before the failures began
                late.append(sample)
        assert failed_since is not None and lc._sampler.failures >= 3
        assert all(s.timestamp.timestamp() < failed_since for s in late)

        # Nomad opens a new stream an interval later: while listings fail it gets no sample
        # (in particular not the last good one), only the error.
        again = lc.task_stats(spec.id, 0.5)
        with pytest.raises(HostUnavailable):
            await asyncio.wait_for(anext(again), 5)

        fake.list_domains = healthy
        fresh = await asyncio.wait_for(anext(lc.task_stats(spec.id, 0.5)), 5)
        assert fresh.timestamp > good.timestamp and fresh.timestamp.timestamp() > failed_since
    finally:
        await lc.close()


def _fake_xl(tmp_path: Path, info: str) -> Path:
    xl = tmp_path / "xl"
    (tmp_path / "info.txt").write_text(info)
    xl.write_text(f'#!/bin/sh\n[ "$1" = info ] && exec cat {tmp_path / "info.txt"}\nexit 1\n')
    xl.chmod(0o755)
    return xl


async def test_host_mhz_comes_from_xl_info(host):
    tmp_path, config, _ = host
    lc = TaskLifecycle(config, lambda e: None, backend=XlBackend(tmp_path / "cfg", xl=str(_fake_xl(tmp_path, XL_INFO))))
    try:
        assert await lc._learn_host_cpu_mhz() == pytest.approx(2294.608)
    finally:
        await lc.close()


async def test_host_mhz_unknown_when_xl_info_lacks_it(host):
    tmp_path, config, _ = host
    info = "\n".join(line for line in XL_INFO.splitlines() if not line.startswith("cpu_mhz"))
    lc = TaskLifecycle(config, lambda e: None, backend=XlBackend(tmp_path / "cfg", xl=str(_fake_xl(tmp_path, info))))
    try:
        assert await lc._learn_host_cpu_mhz() is None
    finally:
        await lc.close()


async def test_host_mhz_comes_from_libvirt_node_info(host):
    libvirt_backend = pytest.importorskip("xen_driver.xen.libvirt_backend")
    pytest.importorskip("libvirt")
    tmp_path, config, _ = host
    lc = TaskLifecycle(config, lambda e: None, backend=libvirt_backend.LibvirtBackend("test:///default"))
    try:
        # libvirt's test hypervisor describes a 1400 MHz host.
        assert await lc._learn_host_cpu_mhz() == 1400.0
    finally:
        await lc.close()


async def test_a_stream_sends_each_sample_when_the_sampler_hands_it_out(host, monkeypatch):
    """No timer per stream: a thousand streams wake together when the sampler has listed the
    host, which costs gRPC far less than a thousand separately timed wake-ups."""
    lc, spec, name = await _started(host)
    try:
        await lc._sampler.stop()  # the test lists the host itself
        stream = lc.task_stats(spec.id, 0.5)
        first = asyncio.ensure_future(anext(stream))
        await lc._sampler.sample_once()
        await asyncio.wait_for(first, 5)
        later = time.time_ns() + 10**9  # the next listing, an interval on
        monkeypatch.setattr("xen_driver.xen.stats.time.time_ns", lambda: later)
        second = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        await lc._sampler.sample_once()
        for _ in range(5):
            await asyncio.sleep(0)
        assert second.done(), "the stream did not send the sample it was handed"
        assert second.result().timestamp > first.result().timestamp
        await stream.aclose()
    finally:
        await lc.close()


async def test_waiting_streams_hold_no_timer_and_end_when_the_domain_is_gone(host):
    """A thousand open streams must not mean a thousand timers: a stream waits for the sampler
    only, and ends when the sampler no longer lists its domain."""
    lc, spec, name = await _started(host)
    fake = host[2]
    try:
        await lc._sampler.stop()  # the test lists the host itself
        await lc._sampler.sample_once()
        streams = [lc.task_stats(spec.id, 0.5) for _ in range(20)]
        for stream in streams:
            await asyncio.wait_for(anext(stream), 5)
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)
        waiting = [asyncio.ensure_future(anext(stream)) for stream in streams]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(loop._scheduled) - before < 5  # no timer per waiting stream
        real = fake.list_domains

        async def without_it():
            return [d for d in await real() if d.name != name]

        fake.list_domains = without_it
        await lc._sampler.sample_once()
        for fut in waiting:
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(fut, 5)
    finally:
        await lc.close()
