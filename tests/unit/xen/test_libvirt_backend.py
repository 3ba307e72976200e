"""LibvirtBackend against libvirt's built-in test hypervisor (test:///default)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from xen_driver.driver.timing import PhaseTimer
from xen_driver.xen.backend import Backend, DomainExists, DomainNotFound, DomainState, ExitReason
from xen_driver.xen.libvirt_backend import domain_xml, map_state
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
    assert [root.findtext(k) for k in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3


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
            await be.destroy(spec.name)
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
