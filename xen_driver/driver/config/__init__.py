"""Typed plugin and task configuration, validated from the decoded Nomad config maps.

Nomad checks the *shape* of a config against our hclspec (unknown keys, required keys, types)
and fills defaults; this module checks the *values*. Every refusal is a :class:`ConfigError`
whose message names the field, what was given and what is accepted, e.g.
``task config "vcpus": got -1, must be an integer between 1 and 128``.

The inputs are plain dicts as :mod:`xen_driver.nomad.cty` decodes them: every key of the schema
present, ``None`` for absent values, numbers as ``int``/``float``/``Decimal``.

The package: :mod:`.defaults` (scope names, choices, defaults, bounds), :mod:`.values` (the value
checks and Go durations), :mod:`.plugin` (:class:`PluginConfig`) and :mod:`.task`
(:class:`TaskConfig`, :class:`VifConfig`); warm-pool profiles are xen_driver/driver/poolconfig.py.
"""

from xen_driver.driver.config.defaults import (
    BACKENDS,
    CLICKOS_LAYOUTS,
    MAX_BOOT_MARKER_LEN,
    MAX_BOOT_TIMEOUT,
    MAX_CLICK_CONFIG_LIMIT,
    MAX_CMDLINE_LEN,
    MAX_FINGERPRINT_PERIOD,
    MAX_MEMORY_MIB,
    MAX_ROUTER_ID,
    MAX_VCPUS,
    MAX_VIFS_LIMIT,
    MIN_FINGERPRINT_PERIOD,
    ON_CRASH,
    PLUGIN,
    PLUGIN_DEFAULTS,
    TASK,
    TASK_DEFAULTS,
)
from xen_driver.driver.config.plugin import PluginConfig
from xen_driver.driver.config.task import TaskConfig, VifConfig
from xen_driver.driver.config.values import DURATION_HINT, parse_duration

__all__ = [
    "BACKENDS",
    "CLICKOS_LAYOUTS",
    "DURATION_HINT",
    "MAX_BOOT_MARKER_LEN",
    "MAX_BOOT_TIMEOUT",
    "MAX_CLICK_CONFIG_LIMIT",
    "MAX_CMDLINE_LEN",
    "MAX_FINGERPRINT_PERIOD",
    "MAX_MEMORY_MIB",
    "MAX_ROUTER_ID",
    "MAX_VCPUS",
    "MAX_VIFS_LIMIT",
    "MIN_FINGERPRINT_PERIOD",
    "ON_CRASH",
    "PLUGIN",
    "PLUGIN_DEFAULTS",
    "PluginConfig",
    "TASK",
    "TASK_DEFAULTS",
    "TaskConfig",
    "VifConfig",
    "parse_duration",
]
