"""The task configuration: a job's ``config { ... }`` for ``driver = "xen"`` as a
:class:`TaskConfig`, with its ``vif { ... }`` blocks as :class:`VifConfig`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xen_driver.driver.config.defaults import (
    MAX_BOOT_MARKER_LEN,
    MAX_BOOT_TIMEOUT,
    MAX_CMDLINE_LEN,
    MAX_MEMORY_MIB,
    MAX_ROUTER_ID,
    MAX_VCPUS,
    MAX_VIFS_LIMIT,
    ON_CRASH,
    TASK,
    TASK_DEFAULTS,
)
from xen_driver.driver.config.values import (
    _IFNAME,
    _choice,
    _duration,
    _get,
    _integer,
    _plain_string,
    _relative_path,
    _xl_string,
)
from xen_driver.driver.errors import ConfigError


@dataclass(frozen=True)
class VifConfig:
    """One ``vif { ... }`` block: a virtual NIC of the guest."""

    bridge: str | None = None
    mac: str | None = None
    ip: str | None = None
    script: str | None = None


def _task_pool(value: Any) -> str | None:
    from xen_driver.driver.poolconfig import task_pool

    return task_pool(value)


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_CPUS = re.compile(r"(all|(nodes:)?\^?\d+(-\d+)?(,\^?\d+(-\d+)?)*)")


def _vif(index: int, item: Any) -> VifConfig:
    S = TASK
    if not isinstance(item, Mapping):
        raise ConfigError(S, f"vif[{index}]", item, "must be a block with bridge, mac, ip and script")
    bridge = item.get("bridge")
    if bridge is not None:
        if not isinstance(bridge, str) or not _IFNAME.fullmatch(bridge):
            raise ConfigError(
                S, f"vif[{index}].bridge", bridge, "must be an interface name of 1-15 letters, digits, '_', '.' or '-'"
            )
    mac = item.get("mac")
    if mac is not None:
        if not isinstance(mac, str) or not _MAC.fullmatch(mac):
            raise ConfigError(S, f"vif[{index}].mac", mac, 'must be a MAC address such as "00:16:3e:12:34:56"')
        if int(mac[:2], 16) & 1:
            raise ConfigError(S, f"vif[{index}].mac", mac, "must be a unicast MAC address (first octet even)")
    ip = item.get("ip")
    if ip is not None:
        if not isinstance(ip, str) or not ip.strip():
            raise ConfigError(S, f"vif[{index}].ip", ip, "must be one or more IP addresses separated by spaces")
        for part in ip.split():
            try:
                ipaddress.ip_address(part)
            except ValueError:
                raise ConfigError(
                    S, f"vif[{index}].ip", ip, "must be one or more IP addresses separated by spaces"
                ) from None
    script = item.get("script")
    if script is not None:
        _xl_string(S, f"vif[{index}].script", script)
        if "," in script or "=" in script or " " in script:
            raise ConfigError(
                S, f"vif[{index}].script", script, "must be a script name or path without ',', '=' or spaces"
            )
    return VifConfig(bridge=bridge, mac=mac, ip=ip, script=script)


@dataclass(frozen=True)
class TaskConfig:
    """A job's ``config { ... }`` for ``driver = "xen"``, validated."""

    kernel: str
    ramdisk: str | None = None
    cmdline: str | None = None
    memory: int | None = None  # MiB; overrides the task's resources.memory
    vcpus: int = 1
    cpus: str | None = None
    vif: tuple[VifConfig, ...] = ()
    click_config: str | None = None
    click_config_file: str | None = None
    click_router_id: int = 0
    on_crash: str = "destroy"
    boot_marker: str | None = None
    boot_timeout: float = 30.0
    #: A plugin pool profile to take a pre-built domain from (xen_driver/driver/pool.py).
    pool: str | None = None
    #: Index of the vif whose address Nomad advertises (None: the first vif with an ``ip``);
    #: checked against the vifs by :func:`xen_driver.driver.network.advertised_vif`.
    advertise_vif: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TaskConfig:
        data = data or {}
        S = TASK
        kernel = data.get("kernel")
        if kernel is None:
            raise ConfigError(S, "kernel", None, "is required: the path of the PV kernel image")
        kernel = _xl_string(S, "kernel", kernel)
        ramdisk = data.get("ramdisk")
        if ramdisk is not None:
            ramdisk = _xl_string(S, "ramdisk", ramdisk)
        cmdline = data.get("cmdline")
        if cmdline is not None:
            cmdline = _xl_string(S, "cmdline", cmdline, allow_empty=True)
            if len(cmdline) > MAX_CMDLINE_LEN:
                raise ConfigError(
                    S, "cmdline", cmdline, f"is {len(cmdline)} bytes long; Xen passes at most {MAX_CMDLINE_LEN}"
                )
        memory = data.get("memory")
        if memory is not None:
            memory = _integer(S, "memory", memory, 1, MAX_MEMORY_MIB)
        cpus = data.get("cpus")
        if cpus is not None:
            if not isinstance(cpus, str) or not _CPUS.fullmatch(cpus):
                raise ConfigError(S, "cpus", cpus, 'must be a CPU list such as "all", "2", "0-3" or "0-3,^1"')
        raw_vifs = data.get("vif") or []
        if not isinstance(raw_vifs, (list, tuple)):
            raise ConfigError(S, "vif", raw_vifs, "must be a list of vif blocks")
        click_config = data.get("click_config")
        if click_config is not None:
            click_config = _plain_string(S, "click_config", click_config)
        click_config_file = data.get("click_config_file")
        if click_config_file is not None:
            click_config_file = _relative_path(S, "click_config_file", click_config_file)
        if click_config is not None and click_config_file is not None:
            raise ConfigError(
                S,
                "click_config_file",
                click_config_file,
                'must not be set together with "click_config"; use one of them',
            )
        boot_marker = data.get("boot_marker")
        if boot_marker is not None:
            boot_marker = _plain_string(S, "boot_marker", boot_marker)
            if "\n" in boot_marker or "\r" in boot_marker:
                raise ConfigError(S, "boot_marker", boot_marker, "must be a fragment of a single console line")
            if len(boot_marker) > MAX_BOOT_MARKER_LEN:
                raise ConfigError(
                    S, "boot_marker", boot_marker, f"must be at most {MAX_BOOT_MARKER_LEN} characters long"
                )
        advertise_vif = data.get("advertise_vif")
        if advertise_vif is not None:
            advertise_vif = _integer(S, "advertise_vif", advertise_vif, 0, MAX_VIFS_LIMIT - 1)
        return cls(
            kernel=kernel,
            ramdisk=ramdisk,
            cmdline=cmdline,
            memory=memory,
            vcpus=_integer(S, "vcpus", _get(data, "vcpus", TASK_DEFAULTS), 1, MAX_VCPUS),
            cpus=cpus,
            vif=tuple(_vif(i, v) for i, v in enumerate(raw_vifs)),
            click_config=click_config,
            click_config_file=click_config_file,
            click_router_id=_integer(
                S, "click_router_id", _get(data, "click_router_id", TASK_DEFAULTS), 0, MAX_ROUTER_ID
            ),
            on_crash=_choice(S, "on_crash", _get(data, "on_crash", TASK_DEFAULTS), ON_CRASH),
            boot_marker=boot_marker,
            boot_timeout=_duration(
                S, "boot_timeout", _get(data, "boot_timeout", TASK_DEFAULTS), 0.001, MAX_BOOT_TIMEOUT
            ),
            pool=_task_pool(data.get("pool")),
            advertise_vif=advertise_vif,
        )
