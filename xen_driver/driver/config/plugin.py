"""The plugin configuration: the agent's ``plugin "<file>" { config { ... } }`` block as a
:class:`PluginConfig`, with the allowlists of hotplug scripts and bridges a job may name and the
warm-pool profiles (checked by xen_driver/driver/poolconfig.py).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xen_driver.driver.config.defaults import (
    BACKENDS,
    CLICKOS_LAYOUTS,
    LOG_COLLECTIONS,
    MAX_CLICK_CONFIG_LIMIT,
    MAX_FINGERPRINT_PERIOD,
    MAX_LOG_FILE_SIZE_MB,
    MAX_LOG_FILES,
    MAX_VIFS_LIMIT,
    MIN_FINGERPRINT_PERIOD,
    PLUGIN,
    PLUGIN_DEFAULTS,
)
from xen_driver.driver.config.values import (
    _IFNAME,
    _SCRIPT_NAME,
    _abs_dir,
    _choice,
    _duration,
    _get,
    _integer,
    _plain_string,
    _xl_string,
)
from xen_driver.driver.errors import ConfigError

if TYPE_CHECKING:  # poolconfig imports this package
    from xen_driver.driver.poolconfig import PoolProfile


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
    log_collection: str = PLUGIN_DEFAULTS["log_collection"]
    log_max_files: int = PLUGIN_DEFAULTS["log_max_files"]
    log_max_file_size_mb: int = PLUGIN_DEFAULTS["log_max_file_size_mb"]
    #: Warm-pool profiles, ``pool "<name>" { ... }`` (xen_driver/driver/poolconfig.py).
    pools: tuple[PoolProfile, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PluginConfig:
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
            log_collection=_choice(S, "log_collection", _get(data, "log_collection", PLUGIN_DEFAULTS), LOG_COLLECTIONS),
            log_max_files=_integer(S, "log_max_files", _get(data, "log_max_files", PLUGIN_DEFAULTS), 1, MAX_LOG_FILES),
            log_max_file_size_mb=_integer(
                S, "log_max_file_size_mb", _get(data, "log_max_file_size_mb", PLUGIN_DEFAULTS), 1, MAX_LOG_FILE_SIZE_MB
            ),
        )
        return _with_pools(config, data.get("pool"))

    @property
    def driver_logs(self) -> tuple[int, int] | None:
        """(max files, max bytes per file) when the driver writes the task log files itself."""
        if self.log_collection != "driver":
            return None
        return self.log_max_files, self.log_max_file_size_mb * 1024 * 1024


def _with_pools(config: PluginConfig, raw: Any) -> PluginConfig:
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
                PLUGIN,
                field,
                item,
                "must be a script name in vif_scripts_dir (letters, digits, '_', '.', '-') or an absolute path",
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
