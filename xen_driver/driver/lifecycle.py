"""The task lifecycle: one Nomad task is one Xen PV domain.

:class:`TaskLifecycle` is what the driver core (:mod:`xen_driver.driver.core`) calls for each
of Nomad's task RPCs.  It is built in layers, one concern per module, each using the ones
before it:

* :mod:`~xen_driver.driver.task`: a task's record and the state all parts share;
* :mod:`~xen_driver.driver.planning`: from a task's config to a checked domain description;
* :mod:`~xen_driver.driver.consoles`: the guest's console into ``nomad alloc logs``;
* :mod:`~xen_driver.driver.exits`: a guest's exit, and Nomad's stop and signal requests;
* :mod:`~xen_driver.driver.starting`: StartTask, with nothing left behind when it fails;
* this module: setting the shared loops up and down, and WaitTask, DestroyTask, InspectTask,
  TaskStats and RecoverTask.

The toolstack is reached only through the :class:`~xen_driver.xen.backend.Backend` protocol.

* **Recovery.**  Everything needed to re-adopt a guest is in the handle's ``driver_state``
  (:mod:`xen_driver.driver.state`) plus a per-task directory under ``state_dir`` that records
  how far the console has been copied.
* **Plugin exit never touches guests.**  :meth:`TaskLifecycle.close` stops our loops and
  closes FIFOs; domains keep running and are re-adopted by RecoverTask.
* **Nor Nomad's log collection.**  Nomad's logmon stops reading a task's stdout FIFO at the
  first end-of-file, which a FIFO reports when its last writer closes, and after a plugin crash
  Nomad does not restart that reader.  A small keeper process
  (:mod:`xen_driver.xen.fifokeeper`) therefore copies every console into its task's FIFO and
  holds the FIFO open until the task ends, so a plugin crash neither stops nor repeats the
  console in ``nomad alloc logs`` (:mod:`xen_driver.driver.consoles`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal as signal_mod
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from xen_driver.driver import network, policy
from xen_driver.driver.config import PluginConfig
from xen_driver.driver.consoles import DRAIN_TIMEOUT_S
from xen_driver.driver.errors import (
    HostUnavailable,
    RecoverableError,
)
from xen_driver.driver.models import (
    CpuUsage,
    ExitResult,
    MemoryUsage,
    RecoveredTask,
    TaskEvent,
    TaskState,
    TaskStats,
    TaskStatus,
)
from xen_driver.driver.pool import WarmPool
from xen_driver.driver.starting import StartSteps
from xen_driver.driver.state import DriverState, DriverStateError
from xen_driver.driver.task import XenTask, domain_name_for, utcnow
from xen_driver.logging import get_logger
from xen_driver.xen.backend import (
    Backend,
    DomainInfo,
    DomainNotFound,
    ExitReason,
    UnavailableBackend,
    XenBackendError,
    open_backend,
)
from xen_driver.xen.console import ConsolePump
from xen_driver.xen.keeperclient import FifoKeeperClient
from xen_driver.xen.stats import DomainGone, SamplerFailure, StatsSampler
from xen_driver.xen.unanswered import Unanswered
from xen_driver.xen.watcher import DomainWatcher
from xen_driver.xen.xenstore import XenStore, XenStoreError

__all__ = ["TaskLifecycle", "XenTask", "domain_name_for"]

#: How long RecoverTask waits for the backend to say whether a task's domain still runs.  Nomad
#: calls RecoverTask for each of its tasks in turn while its client starts, before its HTTP API
#: serves anything, and with no deadline: a toolstack that does not answer (a hung libvirtd) would
#: otherwise hang the agent itself.
RECOVER_LOOKUP_TIMEOUT_S = 15.0


class TaskLifecycle(StartSteps):
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
        self._keeper = fifo_keeper or FifoKeeperClient(self._state_dir, announce_agent=True)
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
        self._fifo_jobs: set[asyncio.Task[bool]] = set()
        self._console_handoffs: dict[str, asyncio.Task[None]] = {}
        #: RecoverTask's lookups, one of which the backend may leave unanswered (see :meth:`_recover_lookup`).
        self._lookups = Unanswered()
        #: Pre-built domains for tasks with ``pool`` (xen_driver/driver/pool.py).
        self.pool = WarmPool(self)

    # ------------------------------------------------------------------ set-up / tear-down
    def _make_backend(self, config: PluginConfig) -> Backend:
        backend = open_backend(
            config.backend, state_dir=self._state_dir, xl_path=config.xl_path, libvirt_uri=config.libvirt_uri
        )
        if isinstance(backend, UnavailableBackend):  # the binding is missing: say so, don't fail SetConfig
            self._log.error("backend unavailable", backend=config.backend, error=str(backend.error))
        return backend

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
            self._watcher = self._new_watcher()
            try:
                await self._watcher.start()
            except XenStoreError as exc:  # it took the connection but not the watch (a stalled xenstored)
                self._log.warn("xenstored did not register the domain watch; following by re-scan only", error=str(exc))
                await self._watcher.stop()
                xenstore, self._xenstore = self._xenstore, None
                if xenstore is not None:
                    await xenstore.close()
                self._watcher = self._new_watcher()
                await self._watcher.start()
            self._keeper.start()
            self._pump.start()
            self._sampler.start()
            self._started = True

    def _new_watcher(self) -> DomainWatcher:
        watcher = DomainWatcher(
            self.backend,
            xenstore=self._xenstore,
            rescan_interval_s=self._rescan_s if self._xenstore is None else 15.0,
        )
        watcher.add_listener(self._on_domain_exit)
        return watcher

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
        for job in list(self._fifo_jobs):
            job.cancel()
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

    # ------------------------------------------------------------------ WaitTask
    async def wait_task(self, task_id: str) -> ExitResult:
        task = self._get(task_id)
        return await asyncio.shield(task.exited)

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
        await self._remove_files(task.name, Path(task.state.task_state_dir), task.state.console_path)
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
                    timestamp=dt.datetime.fromtimestamp(sample.timestamp_ns / 1e9, dt.UTC),
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
    async def _forget_vanished(self, state: DriverState) -> None:
        """The console of a task whose domain vanished, delivered (as far as it can be) and let go,
        and its files removed."""
        with contextlib.suppress(Exception):
            await self._drain_console(state.domain_name, DRAIN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self._pump.remove(state.domain_name)
        self._release_console(state.domain_name)
        await self._remove_files(state.domain_name, Path(state.task_state_dir), state.console_path)

    async def _recover_lookup(self, name: str) -> DomainInfo | None | str:
        """The backend's view of ``name`` for RecoverTask: its info, None when it does not exist,
        or, when the backend gave no answer within :data:`RECOVER_LOOKUP_TIMEOUT_S` (or failed),
        why not.  Once one lookup is left waiting, later ones do not wait behind it: Nomad
        recovers its tasks one after another, so a hung toolstack would cost each of them."""
        if self._lookups.waiting:
            return f"the {self.backend.kind} toolstack has not answered an earlier lookup yet"
        try:
            return await self._lookups.call(self.backend.domain(name), RECOVER_LOOKUP_TIMEOUT_S)
        except DomainNotFound:
            return None
        except TimeoutError:
            return f"the {self.backend.kind} toolstack did not answer within {RECOVER_LOOKUP_TIMEOUT_S:.0f} s"
        except XenBackendError as exc:
            return f"the {self.backend.kind} toolstack failed to look the domain up ({exc})"

    async def recover_task(self, recovered: RecoveredTask) -> None:
        spec = recovered.spec
        if spec.id in self._tasks:
            # Already adopted (the agent restarted; this plugin did not): recovery is idempotent.
            # The keeper may hold the console back from the logmon the old agent left.
            self._keeper.recovered(self._tasks[spec.id].state.domain_name)
            return
        try:
            state = DriverState.decode(recovered.driver_state)
        except DriverStateError as exc:
            raise RecoverableError(f"cannot recover task {spec.id}: {exc}", recoverable=False) from None
        await self._ensure_started()
        assert self._watcher is not None
        log = self._log.bind(task_id=spec.id, domain=state.domain_name)
        looked = await self._recover_lookup(state.domain_name)
        started = dt.datetime.fromtimestamp(state.started_at_ns / 1e9, dt.UTC)
        task = XenTask(spec=spec, state=state, started_at=started)
        self._tasks[spec.id] = task
        self._by_domain[state.domain_name] = task
        # (a domid of None: only a definition is left, libvirt keeps one; the domain itself is gone)
        info = looked if isinstance(looked, DomainInfo) and looked.domid is not None else None
        if isinstance(looked, str):
            # The toolstack did not say.  Failing RecoverTask would make Nomad destroy the task
            # and start it again, a second guest beside a first that may well be running; so the
            # task is adopted as its handle describes it, and the watcher's next answered scan
            # judges it (a domain absent then is reported gone, as for any task).
            log.warn("recovered task adopted without checking its domain", reason=looked)
            self._event(task, f"Recovery: {looked}; the task is adopted as it was, checked once the toolstack answers")
        elif info is None or info.domid != state.domid:
            why = (
                f"domain {state.domain_name} (domid {state.domid}) vanished while the plugin was not watching it"
                if info is None
                else f"domain {state.domain_name} was replaced (domid {state.domid} → {info.domid})"
            )
            log.warn("recovered task has no domain", reason=why)
            task.exit_reason = ExitReason.DESTROYED.value
            task.completed_at = utcnow()
            task.exited.set_result(ExitResult(exit_code=1, signal=int(signal_mod.SIGKILL), err=why))
            self._event(task, f"Recovery: {why}")
            # What the guest printed while nobody was streaming still belongs in Nomad's logs.
            self._hand_console(
                spec, state.domain_name, state.console_path, Path(state.task_state_dir), self._read_offset(state)
            )
            # Drained and cleaned up in the background (DestroyTask waits for it): Nomad recovers
            # its tasks one after another before its client serves anything, and after an agent
            # restart no logmon reads the FIFO yet, so a drain here would cost every dead task
            # its whole timeout on the agent's start.
            self._exit_job(self._forget_vanished(state), f"exit-{task.name}")
            return
        offset = self._read_offset(state)
        self._hand_console(spec, state.domain_name, state.console_path, Path(state.task_state_dir), offset)
        self._watcher.subscribe(state.domain_name, state.domid)
        log.info(
            "task recovered",
            domid=state.domid,
            console_offset=offset,
            domain_state=info.state.value if info is not None else "unknown",
            network=network.describe(state.network),
        )
