"""Typed plugin and task configuration, validated from the decoded Nomad config maps.

Nomad checks the *shape* of a config against our hclspec (unknown keys, required keys, types)
and fills defaults; this module checks the *values*. Every refusal is a :class:`ConfigError`
whose message names the field, what was given and what is accepted, e.g.
``task config "vcpus": got -1, must be an integer between 1 and 128``.

The inputs are plain dicts as :mod:`xen_driver.nomad.cty` decodes them: every key of the schema
present, ``None`` for absent values, numbers as ``int``/``float``/``Decimal``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from xen_driver.driver.errors import ConfigError

PLUGIN = "plugin config"
TASK = "task config"

# ---- defaults (also rendered into the hclspec so Nomad shows them) ------------------------------

BACKENDS = ("xl", "libvirt")
CLICKOS_LAYOUTS = ("cosmos", "clickos-ctl")
ON_CRASH = ("destroy", "preserve", "coredump-destroy")

PLUGIN_DEFAULTS: dict[str, Any] = {
    "backend": "xl",
    "xl_path": "xl",
    "libvirt_uri": "xen:///system",
    "image_dirs": ["/var/lib/nomad-driver-xen/images", "/usr/lib/xen/boot"],
    "fingerprint_period": "30s",
    "console_log_dir": "/var/log/xen/console",
    "clickos_layout": "cosmos",
    "state_dir": "/var/lib/nomad-driver-xen",
    "xenstored_socket": "/run/xenstored/socket",
    # What a job may make dom0 act on (docs/SECURITY.md): hotplug scripts by name from Xen's
    # scripts directory, bridges by name, and size caps on job values that become host work.
    "vif_scripts_dir": "/etc/xen/scripts",
    "vif_scripts": ["vif-bridge", "vif-route", "vif-nat"],
    "vif_bridges": ["xenbr0"],
    "max_vifs": 8,
    "max_click_config_bytes": 65536,
}

TASK_DEFAULTS: dict[str, Any] = {
    "vcpus": 1,
    "click_router_id": 0,
    "on_crash": "destroy",
    "boot_timeout": "30s",
}

MAX_VCPUS = 128
MAX_MEMORY_MIB = 1 << 20  # 1 TiB
MAX_ROUTER_ID = (1 << 31) - 1
MIN_FINGERPRINT_PERIOD = 1.0
MAX_FINGERPRINT_PERIOD = 3600.0
MAX_BOOT_TIMEOUT = 3600.0
#: Upper bound of the ``max_vifs`` plugin setting (netback handles more, no unikernel needs them).
MAX_VIFS_LIMIT = 64
#: Upper bound of ``max_click_config_bytes``: ClickOS stores the configuration in XenStore in
#: ~1 KiB nodes, and xenstored's default quota is 1000 nodes per domain; 512 KiB stays near half.
MAX_CLICK_CONFIG_LIMIT = 512 * 1024
#: Longest ``boot_marker``: it is searched for in every console line.
MAX_BOOT_MARKER_LEN = 256
#: Xen's MAX_GUEST_CMDLINE is 1024 bytes including the terminating NUL.
MAX_CMDLINE_LEN = 1023


# ---- durations ---------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
DURATION_HINT = 'must be a duration such as "500ms", "30s" or "2m"'


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("1m30s", "500ms", "0") into seconds; ValueError if invalid."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


# ---- value checks ------------------------------------------------------------------------------

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_SCRIPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Characters that would end, escape or comment out a quoted xl.cfg string, plus anything that is
# not printable ASCII: such values are refused instead of escaped (see xen/spec.py).
_XL_UNSAFE = frozenset("\"'\\#")


def _unsafe_char(value: str) -> str | None:
    for ch in value:
        if ch in _XL_UNSAFE or ord(ch) < 0x20 or ord(ch) >= 0x7F:
            return ch
    return None


def _char_name(ch: str) -> str:
    names = {'"': "double quotes", "'": "single quotes", "\\": "backslashes", "#": "'#'", "\n": "newlines"}
    return names.get(ch, f"U+{ord(ch):04X}")


def _xl_string(scope: str, name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(scope, name, value, "must be a string")
    if not value and not allow_empty:
        raise ConfigError(scope, name, value, "must not be empty")
    bad = _unsafe_char(value)
    if bad is not None:
        raise ConfigError(
            scope,
            name,
            value,
            f"must be printable ASCII without quotes, backslashes or '#' (found {_char_name(bad)})",
        )
    return value


def _plain_string(scope: str, name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(scope, name, value, "must be a string")
    if not value and not allow_empty:
        raise ConfigError(scope, name, value, "must not be empty")
    if "\x00" in value:
        raise ConfigError(scope, name, value, "must not contain NUL characters")
    return value


def _abs_dir(scope: str, name: str, value: Any) -> str:
    _xl_string(scope, name, value)
    if not value.startswith("/"):
        raise ConfigError(scope, name, value, "must be an absolute path")
    return posixpath.normpath(value)


def _integer(scope: str, name: str, value: Any, lo: int, hi: int) -> int:
    accepted = f"must be an integer between {lo} and {hi}"
    if isinstance(value, bool) or value is None:
        raise ConfigError(scope, name, value, accepted)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value)
        except Exception:
            raise ConfigError(scope, name, value, accepted) from None
        if not d.is_finite() or d != d.to_integral_value():
            raise ConfigError(scope, name, value, accepted)
        number = int(d)
    else:
        raise ConfigError(scope, name, value, accepted)
    if not lo <= number <= hi:
        raise ConfigError(scope, name, value, accepted)
    return number


def _choice(scope: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(scope, name, value, "must be one of " + ", ".join(f'"{c}"' for c in choices))
    return value


def _duration(scope: str, name: str, value: Any, lo: float, hi: float) -> float:
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        raise ConfigError(scope, name, value, DURATION_HINT) from None
    if not lo <= seconds <= hi:
        raise ConfigError(scope, name, value, f"must be a duration between {_fmt_s(lo)} and {_fmt_s(hi)}")
    return seconds


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


def _relative_path(scope: str, name: str, value: Any) -> str:
    _xl_string(scope, name, value)
    norm = posixpath.normpath(value)
    if value.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ConfigError(scope, name, value, "must be a path relative to the task directory that stays inside it")
    return norm


def _get(data: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> Any:
    value = data.get(key)
    return defaults.get(key) if value is None else value


# ---- plugin config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginConfig:
    """The agent's ``plugin "<file>" { config { ... } }`` block, validated."""

    backend: str = PLUGIN_DEFAULTS["backend"]
    xl_path: str = PLUGIN_DEFAULTS["xl_path"]
    libvirt_uri: str = PLUGIN_DEFAULTS["libvirt_uri"]
    image_dirs: tuple[str, ...] = tuple(PLUGIN_DEFAULTS["image_dirs"])
    fingerprint_period: float = 30.0
    console_log_dir: str = PLUGIN_DEFAULTS["console_log_dir"]
    clickos_layout: str = PLUGIN_DEFAULTS["clickos_layout"]
    state_dir: str = PLUGIN_DEFAULTS["state_dir"]
    xenstored_socket: str = PLUGIN_DEFAULTS["xenstored_socket"]
    vif_scripts_dir: str = PLUGIN_DEFAULTS["vif_scripts_dir"]
    vif_scripts: tuple[str, ...] = tuple(PLUGIN_DEFAULTS["vif_scripts"])
    vif_bridges: tuple[str, ...] = tuple(PLUGIN_DEFAULTS["vif_bridges"])
    max_vifs: int = PLUGIN_DEFAULTS["max_vifs"]
    max_click_config_bytes: int = PLUGIN_DEFAULTS["max_click_config_bytes"]
    #: Warm-pool profiles, ``pool "<name>" { ... }`` (xen_driver/driver/poolconfig.py).
    pools: tuple = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "PluginConfig":
        data = data or {}
        S = PLUGIN
        xl_path = _xl_string(S, "xl_path", _get(data, "xl_path", PLUGIN_DEFAULTS))
        if "/" in xl_path and not xl_path.startswith("/"):
            raise ConfigError(S, "xl_path", xl_path, "must be a command name looked up on PATH or an absolute path")
        uri = _plain_string(S, "libvirt_uri", _get(data, "libvirt_uri", PLUGIN_DEFAULTS))
        if "://" not in uri:
            raise ConfigError(S, "libvirt_uri", uri, 'must be a libvirt connection URI such as "xen:///system"')
        raw_dirs = _get(data, "image_dirs", PLUGIN_DEFAULTS)
        if not isinstance(raw_dirs, (list, tuple)):
            raise ConfigError(S, "image_dirs", raw_dirs, "must be a list of absolute directory paths")
        image_dirs = tuple(_abs_dir(S, f"image_dirs[{i}]", d) for i, d in enumerate(raw_dirs))
        config = cls(
            backend=_choice(S, "backend", _get(data, "backend", PLUGIN_DEFAULTS), BACKENDS),
            xl_path=xl_path,
            libvirt_uri=uri,
            image_dirs=image_dirs,
            fingerprint_period=_duration(
                S,
                "fingerprint_period",
                _get(data, "fingerprint_period", PLUGIN_DEFAULTS),
                MIN_FINGERPRINT_PERIOD,
                MAX_FINGERPRINT_PERIOD,
            ),
            console_log_dir=_abs_dir(S, "console_log_dir", _get(data, "console_log_dir", PLUGIN_DEFAULTS)),
            clickos_layout=_choice(S, "clickos_layout", _get(data, "clickos_layout", PLUGIN_DEFAULTS), CLICKOS_LAYOUTS),
            state_dir=_abs_dir(S, "state_dir", _get(data, "state_dir", PLUGIN_DEFAULTS)),
            xenstored_socket=_abs_dir(S, "xenstored_socket", _get(data, "xenstored_socket", PLUGIN_DEFAULTS)),
            vif_scripts_dir=_abs_dir(S, "vif_scripts_dir", _get(data, "vif_scripts_dir", PLUGIN_DEFAULTS)),
            vif_scripts=_script_allowlist(_get(data, "vif_scripts", PLUGIN_DEFAULTS)),
            vif_bridges=_bridge_allowlist(_get(data, "vif_bridges", PLUGIN_DEFAULTS)),
            max_vifs=_integer(S, "max_vifs", _get(data, "max_vifs", PLUGIN_DEFAULTS), 0, MAX_VIFS_LIMIT),
            max_click_config_bytes=_integer(
                S,
                "max_click_config_bytes",
                _get(data, "max_click_config_bytes", PLUGIN_DEFAULTS),
                1,
                MAX_CLICK_CONFIG_LIMIT,
            ),
        )
        return _with_pools(config, data.get("pool"))


def _with_pools(config: "PluginConfig", raw: Any) -> "PluginConfig":
    if not raw:
        return config
    from dataclasses import replace

    from xen_driver.driver.poolconfig import parse_pools

    return replace(
        config,
        pools=parse_pools(
            raw,
            image_dirs=config.image_dirs,
            vif_bridges=config.vif_bridges,
            vif_scripts=config.vif_scripts,
            vif_scripts_dir=config.vif_scripts_dir,
            max_vifs=config.max_vifs,
        ),
    )


def _string_list(scope: str, name: str, value: Any, what: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(scope, name, value, f"must be a list of {what}")
    return list(value)


def _script_allowlist(value: Any) -> tuple[str, ...]:
    """``vif_scripts``: plain names (looked up in ``vif_scripts_dir``) or absolute paths."""
    items = _string_list(PLUGIN, "vif_scripts", value, "hotplug script names or absolute paths")
    out = []
    for i, item in enumerate(items):
        field = f"vif_scripts[{i}]"
        _xl_string(PLUGIN, field, item)
        if item.startswith("/"):
            out.append(posixpath.normpath(item))
        elif _SCRIPT_NAME.fullmatch(item):
            out.append(item)
        else:
            raise ConfigError(
                PLUGIN, field, item, "must be a script name in vif_scripts_dir (letters, digits, '_', '.', '-') or an absolute path"
            )
    return tuple(out)


def _bridge_allowlist(value: Any) -> tuple[str, ...]:
    items = _string_list(PLUGIN, "vif_bridges", value, "bridge interface names")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not _IFNAME.fullmatch(item):
            raise ConfigError(
                PLUGIN, f"vif_bridges[{i}]", item, "must be an interface name of 1-15 letters, digits, '_', '.' or '-'"
            )
    return tuple(items)


# ---- task config -------------------------------------------------------------------------------


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
            raise ConfigError(S, f"vif[{index}].script", script, "must be a script name or path without ',', '=' or spaces")
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
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TaskConfig":
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
                S, "click_config_file", click_config_file, 'must not be set together with "click_config"; use one of them'
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
            click_router_id=_integer(S, "click_router_id", _get(data, "click_router_id", TASK_DEFAULTS), 0, MAX_ROUTER_ID),
            on_crash=_choice(S, "on_crash", _get(data, "on_crash", TASK_DEFAULTS), ON_CRASH),
            boot_marker=boot_marker,
            boot_timeout=_duration(S, "boot_timeout", _get(data, "boot_timeout", TASK_DEFAULTS), 0.001, MAX_BOOT_TIMEOUT),
            pool=_task_pool(data.get("pool")),
            advertise_vif=advertise_vif,
        )
