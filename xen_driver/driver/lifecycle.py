"""The task lifecycle: one Nomad task is one Xen PV domain.

What happens to a task, and why:

* **Start.**  The job's ``config {}`` (already decoded and value-checked into a
  :class:`~xen_driver.driver.config.TaskConfig`) is resolved against the host: the kernel must
  live in one of the plugin's ``image_dirs`` or in the task directory (so Nomad's ``artifact``
  works), the memory comes from the task's resources unless the job overrides it.  The domain
  is created *paused*, the ClickOS configuration is pushed through XenStore while nothing runs,
  the console stream into Nomad's stdout FIFO is attached, and only then is the domain
  unpaused, so the guest never races its own configuration and not one console byte is lost.
  Start returns once the guest's console shows the boot marker (bounded by ``boot_timeout``).
  Each phase is timed (:mod:`xen_driver.driver.timing`).
* **Failure half-way leaves nothing behind.**  Whatever was created (domain, rendered config,
  per-task directory, console log, XenStore nodes) is undone before the error is returned.
* **Exit.**  One :class:`~xen_driver.xen.watcher.DomainWatcher` follows every domain of every
  task.  Domains are created without an ``xl`` monitor and with ``on_* = preserve``, so a guest
  that shuts down stays until we have read *why* (poweroff → exit 0, crash → failure); then the
  console is drained into Nomad and the domain is destroyed.
* **Recovery.**  Everything needed to re-adopt a guest is in the handle's ``driver_state``
  (:mod:`xen_driver.driver.state`) plus a per-task directory under ``state_dir`` that records
  how far the console has been streamed, so a restarted plugin resumes the console exactly
  where the previous one stopped.
* **Plugin exit never touches guests.**  :meth:`TaskLifecycle.close` stops our loops and
  closes FIFOs; domains keep running and are re-adopted by RecoverTask.
* **Nor Nomad's log collection.**  Nomad's logmon stops reading a task's stdout FIFO at the
  first end-of-file, which a FIFO reports when its last writer closes, and after a plugin crash
  Nomad does not restart that reader.  A small keeper process
  (:mod:`xen_driver.xen.fifokeeper`) therefore holds every task's FIFO open for writing until
  the task ends, so a crashed plugin's successor finds logmon still reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import signal as signal_mod
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from xen_driver.driver.config import TASK, PluginConfig, TaskConfig
from xen_driver.driver.errors import (
    ConfigError,
    DriverError,
    HostUnavailable,
    NotSupported,
    RecoverableError,
    TaskAlreadyExists,
    TaskNotFound,
)
from xen_driver.driver import network, policy
from xen_driver.driver.models import (
    CpuUsage,
    ExitResult,
    MemoryUsage,
    RecoveredTask,
    TaskEvent,
    TaskHandle,
    TaskSpec,
    TaskState,
    TaskStats,
    TaskStatus,
)
from xen_driver.driver.state import STATE_VERSION, DriverState, DriverStateError
from xen_driver.driver.timing import PhaseTimer
from xen_driver.driver.pool import WarmPool
from xen_driver.logging import get_logger
from xen_driver.xen import clickos, fdlimit
from xen_driver.xen.backend import (
    Backend,
    BackendUnavailable,
    DomainInfo,
    DomainNotFound,
    DomainRefused,
    ExitReason,
    UnavailableBackend,
    XenBackendError,
)
from xen_driver.xen.console import ConsolePump, ConsoleStream, FifoSink
from xen_driver.xen.fifokeeper import FifoKeeperClient
from xen_driver.xen.probe import XenHostInfo
from xen_driver.xen.spec import DomainSpec, SpecError, VifSpec
from xen_driver.xen.stats import DomainGone, SamplerFailure, StatsSampler
from xen_driver.xen.watcher import DomainExit, DomainWatcher
from xen_driver.xen.xenstore import XenStore, XenStoreError
from xen_driver.xen.xl import XlBackend

#: Smallest guest we create.  A PV domain needs its page tables, start info, console and
#: XenStore rings; below a few MiB the domain builder fails with an obscure error, so refuse
#: early with a message that names the field.
MIN_MEMORY_MIB = 8
#: Signals that mean "shut down gracefully" (ACPI-style power button for a PV guest).
GRACEFUL_SIGNALS = {"", "SIGTERM", "SIGINT", "SIGQUIT", "TERM", "INT", "QUIT"}
#: Signals that mean "pull the plug".
FORCE_SIGNALS = {"SIGKILL", "KILL"}
#: How long the console of an exited guest may take to drain into Nomad's FIFO.
DRAIN_TIMEOUT_S = 2.0

_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def domain_name_for(spec: TaskSpec) -> str:
    """A valid, host-unique Xen domain name for a task.

    ``nomad-<task>-<alloc id prefix>-<task id suffix>``: the task name makes ``xl list``
    readable, the alloc id prefix ties it to ``nomad alloc status``, and the random suffix
    Nomad puts in every task id makes restarts of the same task distinct (the previous
    incarnation may still be shutting down).
    """
    task = _NAME_SAFE.sub("-", spec.name).strip("-.") or "task"
    alloc = _NAME_SAFE.sub("", spec.alloc_id)[:8] or "alloc"
    suffix = _NAME_SAFE.sub("", spec.id.rsplit("/", 1)[-1])[:8] or uuidlib.uuid4().hex[:8]
    head = f"nomad-{task}"
    tail = f"-{alloc}-{suffix}"
    return head[: 64 - len(tail)] + tail


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _signal_number(name: str) -> int:
    name = name.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(signal_mod, name, signal_mod.SIGTERM))


@dataclass
class XenTask:
    """One task the driver runs: its Nomad spec, its domain and where it is in its life."""

    spec: TaskSpec
    state: DriverState
    started_at: dt.datetime
    timings: dict[str, float] = field(default_factory=dict)
    exited: asyncio.Future[ExitResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    completed_at: dt.datetime | None = None
    stop_signal: str | None = None  # set when Nomad asked us to stop the task
    killed: bool = False  # StopTask had to destroy the domain
    exit_reason: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def name(self) -> str:
        return self.state.domain_name

    @property
    def running(self) -> bool:
        return not self.exited.done()


class TaskLifecycle:
    """Starts, follows, stops and re-adopts the domains of Nomad tasks on one host."""

    def __init__(
        self,
        config: PluginConfig,
        emit_event: Callable[[TaskEvent], None],
        *,
        backend: Backend | None = None,
        rescan_interval_s: float = 2.0,
        fifo_keeper: FifoKeeperClient | None = None,
    ) -> None:
        self.config = config
        self._rescan_s = rescan_interval_s
        self._emit = emit_event
        self._log = get_logger("lifecycle")
        self._state_dir = Path(config.state_dir)
        self.backend: Backend = backend or self._make_backend(config)
        self._tasks: dict[str, XenTask] = {}
        self._by_domain: dict[str, XenTask] = {}
        self._xenstore: XenStore | None = None
        self._watcher: DomainWatcher | None = None
        self._pump = ConsolePump()
        self._keeper = fifo_keeper or FifoKeeperClient(self._state_dir)
        #: Physical CPUs of the host (``xl info`` nr_cpus), to check ``cpus`` pinning against;
        #: None until known (then pinning is only checked for its syntax).
        self.host_cpus: int | None = None
        #: The host's memory (``xl info`` total_memory, MiB): no guest may ask for more.
        self.host_memory_mib: int | None = None
        #: Whether a bridge of this name exists on the host (tests replace it).
        self.bridge_exists: Callable[[str], bool] = policy.interface_exists
        self._sampler = StatsSampler(self.backend)
        #: MHz of one host CPU (xl info cpu_mhz / libvirt node info), for TaskStats' total_ticks;
        #: None until learnt (asked again at most once a minute while unknown).
        self.host_cpu_mhz: float | None = None
        self._host_facts_asked = -1e9
        self._started = False
        self._start_lock = asyncio.Lock()
        self._exit_tasks: set[asyncio.Task[None]] = set()
        #: Pre-built domains for tasks with ``pool`` (xen_driver/driver/pool.py).
        self.pool = WarmPool(self)

    # ------------------------------------------------------------------ set-up / tear-down
    def _make_backend(self, config: PluginConfig) -> Backend:
        if config.backend == "libvirt":
            from xen_driver.xen.libvirt_backend import LibvirtBackend

            try:
                return LibvirtBackend(config.libvirt_uri)
            except BackendUnavailable as exc:  # the binding is missing: say so, don't fail SetConfig
                self._log.error("libvirt backend unavailable", error=str(exc))
                return UnavailableBackend("libvirt", exc)
        return XlBackend(self._state_dir / "domains", xl=config.xl_path)

    async def _ensure_started(self) -> None:
        """Open XenStore and start the shared loops on first use (inside the running loop)."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            try:
                self._xenstore = await XenStore(self.config.xenstored_socket).connect()
            except XenStoreError as exc:
                # The watcher still works by re-scanning; ClickOS pushes will fail clearly.
                self._log.warn("xenstored not reachable; following domains by re-scan only", error=str(exc))
                self._xenstore = None
            self._watcher = DomainWatcher(
                self.backend,
                xenstore=self._xenstore,
                rescan_interval_s=self._rescan_s if self._xenstore is None else 15.0,
            )
            self._watcher.add_listener(self._on_domain_exit)
            await self._watcher.start()
            self._keeper.start()
            self._pump.start()
            self._sampler.start()
            self._started = True

    async def _reconnect_xenstore(self) -> None:
        """xenstored refused us when the plugin started: try again now that a ClickOS push needs it
        (without this, one refusal at start-up would fail every ClickOS task until a restart)."""
        async with self._start_lock:
            if self._xenstore is not None:
                return
            try:
                self._xenstore = await XenStore(self.config.xenstored_socket).connect()
            except XenStoreError as exc:
                self._log.warn("xenstored still not reachable", error=str(exc))
                return
            self._log.info("connected to xenstored", socket=self.config.xenstored_socket)

    async def close(self) -> None:
        """The plugin is exiting: stop following guests, leave them running."""
        await self.pool.close()
        for task in list(self._exit_tasks):
            task.cancel()
        if self._watcher is not None:
            await self._watcher.stop()
        await self._sampler.stop()
        await self._pump.stop()
        with contextlib.suppress(Exception):
            await self._keeper.close()  # the keeper process stays: it holds the FIFOs for our successor
        if self._xenstore is not None:
            with contextlib.suppress(Exception):
                await self._xenstore.close()
        self._started = False

    # ------------------------------------------------------------------ helpers
    def _get(self, task_id: str) -> XenTask:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def _task_dir(self, domain_name: str) -> Path:
        return self._state_dir / "tasks" / domain_name

    def _event(self, task: XenTask | TaskSpec, message: str, annotations: dict[str, str] | None = None) -> None:
        spec = task.spec if isinstance(task, XenTask) else task
        self._emit(
            TaskEvent(
                task_id=spec.id,
                alloc_id=spec.alloc_id,
                task_name=spec.name,
                message=message,
                annotations=annotations or {},
                timestamp=_now(),
            )
        )

    def resolve_image(self, spec: TaskSpec, field_name: str, value: str) -> str:
        """Absolute real path of a kernel/ramdisk, checked against where images may come from."""
        return policy.resolve_image(
            value, field=field_name, task_dir=spec.task_dir or None, image_dirs=self.config.image_dirs
        )

    def _click_config(self, spec: TaskSpec) -> str | None:
        cfg = spec.config
        if cfg.click_config is not None:
            return policy.check_click_text(cfg.click_config, self.config)
        if cfg.click_config_file is None:
            return None
        if not spec.task_dir:
            raise ConfigError(TASK, "click_config_file", cfg.click_config_file, "needs a task directory")
        return policy.read_click_config_file(cfg.click_config_file, spec.task_dir, self.config)

    def _vif_specs(self, cfg: TaskConfig, macs: tuple[str, ...]) -> tuple[VifSpec, ...]:
        """The job's vifs, with every bridge and hotplug script checked against the plugin's allow-lists."""
        policy.check_vif_count(len(cfg.vif), self.config)
        vifs = []
        for i, v in enumerate(cfg.vif):
            if v.bridge is not None:
                policy.check_bridge(i, v.bridge, self.config, self.bridge_exists)
            script = policy.resolve_vif_script(i, v.script, self.config) if v.script is not None else None
            vifs.append(VifSpec(bridge=v.bridge, mac=macs[i], ip=v.ip, script=script))
        return tuple(vifs)

    def _macs_in_use(self) -> set[str]:
        """MACs of the guests this driver runs, so a derived MAC never repeats one of them."""
        return {m.lower() for t in self._tasks.values() if t.running for m in t.state.vif_macs}

    def domain_spec(self, spec: TaskSpec, name: str) -> DomainSpec:
        """Map a task onto a toolstack-neutral domain description (validated)."""
        cfg: TaskConfig = spec.config
        kernel = self.resolve_image(spec, "kernel", cfg.kernel)
        ramdisk = self.resolve_image(spec, "ramdisk", cfg.ramdisk) if cfg.ramdisk else None
        if cfg.memory is not None:
            memory, mem_field = cfg.memory, "memory"
        else:
            memory, mem_field = spec.memory_mb, "resources.memory"
        if memory < MIN_MEMORY_MIB:
            raise ConfigError(TASK, mem_field, memory, f"must be at least {MIN_MEMORY_MIB} MiB for a PV guest")
        policy.check_memory(memory, mem_field, self.host_limits)
        policy.check_vcpus(cfg.vcpus, self.host_limits)
        maxmem = spec.memory_max_mb if cfg.memory is None and spec.memory_max_mb > memory else None
        if cfg.cpus is not None:
            self._check_cpus(cfg.cpus)
        dspec = DomainSpec(
            name=name,
            uuid=str(uuidlib.uuid4()),
            kernel=kernel,
            ramdisk=ramdisk,
            cmdline=cfg.cmdline or "",
            memory_mb=memory,
            maxmem_mb=maxmem,
            vcpus=cfg.vcpus,
            cpus=cfg.cpus,
            # (the MACs in use are only looked at, a pass over every task, when there are vifs)
            vifs=self._vif_specs(cfg, network.vif_macs(spec.id, cfg.vif, self._macs_in_use() if cfg.vif else set())),
            on_crash="preserve" if cfg.on_crash == "destroy" else cfg.on_crash,
        )
        try:
            dspec.validate()
        except SpecError as exc:
            raise ConfigError(TASK, _task_field(exc.field), "", exc.problem) from None
        return dspec

    def _check_cpus(self, cpus: str) -> None:
        """Pinning must leave the guest at least one CPU this host has: xl refuses the domain
        otherwise, with an error that does not name the job's setting."""
        if cpus == "all" or cpus.startswith("nodes:"):
            return
        items = cpus.split(",")
        if all(item.startswith("^") for item in items):
            raise ConfigError(TASK, "cpus", cpus, "must include at least one CPU, not only exclusions (^n)")
        if self.host_cpus is None:
            return
        highest = max(int(n) for n in re.findall(r"\d+", cpus))
        if highest >= self.host_cpus:
            raise ConfigError(
                TASK, "cpus", cpus, f"names CPU {highest}, but this host has CPUs 0-{self.host_cpus - 1}"
            )

    @property
    def host_limits(self) -> policy.HostLimits:
        return policy.HostLimits(nr_cpus=self.host_cpus, total_memory_mib=self.host_memory_mib)

    def learn_host_info(self, info: XenHostInfo) -> None:
        """Host facts from the fingerprint's probe (it runs ``xl info`` anyway, and Nomad places no
        task before the node is healthy), so no start pays for an ``xl info`` of its own."""
        if info.nr_cpus > 0:
            self.host_cpus = info.nr_cpus
        if info.total_memory_mib > 0:
            self.host_memory_mib = info.total_memory_mib
        if info.cpu_mhz > 0 and self.host_cpu_mhz is None:
            self.host_cpu_mhz = info.cpu_mhz

    async def _learn_host_facts(self) -> None:
        """What the fingerprint's probe did not tell yet (CPUs, memory, CPU MHz), asked of the
        backend once, and again at most once a minute while something is still unknown."""
        if None not in (self.host_cpus, self.host_memory_mib, self.host_cpu_mhz):
            return
        ask = getattr(self.backend, "host_facts", None)  # a backend that cannot tell has none
        if ask is None or time.monotonic() - self._host_facts_asked < 60:
            return
        self._host_facts_asked = time.monotonic()
        try:
            facts = await ask()
        except Exception as exc:  # noqa: BLE001 - starts and stats go on, with what is known
            self._log.warn(
                "cannot learn the host's CPUs, memory and MHz; vcpus, cpus and memory checked for syntax only,"
                " CPU reported as percent only",
                error=str(exc),
            )
            return
        self.host_cpus = self.host_cpus or facts.nr_cpus
        self.host_memory_mib = self.host_memory_mib or facts.total_memory_mib
        self.host_cpu_mhz = self.host_cpu_mhz or facts.cpu_mhz
        if self.host_cpu_mhz is None:
            self._log.warn("the host does not say its CPU MHz; CPU is reported as percent only")

    def _handle(self, task: XenTask) -> TaskHandle:
        return TaskHandle(
            task_id=task.id,
            version=STATE_VERSION,
            state=TaskState.RUNNING if task.running else TaskState.EXITED,
            driver_state=task.state.encode(),
            network=task.state.network,
        )

    # ------------------------------------------------------------------ console
    def _offset_file(self, task_dir: Path) -> Path:
        return task_dir / "console.offset"

    def _read_offset(self, state: DriverState) -> int:
        try:
            return int(self._offset_file(Path(state.task_state_dir)).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return state.console_offset

    def _attach_console(
        self, spec: TaskSpec, name: str, console_path: str, task_dir: Path, offset: int
    ) -> ConsoleStream:
        offset_file = self._offset_file(task_dir)

        def commit(pos: int) -> None:
            tmp = offset_file.with_suffix(".tmp")
            try:
                tmp.write_text(str(pos))
                os.replace(tmp, offset_file)
            except OSError as exc:  # the state dir vanished: keep streaming, lose only resumability
                self._log.warn("cannot record console offset", task_id=spec.id, error=str(exc))

        path = spec.stdout_path or os.devnull
        sink = FifoSink(path, on_fifo_open=lambda: self._keeper.hold(name, path))
        return self._pump.add(name, console_path, sink, offset=offset, on_commit=commit)

    def _release_console(self, name: str) -> None:
        """The task is over: Nomad's logmon may see end-of-file once our own descriptor closes."""
        self._keeper.release(name)

    # ------------------------------------------------------------------ start steps (cold and pool)
    async def _click_config_to_push(self, spec: TaskSpec) -> str | None:
        """The task's Click configuration (checked against the plugin's limits), with xenstored
        reachable to take it; None for a task without one."""
        click_text = self._click_config(spec)
        if click_text is not None and self._xenstore is None:
            await self._reconnect_xenstore()
        if click_text is not None and self._xenstore is None:
            raise RecoverableError(
                f"cannot push the Click configuration: xenstored is not reachable at {self.config.xenstored_socket}"
            )
        return click_text

    async def _push_click(self, spec: TaskSpec, domid: int, click_text: str) -> None:
        assert self._xenstore is not None
        await clickos.push_config(
            self._xenstore,
            domid,
            click_text,
            layout=clickos.ClickLayout(self.config.clickos_layout),
            router_id=spec.config.click_router_id,
            config_name=os.path.basename(spec.config.click_config_file or "config.click"),
        )

    def start_error(self, exc: BaseException, what: str) -> BaseException:
        """What StartTask raises for a start that failed half-way (after its undo): ``exc`` itself,
        or the driver error Nomad can act on."""
        if (err := fdlimit.exhaustion(exc)) is not None:  # say what ran out, not what it broke
            return RecoverableError(fdlimit.describe(err))
        if isinstance(exc, DriverError):
            return exc
        if isinstance(exc, DomainRefused):  # the same config would fail again: no restart loop
            return RecoverableError(f"the toolstack refused the domain: {exc}", recoverable=False)
        if isinstance(exc, (XenBackendError, clickos.ClickOSError, XenStoreError, OSError)):
            return RecoverableError(f"starting {what} failed: {exc}")
        return exc

    def register_started(
        self, spec: TaskSpec, state: DriverState, timer: PhaseTimer, exit_future: asyncio.Future[DomainExit]
    ) -> XenTask:
        """A guest that booted becomes a task the driver runs."""
        task = XenTask(spec=spec, state=state, started_at=_now(), timings=timer.as_dict())
        self._tasks[spec.id] = task
        self._by_domain[state.domain_name] = task
        if exit_future.done():  # it booted and died already: report it through WaitTask
            self._on_domain_exit(exit_future.result())
        return task

    # ------------------------------------------------------------------ StartTask
    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        if spec.id in self._tasks:
            raise TaskAlreadyExists(spec.id)
        await self._ensure_started()
        try:
            fdlimit.check_spare()  # refuse while the guests already followed would starve of descriptors
        except fdlimit.OutOfFileDescriptors as exc:
            raise RecoverableError(str(exc)) from None
        if spec.config.pool is not None:  # a pre-built domain, or a cold start that says why
            return await self.pool.start_task(spec)
        assert self._watcher is not None
        timer = PhaseTimer()
        name = domain_name_for(spec)
        log = self._log.bind(task_id=spec.id, domain=name)

        with timer.phase("validate"):
            await self._learn_host_facts()
            dspec = self.domain_spec(spec, name)
            net = network.plan(spec.config.vif, spec.config.advertise_vif, spec.ports)
            click_text = await self._click_config_to_push(spec)

        task_dir = self._task_dir(name)
        console_path = ConsolePump.log_path(self.config.console_log_dir, name)
        # Only a guest with a Click configuration must wait, paused, for it; any other guest is
        # created running (one toolstack call less) since its console log keeps every byte anyway.
        paused = click_text is not None
        attempted = False  # once a create was tried the domain may exist, even if create failed
        stream: ConsoleStream | None = None
        try:
            with timer.phase("render"):
                task_dir.mkdir(parents=True, exist_ok=False)
                if isinstance(self.backend, XlBackend):
                    cfg_path = str(self.backend.write_config(dspec))
                else:
                    cfg_path = ""
            attempted = True
            with timer.phase("domain_build"):
                if isinstance(self.backend, XlBackend):
                    await self.pool.cold_create(  # idle pool members make room when Xen is out of memory
                        lambda: self.backend.create(cfg_path, name, paused=paused, describe=False), name, dspec.memory_mb
                    )
                    domid = await self._domid(name)
                else:
                    created = await self.pool.cold_create(
                        lambda: self.backend.create_domain(dspec, paused=paused), name, dspec.memory_mb
                    )
                    domid = created.domid if created.domid is not None else await self._domid(name)
            exit_future = self._watcher.subscribe(name, domid)
            stream = self._attach_console(spec, name, console_path, task_dir, 0)
            if paused:
                with timer.phase("clickos_push"):
                    await self._push_click(spec, domid, click_text or "")
                with timer.phase("unpause"):
                    await self.backend.unpause(name)
            with timer.phase("boot"):
                await self._wait_boot(spec, stream, exit_future)
            state = DriverState(
                task_id=spec.id,
                domain_name=name,
                domid=domid,
                uuid=dspec.uuid or "",
                started_at_ns=time.time_ns(),
                backend=self.backend.kind,
                config_path=cfg_path,
                task_state_dir=str(task_dir),
                console_path=console_path,
                console_offset=0,
                driver_config=spec.raw_config,
                vif_macs=tuple(v.mac or "" for v in dspec.vifs),
                network=net,
            )
        except BaseException as exc:
            await self._undo_start(name, attempted, task_dir, console_path, stream)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.error("task start failed", error=str(exc), timings=timer.as_dict())
            err = self.start_error(exc, "the Xen domain")
            if err is exc:
                raise
            raise err from exc

        task = self.register_started(spec, state, timer, exit_future)
        log.info("task started", domid=state.domid, timings=task.timings, summary=timer.summary(),
                 network=network.describe(net))
        self._event(task, f"Guest {name} (domid {state.domid}) booted: {timer.summary()}", timer.annotations())
        if net is not None:
            self._event(task, f"Guest {name} advertised at {network.describe(net)}")
        elif unreachable := network.unreachable_ports(net, spec.ports):
            self._event(
                task,
                f"Guest {name} has no vif with an ip, so nothing is advertised: the allocation's ports "
                f"({', '.join(unreachable)}) stay on the host, which does not forward them into the guest",
            )
        return self._handle(task)

    async def _domid(self, name: str) -> int:
        """The new domain's id: from XenStore when we can (milliseconds), else from the toolstack."""
        if self._xenstore is not None:
            domid = await self._xenstore.find_domid(name)
            if domid is not None:
                return domid
        info = await self.backend.domain(name)
        if info.domid is None:
            raise RecoverableError(f"domain {name} was created but has no domain id (is it running?)")
        return info.domid

    async def _wait_boot(
        self, spec: TaskSpec, stream: ConsoleStream, exit_future: asyncio.Future[DomainExit]
    ) -> None:
        marker = spec.config.boot_marker
        pattern: bytes | re.Pattern[bytes] = marker.encode() if marker else re.compile(rb"\S")
        booted = asyncio.ensure_future(stream.wait_for(pattern, spec.config.boot_timeout))
        died = asyncio.ensure_future(asyncio.shield(exit_future))
        try:
            done, _ = await asyncio.wait({booted, died}, return_when=asyncio.FIRST_COMPLETED)
            if booted in done:
                try:
                    booted.result()
                    return
                except TimeoutError:
                    what = f"boot marker {marker!r}" if marker else "any console output"
                    if not os.path.exists(stream.path):
                        raise RecoverableError(
                            f"no console log of the guest appeared at {stream.path} within "
                            f"{spec.config.boot_timeout:g}s (boot_timeout), so its {what} could not be seen: "
                            f"is xenconsoled running with --log=guest, and does {os.path.dirname(stream.path)} "
                            "exist and accept files?"
                        ) from None
                    raise RecoverableError(
                        f"the guest did not print {what} within {spec.config.boot_timeout:g}s "
                        f"(boot_timeout); see its console log {stream.path}"
                    ) from None
            exit_ = died.result()
            raise RecoverableError(f"the guest stopped while booting (reason: {exit_.reason.value})")
        finally:
            for fut in (booted, died):
                fut.cancel()

    async def _undo_start(
        self, name: str, created: bool, task_dir: Path, console_path: str, stream: ConsoleStream | None
    ) -> None:
        """Remove everything a failed start made: domain, stream, config, state and console log."""
        if self._watcher is not None:
            self._watcher.expect_exit(name)
            self._watcher.unsubscribe(name)
        if stream is not None:
            with contextlib.suppress(Exception):
                await self._pump.remove(name)
            self._release_console(name)
        if created:
            try:
                await self.backend.destroy(name)
            except XenBackendError as exc:
                self._log.error("could not destroy half-started domain", domain=name, error=str(exc))
        self._remove_files(name, task_dir, console_path)

    def _remove_files(self, name: str, task_dir: Path, console_path: str) -> None:
        if isinstance(self.backend, XlBackend):
            self.backend.remove_config(name)
        shutil.rmtree(task_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(console_path)

    # ------------------------------------------------------------------ exits
    def _on_domain_exit(self, exit_: DomainExit) -> None:
        task = self._by_domain.get(exit_.name)
        if task is None or not task.running:
            return
        job = asyncio.get_running_loop().create_task(self._finish_exit(task, exit_), name=f"exit-{exit_.name}")
        self._exit_tasks.add(job)
        job.add_done_callback(self._exit_tasks.discard)

    def _exit_result(self, task: XenTask, exit_: DomainExit) -> ExitResult:
        reason = exit_.reason
        if task.stop_signal is not None:
            sig = _signal_number("SIGKILL" if task.killed else task.stop_signal or "SIGTERM")
            return ExitResult(exit_code=0, signal=sig)
        if reason is ExitReason.POWEROFF:
            return ExitResult(exit_code=0)
        if reason is ExitReason.REBOOT:
            return ExitResult(exit_code=0, err="the guest asked to reboot; Nomad's restart policy decides")
        if reason is ExitReason.CRASH:
            return ExitResult(exit_code=1, err="the guest crashed")
        if reason is ExitReason.WATCHDOG:
            return ExitResult(exit_code=2, err="the guest's watchdog fired")
        if reason is ExitReason.DESTROYED:
            return ExitResult(
                exit_code=1,
                signal=int(signal_mod.SIGKILL),
                err=f"domain {task.name} was destroyed outside of Nomad",
            )
        return ExitResult(exit_code=3, err=f"the guest shut down (reason: {reason.value})")

    async def _finish_exit(self, task: XenTask, exit_: DomainExit) -> None:
        result = self._exit_result(task, exit_)
        task.exit_reason = exit_.reason.value
        with contextlib.suppress(Exception):
            await self._pump.drain(task.name, DRAIN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self._pump.remove(task.name)
        self._release_console(task.name)
        await self._dispose_exited_domain(task, exit_)
        if self._watcher is not None:
            self._watcher.unsubscribe(task.name)
        task.completed_at = _now()
        self._log.info(
            "task exited",
            task_id=task.id,
            domain=task.name,
            reason=exit_.reason.value,
            exit_code=result.exit_code,
            signal=result.signal,
        )
        if not task.exited.done():
            task.exited.set_result(result)
        if result.err and task.stop_signal is None:
            self._event(task, f"Guest {task.name} exited: {result.err}")

    async def _dispose_exited_domain(self, task: XenTask, exit_: DomainExit) -> None:
        """Apply the job's ``on_crash`` policy to a shut-down domain, then free it.

        Domains run without an ``xl`` monitor (see :mod:`xen_driver.xen.xl`), so the policy is
        ours to apply: ``preserve`` keeps a crashed domain for inspection until Nomad destroys
        the task; ``coredump-destroy`` writes the guest's memory image into the task directory
        (where ``nomad alloc fs`` can reach it) before destroying it.
        """
        crashed = exit_.reason is ExitReason.CRASH
        on_crash = task.spec.config.on_crash
        if crashed and on_crash == "preserve":
            self._log.info("keeping crashed domain until the task is destroyed", domain=task.name)
            return
        if crashed and on_crash == "coredump-destroy" and isinstance(self.backend, XlBackend) and task.spec.task_dir:
            await self._dump_core(task)
        try:
            await self.backend.destroy(task.name)
        except XenBackendError as exc:
            self._log.warn("could not destroy exited domain", domain=task.name, error=str(exc))

    async def _dump_core(self, task: XenTask) -> None:
        """Dump the crashed guest's memory into the task directory, never through a job's symlink.

        ``xl dump-core`` runs as root and follows links, so it writes into the driver's own state
        directory; the file is then copied into the task directory without following links
        (:func:`~xen_driver.driver.policy.copy_into_task_dir`)."""
        assert isinstance(self.backend, XlBackend) and task.spec.task_dir
        filename = f"{task.name}.core"
        scratch = os.path.join(task.state.task_state_dir, filename)
        try:
            await self.backend.run("dump-core", task.name, scratch)
            policy.copy_into_task_dir(scratch, task.spec.task_dir, filename)
            self._event(task, f"Crash dump of {task.name} written to {filename} in the task directory")
        except (XenBackendError, OSError) as exc:
            self._log.warn("crash dump failed", domain=task.name, error=str(exc))
            self._event(task, f"Crash dump of {task.name} failed: {exc}")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(scratch)

    # ------------------------------------------------------------------ WaitTask
    async def wait_task(self, task_id: str) -> ExitResult:
        task = self._get(task_id)
        return await asyncio.shield(task.exited)

    # ------------------------------------------------------------------ StopTask / signals
    async def stop_task(self, task_id: str, timeout: float, signal: str) -> None:
        task = self._get(task_id)
        if not task.running:
            return
        signal = (signal or "SIGTERM").upper()
        assert self._watcher is not None
        task.stop_signal = signal
        self._watcher.expect_exit(task.name)
        if signal not in FORCE_SIGNALS:
            await self._request_shutdown(task)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.0)):
                    await asyncio.shield(task.exited)
            if not task.running or any(j.get_name() == f"exit-{task.name}" for j in self._exit_tasks):
                return  # exited, or its exit was seen and is being torn down (WaitTask will report it)
            self._log.info("guest ignored the shutdown request; destroying", domain=task.name, timeout_s=timeout)
        task.killed = True
        await self.backend.destroy(task.name)
        self._watcher.kick()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task.exited), 10.0)

    async def _request_shutdown(self, task: XenTask) -> None:
        """Ask the guest to power off, without waiting for it to acknowledge.

        For a PV guest the request *is* a XenStore write of ``poweroff`` to its
        ``control/shutdown`` node, which is all ``xl shutdown`` does too, except that libxl then
        blocks until the guest acknowledges (about a minute for a guest that never does).  Our
        caller has its own deadline (Nomad's ``kill_timeout``), so we write the node ourselves and
        fall back to the toolstack, in the background, only when XenStore is unreachable.
        """
        if self._xenstore is not None:
            try:
                await self._xenstore.write(f"/local/domain/{task.state.domid}/control/shutdown", "poweroff")
                return
            except XenStoreError as exc:
                self._log.warn("shutdown request through XenStore failed", domain=task.name, error=str(exc))

        async def via_toolstack() -> None:
            try:
                await self.backend.shutdown(task.name)
            except XenBackendError as exc:
                self._log.warn("shutdown request through the toolstack failed", domain=task.name, error=str(exc))

        job = asyncio.get_running_loop().create_task(via_toolstack(), name=f"shutdown-{task.name}")
        self._exit_tasks.add(job)
        job.add_done_callback(self._exit_tasks.discard)

    async def signal_task(self, task_id: str, signal: str) -> None:
        task = self._get(task_id)
        name = (signal or "").upper()
        if name in GRACEFUL_SIGNALS - {""}:
            if task.running:
                await self._request_shutdown(task)
            return
        raise NotSupported(
            "SignalTask",
            f"signal {signal!r} cannot be delivered to a Xen PV guest; only SIGTERM/SIGINT/SIGQUIT "
            "(a graceful shutdown request) are supported",
        )

    # ------------------------------------------------------------------ DestroyTask
    async def destroy_task(self, task_id: str, force: bool) -> None:
        task = self._get(task_id)
        if task.running:
            if not force:
                raise RecoverableError("the task is still running; stop it first or destroy with force", False)
            await self.stop_task(task_id, 0.0, "SIGKILL")
        for job in list(self._exit_tasks):
            if job.get_name() == f"exit-{task.name}":
                with contextlib.suppress(Exception):
                    await job
        if task.spec.config.on_crash == "preserve" and task.exit_reason == ExitReason.CRASH.value:
            with contextlib.suppress(XenBackendError):
                await self.backend.destroy(task.name)
        self._tasks.pop(task_id, None)
        self._by_domain.pop(task.name, None)
        with contextlib.suppress(Exception):
            await self._pump.remove(task.name)
        self._release_console(task.name)
        self._remove_files(task.name, Path(task.state.task_state_dir), task.state.console_path)
        self._log.info("task destroyed", task_id=task_id, domain=task.name)

    # ------------------------------------------------------------------ InspectTask
    async def inspect_task(self, task_id: str) -> TaskStatus:
        task = self._get(task_id)
        attrs = {
            "domain_name": task.name,
            "domid": str(task.state.domid),
            "uuid": task.state.uuid,
            "backend": task.state.backend,
        }
        if task.exit_reason:
            attrs["exit_reason"] = task.exit_reason
        attrs.update({f"timing.{k}_ms": f"{v:.1f}" for k, v in task.timings.items()})
        return TaskStatus(
            id=task.id,
            name=task.spec.name,
            state=TaskState.RUNNING if task.running else TaskState.EXITED,
            started_at=task.started_at,
            completed_at=task.completed_at,
            exit=None if task.running else task.exited.result(),
            driver_attributes=attrs,
            network=task.state.network,
        )

    # ------------------------------------------------------------------ TaskStats
    async def _learn_host_cpu_mhz(self) -> float | None:
        """MHz of one host CPU: what Nomad counts CPU in (total_ticks = percent/100 × MHz)."""
        await self._learn_host_facts()
        return self.host_cpu_mhz

    async def task_stats(self, task_id: str, interval: float) -> AsyncIterator[TaskStats]:
        """One sample per interval while the task runs (see xen/stats.py for what the figures
        are).  Ends with HostUnavailable when the shared sampler keeps failing, instead of going
        quiet or repeating an old sample."""
        task = self._get(task_id)
        interval = max(interval, 0.5)
        await self._learn_host_cpu_mhz()
        queue = self._sampler.subscribe(task.name, interval)
        # Paced by the sampler, which hands every stream its sample in the same loop iteration
        # (a timer per stream, even a timeout, would cost each one a wake-up of its own); a stream
        # that asked for a longer interval than others skips the samples it does not want.  The
        # stream ends when a sample shows the task exited or the sampler no longer lists the domain.
        due = 0
        try:
            while task.running:
                sample = await queue.get()
                if isinstance(sample, SamplerFailure):
                    raise HostUnavailable(f"no resource usage for {task.name}: {sample}")
                if isinstance(sample, DomainGone):
                    return
                if sample.timestamp_ns < due:
                    continue
                due = sample.timestamp_ns + int(interval * 0.9e9)
                percent, mhz = sample.cpu_percent, self.host_cpu_mhz
                yield TaskStats(
                    task_id=task.id,
                    timestamp=dt.datetime.fromtimestamp(sample.timestamp_ns / 1e9, dt.timezone.utc),
                    cpu=CpuUsage(
                        percent=percent,
                        total_ticks=percent / 100.0 * mhz if percent is not None and mhz else None,
                    ),
                    memory=MemoryUsage(
                        rss=sample.memory_kib * 1024,
                        usage=sample.memory_kib * 1024,
                        max_usage=sample.peak_memory_kib * 1024,
                    ),
                )
        finally:
            self._sampler.unsubscribe(task.name, queue)

    # ------------------------------------------------------------------ RecoverTask
    async def recover_task(self, recovered: RecoveredTask) -> None:
        spec = recovered.spec
        if spec.id in self._tasks:
            return  # already adopted: recovery is idempotent
        try:
            state = DriverState.decode(recovered.driver_state)
        except DriverStateError as exc:
            raise RecoverableError(f"cannot recover task {spec.id}: {exc}", recoverable=False) from None
        await self._ensure_started()
        assert self._watcher is not None
        log = self._log.bind(task_id=spec.id, domain=state.domain_name)
        try:
            info: DomainInfo | None = await self.backend.domain(state.domain_name)
        except DomainNotFound:
            info = None
        started = dt.datetime.fromtimestamp(state.started_at_ns / 1e9, dt.timezone.utc)
        task = XenTask(spec=spec, state=state, started_at=started)
        self._tasks[spec.id] = task
        self._by_domain[state.domain_name] = task
        if info is None or info.domid != state.domid:
            why = (
                f"domain {state.domain_name} (domid {state.domid}) vanished while the plugin was not watching it"
                if info is None
                else f"domain {state.domain_name} was replaced (domid {state.domid} → {info.domid})"
            )
            log.warn("recovered task has no domain", reason=why)
            task.exit_reason = ExitReason.DESTROYED.value
            task.completed_at = _now()
            task.exited.set_result(ExitResult(exit_code=1, signal=int(signal_mod.SIGKILL), err=why))
            self._event(task, f"Recovery: {why}")
            # What the guest printed while nobody was streaming still belongs in Nomad's logs.
            self._attach_console(spec, state.domain_name, state.console_path, Path(state.task_state_dir), self._read_offset(state))
            with contextlib.suppress(Exception):
                await self._pump.drain(state.domain_name, DRAIN_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await self._pump.remove(state.domain_name)
            self._release_console(state.domain_name)
            self._remove_files(state.domain_name, Path(state.task_state_dir), state.console_path)
            return
        offset = self._read_offset(state)
        self._attach_console(spec, state.domain_name, state.console_path, Path(state.task_state_dir), offset)
        self._watcher.subscribe(state.domain_name, state.domid)
        log.info(
            "task recovered",
            domid=state.domid,
            console_offset=offset,
            domain_state=info.state.value,
            network=network.describe(state.network),
        )


def _task_field(spec_field: str) -> str:
    """Name a DomainSpec field the way the job spells it."""
    if spec_field.startswith("vifs["):
        return "vif" + spec_field[4:]
    return {"memory_mb": "memory", "maxmem_mb": "resources.memory_max"}.get(spec_field, spec_field)
