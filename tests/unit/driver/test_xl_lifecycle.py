"""The lifecycle on its default backend: ``xl``, here the fake ``xl`` executable of tests/fakes
(domains in a file, XenStore nodes in a fake xenstored, consoles in files), with no backend
passed in, so the plugin configuration's ``xl_path`` is what runs.  The in-memory fakes of the
other lifecycle tests are libvirt-shaped; this module proves the path most hosts take."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.domains import DomainTable
from tests.fakes.xenstored import FakeXenstored, guest_side
from tests.unit.driver.test_lifecycle import make_spec
from xen_driver.driver.config import PluginConfig
from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
from xen_driver.driver.models import RecoveredTask, TaskState
from xen_driver.driver.pool import MEMBER_PREFIX
from xen_driver.driver.state import DriverState
from xen_driver.xen.keeperclient import FifoKeeperClient

FAKE_XL = Path(__file__).resolve().parents[2] / "fakes" / "xl"


@pytest.fixture
def xl_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    images, consoles, xen = tmp_path / "images", tmp_path / "console", tmp_path / "xen"
    images.mkdir()
    consoles.mkdir()
    (images / "kernel").write_bytes(b"\x7fELF fake kernel")
    (tmp_path / "alloc" / "web").mkdir(parents=True)
    (tmp_path / "stdout.log").write_bytes(b"")
    sock = str(tmp_path / "xs.sock")
    monkeypatch.setenv("FAKE_XEN_DIR", str(xen))
    monkeypatch.setenv("FAKE_XEN_CONSOLE_DIR", str(consoles))
    monkeypatch.setenv("XENSTORED_PATH", sock)
    config = PluginConfig.from_dict(
        {
            "xl_path": str(FAKE_XL),
            "image_dirs": [str(images)],
            "console_log_dir": str(consoles),
            "state_dir": str(tmp_path / "state"),
            "xenstored_socket": sock,
        }
    )
    return tmp_path, config, DomainTable(str(xen))


@contextlib.asynccontextmanager
async def _running(config: PluginConfig, xen_dir: str) -> AsyncIterator[TaskLifecycle]:
    """A fake xenstored playing the guests' side, and a lifecycle with no backend passed in."""
    async with _xenstored(config, xen_dir), _plugin(config) as lc:
        yield lc


@contextlib.asynccontextmanager
async def _xenstored(config: PluginConfig, xen_dir: str) -> AsyncIterator[FakeXenstored]:
    server = FakeXenstored(config.xenstored_socket)
    server.on_write.append(guest_side(server, xen_dir))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def _plugin(config: PluginConfig) -> AsyncIterator[TaskLifecycle]:
    """One plugin's lifecycle (the domains and XenStore outlive it)."""
    lc = TaskLifecycle(config, lambda e: None, fifo_keeper=FifoKeeperClient(config.state_dir, idle_exit_s=1.0))
    try:
        yield lc
    finally:
        await lc.close()


def _files(tmp_path: Path) -> list[str]:
    found = [str(p) for p in (tmp_path / "console").iterdir()]
    for sub in ("tasks", "domains"):
        d = tmp_path / "state" / sub
        if d.exists():
            found += [str(p) for p in d.iterdir()]
    return found


def _xl(*args: str) -> None:
    subprocess.run([sys.executable, str(FAKE_XL), *args], check=True, env=os.environ.copy())


async def test_start_and_stop_through_xl_leave_nothing(xl_host):
    tmp_path, config, table = xl_host
    async with _running(config, table.root) as lc:
        await _start_stop(tmp_path, lc, table)


async def _start_stop(tmp_path: Path, lc: TaskLifecycle, table: DomainTable) -> None:
    assert lc.backend.kind == "xl"
    handle = await lc.start_task(make_spec(tmp_path, boot_marker="booted"))
    status = await lc.inspect_task(handle.task_id)
    assert status.driver_attributes["backend"] == "xl"
    assert {"timing.render_ms", "timing.domain_build_ms", "timing.boot_ms"} <= set(status.driver_attributes)
    assert len(table.snapshot()) == 1
    await lc.stop_task(handle.task_id, 5.0, "SIGTERM")
    result = await asyncio.wait_for(lc.wait_task(handle.task_id), 10)
    assert result.exit_code == 0
    await lc.destroy_task(handle.task_id, False)
    assert table.snapshot() == {}
    assert _files(tmp_path) == []


async def test_crash_with_coredump_destroy_writes_the_core_into_the_task_dir(xl_host):
    tmp_path, config, table = xl_host
    async with _running(config, table.root) as lc:
        await _crash(tmp_path, lc, table)


async def _crash(tmp_path: Path, lc: TaskLifecycle, table: DomainTable) -> None:
    spec = make_spec(tmp_path, boot_marker="booted", on_crash="coredump-destroy")
    handle = await lc.start_task(spec)
    name = (await lc.inspect_task(handle.task_id)).driver_attributes["domain_name"]
    await asyncio.to_thread(_xl, "fake-exit", name, "crash")
    result = await asyncio.wait_for(lc.wait_task(handle.task_id), 10)
    assert result.exit_code == 1 and "crashed" in result.err
    core = Path(spec.task_dir) / f"{name}.core"
    assert core.read_bytes() == b"fake core\n"
    assert table.snapshot() == {}  # dumped, then destroyed
    await lc.destroy_task(handle.task_id, False)
    assert _files(tmp_path) == []


async def test_a_claimed_member_is_listed_as_its_task_and_survives_a_plugin_restart(xl_host):
    """``xl list`` shows a claimed pool member under its task's domain name (renamed off the
    start's path); the next plugin recovers it under the name in the task's handle, its exit
    watcher does not take the rename for a death, and stopping it leaves nothing behind."""
    tmp_path, config, table = xl_host
    (tmp_path / "images" / "clickos").write_bytes(b"\x7fELF fake clickos")
    raw = {
        "xl_path": config.xl_path,
        "image_dirs": [str(tmp_path / "images")],
        "console_log_dir": config.console_log_dir,
        "state_dir": config.state_dir,
        "xenstored_socket": config.xenstored_socket,
        "pool": {"clickos": {"kernel": str(tmp_path / "images" / "clickos"), "memory": 16, "size": 1}},
    }
    config = PluginConfig.from_dict(raw)
    spec = make_spec(tmp_path, kernel=str(tmp_path / "images" / "clickos"), boot_marker="booted", pool="clickos")
    async with _xenstored(config, table.root):
        await _claim_restart_stop(tmp_path, config, table, spec)


async def _claim_restart_stop(tmp_path: Path, config: PluginConfig, table: DomainTable, spec) -> None:
    shown = domain_name_for(spec)

    def listed() -> dict[str, int]:
        return {d["name"]: d["domid"] for d in table.snapshot().values()}

    async with _plugin(config) as lc:
        await lc.pool.start()
        await _until(lambda: lc.pool.ready("clickos") == 1, "a ready member")
        handle = await lc.start_task(spec)
        state = DriverState.decode(handle.driver_state)
        assert state.domain_name.startswith(MEMBER_PREFIX)
        await _until(lambda: listed().get(shown) == state.domid, f"xl list to show {shown}")
        await _until(lambda: lc.pool.ready("clickos") == 1, "the refill")
    assert listed()[shown] == state.domid  # the plugin went away; the guest runs on

    async with _plugin(config) as lc2:
        await lc2.recover_task(
            RecoveredTask(spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state)
        )
        assert (await lc2.inspect_task(spec.id)).state is TaskState.RUNNING
        assert lc2._watcher is not None
        await _until(lambda: lc2._watcher.checks >= 1 and not lc2._watcher._fresh, "the watcher's first check")
        await lc2._watcher.rescan()
        assert (await lc2.inspect_task(spec.id)).state is TaskState.RUNNING  # not taken for dead
        await lc2.stop_task(spec.id, 5.0, "SIGTERM")
        assert (await asyncio.wait_for(lc2.wait_task(spec.id), 10)).exit_code == 0
        await lc2.destroy_task(spec.id, False)
        assert shown not in listed() and state.domid not in listed().values()
        assert [f for f in _files(tmp_path) if state.domain_name in f or shown in f] == []


async def _until(cond, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_driver_log_collection_writes_nomads_log_files_without_a_fifo(xl_host):
    """``log_collection = "driver"``: Nomad starts no logmon and makes no FIFO; the guest's console
    reaches ``<alloc>/alloc/logs/<task>.stdout.0`` (what ``nomad alloc logs`` reads), stderr is an
    empty ``<task>.stderr.0``, and the files stay for Nomad after the task is gone."""
    from dataclasses import replace

    from xen_driver.driver.core import DriverCore

    tmp_path, config, table = xl_host
    config = replace(config, log_collection="driver", log_max_files=3, log_max_file_size_mb=1)
    assert DriverCore(config).capabilities().disable_log_collection is True
    assert DriverCore(replace(config, log_collection="nomad")).capabilities().disable_log_collection is False
    logs = tmp_path / "alloc" / "alloc" / "logs"
    logs.mkdir(parents=True)
    spec = replace(
        make_spec(tmp_path, boot_marker="booted"),
        stdout_path=str(logs / ".web.stdout.fifo"),
        stderr_path=str(logs / ".web.stderr.fifo"),
    )
    async with _running(config, table.root) as lc:
        handle = await lc.start_task(spec)
        stdout = logs / "web.stdout.0"
        deadline = asyncio.get_running_loop().time() + 20
        while b"booted" not in (stdout.read_bytes() if stdout.exists() else b""):
            assert asyncio.get_running_loop().time() < deadline, sorted(p.name for p in logs.iterdir())
            await asyncio.sleep(0.05)
        assert (logs / "web.stderr.0").read_bytes() == b""
        assert not (logs / ".web.stdout.fifo").exists() and not (logs / ".web.stderr.fifo").exists()
        await lc.stop_task(handle.task_id, 5.0, "SIGTERM")
        await asyncio.wait_for(lc.wait_task(handle.task_id), 10)
        await lc.destroy_task(handle.task_id, False)
    assert sorted(p.name for p in logs.iterdir()) == ["web.stderr.0", "web.stdout.0"]
    assert table.snapshot() == {}


async def test_driver_log_collection_honours_a_task_whose_logs_are_disabled(xl_host):
    """``logs { disabled = true }``: Nomad names /dev/null for stdout and stderr; the driver writes
    no log file anywhere (not into /dev, beside the "FIFO")."""
    from dataclasses import replace

    tmp_path, config, table = xl_host
    config = replace(config, log_collection="driver")
    logs = tmp_path / "alloc" / "alloc" / "logs"
    logs.mkdir(parents=True)
    spec = replace(make_spec(tmp_path, boot_marker="booted"), stdout_path=os.devnull, stderr_path=os.devnull)
    async with _running(config, table.root) as lc:
        handle = await lc.start_task(spec)
        await lc.stop_task(handle.task_id, 5.0, "SIGTERM")
        await asyncio.wait_for(lc.wait_task(handle.task_id), 10)
        await lc.destroy_task(handle.task_id, False)
    assert list(logs.iterdir()) == []
    assert not any(Path("/dev").glob("web.std*"))
