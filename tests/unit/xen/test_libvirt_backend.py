"""LibvirtBackend against libvirt's built-in test hypervisor (test:///default)."""

from __future__ import annotations

import asyncio
import threading
import xml.etree.ElementTree as ET

import pytest

from xen_driver.driver.timing import PhaseTimer
from xen_driver.xen.backend import Backend, DomainExists, DomainNotFound, DomainState, ExitReason
from xen_driver.xen.libvirtxml import domain_xml, map_state
from xen_driver.xen.spec import DomainSpec, SpecError, VifSpec

SPEC = DomainSpec(
    name="ndx-lv-1",
    uuid="6f1c5a3e-0b8a-4c43-9a57-2a1e6c0b1f00",
    kernel="/var/lib/ndx/images/ndx-unikernel",
    ramdisk="/var/lib/ndx/images/initrd",
    cmdline="clickos tick=5 <b>&amp;",
    memory_mb=16,
    maxmem_mb=32,
    vcpus=2,
    cpus="0-1",
    vifs=(VifSpec(bridge="xenbr0", mac="00:16:3E:00:00:01", ip="10.0.0.2", script="vif-bridge"),),
)


def test_domain_xml_pv_direct_boot() -> None:
    root = ET.fromstring(domain_xml(SPEC))
    assert root.get("type") == "xen"
    assert root.findtext("name") == "ndx-lv-1" and root.findtext("uuid") == SPEC.uuid
    assert root.findtext("os/type") == "linux"
    assert root.findtext("os/kernel") == SPEC.kernel and root.findtext("os/initrd") == SPEC.ramdisk
    assert root.findtext("os/cmdline") == "clickos tick=5 <b>&amp;"  # escaped in XML, intact after parsing
    assert (root.findtext("memory"), root.findtext("currentMemory")) == ("32", "16")
    assert root.find("vcpu").get("cpuset") == "0-1" and root.findtext("vcpu") == "2"
    iface = root.find("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("source").get("bridge") == "xenbr0"
    assert iface.find("mac").get("address") == "00:16:3e:00:00:01"
    assert iface.find("ip").get("address") == "10.0.0.2" and iface.find("script").get("path") == "vif-bridge"
    # preserve, as on the xl path: the driver reads why the guest stopped, then applies on_crash
    # itself (with destroy, libxl would tear the domain down before anyone asked why).
    assert [root.findtext(k) for k in ("on_poweroff", "on_reboot", "on_crash")] == ["preserve"] * 3


def test_domain_xml_validates() -> None:
    with pytest.raises(SpecError):
        domain_xml(DomainSpec(name="x", kernel="/k'", memory_mb=1))


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ((1, 1), None, (DomainState.RUNNING, None)),
        ((3, 0), None, (DomainState.PAUSED, None)),
        ((5, 1), None, (DomainState.SHUTDOWN, ExitReason.POWEROFF)),
        ((5, 2), None, (DomainState.SHUTDOWN, ExitReason.DESTROYED)),
        ((5, 3), None, (DomainState.SHUTDOWN, ExitReason.CRASH)),
        ((6, 0), None, (DomainState.SHUTDOWN, ExitReason.CRASH)),
        ((5, 5), None, (DomainState.SHUTDOWN, ExitReason.UNKNOWN)),
    ],
)
def test_map_state(state: tuple[int, int], reason: None, expected: tuple) -> None:  # type: ignore[type-arg]
    assert map_state(*state) == expected


def test_lifecycle_on_test_driver() -> None:
    pytest.importorskip("libvirt")
    from xen_driver.xen.libvirt_backend import LibvirtBackend

    async def main() -> None:
        be = LibvirtBackend("test:///default")
        assert isinstance(be, Backend)
        try:
            spec = DomainSpec(name="ndx-lv-2", kernel="/img/k", memory_mb=16, cmdline="tick=1")
            await be.validate(spec)
            timer = PhaseTimer()
            created = await be.create_domain(spec, paused=True, phases=timer)
            assert created.domid is not None and created.config_file == "" == be.config_file(spec.name)
            assert {"render", "domain_build"} <= set(timer.as_dict())  # XML build, define + start
            info = await be.domain(spec.name)
            assert info.state is DomainState.PAUSED and info.domid == created.domid and info.uuid
            assert info.memory_kib == 16 * 1024
            facts = await be.host_facts()
            assert facts.nr_cpus and facts.total_memory_mib and facts.free_memory_mib is not None
            with pytest.raises(DomainExists):
                await be.create_domain(spec)
            await be.unpause(spec.name)
            assert (await be.domain(spec.name)).state is DomainState.RUNNING
            names = {d.name for d in await be.list_domains()}
            assert {"ndx-lv-2", "test"} <= names
            await be.shutdown(spec.name, wait=True)
            off = await be.domain(spec.name)
            assert (off.state, off.shutdown_reason, off.domid) == (DomainState.SHUTDOWN, ExitReason.POWEROFF, None)
            await be.destroy(spec.name)
            await be.destroy(spec.name)  # idempotent
            with pytest.raises(DomainNotFound):
                await be.domain(spec.name)
            with pytest.raises(DomainNotFound):
                await be.unpause(spec.name)

            # Destroyed behind our back: the inactive definition reports DESTROYED.
            await be.create_domain(spec, paused=False)
            conn = be._connection()
            await asyncio.to_thread(lambda: conn.lookupByName(spec.name).destroy())
            gone = await be.domain(spec.name)
            assert (gone.state, gone.shutdown_reason) == (DomainState.SHUTDOWN, ExitReason.DESTROYED)
            # A stopped leftover of the same name is replaced on create.
            await be.create_domain(spec)
            assert (await be.domain(spec.name)).state is DomainState.PAUSED
            await be.forget(spec.name)  # running: left alone
            assert (await be.domain(spec.name)).state is DomainState.PAUSED
            # Destroyed while nobody watched (plugin down): forget() drops the definition.
            await asyncio.to_thread(lambda: conn.lookupByName(spec.name).destroy())
            await be.forget(spec.name)
            with pytest.raises(DomainNotFound):
                await be.domain(spec.name)
            await be.forget(spec.name)  # idempotent
        finally:
            await be.close()

    asyncio.run(main())


def test_missing_libvirt_module_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from xen_driver.xen import libvirt_backend

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):  # type: ignore[no-untyped-def]
        if name == "libvirt":
            raise ImportError("No module named 'libvirt'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(libvirt_backend.LibvirtNotInstalled, match="libvirt-python"):
        libvirt_backend.LibvirtBackend("test:///default")


class _BrokenConnection:
    """What a connection to a libvirtd that restarted looks like: dead, every call failing."""

    def __init__(self, libvirt) -> None:  # type: ignore[no-untyped-def]
        self._libvirt = libvirt
        self.closed = False

    def isAlive(self) -> int:
        return 0

    def close(self) -> int:
        self.closed = True
        return 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        def fail(*_a, **_kw):  # type: ignore[no-untyped-def]
            err = self._libvirt.libvirtError("Cannot write data: Broken pipe")
            err.err = (38, 0, "Cannot write data: Broken pipe", 2, "", None, None, -1, -1)  # VIR_ERR_SYSTEM_ERROR
            raise err

        return fail


def test_reconnects_after_libvirtd_restart_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """libvirtd restarted: the cached connection is dead.  The backend opens a new one, still
    finds its domains, and connection_health says when it was lost and re-opened; while libvirtd
    does not answer, connection_health says it is down."""
    libvirt = pytest.importorskip("libvirt")
    from xen_driver.xen.libvirt_backend import LibvirtBackend

    async def main() -> None:
        be = LibvirtBackend("test:///default")
        try:
            spec = DomainSpec(name="ndx-lv-3", kernel="/img/k", memory_mb=16)
            await be.create_domain(spec, paused=False)
            assert await be.connection_health() == (True, "")

            # (the test driver's state lives while any connection to it is open: keep one)
            keep = libvirt.open("test:///default")
            broken = _BrokenConnection(libvirt)
            be._conn.close()
            be._conn = broken  # libvirtd went away under an open connection
            assert (await be.domain(spec.name)).state is DomainState.RUNNING  # re-opened, same domain
            assert broken.closed and be.reconnects == 1
            ok, note = await be.connection_health()
            assert ok and note.startswith("libvirt connection lost at ") and ", reconnected at " in note, note

            # A call that fails on a connection still claiming to be alive is retried on a new one.
            class Stale(_BrokenConnection):
                def isAlive(self) -> int:
                    return 1

            be._conn = Stale(libvirt)
            assert spec.name in {d.name for d in await be.list_domains()}
            assert be.reconnects == 2

            # libvirtd down: no connection can be opened.
            be._conn = _BrokenConnection(libvirt)

            def refuse(uri: str):  # type: ignore[no-untyped-def]
                raise libvirt.libvirtError("Failed to connect socket to '/var/run/libvirt/libvirt-sock'")

            monkeypatch.setattr(be._libvirt, "open", refuse)
            ok, note = await be.connection_health()
            assert not ok and "does not answer since " in note and "libvirt-sock" in note, note
            monkeypatch.undo()
            ok, note = await be.connection_health()
            assert ok and "reconnected at" in note and "(3 reconnects)" in note, note
            await be.destroy(spec.name)
            keep.close()
        finally:
            await be.close()

    asyncio.run(main())


def test_health_check_of_a_hung_libvirtd_says_so_instead_of_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A libvirtd that takes the connection but never answers: the fingerprint's check says the
    node is unhealthy after HEALTH_TIMEOUT_S instead of waiting with it (the fingerprint stream
    stopped), and while that call hangs, later checks do not start another."""
    libvirt = pytest.importorskip("libvirt")
    from xen_driver.xen import libvirt_backend

    monkeypatch.setattr(libvirt_backend, "HEALTH_TIMEOUT_S", 0.2)
    release = threading.Event()
    calls: list[int] = []

    class Hung(_BrokenConnection):
        def isAlive(self) -> int:
            return 1

        def getLibVersion(self) -> int:
            calls.append(1)
            release.wait(10)
            return 1

    async def main() -> None:
        be = libvirt_backend.LibvirtBackend("test:///default")
        try:
            be._conn = Hung(libvirt)
            for _ in range(2):
                ok, note = await asyncio.wait_for(be.connection_health(), 5)
                assert not ok and "test:///default" in note, note
            assert calls == [1]
            release.set()
            for _ in range(100):
                if not be._health.waiting:
                    break
                await asyncio.sleep(0.02)
            assert await be.connection_health() == (True, "")
        finally:
            release.set()
            await be.close()

    asyncio.run(main())


def test_fingerprint_says_libvirtd_went_away_and_came_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's fingerprint: unhealthy while libvirtd does not answer, healthy again with a
    description of the reconnection once it does."""
    libvirt = pytest.importorskip("libvirt")
    from xen_driver.driver.config import PluginConfig
    from xen_driver.driver.core import DriverCore
    from xen_driver.driver.models import Health
    from xen_driver.xen.libvirt_backend import LibvirtBackend
    from xen_driver.xen.probe import HostProbe, ProbeState, XenHostInfo

    info = XenHostInfo(xen_version="4.17.5", xen_scheduler="credit2", free_memory_mib=1, total_memory_mib=2, nr_cpus=2)

    async def prober(_cfg: PluginConfig) -> HostProbe:
        return HostProbe(ProbeState.HEALTHY, "xen 4.17.5", "/usr/sbin/xl", info)

    async def main() -> None:
        be = LibvirtBackend("test:///default")

        class Tasks:
            backend = be

            def __init__(self, *_a: object) -> None:
                pass

            async def close(self) -> None:
                await be.close()

        core = DriverCore(PluginConfig.from_dict({"backend": "libvirt"}), prober=prober, tasks_factory=Tasks)
        try:
            fp = await core.fingerprint_once()
            assert fp.health is Health.HEALTHY and "libvirt" not in fp.description, fp
            be._conn.close()
            be._conn = _BrokenConnection(libvirt)

            def refuse(uri: str):  # type: ignore[no-untyped-def]
                raise libvirt.libvirtError("Failed to connect socket to '/var/run/libvirt/libvirt-sock'")

            monkeypatch.setattr(be._libvirt, "open", refuse)
            fp = await core.fingerprint_once()
            assert fp.health is Health.UNHEALTHY and "does not answer" in fp.description, fp
            monkeypatch.undo()
            fp = await core.fingerprint_once()
            assert fp.health is Health.HEALTHY, fp
            assert fp.description.startswith("xen 4.17.5; libvirt connection lost at "), fp.description
            assert "reconnected at" in fp.description
        finally:
            await core.shutdown()

    asyncio.run(main())
