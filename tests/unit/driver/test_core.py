"""The driver core: fingerprint stream, event broadcast, delegation, and a shutdown that leaves guests alone."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from xen_driver.driver.config import PluginConfig
from xen_driver.driver.core import DriverCore, fingerprint_from_probe
from xen_driver.driver.errors import NotSupported
from xen_driver.driver.models import ExitResult, Health, TaskEvent
from xen_driver.xen.probe import HostProbe, ProbeState, XenHostInfo

INFO = XenHostInfo(
    xen_version="4.17.5", xen_scheduler="credit2", free_memory_mib=1843, total_memory_mib=3071, nr_cpus=2
)


def test_fingerprint_mapping():
    cfg = PluginConfig()
    fp = fingerprint_from_probe(HostProbe(ProbeState.UNDETECTED, "no xl"), cfg)
    assert (fp.health, fp.description, dict(fp.attributes)) == (Health.UNDETECTED, "no xl", {})
    fp = fingerprint_from_probe(HostProbe(ProbeState.UNHEALTHY, "no hypervisor", "/usr/sbin/xl"), cfg)
    assert fp.health is Health.UNHEALTHY
    assert fp.attributes == {"driver.xen.backend": "xl", "driver.xen.xl_path": "/usr/sbin/xl"}
    fp = fingerprint_from_probe(HostProbe(ProbeState.HEALTHY, "ok", "/usr/sbin/xl", INFO), cfg)
    assert fp.health is Health.HEALTHY
    assert fp.attributes["driver.xen.version"] == "4.17.5" and fp.attributes["driver.xen.total_memory"].value == 3071


def test_fingerprint_attributes_do_not_follow_free_memory():
    """Guests coming and going change Xen's free memory; the node's attributes must not change with
    it (each change re-registers the node, and Nomad evaluates every job on it)."""
    cfg = PluginConfig()
    fewer = replace(INFO, free_memory_mib=INFO.free_memory_mib - 900)
    a, b = (fingerprint_from_probe(HostProbe(ProbeState.HEALTHY, "ok", "/usr/sbin/xl", i), cfg) for i in (INFO, fewer))
    assert a.attributes == b.attributes and a.description == b.description


class FakeTasks:
    def __init__(self, config, emit):
        self.emit = emit
        self.calls: list[str] = []

    async def wait_task(self, task_id):
        self.calls.append("wait")
        return ExitResult(exit_code=0)

    async def destroy_task(self, task_id, force):
        self.calls.append("destroy")

    async def close(self):
        self.calls.append("close")


def test_core_streams_and_delegation():
    async def scenario():
        probes = iter([ProbeState.UNDETECTED, ProbeState.HEALTHY, ProbeState.HEALTHY])

        async def prober(cfg):
            state = next(probes)
            return HostProbe(state, state.value, info=INFO if state is ProbeState.HEALTHY else None)

        core = DriverCore(PluginConfig(fingerprint_period=3600.0), prober=prober, tasks_factory=FakeTasks)
        stream = core.fingerprints()
        first = await asyncio.wait_for(stream.__anext__(), 1)
        assert first.health is Health.UNDETECTED
        core.request_fingerprint()  # "on change": no need to wait for the period
        second = await asyncio.wait_for(stream.__anext__(), 1)
        assert second.health is Health.HEALTHY
        await stream.aclose()

        events = core.task_events()
        pending = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)
        core.tasks.emit(TaskEvent(task_id="t", alloc_id="a", task_name="web", message="hello"))
        assert (await asyncio.wait_for(pending, 1)).message == "hello"
        await events.aclose()

        assert (await core.wait_task("t")).exit_code == 0
        await core.shutdown()
        assert core.tasks.calls == ["wait", "close"]  # shutdown closes, never destroys guests

    asyncio.run(scenario())


def test_core_without_lifecycle_answers_not_supported():
    async def scenario():
        core = DriverCore(PluginConfig())
        with pytest.raises(NotSupported, match="StartTask"):
            await core.start_task(None)
        with pytest.raises(NotSupported, match="TaskStats"):
            core.task_stats("x", 1.0)
        with pytest.raises(NotSupported):
            await core.exec_task("x", ["sh"], None)

    asyncio.run(scenario())


def test_fingerprint_follows_host_changes_before_the_period(tmp_path):
    """xl appearing on the host is noticed within the watch interval, not after fingerprint_period."""
    xl = tmp_path / "xl"

    async def scenario():
        core = DriverCore(PluginConfig(xl_path=str(xl), fingerprint_period=3600.0), watch_interval=0.1)
        stream = core.fingerprints()
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert first.health is Health.UNDETECTED
        xl.write_text("#!/bin/sh\necho 'xen_version : 4.17.5'\necho 'xen_scheduler : credit2'\n")
        xl.chmod(0o755)
        second = await asyncio.wait_for(stream.__anext__(), 5)
        assert second.health is Health.HEALTHY and second.attributes["driver.xen.version"] == "4.17.5"
        xl.unlink()
        third = await asyncio.wait_for(stream.__anext__(), 5)
        assert third.health is Health.UNDETECTED
        await stream.aclose()

    asyncio.run(scenario())


def test_fingerprint_periodic_without_change():
    calls = []

    async def prober(cfg):
        calls.append(1)
        return HostProbe(ProbeState.UNDETECTED, "no xl")

    async def scenario():
        core = DriverCore(
            PluginConfig(fingerprint_period=1.0), prober=prober, signature=lambda cfg: (), watch_interval=0.2
        )
        stream = core.fingerprints()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await stream.__anext__()
        await stream.__anext__()
        assert 0.9 <= loop.time() - start < 2.0  # one period, not one watch interval
        await stream.aclose()

    asyncio.run(scenario())
    assert len(calls) == 2


async def test_fingerprint_probe_hands_host_facts_to_the_tasks():
    """No task start pays for `xl info`: the fingerprint's probe already learnt the host."""

    class Tasks:
        learned = None

        def __init__(self, config, emit):
            pass

        def learn_host_info(self, info):
            Tasks.learned = info

    async def prober(config):
        return HostProbe(ProbeState.HEALTHY, "ok", "/usr/sbin/xl", INFO)

    core = DriverCore(PluginConfig(), prober=prober, tasks_factory=Tasks)
    await core.fingerprint_once()
    assert Tasks.learned is INFO


def test_lifecycle_learns_cpus_memory_and_mhz_from_the_probe(tmp_path):
    from xen_driver.driver.lifecycle import TaskLifecycle

    lc = TaskLifecycle(PluginConfig.from_dict({"state_dir": str(tmp_path)}), lambda e: None, backend=object())
    lc.learn_host_info(XenHostInfo("4.17.5", "credit2", 100, 3071, 2, cpu_mhz=2400.0))
    assert (lc.host_cpus, lc.host_memory_mib, lc.host_cpu_mhz) == (2, 3071, 2400.0)
    assert lc.host_limits.total_memory_mib == 3071
