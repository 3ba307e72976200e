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


def test_cold_xl_is_ready_and_the_other_paths_are_hooks():
    paths = _bench().START_PATHS
    assert paths["xl"].ready and paths["xl"].plugin_config == {"backend": "xl"}
    assert not paths["pool"].ready and not paths["libvirt"].ready
    assert paths["libvirt"].plugin_config == {"backend": "libvirt"}


def test_agent_config_overrides_and_adds_plugin_settings():
    base = (REPO / "nomad-jobs" / "agent.hcl").read_text()
    text = _bench().agent_config(base, {"backend": "libvirt", "pool_size": 4, "image_dirs": ["/a"]})
    plugin = text[text.index('plugin "nomad-driver-xen" {'):]
    assert 'backend = "libvirt"' in plugin and '"xl"' not in plugin
    assert "pool_size = 4" in plugin and 'image_dirs = ["/a"]' in plugin
    assert text[: text.index('plugin "nomad-driver-xen" {')] == base[: base.index('plugin "nomad-driver-xen" {')]
    assert _bench().agent_config(base, {}) == base


def test_a_hook_path_is_refused_before_any_testbed_starts():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--paths", "pool"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "start path 'pool': the warm-pool start path is not in the driver yet" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--paths", "kvm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown start path 'kvm'" in proc.stderr
