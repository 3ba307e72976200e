"""The two hclspec schemas we give Nomad: the agent's plugin block and a job's task config.

Shapes and defaults live here; *values* are checked by :mod:`xen_driver.driver.config`, which
also owns the default values (so a config decoded without Nomad gets the same ones).
"""

from __future__ import annotations

from xen_driver.driver.config import PLUGIN_DEFAULTS, TASK_DEFAULTS
from xen_driver.nomad.hclspec import Object, Schema, attr, block_list, block_map

_P = PLUGIN_DEFAULTS
_T = TASK_DEFAULTS

#: ``pool "<name>" { ... }``: a warm-pool profile (values checked by driver/poolconfig.py).
POOL_SCHEMA = {
    "kernel": attr("kernel", "string", required=True),
    "cmdline": attr("cmdline", "string"),
    "memory": attr("memory", "number"),
    "vcpus": attr("vcpus", "number"),
    "size": attr("size", "number"),
    "idle": attr("idle", "string"),
    "boot_marker": attr("boot_marker", "string"),
    "vif": block_list(
        "vif",
        {
            "bridge": attr("bridge", "string"),
            "mac": attr("mac", "string"),
            "ip": attr("ip", "string"),
            "script": attr("script", "string"),
        },
    ),
}

PLUGIN_SCHEMA = Schema(
    Object(
        {
            "backend": attr("backend", "string", default=_P["backend"]),
            "xl_path": attr("xl_path", "string", default=_P["xl_path"]),
            "libvirt_uri": attr("libvirt_uri", "string", default=_P["libvirt_uri"]),
            "image_dirs": attr("image_dirs", "list(string)", default=_P["image_dirs"]),
            "fingerprint_period": attr("fingerprint_period", "string", default=_P["fingerprint_period"]),
            "console_log_dir": attr("console_log_dir", "string", default=_P["console_log_dir"]),
            "clickos_layout": attr("clickos_layout", "string", default=_P["clickos_layout"]),
            "state_dir": attr("state_dir", "string", default=_P["state_dir"]),
            "xenstored_socket": attr("xenstored_socket", "string", default=_P["xenstored_socket"]),
            "vif_scripts_dir": attr("vif_scripts_dir", "string", default=_P["vif_scripts_dir"]),
            "vif_scripts": attr("vif_scripts", "list(string)", default=_P["vif_scripts"]),
            "vif_bridges": attr("vif_bridges", "list(string)", default=_P["vif_bridges"]),
            "max_vifs": attr("max_vifs", "number", default=_P["max_vifs"]),
            "max_click_config_bytes": attr("max_click_config_bytes", "number", default=_P["max_click_config_bytes"]),
            "log_collection": attr("log_collection", "string", default=_P["log_collection"]),
            "log_max_files": attr("log_max_files", "number", default=_P["log_max_files"]),
            "log_max_file_size_mb": attr("log_max_file_size_mb", "number", default=_P["log_max_file_size_mb"]),
            "pool": block_map("pool", ("name",), POOL_SCHEMA),
        }
    )
)

VIF_SCHEMA = {
    "bridge": attr("bridge", "string"),
    "mac": attr("mac", "string"),
    "ip": attr("ip", "string"),
    "script": attr("script", "string"),
}

TASK_SCHEMA = Schema(
    Object(
        {
            "kernel": attr("kernel", "string", required=True),
            "ramdisk": attr("ramdisk", "string"),
            "cmdline": attr("cmdline", "string"),
            "memory": attr("memory", "number"),
            "vcpus": attr("vcpus", "number", default=_T["vcpus"]),
            "cpus": attr("cpus", "string"),
            "vif": block_list("vif", VIF_SCHEMA),
            "click_config": attr("click_config", "string"),
            "click_config_file": attr("click_config_file", "string"),
            "click_router_id": attr("click_router_id", "number", default=_T["click_router_id"]),
            "on_crash": attr("on_crash", "string", default=_T["on_crash"]),
            "boot_marker": attr("boot_marker", "string"),
            "boot_timeout": attr("boot_timeout", "string", default=_T["boot_timeout"]),
            "pool": attr("pool", "string"),
            "advertise_vif": attr("advertise_vif", "number"),
        }
    )
)
