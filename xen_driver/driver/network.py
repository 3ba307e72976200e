"""The guest's network as Nomad sees it: which address is advertised, which ports, which MACs.

A Xen PV guest on a bridge has addresses of its own (the ``ip`` of its vifs); nothing of the
host's network stack stands between it and its peers.  So the driver does not take part in
Nomad's host port mapping; it tells Nomad where the guest is, as a *driver network* (Nomad's
DriverNetwork, sent as StartTask's ``network_override``):

* **address**: the first address of one vif's ``ip``.  The task config's ``advertise_vif``
  names the vif by index; without it, the first vif that has an ``ip`` is advertised, and a
  guest with no such vif advertises nothing (services with ``address_mode = "driver"`` then
  fail in Nomad with its own "no driver network exists").
* **port map**: every port label of the allocation (group ``network { port "<label>" {} }``)
  maps to the port the *guest* serves on, its ``to``.  For such ports Nomad itself registers
  ``address_mode = "driver"`` services at ``to`` (Nomad 1.6 reads it from the allocation, not
  from the port map), so a guest that is advertised must give every port a ``to``: without
  one Nomad would register the service at port 0.  Such a job is refused, naming the port.
  The host port Nomad reserves (dynamic or ``static``) is never forwarded into the guest; a
  service must use the driver's address (``address_mode = "driver"``, or ``"auto"``).  Ports of
  a legacy task-level network reach the driver without ``to``; they map to their host port
  number, and Nomad takes those from the port map.
* **auto-advertise**: on, so services with the default ``address_mode = "auto"`` register at
  the guest's address as well: the host's address would reach nothing of the guest.

Every vif gets a MAC: the job's, or one in Xen's OUI ``00:16:3e`` derived from the task id and
the vif's index (stable for the task's life, since Nomad keeps the task id; kept in the
handle's driver state so a recovered task reports the same).

Pure functions, no I/O: table-tested in ``tests/unit/driver/test_network.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence

from xen_driver.driver.config import TASK, VifConfig
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.models import NetworkOverride, PortMapping

#: Xen's organisationally unique identifier (XenSource), the prefix of MACs ``xl`` makes up too.
XEN_OUI = "00:16:3e"


def derive_mac(task_id: str, index: int, taken: Collection[str] = ()) -> str:
    """A unicast MAC in Xen's OUI for vif ``index`` of task ``task_id``.

    The same inputs always give the same MAC.  24 bits leave room for collisions, so a MAC in
    ``taken`` (those of the host's other guests, compared case-insensitively) is skipped by
    hashing again with a counter.
    """
    used = {m.lower() for m in taken}
    attempt = 0
    while True:
        digest = hashlib.sha256(f"{task_id}\0{index}\0{attempt}".encode("utf-8", "surrogatepass")).digest()
        mac = XEN_OUI + "".join(f":{b:02x}" for b in digest[:3])
        if mac not in used:
            return mac
        attempt += 1


def vif_macs(task_id: str, vifs: Sequence[VifConfig], taken: Collection[str] = ()) -> tuple[str, ...]:
    """The MAC of every vif: the job's where it gave one (as written), else a derived one that
    differs from ``taken`` and from the task's other vifs."""
    used = {m.lower() for m in taken} | {v.mac.lower() for v in vifs if v.mac}
    macs = []
    for i, vif in enumerate(vifs):
        if vif.mac:
            macs.append(vif.mac)
            continue
        mac = derive_mac(task_id, i, used)
        used.add(mac)
        macs.append(mac)
    return tuple(macs)


def advertised_vif(vifs: Sequence[VifConfig], advertise_vif: int | None) -> int | None:
    """Index of the vif whose address is advertised, or None when the guest has none to offer.

    An ``advertise_vif`` that names no vif, or a vif without ``ip``, is a ConfigError naming
    the field.
    """
    with_ip = [i for i, v in enumerate(vifs) if v.ip and v.ip.split()]
    if advertise_vif is None:
        return with_ip[0] if with_ip else None
    have = _describe_vifs(vifs, with_ip)
    if not 0 <= advertise_vif < len(vifs):
        raise ConfigError(TASK, "advertise_vif", advertise_vif, f"must be the index of a vif block with an ip ({have})")
    if advertise_vif not in with_ip:
        raise ConfigError(
            TASK,
            "advertise_vif",
            advertise_vif,
            f"must be the index of a vif block with an ip, but vif[{advertise_vif}] has no ip ({have})",
        )
    return advertise_vif


def _describe_vifs(vifs: Sequence[VifConfig], with_ip: Sequence[int]) -> str:
    if not vifs:
        return "this task has no vif blocks"
    if not with_ip:
        return f"none of this task's {len(vifs)} vif blocks has an ip"
    return "this task has " + ", ".join(f"vif[{i}] with ip {vifs[i].ip.split()[0]}" for i in with_ip)  # type: ignore[union-attr]


def port_map(ports: Iterable[PortMapping]) -> dict[str, int]:
    """label → the port the guest serves on: ``to`` (a legacy task network's port: its number).

    Also what Nomad gives the task as ``NOMAD_PORT_<label>``.  A label seen twice keeps its
    first mapping; a port without a usable number is left out (:func:`plan` refuses those).
    """
    out: dict[str, int] = {}
    for p in ports:
        if not p.label or p.label in out:
            continue
        port = p.value if p.legacy else p.to
        if 0 < port < 65536:
            out[p.label] = port
    return out


def plan(vifs: Sequence[VifConfig], advertise_vif: int | None, ports: Iterable[PortMapping]) -> NetworkOverride | None:
    """The driver network to return from StartTask, or None when no vif has an address.

    An advertised guest whose allocation has a port without ``to`` is a ConfigError naming
    the port: Nomad would register that port's services at port 0.
    """
    index = advertised_vif(vifs, advertise_vif)
    if index is None:
        return None
    addr = (vifs[index].ip or "").split()[0]
    ports = tuple(ports)
    for p in ports:
        if p.label and not p.legacy and p.to <= 0:
            raise ConfigError(
                "network port",
                f"{p.label}.to",
                None,
                f"must be the port the guest serves on: the guest has its own address ({addr}), where Nomad "
                f'registers its services at "to"; the host port Nomad reserved ({p.value}) is not forwarded '
                "into a Xen guest",
            )
    return NetworkOverride(addr=addr, port_map=port_map(ports), auto_advertise=True)


def unreachable_ports(network: NetworkOverride | None, ports: Iterable[PortMapping]) -> list[str]:
    """Port labels of the allocation that no guest address serves (the guest advertises none)."""
    if network is not None:
        return []
    return sorted({p.label for p in ports if p.label})


def describe(network: NetworkOverride | None) -> str:
    """``10.0.0.2 (http → 8080, metrics → 9100)`` for logs and task events."""
    if network is None:
        return "no address"
    if not network.port_map:
        return network.addr
    ports = ", ".join(f"{k} → {v}" for k, v in sorted(network.port_map.items()))
    return f"{network.addr} ({ports})"
