"""bench/instantiation.py without the testbed: start paths as data, the agent configuration each
one runs under, and the refusal of paths that are only hooks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "instantiation.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_instantiation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cold_xl_and_pool_are_ready_and_libvirt_is_a_hook():
    paths = _bench().START_PATHS
    assert paths["xl"].ready and paths["xl"].plugin_config == {"backend": "xl"}
    assert paths["pool"].ready and paths["pool"].task_config == {"pool": "clickos"}
    assert not paths["libvirt"].ready and paths["libvirt"].plugin_config == {"backend": "libvirt"}


def test_the_pool_path_configures_a_profile_the_driver_accepts():
    from xen_driver.driver.config import PluginConfig

    bench = _bench()
    text = bench.agent_config(
        (REPO / "nomad-jobs" / "agent.hcl").read_text(),
        bench.START_PATHS["pool"].plugin_config,
        bench.START_PATHS["pool"].plugin_hcl,
    )
    plugin = text[text.index('plugin "nomad-driver-xen" {') :]
    assert 'pool "clickos" {' in plugin and 'fingerprint_period = "5s"' in plugin
    config = PluginConfig.from_dict(
        {
            "image_dirs": ["/var/lib/nomad-driver-xen/images"],
            "pool": {
                "clickos": {
                    "kernel": "/var/lib/nomad-driver-xen/images/ndx-unikernel",
                    "cmdline": "clickos tick=5",
                    "memory": 16,
                    "vcpus": 1,
                    "vif": [{"bridge": "xenbr0"}],
                    "size": 1,
                }
            },
        }
    )
    assert [p.name for p in config.pools] == ["clickos"]


def test_agent_config_overrides_and_adds_plugin_settings():
    base = (REPO / "nomad-jobs" / "agent.hcl").read_text()
    text = _bench().agent_config(base, {"backend": "libvirt", "pool_size": 4, "image_dirs": ["/a"]})
    plugin = text[text.index('plugin "nomad-driver-xen" {') :]
    assert 'backend = "libvirt"' in plugin and '"xl"' not in plugin
    assert "pool_size = 4" in plugin and 'image_dirs = ["/a"]' in plugin
    assert text[: text.index('plugin "nomad-driver-xen" {')] == base[: base.index('plugin "nomad-driver-xen" {')]
    assert _bench().agent_config(base, {}) == base


def test_a_hook_path_is_refused_before_any_testbed_starts():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--paths", "libvirt"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "start path 'libvirt': the libvirt start path is not measured yet" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--paths", "kvm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown start path 'kvm'" in proc.stderr
