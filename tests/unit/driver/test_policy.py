"""What a job may make dom0 do (xen_driver/driver/policy.py, docs/SECURITY.md).

Two kinds of test: each rule on its own (tables of accepted and refused values, with real
files, symlinks and FIFOs in a temporary tree), and one table of every job field that reaches
the host, driven through ``TaskLifecycle.start_task`` against an in-memory toolstack, where a
refusal must name the field and leave nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.driver.test_lifecycle import FakeXen, _leftovers, _lifecycle, make_spec
from xen_driver.driver import policy
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.lifecycle import domain_name_for


def _exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "k").write_bytes(b"kernel")
    (images / "sub").mkdir()
    task = tmp_path / "alloc" / "task"
    (task / "local").mkdir(parents=True)
    (task / "local" / "k").write_bytes(b"kernel")
    (task / "local" / "to-etc").symlink_to("/etc/passwd")
    (task / "local" / "to-images").symlink_to(images / "k")
    (tmp_path / "outside").write_bytes(b"x")
    return tmp_path, images, task


# ---- the one image-path rule -------------------------------------------------------------------

IMAGE_CASES = [
    # (value, accepted?, what the error says)
    ("{images}/k", True, None),
    ("local/k", True, None),
    ("local/to-images", True, None),  # a link that lands in image_dirs is as good as the target
    ("./local/k", True, None),
    ("{images}/../outside", False, "image_dirs"),
    ("{root}/outside", False, "image_dirs"),
    ("/etc/passwd", False, "image_dirs"),
    ("../../outside", False, "image_dirs"),
    ("local/../../../outside", False, "image_dirs"),
    ("local/to-etc", False, "image_dirs"),  # symlink out of the task directory
    ("local/none", False, "existing file"),
    ("{images}/sub", False, "existing file"),  # a directory
    ("local/k\x00x", False, "NUL"),
    ("", False, "path"),
]


@pytest.mark.parametrize("value, ok, message", IMAGE_CASES)
def test_image_path_rule(tree, value, ok, message):
    root, images, task = tree
    value = value.format(images=images, root=root)
    call = lambda: policy.resolve_image(value, field="kernel", task_dir=str(task), image_dirs=[str(images)])  # noqa: E731
    if ok:
        path = call()
        assert os.path.isabs(path) and path == os.path.realpath(path)
        assert policy.is_inside(path, str(images)) or policy.is_inside(path, str(task))
    else:
        with pytest.raises(ConfigError) as err:
            call()
        assert 'task config "kernel"' in str(err.value)
        assert message in str(err.value)


def test_image_without_task_dir_must_be_absolute(tree):
    _, images, _ = tree
    with pytest.raises(ConfigError, match="absolute path"):
        policy.resolve_image("local/k", field="ramdisk", task_dir=None, image_dirs=[str(images)])


# ---- hotplug scripts ---------------------------------------------------------------------------


@pytest.fixture
def scripts(tmp_path: Path):
    sdir = tmp_path / "etc-xen-scripts"
    _exe(sdir / "vif-bridge")
    _exe(sdir / "vif-route")
    (sdir / "vif-nat").write_text("#!/bin/sh\n")  # allowed but not executable
    _exe(sdir / "vif-custom")  # present, not allowed
    own = _exe(tmp_path / "opt" / "ovs-hook")
    task = tmp_path / "alloc" / "task"
    evil = _exe(task / "local" / "evil.sh")
    (task / "local" / "vif-bridge").symlink_to(evil)
    config = PluginConfig.from_dict(
        {"vif_scripts_dir": str(sdir), "vif_scripts": ["vif-bridge", "vif-route", "vif-nat", "vif-gone", str(own)]}
    )
    return config, sdir, own, task, evil


def test_allowed_scripts_resolve_to_their_real_paths(scripts):
    config, sdir, own, _, _ = scripts
    assert policy.resolve_vif_script(0, "vif-bridge", config) == str(sdir / "vif-bridge")
    assert policy.resolve_vif_script(1, str(sdir / "vif-route"), config) == str(sdir / "vif-route")
    assert policy.resolve_vif_script(0, str(own), config) == str(own)


@pytest.mark.parametrize(
    "value, message",
    [
        ("{task}/local/evil.sh", "vif_scripts"),  # the template-written script in the task directory
        ("{task}/local/vif-bridge", "vif_scripts"),  # a link named like an allowed script
        ("/tmp/evil", "vif_scripts"),  # any absolute path outside the allow-list
        ("/bin/sh", "vif_scripts"),
        ("vif-custom", "vif_scripts"),  # in the scripts directory, but not allowed
        ("../../alloc/task/local/evil.sh", "vif_scripts"),
        ("local/evil.sh", "vif_scripts"),
        ("vif-gone", "does not exist"),  # allowed, but the host lacks it
        ("vif-nat", "not an executable"),
        ("", "vif_scripts"),
    ],
)
def test_scripts_outside_the_allow_list_are_refused(scripts, value, message):
    config, _, _, task, _ = scripts
    with pytest.raises(ConfigError) as err:
        policy.resolve_vif_script(2, value.format(task=task), config)
    assert 'task config "vif[2].script"' in str(err.value)
    assert message in str(err.value)


def test_an_operators_link_in_the_scripts_dir_is_followed_once(scripts, tmp_path):
    """The toolstack gets the resolved path, so what runs is what was judged."""
    config, sdir, own, _, _ = scripts
    (sdir / "vif-route").unlink()
    (sdir / "vif-route").symlink_to(own)
    assert policy.resolve_vif_script(0, "vif-route", config) == str(own)


# ---- bridges, counts, resources ----------------------------------------------------------------


def test_bridges_must_be_allowed_and_exist():
    config = PluginConfig.from_dict({"vif_bridges": ["xenbr0", "br-nfv"]})
    present = {"xenbr0"}.__contains__
    policy.check_bridge(0, "xenbr0", config, present)
    with pytest.raises(ConfigError, match=r'"vif\[1\].bridge": got "docker0", .*plugin setting "vif_bridges"'):
        policy.check_bridge(1, "docker0", config, present)
    with pytest.raises(ConfigError, match="no such bridge"):
        policy.check_bridge(0, "br-nfv", config, present)


def test_interface_exists_reads_sysfs(tmp_path):
    (tmp_path / "xenbr0").mkdir()
    assert policy.interface_exists("xenbr0", str(tmp_path))
    assert not policy.interface_exists("xenbr1", str(tmp_path))


def test_vif_count_memory_and_vcpus_are_bounded():
    config = PluginConfig.from_dict({"max_vifs": 2})
    policy.check_vif_count(2, config)
    with pytest.raises(ConfigError, match='at most 2 are allowed \\(plugin setting "max_vifs"\\)'):
        policy.check_vif_count(3, config)
    host = policy.HostLimits(nr_cpus=2, total_memory_mib=3072)
    policy.check_memory(3072, "memory", host)
    with pytest.raises(ConfigError, match="more memory than this host has"):
        policy.check_memory(3073, "memory", host)
    policy.check_vcpus(2, host)
    with pytest.raises(ConfigError, match="at most the host's 2 CPUs"):
        policy.check_vcpus(3, host)
    policy.check_memory(1 << 20, "memory", policy.HostLimits())  # unknown host: syntax only


# ---- ClickOS configuration ---------------------------------------------------------------------


def test_click_config_size_is_capped():
    config = PluginConfig.from_dict({"max_click_config_bytes": 1024})
    assert policy.check_click_text("x" * 1024, config) == "x" * 1024
    with pytest.raises(ConfigError, match=r'is 1025 bytes; at most 1024 bytes .*"max_click_config_bytes"'):
        policy.check_click_text("x" * 1025, config)
    with pytest.raises(ConfigError, match="at most 1024 bytes"):
        policy.check_click_text("é" * 513, config)  # bytes, not characters


def test_click_config_file_rules(tmp_path):
    config = PluginConfig.from_dict({"max_click_config_bytes": 4096})
    task = tmp_path / "task"
    (task / "local").mkdir(parents=True)
    (task / "local" / "ok.click").write_text("in :: FromDevice(0);\n")
    with open(task / "local" / "big.click", "wb") as fh:
        fh.truncate(1 << 40)  # sparse: refused from its size, a read of 1 TiB would never return
    (task / "local" / "bad.click").write_bytes(b"\xff\xfe")
    (task / "local" / "out.click").symlink_to("/etc/hostname")
    os.mkfifo(task / "local" / "fifo.click")
    assert policy.read_click_config_file("local/ok.click", str(task), config).startswith("in ::")
    with pytest.raises(ConfigError, match=r"is 1099511627776 bytes; at most 4096 bytes"):
        policy.read_click_config_file("local/big.click", str(task), config)
    with pytest.raises(ConfigError, match="regular file"):
        policy.read_click_config_file("local/fifo.click", str(task), config)  # would block a reader forever
    with pytest.raises(ConfigError, match="inside the task directory"):
        policy.read_click_config_file("local/out.click", str(task), config)
    with pytest.raises(ConfigError, match="UTF-8"):
        policy.read_click_config_file("local/bad.click", str(task), config)
    with pytest.raises(ConfigError, match="none is there"):
        policy.read_click_config_file("local/none.click", str(task), config)


# ---- files the driver writes into a task directory ---------------------------------------------


def test_copy_into_task_dir_never_writes_through_a_planted_link(tmp_path):
    src = tmp_path / "core.scratch"
    src.write_bytes(b"core image")
    task = tmp_path / "task"
    task.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (task / "dom.core").symlink_to(victim)
    with pytest.raises(FileExistsError):
        policy.copy_into_task_dir(str(src), str(task), "dom.core")
    assert victim.read_bytes() == b"precious"
    out = policy.copy_into_task_dir(str(src), str(task), "other.core")
    assert Path(out).read_bytes() == b"core image" and (os.stat(out).st_mode & 0o777) == 0o600
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(OSError):
        policy.copy_into_task_dir(str(src), str(linked_dir), "x.core")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# ---- plugin settings ---------------------------------------------------------------------------


def test_plugin_policy_defaults():
    config = PluginConfig.from_dict({})
    assert config.vif_scripts_dir == "/etc/xen/scripts"
    assert config.vif_scripts == ("vif-bridge", "vif-route", "vif-nat")
    assert config.vif_bridges == ("xenbr0",)
    assert config.max_vifs == 8 and config.max_click_config_bytes == 65536


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"vif_scripts": ["vif bridge"]}, "vif_scripts[0]"),
        ({"vif_scripts": ["ok", "../x"]}, "vif_scripts[1]"),
        ({"vif_scripts": "vif-bridge"}, "vif_scripts"),
        ({"vif_bridges": ["xenbr0", "a-very-long-bridge-name"]}, "vif_bridges[1]"),
        ({"vif_scripts_dir": "etc/xen/scripts"}, "vif_scripts_dir"),
        ({"max_vifs": 65}, "max_vifs"),
        ({"max_click_config_bytes": 0}, "max_click_config_bytes"),
        ({"max_click_config_bytes": 1 << 20}, "max_click_config_bytes"),
    ],
)
def test_bad_plugin_policy_settings_name_the_setting(raw, field):
    with pytest.raises(ConfigError) as err:
        PluginConfig.from_dict(raw)
    assert f'plugin config "{field}"' in str(err.value)


# ---- every job field that reaches the host, through StartTask ----------------------------------


@pytest.fixture
def host(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "kernel").write_bytes(b"\x7fELF fake kernel")
    (images / "initrd").write_bytes(b"initrd")
    consoles = tmp_path / "console"
    consoles.mkdir()
    alloc = tmp_path / "alloc"
    (alloc / "web" / "local").mkdir(parents=True)
    (alloc / "web" / "local" / "fw.click").write_text("in :: FromDevice(0);\n")
    (alloc / "web" / "local" / "big.click").write_text("x" * 2048)
    _exe(alloc / "web" / "local" / "evil.sh")
    (tmp_path / "stdout.log").write_bytes(b"")
    sdir = tmp_path / "scripts"
    _exe(sdir / "vif-bridge")
    _exe(sdir / "vif-route")
    config = PluginConfig.from_dict(
        {
            "image_dirs": [str(images)],
            "console_log_dir": str(consoles),
            "state_dir": str(tmp_path / "state"),
            "xenstored_socket": str(tmp_path / "no-xenstored"),
            "vif_scripts_dir": str(sdir),
            "vif_scripts": ["vif-bridge", "vif-route"],
            "vif_bridges": ["xenbr0", "br-absent"],
            "max_vifs": 2,
            "max_click_config_bytes": 1024,
        }
    )
    return tmp_path, config, FakeXen(consoles)


# (field, accepted value, refused value); the refusal's message must name the field.
FIELD_TABLE = [
    ("kernel", "{images}/kernel", "{root}/stdout.log"),
    ("ramdisk", "{images}/initrd", "/etc/passwd"),
    ("cmdline", "clickos tick=5", "x" * 1024),
    ("memory", 16, 4096),
    ("vcpus", 2, 3),
    ("cpus", "0-1", "5"),
    ("vif", [{"bridge": "xenbr0"}] * 2, [{"bridge": "xenbr0"}] * 3),
    ("vif[0].bridge", [{"bridge": "xenbr0"}], [{"bridge": "docker0"}]),
    ("vif[0].bridge", [{"bridge": "xenbr0"}], [{"bridge": "br-absent"}]),
    ("vif[0].script", [{"script": "vif-route"}], [{"script": "{task}/local/evil.sh"}]),
    ("vif[0].script", [{"script": "vif-bridge"}], [{"script": "/tmp/evil"}]),
    ("vif[0].mac", [{"mac": "00:16:3e:00:00:01"}], [{"mac": "01:16:3e:00:00:01"}]),
    ("vif[0].ip", [{"ip": "10.0.0.2"}], [{"ip": "10.0.0.300"}]),
    ("click_config", "in :: FromDevice(0);", "x" * 1025),
    ("click_config_file", "local/fw.click", "local/big.click"),
    ("click_router_id", 3, -1),
    ("on_crash", "coredump-destroy", "rename-restart"),
    ("boot_marker", "NDX-GUEST READY", "x" * 257),
    ("boot_timeout", "10s", "2h"),
    ("pool", "clickos", "click os"),  # a profile this node lacks: a cold start (tests/unit/driver/test_pool.py)
    ("advertise_vif", 1, 0),
]

# What a row's values come with, for fields that only mean something next to others.
ROW_CONTEXT = {"advertise_vif": {"vif": [{"bridge": "xenbr0"}, {"bridge": "xenbr0", "ip": "10.0.0.2"}]}}


def _job_value(value, root: Path, task: Path):
    if isinstance(value, str):
        return value.format(images=root / "images", root=root, task=task)
    if isinstance(value, list):
        return [{k: _job_value(v, root, task) for k, v in item.items()} for item in value]
    return value


def _config_key(field: str) -> str:
    return field.split("[")[0].split(".")[0]


@pytest.mark.parametrize("field, good, bad", FIELD_TABLE, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(FIELD_TABLE)])
async def test_every_job_field_reaching_the_host(host, field, good, bad):
    tmp_path, config, fake = host
    task_dir = tmp_path / "alloc" / "web"
    key = _config_key(field)
    lc = await _lifecycle(config, fake)
    lc.host_cpus, lc.host_memory_mib = 2, 3072
    lc.bridge_exists = {"xenbr0"}.__contains__
    lc._xenstore = None
    try:
        # Refused: a field-named ConfigError, before anything is created, and nothing left.
        with pytest.raises(ConfigError) as err:
            await lc.start_task(
                make_spec(tmp_path, **ROW_CONTEXT.get(key, {}), **{key: _job_value(bad, tmp_path, task_dir)})
            )
        assert f'"{field}"' in str(err.value), str(err.value)
        assert fake.calls == [] and _leftovers(tmp_path, fake) == []
        # Accepted: the domain is built with the host value the policy resolved.
        if key in ("click_config", "click_config_file"):
            spec = make_spec(tmp_path, **{key: _job_value(good, tmp_path, task_dir)})
            assert lc._click_config(spec)  # the push itself needs xenstored (tests/xen)
            return
        spec = make_spec(tmp_path, **ROW_CONTEXT.get(key, {}), **{key: _job_value(good, tmp_path, task_dir)})
        await lc.start_task(spec)
        dspec = fake.specs[domain_name_for(spec)]
        if key == "vif" and "script" in (good[0] or {}):
            assert dspec.vifs[0].script == str(tmp_path / "scripts" / good[0]["script"])
    finally:
        await lc.close()


def test_field_table_covers_every_task_config_field():
    """A new job field that reaches the host needs a row above."""
    fields = {f.name for f in TaskConfig.__dataclass_fields__.values()}
    covered = {_config_key(f) for f, _, _ in FIELD_TABLE}
    assert fields - covered == set(), f"job fields without a policy row: {sorted(fields - covered)}"


def test_a_task_directory_that_is_no_valid_path_is_a_config_error(tree):
    """Nomad builds the task directory from the task's name, which may hold any character."""
    _, images, task = tree
    with pytest.raises(ConfigError, match='task config "kernel".*cannot be resolved to a host path'):
        policy.resolve_image(str(images / "k"), field="kernel", task_dir=str(task) + "\x00", image_dirs=[str(images)])
