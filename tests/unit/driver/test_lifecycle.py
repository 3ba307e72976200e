"""State machine of the task lifecycle, against an in-memory backend.

These tests check the driver core's bookkeeping quickly (start/boot/exit/stop/destroy/recover,
clean-up after failures).  The same behaviours are shown on real Xen by ``tests/xen``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from pathlib import Path

import pytest

from tests.unit.xen.xen_fakes import FakeXenstored
from xen_driver.driver import lifecycle as lifecycle_mod
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.errors import ConfigError, NotSupported, RecoverableError, TaskNotFound
from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
from xen_driver.driver.models import RecoveredTask, TaskSpec, TaskState
from xen_driver.driver.state import DriverState
from xen_driver.xen.backend import (
    BackendUnavailable,
    CreatedDomain,
    DomainInfo,
    DomainNotFound,
    DomainState,
    ExitReason,
    HostFacts,
    PhaseRecorder,
)
from xen_driver.xen.keeperclient import FifoKeeperClient
from xen_driver.xen.spec import DomainSpec


class FakeXen:
    """Domains in a dict; 'guests' print to console files like xenconsoled would."""

    kind = "fake"
    can_dump_core = True
    can_rename = True

    def __init__(self, console_dir: Path, *, boot_line: bytes = b"NDX-GUEST READY\n"):
        self.console_dir = console_dir
        self.boot_line = boot_line
        self.domains: dict[str, DomainInfo] = {}
        self.specs: dict[str, DomainSpec] = {}
        self.ignore_shutdown: set[str] = set()
        self.next_domid = 1
        self.calls: list[tuple[str, str]] = []
        #: Renamed domains: the driver's name → the name listings would show (the table stays
        #: keyed by the driver's name, as a real backend translates).
        self.shown: dict[str, str] = {}

    def _console(self, name: str) -> Path:
        return self.console_dir / f"guest-{name}.log"

    def _set(self, name: str, **changes) -> None:
        old = self.domains[name]
        self.domains[name] = DomainInfo(**{**old.__dict__, **changes})

    async def validate(self, spec: DomainSpec) -> None:
        spec.validate()

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        self.calls.append(("create", spec.name))
        self.specs[spec.name] = spec
        info = DomainInfo(spec.name, self.next_domid, spec.uuid, DomainState.PAUSED, memory_kib=spec.memory_mb * 1024)
        self.next_domid += 1
        self.domains[spec.name] = info
        self._console(spec.name).write_bytes(b"")
        if not paused:
            self._run(spec.name)
        return CreatedDomain(spec.name, info.domid)

    def _run(self, name: str) -> None:
        self._set(name, state=DomainState.BLOCKED)
        if "silent" not in self.specs[name].cmdline:
            with open(self._console(name), "ab") as fh:
                fh.write(b"fake guest booting\n" + self.boot_line)

    async def unpause(self, name: str, *, domid: int | None = None) -> None:
        self.calls.append(("unpause", name))
        self._run(name)

    async def shutdown(self, name: str, *, wait: bool = False) -> None:
        self.calls.append(("shutdown", name))
        if name not in self.domains:
            raise DomainNotFound(name)
        if name not in self.ignore_shutdown:
            self.power_off(name, ExitReason.POWEROFF)

    def power_off(self, name: str, reason: ExitReason) -> None:
        self._set(name, state=DomainState.SHUTDOWN, shutdown_reason=reason)

    async def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        self.domains.pop(name, None)

    async def list_domains(self) -> list[DomainInfo]:
        return list(self.domains.values())

    async def domain(self, name: str) -> DomainInfo:
        try:
            return self.domains[name]
        except KeyError:
            raise DomainNotFound(name) from None

    async def forget(self, name: str) -> None:
        self.calls.append(("forget", name))
        self.shown.pop(name, None)

    async def rename(self, name: str, shown_as: str) -> None:
        self.calls.append(("rename", name))
        if name not in self.domains:
            raise DomainNotFound(name)
        self.shown[name] = shown_as

    def config_file(self, name: str) -> str:
        return ""

    async def dump_core(self, name: str, path: str) -> None:
        self.calls.append(("dump-core", name))
        if name not in self.domains:
            raise DomainNotFound(name)
        Path(path).write_bytes(b"fake core of " + name.encode())

    async def host_facts(self) -> HostFacts:
        return HostFacts()

    async def close(self) -> None:
        return None


@pytest.fixture
def host(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "kernel").write_bytes(b"\x7fELF fake kernel")
    consoles = tmp_path / "console"
    consoles.mkdir()
    alloc = tmp_path / "alloc"
    (alloc / "web").mkdir(parents=True)
    (tmp_path / "stdout.log").write_bytes(b"")  # Nomad's logmon makes this (a FIFO) before StartTask
    config = PluginConfig.from_dict(
        {
            "image_dirs": [str(images)],
            "console_log_dir": str(consoles),
            "state_dir": str(tmp_path / "state"),
            "xenstored_socket": str(tmp_path / "no-xenstored"),
        }
    )
    return tmp_path, config, FakeXen(consoles)


def make_spec(tmp_path: Path, task_id: str = "a1b2c3d4-0000-0000-0000-000000000000/web/5f6e7d8c", **cfg) -> TaskSpec:
    raw = {"kernel": str(tmp_path / "images" / "kernel"), "boot_marker": "NDX-GUEST READY", "boot_timeout": "5s"}
    raw.update(cfg)
    return TaskSpec(
        id=task_id,
        name="web",
        alloc_id=task_id.split("/")[0],
        task_group="g",
        job_name="j",
        job_id="j",
        namespace="default",
        node_id="n",
        node_name="n",
        env={},
        memory_mb=16,
        memory_max_mb=0,
        cpu_shares=100,
        alloc_dir=str(tmp_path / "alloc"),
        stdout_path=str(tmp_path / "stdout.log"),
        stderr_path=os.devnull,
        config=TaskConfig.from_dict(raw),
    )


async def _lifecycle(config, fake, events=None):
    # The FIFO keeper is a real process; in these tests it goes away a second after its last use.
    keeper = FifoKeeperClient(config.state_dir, idle_exit_s=1.0)
    lc = TaskLifecycle(
        config,
        (events.append if events is not None else (lambda e: None)),
        backend=fake,
        rescan_interval_s=0.05,
        fifo_keeper=keeper,
    )
    return lc


def _leftovers(tmp_path: Path, fake: FakeXen) -> list[str]:
    files = [str(p) for p in (tmp_path / "console").iterdir()]
    state = tmp_path / "state" / "tasks"
    if state.exists():
        files += [str(p) for p in state.iterdir()]
    return files + [f"domain {n}" for n in fake.domains]


def test_domain_name_is_valid_unique_and_bounded(host):
    tmp_path, _, _ = host
    a = domain_name_for(make_spec(tmp_path))
    b = domain_name_for(make_spec(tmp_path, task_id="a1b2c3d4-0000-0000-0000-000000000000/web/99999999"))
    assert a == "nomad-web-a1b2c3d4-5f6e7d8c"
    assert a != b
    long = make_spec(tmp_path)
    long = TaskSpec(**{**long.__dict__, "name": "x" * 200 + "/ ü"})
    name = domain_name_for(long)
    DomainSpec(name=name, kernel="/k", memory_mb=8).validate()
    assert len(name) <= 64


async def test_start_boot_poweroff_destroy(host):
    tmp_path, config, fake = host
    events = []
    lc = await _lifecycle(config, fake, events)
    try:
        spec = make_spec(tmp_path)
        handle = await lc.start_task(spec)
        state = DriverState.decode(handle.driver_state)
        assert handle.state is TaskState.RUNNING and handle.version >= 1
        assert fake.calls[:1] == [("create", state.domain_name)]  # no Click config: created running
        assert fake.specs[state.domain_name].memory_mb == 16  # from the task's resources
        status = await lc.inspect_task(spec.id)
        assert status.state is TaskState.RUNNING
        assert {"timing.boot_ms", "timing.domain_build_ms", "timing.total_ms"} <= set(status.driver_attributes)
        assert events and "booted" in events[0].message and "boot_ms" in events[0].annotations

        fake.power_off(state.domain_name, ExitReason.POWEROFF)
        result = await asyncio.wait_for(lc.wait_task(spec.id), 5)
        assert (result.exit_code, result.signal) == (0, 0)
        assert state.domain_name not in fake.domains  # the preserved domain was freed
        # Console reached the task's stdout sink.
        assert b"NDX-GUEST READY" in Path(spec.stdout_path).read_bytes()

        await lc.destroy_task(spec.id, True)
        with pytest.raises(TaskNotFound):
            await lc.inspect_task(spec.id)
        assert _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()


async def test_crash_is_a_failure(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        spec = make_spec(tmp_path)
        handle = await lc.start_task(spec)
        fake.power_off(DriverState.decode(handle.driver_state).domain_name, ExitReason.CRASH)
        result = await asyncio.wait_for(lc.wait_task(spec.id), 5)
        assert result.exit_code != 0 and "crashed" in result.err
    finally:
        await lc.close()


async def test_stop_graceful_and_timeout_destroy(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        polite = make_spec(tmp_path)
        await lc.start_task(polite)
        await lc.stop_task(polite.id, 5.0, "")
        result = await lc.wait_task(polite.id)
        assert result.signal == signal.SIGTERM

        stubborn = make_spec(tmp_path, task_id="a1b2c3d4-0000-0000-0000-000000000000/web/00000002")
        handle = await lc.start_task(stubborn)
        name = DriverState.decode(handle.driver_state).domain_name
        fake.ignore_shutdown.add(name)
        await lc.stop_task(stubborn.id, 0.3, "SIGTERM")
        result = await asyncio.wait_for(lc.wait_task(stubborn.id), 5)
        assert result.signal == signal.SIGKILL
        assert ("destroy", name) in fake.calls and name not in fake.domains
    finally:
        await lc.close()


async def test_concurrent_waiters_all_return(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        spec = make_spec(tmp_path)
        await lc.start_task(spec)
        waiters = [asyncio.ensure_future(lc.wait_task(spec.id)) for _ in range(5)]
        await lc.stop_task(spec.id, 2.0, "SIGINT")
        results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert {r.signal for r in results} == {signal.SIGINT}
    finally:
        await lc.close()


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"kernel": "/etc/passwd"}, '"kernel"'),
        ({"kernel": "../../../etc/passwd"}, '"kernel"'),
        ({"kernel": "missing-kernel"}, '"kernel"'),
        ({"memory": 2}, '"memory"'),
        ({"click_config_file": "local/none.click"}, '"click_config_file"'),
    ],
)
async def test_bad_config_names_field_and_leaves_nothing(host, cfg, field):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        with pytest.raises(ConfigError) as err:
            await lc.start_task(make_spec(tmp_path, **cfg))
        assert field in str(err.value)
        assert fake.calls == [] and _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()


async def test_boot_timeout_undoes_everything(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        spec = make_spec(tmp_path, cmdline="silent", boot_timeout="500ms")
        with pytest.raises(RecoverableError, match="boot_timeout"):
            await lc.start_task(spec)
        assert [c for c, _ in fake.calls] == ["create", "destroy", "forget"]
        assert _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()


async def test_recover_adopts_live_domain_and_resumes_console(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    spec = make_spec(tmp_path)
    handle = await lc.start_task(spec)
    state = DriverState.decode(handle.driver_state)
    await asyncio.sleep(0.4)  # let the pump deliver and record its offset
    await lc.close()  # plugin exits: the guest keeps running
    assert fake.domains[state.domain_name].state.alive

    console = tmp_path / "console" / f"guest-{state.domain_name}.log"
    with open(console, "ab") as fh:
        fh.write(b"printed while the plugin was down\n")

    lc2 = await _lifecycle(config, fake)
    try:
        recovered = RecoveredTask(
            spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state
        )
        await lc2.recover_task(recovered)
        await lc2.recover_task(recovered)  # idempotent
        assert (await lc2.inspect_task(spec.id)).state is TaskState.RUNNING
        # The keeper copies the console whether a plugin runs or not: the task's stdout ends up
        # holding the whole console log, once.
        for _ in range(100):
            after = Path(spec.stdout_path).read_bytes()
            if len(after) >= console.stat().st_size:
                break
            await asyncio.sleep(0.05)
        assert after.count(b"NDX-GUEST READY") == 1  # nothing duplicated
        assert after == console.read_bytes()  # nothing lost
        assert after.endswith(b"printed while the plugin was down\n")
        fake.power_off(state.domain_name, ExitReason.POWEROFF)
        assert (await asyncio.wait_for(lc2.wait_task(spec.id), 5)).exit_code == 0
    finally:
        await lc2.close()


async def _started_then_plugin_gone(tmp_path: Path, config, fake):
    """A task started by one plugin, which then exits: (spec, handle, domain name)."""
    lc = await _lifecycle(config, fake)
    spec = make_spec(tmp_path)
    handle = await lc.start_task(spec)
    await lc.close()
    return spec, handle, DriverState.decode(handle.driver_state).domain_name


@pytest.mark.parametrize("left", ["nothing", "an inactive definition"])
async def test_recover_vanished_domain_reports_exit(host, left):
    tmp_path, config, fake = host
    spec, handle, name = await _started_then_plugin_gone(tmp_path, config, fake)
    if left == "nothing":
        fake.domains.clear()  # destroyed behind Nomad's back while the plugin was down
    else:  # libvirt keeps a destroyed domain's definition: a domain with no domid, not a new one
        fake._set(name, domid=None, state=DomainState.SHUTDOWN, shutdown_reason=ExitReason.DESTROYED)
    lc2 = await _lifecycle(config, fake)
    try:
        await lc2.recover_task(
            RecoveredTask(spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state)
        )
        result = await asyncio.wait_for(lc2.wait_task(spec.id), 2)
        assert result.exit_code != 0 and "vanished" in result.err, result.err
        await lc2.destroy_task(spec.id, False)  # what Nomad does next
        assert ("forget", name) in fake.calls  # the definition goes with the task's files
        fake.domains.pop(name, None)
        assert _leftovers(tmp_path, fake) == []
    finally:
        await lc2.close()


async def test_recovering_a_vanished_task_does_not_wait_for_its_console(host, monkeypatch):
    """Nomad recovers its tasks one after another before its client serves anything, and after an
    agent restart no logmon reads a FIFO yet: a RecoverTask that drained the console of a task
    whose domain vanished cost the agent's start the whole drain timeout for each dead task.
    The drain and the clean-up now follow in the background, and DestroyTask waits for them."""
    tmp_path, config, fake = host
    spec, handle, name = await _started_then_plugin_gone(tmp_path, config, fake)
    fake.domains.clear()
    lc2 = await _lifecycle(config, fake)
    delivered = asyncio.Event()
    drains: list[str] = []

    async def drain(domain: str, timeout_s: float) -> bool:
        drains.append(domain)
        await delivered.wait()  # no reader yet: as long as the drain may take
        return True

    monkeypatch.setattr(lc2, "_drain_console", drain)
    try:
        recovered = RecoveredTask(
            spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state
        )
        await asyncio.wait_for(lc2.recover_task(recovered), 5)
        result = await asyncio.wait_for(lc2.wait_task(spec.id), 2)
        assert "vanished" in result.err
        destroy = asyncio.ensure_future(lc2.destroy_task(spec.id, False))
        while not drains:
            await asyncio.sleep(0.01)
        for _ in range(50):  # every step DestroyTask can take without the drain
            await asyncio.sleep(0)
        assert drains == [name] and not destroy.done(), "DestroyTask must wait for the console's drain"
        delivered.set()
        await asyncio.wait_for(destroy, 5)
        assert ("forget", name) in fake.calls and _leftovers(tmp_path, fake) == []
    finally:
        await lc2.close()


@pytest.mark.parametrize("toolstack", ["hangs", "fails"])
async def test_recover_adopts_the_task_when_the_toolstack_does_not_answer(host, monkeypatch, toolstack):
    """Nomad calls RecoverTask for each task in turn while its client starts, before its HTTP API
    serves, and with no deadline: a lookup the toolstack never answers (a hung libvirtd) hung the
    whole agent.  Failing instead would make Nomad destroy the guest and start a second one.  So
    the task is adopted as its handle says, and followed as usual once the toolstack answers."""
    tmp_path, config, fake = host
    monkeypatch.setattr(lifecycle_mod, "RECOVER_LOOKUP_TIMEOUT_S", 0.3, raising=False)
    lc = await _lifecycle(config, fake)
    specs = [make_spec(tmp_path, task_id=f"a1b2c3d{i}-0000-0000-0000-000000000000/web/5f6e7d8c") for i in (0, 1)]
    handles = [await lc.start_task(spec) for spec in specs]
    names = [DriverState.decode(h.driver_state).domain_name for h in handles]
    await lc.close()

    answer = asyncio.Event()
    asked: list[str] = []
    real_domain = fake.domain

    async def domain(name: str) -> DomainInfo:
        asked.append(name)
        if toolstack == "fails":
            raise BackendUnavailable("cannot connect to libvirt: connection refused")
        await answer.wait()
        return await real_domain(name)

    fake.domain = domain  # type: ignore[method-assign]
    events: list = []
    lc2 = await _lifecycle(config, fake, events)
    try:
        for spec, handle in zip(specs, handles, strict=True):
            recovered = RecoveredTask(
                spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state
            )
            await asyncio.wait_for(lc2.recover_task(recovered), 10)
        # A hung toolstack is waited for once, not once per task.
        assert asked == (names[:1] if toolstack == "hangs" else names)
        for spec in specs:
            assert (await lc2.inspect_task(spec.id)).state is TaskState.RUNNING
        assert not [c for c in fake.calls if c[0] in ("destroy", "forget")], fake.calls
        said = [e.message for e in events if "adopted as it was" in e.message]
        assert len(said) == 2, [e.message for e in events]
        assert ("did not answer within" if toolstack == "hangs" else "connection refused") in said[0]
        answer.set()
        # Followed like any task from then on: its exit is seen.
        fake.power_off(names[1], ExitReason.POWEROFF)
        assert (await asyncio.wait_for(lc2.wait_task(specs[1].id), 5)).exit_code == 0
        assert (await lc2.inspect_task(specs[0].id)).state is TaskState.RUNNING
    finally:
        await lc2.close()


async def test_unknown_ids_and_signals(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        for call in (
            lc.wait_task("nope"),
            lc.stop_task("nope", 1, ""),
            lc.destroy_task("nope", True),
            lc.inspect_task("nope"),
            lc.signal_task("nope", "SIGTERM"),
        ):
            with pytest.raises(TaskNotFound):
                await call
        spec = make_spec(tmp_path)
        await lc.start_task(spec)
        with pytest.raises(NotSupported, match="SIGHUP"):
            await lc.signal_task(spec.id, "SIGHUP")
        await lc.signal_task(spec.id, "SIGTERM")
        assert (await asyncio.wait_for(lc.wait_task(spec.id), 5)).exit_code == 0
    finally:
        await lc.close()


def _logmon(fifo: Path):
    """Nomad's logmon side of a stdout FIFO: a non-blocking reader and what it got."""
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    got = bytearray()

    def drain() -> bool:
        """Read what is there; True once the FIFO reads end-of-file (no writer left)."""
        while True:
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            got.extend(chunk)

    return rfd, got, drain


async def test_log_fifo_keeps_a_writer_across_a_plugin_crash(host):
    """Nomad's logmon stops at the first end-of-file and is not restarted after a plugin crash:
    the FIFO must never lose its last writer while the task lives."""
    tmp_path, config, fake = host
    fifo = tmp_path / ".web.stdout.fifo"
    os.mkfifo(fifo)
    rfd, got, drain = _logmon(fifo)
    try:
        lc = await _lifecycle(config, fake)
        spec = TaskSpec(**{**make_spec(tmp_path).__dict__, "stdout_path": str(fifo)})
        handle = await lc.start_task(spec)
        name = DriverState.decode(handle.driver_state).domain_name
        await asyncio.sleep(0.4)
        await lc._keeper.flush()
        assert drain() is False and b"NDX-GUEST READY" in got
        await lc.close()  # the plugin is gone (its descriptors with it); the guest runs on

        with open(tmp_path / "console" / f"guest-{name}.log", "ab") as fh:
            fh.write(b"tick 1\n")
        assert drain() is False  # no end-of-file: logmon would still be reading

        lc2 = await _lifecycle(config, fake)
        try:
            await lc2.recover_task(
                RecoveredTask(spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state)
            )
            for _ in range(50):
                drain()
                if got.endswith(b"tick 1\n"):
                    break
                await asyncio.sleep(0.1)
            assert got.count(b"NDX-GUEST READY") == 1 and got.endswith(b"tick 1\n")

            fake.power_off(name, ExitReason.POWEROFF)
            assert (await asyncio.wait_for(lc2.wait_task(spec.id), 5)).exit_code == 0
            await lc2._keeper.flush()
            assert drain() is True  # the task is over: logmon sees end-of-file
        finally:
            await lc2.close()
    finally:
        os.close(rfd)


async def test_task_name_that_is_no_valid_path_is_a_config_error(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        spec = TaskSpec(**{**make_spec(tmp_path, kernel="kernel").__dict__, "name": "we\x00b"})
        with pytest.raises(ConfigError, match='"kernel"'):
            await lc.start_task(spec)
        assert fake.calls == [] and _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()


async def test_missing_console_log_is_named_in_the_boot_error(host):
    tmp_path, config, fake = host
    elsewhere = tmp_path / "not-the-console-dir"
    elsewhere.mkdir()
    fake._console = lambda name: elsewhere / f"guest-{name}.log"  # xenconsoled cannot write our dir
    lc = await _lifecycle(config, fake)
    try:
        with pytest.raises(RecoverableError, match="no console log of the guest appeared at .*xenconsoled") as err:
            await lc.start_task(make_spec(tmp_path, boot_timeout="300ms"))
        assert str(tmp_path / "console") in str(err.value)
        assert not fake.domains and _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()


def test_failed_create_reports_the_cause_not_the_clean_up():
    """A vif hotplug failure: libxl's own clean-up lines come last and must not hide the cause."""
    from xen_driver.xen.xl import XlError

    stderr = (
        "libxl: error: libxl_exec.c:117:libxl_report_child_exitstatus: /etc/xen/scripts/vif-bridge online [981] exited with error status 1\n"
        "libxl: error: libxl_device.c:1286:device_hotplug_child_death_cb: script: Could not find bridge device nosuchbr0\n"
        "libxl: error: libxl_create.c:1916:domcreate_attach_devices: Domain 12:unable to add vif devices\n"
        "libxl: error: libxl_domain.c:1183:libxl__destroy_domid: Domain 12:Non-existant domain\n"
        "libxl: error: libxl_domain.c:1137:domain_destroy_callback: Domain 12:Unable to destroy guest\n"
        "libxl: error: libxl_domain.c:1064:domain_destroy_cb: Domain 12:Destruction of domain failed\n"
    )
    message = str(XlError(["xl", "create", "-e", "/x.cfg"], 3, stderr))
    assert "Could not find bridge device nosuchbr0" in message and "unable to add vif devices" in message
    assert "destroy" not in message.lower()
    assert "Non-existant" in str(XlError(["xl", "destroy", "d"], 1, "libxl: error: Domain 12:Non-existant domain\n"))


async def test_a_xenstored_that_takes_the_connection_but_never_answers_leaves_re_scans(host, monkeypatch):
    """xenstored accepts the plugin's connection and then answers nothing (stalled): the domain
    watch cannot be registered.  The plugin follows its guests by re-scanning instead of failing
    the task it was asked to start or recover (a failed RecoverTask costs the guest)."""
    tmp_path, config, fake = host
    got: list[bytes] = []

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(4096):
            got.append(chunk)  # read, never answered
        writer.close()

    server = await asyncio.start_unix_server(stalled, path=config.xenstored_socket)
    monkeypatch.setattr(lifecycle_mod, "XenStore", functools.partial(lifecycle_mod.XenStore, request_timeout_s=0.3))
    lc = await _lifecycle(config, fake)
    try:
        spec = make_spec(tmp_path)
        handle = await asyncio.wait_for(lc.start_task(spec), 10)
        assert got, "the plugin never asked xenstored for its watch"
        name = DriverState.decode(handle.driver_state).domain_name
        fake.power_off(name, ExitReason.POWEROFF)
        assert (await asyncio.wait_for(lc.wait_task(spec.id), 5)).exit_code == 0
    finally:
        await lc.close()
        server.close()
        await server.wait_closed()


async def test_clickos_start_reconnects_to_a_xenstored_that_refused_at_first(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        with pytest.raises(RecoverableError, match="xenstored is not reachable"):
            await lc.start_task(make_spec(tmp_path, click_config="in :: FromDevice(0); in -> Discard;"))
        assert fake.calls == [] and _leftovers(tmp_path, fake) == []

        xenstored = await FakeXenstored(config.xenstored_socket).start()  # xenstored is back
        try:
            xenstored._ensure(xenstored.nodes, f"/local/domain/{fake.next_domid}")
            spec = make_spec(
                tmp_path,
                task_id="a1b2c3d4-0000-0000-0000-000000000000/web/00000002",
                click_config="in :: FromDevice(0); in -> Discard;",
            )
            await lc.start_task(spec)
            assert xenstored.nodes[f"/local/domain/{fake.next_domid - 1}/clickos/0/status"].value == b"Running"
        finally:
            await xenstored.stop()
    finally:
        await lc.close()


@pytest.mark.parametrize(
    "cpus, ok",
    [
        ("all", True),
        ("0-1", True),
        ("1", True),
        ("0,^1", True),
        ("2", False),
        ("0-3,^1", False),
        ("316", False),
        ("^1", False),
    ],
)
async def test_cpus_pinning_is_checked_against_the_host(host, cpus, ok):
    """xl refuses a domain pinned only to CPUs the host lacks ("vcpu hard affinity map is empty")."""
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    lc.host_cpus = 2
    try:
        spec = make_spec(tmp_path, cpus=cpus)
        if ok:
            await lc.start_task(spec)
            assert fake.specs[domain_name_for(spec)].cpus == cpus
        else:
            with pytest.raises(ConfigError, match='"cpus"'):
                await lc.start_task(spec)
            assert fake.calls == []
    finally:
        await lc.close()


async def test_coredump_on_a_backend_that_cannot_dump_is_refused_naming_on_crash(host):
    tmp_path, config, fake = host
    fake.can_dump_core = False
    lc = await _lifecycle(config, fake)
    try:
        with pytest.raises(ConfigError, match=r'"on_crash".*cannot dump a guest\'s core') as err:
            await lc.start_task(make_spec(tmp_path, on_crash="coredump-destroy"))
        assert "fake backend" in str(err.value)
        assert fake.calls == [] and _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()
