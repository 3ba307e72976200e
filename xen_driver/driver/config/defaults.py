"""The fixed part of the configuration: the two scope names every refusal starts with, the
accepted choices, the defaults (also rendered into the hclspec by xen_driver/nomad/schemas.py so
Nomad shows them) and the bounds the value checks enforce.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "plugin config"
TASK = "task config"

BACKENDS = ("xl", "libvirt")
CLICKOS_LAYOUTS = ("cosmos", "clickos-ctl")
ON_CRASH = ("destroy", "preserve", "coredump-destroy")
#: Who writes a task's log files: Nomad's logmon (a process per task, reading the stdout FIFO the
#: driver's keeper writes) or the driver's keeper itself (no logmon process; Nomad told so through
#: the driver capability ``disable_log_collection``).
LOG_COLLECTIONS = ("nomad", "driver")

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
    "log_collection": "nomad",
    # Nomad's own defaults for a task's logs block (10 files of 10 MB): used when the driver
    # writes the log files itself, since a task's logs block does not reach the driver.
    "log_max_files": 10,
    "log_max_file_size_mb": 10,
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
MAX_LOG_FILES = 1000
MAX_LOG_FILE_SIZE_MB = 10240
