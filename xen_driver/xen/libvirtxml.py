"""libvirt's side of a domain, as values: the XML of a domain to define, and libvirt's
(state, reason) of a domain read back as our :class:`~xen_driver.xen.backend.DomainState` and
exit reason.  Pure functions, usable (and tested) without the libvirt binding; the enum numbers
are part of libvirt's stable ABI.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from xen_driver.xen.backend import DomainState, ExitReason
from xen_driver.xen.spec import DomainSpec

# libvirt enum values (virDomainState, virDomainShutoffReason, virErrorNumber); numbers are
# part of libvirt's stable ABI, kept here so XML rendering and parsing work without the module.
_VIR_DOMAIN_NOSTATE, _RUNNING, _BLOCKED, _PAUSED, _SHUTDOWN, _SHUTOFF, _CRASHED, _PMSUSPENDED = range(8)
_SHUTOFF_REASONS = {
    1: ExitReason.POWEROFF,  # VIR_DOMAIN_SHUTOFF_SHUTDOWN
    2: ExitReason.DESTROYED,  # VIR_DOMAIN_SHUTOFF_DESTROYED
    3: ExitReason.CRASH,  # VIR_DOMAIN_SHUTOFF_CRASHED
    6: ExitReason.CRASH,  # VIR_DOMAIN_SHUTOFF_FAILED (failed to start / died on the host side)
}


def domain_xml(spec: DomainSpec, *, domain_type: str = "xen") -> str:
    """libvirt domain XML for ``spec`` (validated first; ElementTree escapes all text)."""
    spec.validate()
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = spec.name
    if spec.uuid:
        ET.SubElement(dom, "uuid").text = spec.uuid
    maxmem = spec.maxmem_mb or spec.memory_mb
    ET.SubElement(dom, "memory", unit="MiB").text = str(maxmem)
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(spec.memory_mb)
    vcpu = ET.SubElement(dom, "vcpu", placement="static")
    if spec.cpus and spec.cpus != "all":
        vcpu.set("cpuset", spec.cpus)
    vcpu.text = str(spec.vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type").text = "linux"  # libvirt's name for Xen PV
    ET.SubElement(os_el, "kernel").text = spec.kernel
    if spec.ramdisk:
        ET.SubElement(os_el, "initrd").text = spec.ramdisk
    if spec.cmdline:
        ET.SubElement(os_el, "cmdline").text = spec.cmdline
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, key).text = "preserve"  # the driver applies the job's policy (module doc)
    devices = ET.SubElement(dom, "devices")
    for vif in spec.vifs:
        iface = ET.SubElement(devices, "interface", type="bridge" if vif.bridge else "ethernet")
        if vif.bridge:
            ET.SubElement(iface, "source", bridge=vif.bridge)
        if vif.mac:
            ET.SubElement(iface, "mac", address=vif.mac.lower())
        if vif.ip:
            for addr in vif.ip.split(" "):
                ET.SubElement(iface, "ip", address=addr)
        if vif.script:
            ET.SubElement(iface, "script", path=vif.script)
        if vif.vifname:
            ET.SubElement(iface, "target", dev=vif.vifname)
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="xen", port="0")
    return ET.tostring(dom, encoding="unicode")


def map_state(state: int, reason: int) -> tuple[DomainState, ExitReason | None]:
    """libvirt (state, reason) → our state and, for a stopped domain, the exit reason."""
    if state in (_RUNNING, _SHUTDOWN):  # SHUTDOWN = "being shut down": still running
        return DomainState.RUNNING, None
    if state == _BLOCKED:
        return DomainState.BLOCKED, None
    if state in (_PAUSED, _PMSUSPENDED):
        return DomainState.PAUSED, None
    if state == _SHUTOFF:
        return DomainState.SHUTDOWN, _SHUTOFF_REASONS.get(reason, ExitReason.UNKNOWN)
    if state == _CRASHED:
        return DomainState.SHUTDOWN, ExitReason.CRASH
    return DomainState.UNKNOWN, None
