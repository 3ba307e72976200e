"""Warm-pool profiles of the plugin configuration, validated.

A profile fixes everything Xen fixes when it builds a domain (kernel, command line, memory,
vCPUs, vifs), so members can be built before any task asks for one::

    pool "clickos" {
      kernel  = "/var/lib/nomad-driver-xen/images/clickos_x86_64"
      cmdline = "-d standard"
      memory  = 16
      vcpus   = 1
      vif { bridge = "xenbr0" }
      size    = 4
      idle    = "paused"      # or "booted" (with boot_marker): see below
    }

``idle`` says how members wait for a task.  ``"paused"`` (the default): built and never run, so a
task owns its guest's whole console and its ``boot_marker`` proves the boot.  ``"booted"``:
unpaused after the build and ready once the profile's ``boot_marker`` shows on the console,
waiting for a Click configuration; a claim skips the unpause and the boot, and the task's
``boot_marker`` must be a line the guest prints after it takes its configuration.

The operator writes profiles, so they are checked against the operator's own limits: the kernel
must lie inside ``image_dirs``, each vif's bridge must be one of ``vif_bridges`` and its script one
of ``vif_scripts``.  Whether the files and bridges exist is checked when a member is built (a
host may be configured before its images arrive).  A vif of a profile has no ``mac``: every
member gets its own from the toolstack.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xen_driver.driver.config import (
    MAX_CMDLINE_LEN,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    PLUGIN,
    TASK,
    VifConfig,
)
from xen_driver.driver.config.defaults import MAX_BOOT_MARKER_LEN
from xen_driver.driver.config.task import _vif
from xen_driver.driver.config.values import _integer, _plain_string, _xl_string
from xen_driver.driver.errors import ConfigError

#: Profile names become part of domain names (``ndx-pool-<name>-<hash>-<n>``).
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,23}")
POOL_NAME_HINT = "must be a pool name of 1-24 letters, digits or '_' (the label of a plugin pool block)"
#: Most members one profile may keep built (each holds its memory while idle).
MAX_POOL_SIZE = 64
#: Smallest guest the driver builds (planning.MIN_MEMORY_MIB).
MIN_POOL_MEMORY_MIB = 8

POOL_DEFAULTS: dict[str, Any] = {"memory": 16, "vcpus": 1, "size": 1}
#: How idle members wait: built and paused, or booted and waiting for their configuration.
IDLE_MODES = ("paused", "booted")


@dataclass(frozen=True)
class PoolProfile:
    """One ``pool "<name>" { ... }`` block."""

    name: str
    kernel: str
    cmdline: str = ""
    memory: int = 16
    vcpus: int = 1
    vif: tuple[VifConfig, ...] = ()
    size: int = 1
    idle: str = "paused"
    #: With ``idle = "booted"``: the console line that says a member finished booting.
    boot_marker: str | None = None

    @property
    def booted(self) -> bool:
        return self.idle == "booted"

    def digest(self, kernel_stat: tuple[int, int] | None = None) -> str:
        """Eight hex digits that change whenever a member built from this profile would differ.

        ``kernel_stat`` (size, mtime in ns) of the image makes a replaced image count as a change.
        """
        canon: dict[str, Any] = {
            "kernel": self.kernel,
            "kernel_stat": list(kernel_stat) if kernel_stat else None,
            "cmdline": self.cmdline,
            "memory": self.memory,
            "vcpus": self.vcpus,
            "vif": [[v.bridge, v.ip, v.script] for v in self.vif],
        }
        if self.booted:  # (absent for paused members, so their digest is what it always was)
            canon["idle"] = [self.idle, self.boot_marker]
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:8]


def check_pool_name(scope: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not POOL_NAME.fullmatch(value):
        raise ConfigError(scope, field, value, POOL_NAME_HINT)
    return value


def _inside_any(path: str, dirs: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    for d in dirs:
        base = os.path.realpath(d)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return True
    return False


def parse_pools(
    raw: Any,
    *,
    image_dirs: tuple[str, ...],
    vif_bridges: tuple[str, ...],
    vif_scripts: tuple[str, ...],
    vif_scripts_dir: str,
    max_vifs: int,
) -> tuple[PoolProfile, ...]:
    """The plugin's ``pool`` blocks (a map label -> attributes, as Nomad decodes a block map)."""
    if raw is None:
        return ()
    if isinstance(raw, (list, tuple)):  # a config written by hand as a list of {name = ...}
        items = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise ConfigError(PLUGIN, f"pool[{i}]", item, "must be a pool block")
            items.append((item.get("name"), item))
    elif isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        raise ConfigError(PLUGIN, "pool", raw, 'must be labelled blocks such as pool "clickos" { ... }')
    allowed_scripts = {
        os.path.realpath(s if s.startswith("/") else os.path.join(vif_scripts_dir, s)) for s in vif_scripts
    }
    out: list[PoolProfile] = []
    seen: set[str] = set()
    for label, body in items:
        name = check_pool_name(PLUGIN, "pool", label)
        if name in seen:
            raise ConfigError(PLUGIN, f"pool.{name}", name, "must be unique: another pool block has this label")
        seen.add(name)
        if not isinstance(body, Mapping):
            raise ConfigError(PLUGIN, f"pool.{name}", body, "must be a block")
        f = f"pool.{name}."
        kernel = body.get("kernel")
        if kernel is None:
            raise ConfigError(PLUGIN, f + "kernel", None, "is required: the path of the members' PV kernel image")
        kernel = _xl_string(PLUGIN, f + "kernel", kernel)
        if not kernel.startswith("/"):
            raise ConfigError(PLUGIN, f + "kernel", kernel, "must be an absolute path inside one of image_dirs")
        if not _inside_any(kernel, image_dirs):
            raise ConfigError(
                PLUGIN,
                f + "kernel",
                kernel,
                f"must be inside one of the plugin's image_dirs ({', '.join(image_dirs) or 'none'})",
            )
        cmdline = body.get("cmdline")
        cmdline = "" if cmdline is None else _xl_string(PLUGIN, f + "cmdline", cmdline, allow_empty=True)
        if len(cmdline) > MAX_CMDLINE_LEN:
            raise ConfigError(
                PLUGIN, f + "cmdline", cmdline, f"is {len(cmdline)} bytes long; Xen passes at most {MAX_CMDLINE_LEN}"
            )
        memory = _integer(PLUGIN, f + "memory", _d(body, "memory"), MIN_POOL_MEMORY_MIB, MAX_MEMORY_MIB)
        vcpus = _integer(PLUGIN, f + "vcpus", _d(body, "vcpus"), 1, MAX_VCPUS)
        size = _integer(PLUGIN, f + "size", _d(body, "size"), 0, MAX_POOL_SIZE)
        raw_vifs = body.get("vif") or []
        if not isinstance(raw_vifs, (list, tuple)):
            raise ConfigError(PLUGIN, f + "vif", raw_vifs, "must be a list of vif blocks")
        if len(raw_vifs) > max_vifs:
            raise ConfigError(
                PLUGIN,
                f + "vif",
                f"{len(raw_vifs)} vif blocks",
                f'at most {max_vifs} are allowed (plugin setting "max_vifs")',
            )
        vifs = []
        for i, item in enumerate(raw_vifs):
            try:
                vif = _vif(i, item)
            except ConfigError as exc:
                raise ConfigError(PLUGIN, f + exc.field, exc.given, exc.accepted) from None
            vf = f"{f}vif[{i}]"
            if vif.mac is not None:
                raise ConfigError(PLUGIN, vf + ".mac", vif.mac, "must not be set: every member gets a MAC of its own")
            if vif.bridge is not None and vif.bridge not in vif_bridges:
                raise ConfigError(
                    PLUGIN,
                    vf + ".bridge",
                    vif.bridge,
                    f"must be one of vif_bridges ({', '.join(vif_bridges) or 'none'})",
                )
            if vif.script is not None:
                path = vif.script if vif.script.startswith("/") else os.path.join(vif_scripts_dir, vif.script)
                if (
                    "/" in vif.script
                    and not vif.script.startswith("/")
                    or os.path.realpath(path) not in allowed_scripts
                ):
                    raise ConfigError(
                        PLUGIN,
                        vf + ".script",
                        vif.script,
                        f"must be one of vif_scripts ({', '.join(vif_scripts) or 'none'})",
                    )
            vifs.append(vif)
        idle = body.get("idle")
        idle = "paused" if idle is None else _plain_string(PLUGIN, f + "idle", idle)
        if idle not in IDLE_MODES:
            raise ConfigError(PLUGIN, f + "idle", idle, 'must be "paused" or "booted"')
        boot_marker = body.get("boot_marker")
        if boot_marker is not None:
            boot_marker = _plain_string(PLUGIN, f + "boot_marker", boot_marker)
            if "\n" in boot_marker or "\r" in boot_marker or len(boot_marker) > MAX_BOOT_MARKER_LEN:
                raise ConfigError(
                    PLUGIN,
                    f + "boot_marker",
                    boot_marker,
                    f"must be a fragment of a single console line, at most {MAX_BOOT_MARKER_LEN} characters",
                )
        if idle == "booted" and boot_marker is None:
            raise ConfigError(
                PLUGIN,
                f + "boot_marker",
                None,
                'is required with idle = "booted": the console line that says a member finished booting',
            )
        if idle == "paused" and boot_marker is not None:
            raise ConfigError(
                PLUGIN, f + "boot_marker", boot_marker, 'is only used with idle = "booted"; remove it or set idle'
            )
        out.append(
            PoolProfile(
                name=name,
                kernel=kernel,
                cmdline=cmdline,
                memory=memory,
                vcpus=vcpus,
                vif=tuple(vifs),
                size=size,
                idle=idle,
                boot_marker=boot_marker,
            )
        )
    return tuple(out)


def _d(body: Mapping[str, Any], key: str) -> Any:
    value = body.get(key)
    return POOL_DEFAULTS[key] if value is None else value


def task_pool(value: Any) -> str | None:
    """A task's ``pool = "<name>"``."""
    if value is None:
        return None
    return check_pool_name(TASK, "pool", value)
