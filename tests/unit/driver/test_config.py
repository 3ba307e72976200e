"""Plugin and task config validation: errors name the field, the given value and what is accepted."""

from __future__ import annotations

import pytest

from xen_driver.driver.config import PluginConfig, TaskConfig, parse_duration
from xen_driver.driver.errors import ConfigError


def test_plugin_defaults_work_on_a_stock_debian_xen_host():
    cfg = PluginConfig.from_dict({})
    assert cfg == PluginConfig()
    assert (cfg.backend, cfg.xl_path, cfg.libvirt_uri) == ("xl", "xl", "xen:///system")
    assert cfg.image_dirs == ("/var/lib/nomad-driver-xen/images", "/usr/lib/xen/boot")
    assert cfg.fingerprint_period == 30.0 and cfg.clickos_layout == "cosmos"
    assert cfg.xenstored_socket == "/run/xenstored/socket"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"backend": "kvm"}, 'plugin config "backend": got "kvm", must be one of "xl", "libvirt"'),
        ({"clickos_layout": "x"}, 'plugin config "clickos_layout": got "x", must be one of "cosmos", "clickos-ctl"'),
        (
            {"fingerprint_period": "soon"},
            'plugin config "fingerprint_period": got "soon", must be a duration such as "500ms", "30s" or "2m"',
        ),
        (
            {"fingerprint_period": "100ms"},
            'plugin config "fingerprint_period": got "100ms", must be a duration between 1s and 1h',
        ),
        (
            {"image_dirs": ["relative/dir"]},
            'plugin config "image_dirs[0]": got "relative/dir", must be an absolute path',
        ),
        ({"state_dir": "var/lib"}, 'plugin config "state_dir": got "var/lib", must be an absolute path'),
        (
            {"xl_path": "bin/xl"},
            'plugin config "xl_path": got "bin/xl", must be a command name looked up on PATH or an absolute path',
        ),
        (
            {"libvirt_uri": "xen"},
            'plugin config "libvirt_uri": got "xen", must be a libvirt connection URI such as "xen:///system"',
        ),
        (
            {"console_log_dir": 'a"b'},
            'plugin config "console_log_dir": got "a\\"b", must be printable ASCII without quotes, backslashes or \'#\' (found double quotes)',
        ),
    ],
)
def test_plugin_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        PluginConfig.from_dict(data)
    assert str(err.value) == message


def test_task_config_minimal_and_full():
    assert TaskConfig.from_dict({"kernel": "local/k"}) == TaskConfig(kernel="local/k")
    cfg = TaskConfig.from_dict(
        {
            "kernel": "/usr/lib/xen/boot/clickos",
            "cmdline": "-d standard",
            "memory": 16,
            "vcpus": 2.0,
            "cpus": "0-1,^1",
            "vif": [{"bridge": "xenbr0", "mac": "00:16:3e:aa:bb:cc", "ip": "10.0.0.2 fd00::2", "script": "vif-bridge"}],
            "click_config_file": "local/router.click",
            "click_router_id": "3",
            "on_crash": "preserve",
            "boot_marker": "Router running",
            "boot_timeout": "1m30s",
        }
    )
    assert cfg.vcpus == 2 and cfg.click_router_id == 3 and cfg.boot_timeout == 90.0
    assert cfg.vif[0].ip == "10.0.0.2 fd00::2"


@pytest.mark.parametrize(
    "data,message",
    [
        ({}, 'task config "kernel": got nothing, is required: the path of the PV kernel image'),
        ({"kernel": "k", "vcpus": -1}, 'task config "vcpus": got -1, must be an integer between 1 and 128'),
        ({"kernel": "k", "vcpus": 1.5}, 'task config "vcpus": got 1.5, must be an integer between 1 and 128'),
        ({"kernel": "k", "memory": 0}, 'task config "memory": got 0, must be an integer between 1 and 1048576'),
        (
            {"kernel": "k", "on_crash": "restart"},
            'task config "on_crash": got "restart", must be one of "destroy", "preserve", "coredump-destroy"',
        ),
        (
            {"kernel": "k", "boot_timeout": "30"},
            'task config "boot_timeout": got "30", must be a duration such as "500ms", "30s" or "2m"',
        ),
        (
            {"kernel": "k", "cpus": "zero"},
            'task config "cpus": got "zero", must be a CPU list such as "all", "2", "0-3" or "0-3,^1"',
        ),
        (
            {"kernel": "k", "vif": [{"mac": "01:00:5e:00:00:01"}]},
            'task config "vif[0].mac": got "01:00:5e:00:00:01", must be a unicast MAC address (first octet even)',
        ),
        (
            {"kernel": "k", "vif": [{"mac": "zz"}]},
            'task config "vif[0].mac": got "zz", must be a MAC address such as "00:16:3e:12:34:56"',
        ),
        (
            {"kernel": "k", "vif": [{}, {"ip": "10.0.0.300"}]},
            'task config "vif[1].ip": got "10.0.0.300", must be one or more IP addresses separated by spaces',
        ),
        (
            {"kernel": "k", "vif": [{"bridge": "br,0"}]},
            "task config \"vif[0].bridge\": got \"br,0\", must be an interface name of 1-15 letters, digits, '_', '.' or '-'",
        ),
        (
            {"kernel": "k", "click_config_file": "../../etc/passwd"},
            'task config "click_config_file": got "../../etc/passwd", must be a path relative to the task directory that stays inside it',
        ),
        (
            {"kernel": "k", "click_config": "a", "click_config_file": "b"},
            'task config "click_config_file": got "b", must not be set together with "click_config"; use one of them',
        ),
        (
            {"kernel": "k", "cmdline": "a\nb"},
            'task config "cmdline": got "a\\nb", must be printable ASCII without quotes, backslashes or \'#\' (found newlines)',
        ),
        (
            {"kernel": "k#x"},
            "task config \"kernel\": got \"k#x\", must be printable ASCII without quotes, backslashes or '#' (found '#')",
        ),
        (
            {"kernel": "k", "click_router_id": -1},
            'task config "click_router_id": got -1, must be an integer between 0 and 2147483647',
        ),
    ],
)
def test_task_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        TaskConfig.from_dict(data)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("10µs", 0.00001),
        ("3ns", 3e-9),
        ("-1s", -1.0),
    ],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1d", "1 s", "3s5", "ms"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)
