"""The driver core: what the Nomad ``Driver`` service delegates to.

``xen_driver.nomad.service`` converts every request into the dataclasses of
:mod:`xen_driver.driver.models` and calls one coroutine here; it never sees Xen, and this class
never sees protobuf or gRPC. Errors are the precise types of :mod:`xen_driver.driver.errors`;
the Nomad layer maps them to gRPC statuses in one place.

Implemented here: host fingerprinting (via :mod:`xen_driver.xen.probe`), capabilities and the
task-event broadcast. Task methods are delegated to a lifecycle object built by
``tasks_factory(config, emit_event)``; a core built without one (fingerprint-only tests)
raises :class:`NotSupported`, which Nomad sees as UNIMPLEMENTED. :func:`make_core` is the single
place that wires the two.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from xen_driver.driver.config import PluginConfig
from xen_driver.driver.errors import NotSupported
from xen_driver.driver.models import (
    AgentInfo,
    Attr,
    AttributeValue,
    Capabilities,
    ExitResult,
    Fingerprint,
    Health,
    RecoveredTask,
    TaskEvent,
    TaskHandle,
    TaskSpec,
    TaskStats,
    TaskStatus,
)
from xen_driver.logging import get_logger
from xen_driver.xen import fdlimit
from xen_driver.xen.probe import (
    HostProbe,
    ProbeState,
    XenHostInfo,
    console_logging_problem,
    host_signature,
    probe_host,
)

#: The name jobs use in ``driver = "xen"``; also the prefix of our node attributes.
DRIVER_NAME = "xen"
ATTR_PREFIX = f"driver.{DRIVER_NAME}."

Prober = Callable[[PluginConfig], Awaitable[HostProbe]]
Signature = Callable[[PluginConfig], tuple[object, ...]]
#: How often the cheap host signature is checked between full probes.
WATCH_INTERVAL = 2.0


class TaskOps(Protocol):
    """What the core delegates the task RPCs to (:class:`xen_driver.driver.lifecycle.TaskLifecycle`).

    It may also have ``learn_host_info(XenHostInfo)`` and a ``pool`` (:class:`PoolView`); the core
    looks those up with getattr, so a lifecycle without them (a test's) is fine.
    """

    async def start_task(self, spec: TaskSpec) -> TaskHandle: ...
    async def recover_task(self, recovered: RecoveredTask) -> None: ...
    async def wait_task(self, task_id: str) -> ExitResult: ...
    async def stop_task(self, task_id: str, timeout: float, signal: str) -> None: ...
    async def destroy_task(self, task_id: str, force: bool) -> None: ...
    async def inspect_task(self, task_id: str) -> TaskStatus: ...
    def task_stats(self, task_id: str, interval: float) -> AsyncIterator[TaskStats]: ...
    async def signal_task(self, task_id: str, signal: str) -> None: ...
    async def close(self) -> None: ...


class PoolView(Protocol):
    """The part of the warm pool the fingerprint uses."""

    def kick(self) -> None: ...
    def attributes(self, prefix: str) -> Mapping[str, int]: ...


#: Builds the task lifecycle object from the config and the core's event sink.
TasksFactory = Callable[[PluginConfig, Callable[[TaskEvent], None]], TaskOps]


async def default_prober(config: PluginConfig) -> HostProbe:
    probe = await probe_host(config.xl_path, xenstored_socket=config.xenstored_socket)
    if probe.state is ProbeState.HEALTHY:
        problem = console_logging_problem(config.console_log_dir)
        if problem is not None:
            return HostProbe(ProbeState.UNHEALTHY, problem, probe.xl_path, probe.info)
    return probe


def default_signature(config: PluginConfig) -> tuple[object, ...]:
    return host_signature(config.xl_path, config.xenstored_socket)


def libvirt_binding_problem() -> str | None:
    """Why the libvirt binding cannot be used, or None.  Imported for real: a binding that is
    present but broken (built for another libvirt) must not make the node look healthy."""
    try:
        importlib.import_module("libvirt")
    except Exception as exc:  # ImportError, or whatever a broken extension raises
        return f"{type(exc).__name__}: {exc}"
    return None


def fingerprint_from_probe(probe: HostProbe, config: PluginConfig) -> Fingerprint:
    """Map a host probe onto Nomad's health model and node attributes."""
    if probe.state is ProbeState.UNDETECTED:
        return Fingerprint(Health.UNDETECTED, probe.reason)
    attrs: dict[str, AttributeValue] = {ATTR_PREFIX + "backend": config.backend}
    if config.backend == "xl" and probe.xl_path:
        attrs[ATTR_PREFIX + "xl_path"] = probe.xl_path  # the one the backend runs (same search)
    if probe.state is ProbeState.UNHEALTHY:
        return Fingerprint(Health.UNHEALTHY, probe.reason, attrs)
    info = probe.info
    assert info is not None
    if config.backend == "libvirt":
        problem = libvirt_binding_problem()
        if problem is not None:
            return Fingerprint(
                Health.UNHEALTHY,
                f'backend "libvirt" is configured but the libvirt Python binding cannot be imported ({problem}) '
                "(on Debian: apt install python3-libvirt, which the single-file plugin uses from the system; "
                "in a virtualenv: pip install 'nomad-driver-xen[libvirt]')",
                attrs,
            )
    # Only what stays put while guests come and go: a changed attribute re-registers the node at
    # the next fingerprint, and Nomad's server then evaluates every job with an allocation on it.
    # Xen's free memory changes with each guest, so it is no attribute (the driver reads it where
    # it needs it; Nomad schedules by the node's own memory accounting).
    attrs.update(
        {
            ATTR_PREFIX + "version": info.xen_version,
            ATTR_PREFIX + "scheduler": info.xen_scheduler,
            ATTR_PREFIX + "total_memory": Attr(info.total_memory_mib, "MiB"),
            ATTR_PREFIX + "nr_cpus": info.nr_cpus,
            ATTR_PREFIX + "clickos_layout": config.clickos_layout,
        }
    )
    return Fingerprint(Health.HEALTHY, probe.reason, attrs)


class DriverCore:
    """One per configured plugin process (re-created when SetConfig changes the config)."""

    def __init__(
        self,
        config: PluginConfig,
        agent: AgentInfo | None = None,
        *,
        prober: Prober = default_prober,
        signature: Signature = default_signature,
        watch_interval: float = WATCH_INTERVAL,
        tasks_factory: TasksFactory | None = None,
    ) -> None:
        self.config = config
        self.agent = agent or AgentInfo()
        self._prober = prober
        self._signature = signature
        self._watch_interval = watch_interval
        self._log = get_logger("driver")
        self._wake = asyncio.Event()
        self._event_queues: set[asyncio.Queue[TaskEvent]] = set()
        #: The task lifecycle implementation (start/wait/stop/... with the signatures below);
        #: None until one is plugged in, and every task RPC then answers "not supported".
        self.tasks: TaskOps | None = tasks_factory(config, self.emit_event) if tasks_factory is not None else None

    # ---- node level ----------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        # log_collection = "driver": the keeper writes the task's log files, so Nomad starts no
        # logmon process for the task (and no FIFO is made).
        return Capabilities(disable_log_collection=self.config.driver_logs is not None)

    async def fingerprint_once(self) -> Fingerprint:
        try:
            probe = await self._prober(self.config)
        except Exception as exc:  # a bug in probing must not end the stream
            if (err := fdlimit.exhaustion(exc)) is not None:
                return Fingerprint(Health.UNHEALTHY, fdlimit.describe(err))
            self._log.error("host probe failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return Fingerprint(Health.UNHEALTHY, f"probing the Xen host failed: {exc}")
        fp = fingerprint_from_probe(probe, self.config)
        learn: Callable[[XenHostInfo], None] | None = getattr(self.tasks, "learn_host_info", None)
        if probe.info is not None and learn is not None:
            learn(probe.info)  # the probe ran `xl info` anyway: no task start has to
        backend_health = getattr(getattr(self.tasks, "backend", None), "connection_health", None)
        if fp.health is Health.HEALTHY and backend_health is not None:
            ok, note = await backend_health()  # libvirt: does libvirtd answer, was the connection re-opened?
            if not ok:
                return Fingerprint(Health.UNHEALTHY, note, fp.attributes)
            if note:
                fp = replace(fp, description=f"{fp.description}; {note}" if fp.description else note)
        pool: PoolView | None = getattr(self.tasks, "pool", None)
        if fp.health is Health.HEALTHY and pool is not None and callable(getattr(pool, "attributes", None)):
            pool.kick()  # only the process that serves Nomad fingerprints: adopt and build members now
            fp = replace(fp, attributes={**fp.attributes, **pool.attributes(ATTR_PREFIX)})
        if fp.health is Health.HEALTHY:
            # The host is fine but this process is nearly out of descriptors: starts would be
            # refused, so tell the scheduler before it places more guests here.
            try:
                fdlimit.check_spare()
            except fdlimit.OutOfFileDescriptors as exc:
                return Fingerprint(Health.UNHEALTHY, str(exc), fp.attributes)
        return fp

    def request_fingerprint(self) -> None:
        """Ask for a fresh fingerprint now (e.g. after a toolstack call failed unexpectedly)."""
        self._wake.set()

    async def fingerprints(self) -> AsyncIterator[Fingerprint]:
        """First fingerprint at once, then every ``fingerprint_period``, and at once on change.

        "Change" is a request (:meth:`request_fingerprint`) or a change of the cheap host
        signature (xl installed/removed, xenstored socket appearing/vanishing, ...), checked
        every ``watch_interval`` seconds. Never ends by itself; the caller cancels it.
        """
        loop = asyncio.get_running_loop()
        previous: Fingerprint | None = None
        while True:
            self._wake.clear()  # a request made while probing or while the caller holds `fp` is kept
            signature = self._safe_signature()
            fp = await self.fingerprint_once()
            if previous is None or fp.health != previous.health or fp.description != previous.description:
                # A host that cannot run guests is worth a warning in the agent's log.
                emit = self._log.info if fp.health is Health.HEALTHY else self._log.warn
                emit("xen host fingerprint", health=fp.health.name.lower(), description=fp.description)
            previous = fp
            yield fp
            deadline = loop.time() + self.config.fingerprint_period
            while (remaining := deadline - loop.time()) > 0:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop the
                    # cancellation Nomad's closing of the stream delivers, and this loop would live on.
                    async with asyncio.timeout(min(remaining, self._watch_interval)):
                        await self._wake.wait()
                    break  # asked for a fresh fingerprint
                except TimeoutError:
                    pass
                if self._safe_signature() != signature:
                    self._log.debug("host changed; probing again before the period ends")
                    break

    def _safe_signature(self) -> tuple[object, ...]:
        try:
            return self._signature(self.config)
        except Exception as exc:  # never let a stat() failure end the stream
            return ("error", type(exc).__name__)

    # ---- task events ---------------------------------------------------------------------------

    def emit_event(self, event: TaskEvent) -> None:
        """Send a task event to every open TaskEvents stream."""
        for queue in list(self._event_queues):
            queue.put_nowait(event)

    async def task_events(self) -> AsyncIterator[TaskEvent]:
        """Events for all tasks; never ends by itself."""
        queue: asyncio.Queue[TaskEvent] = asyncio.Queue()
        self._event_queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._event_queues.discard(queue)

    # ---- task lifecycle: delegated to ``self.tasks`` ---------------------------------------------

    def _tasks(self, operation: str) -> TaskOps:
        if self.tasks is None:
            raise NotSupported(operation, "this driver core was built without a task lifecycle (fingerprint only)")
        return self.tasks

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        return await self._tasks("StartTask").start_task(spec)

    async def recover_task(self, task: RecoveredTask) -> None:
        await self._tasks("RecoverTask").recover_task(task)

    async def wait_task(self, task_id: str) -> ExitResult:
        return await self._tasks("WaitTask").wait_task(task_id)

    async def stop_task(self, task_id: str, timeout: float, signal: str) -> None:
        await self._tasks("StopTask").stop_task(task_id, timeout, signal)

    async def destroy_task(self, task_id: str, force: bool) -> None:
        await self._tasks("DestroyTask").destroy_task(task_id, force)

    async def inspect_task(self, task_id: str) -> TaskStatus:
        return await self._tasks("InspectTask").inspect_task(task_id)

    def task_stats(self, task_id: str, interval: float) -> AsyncIterator[TaskStats]:
        return self._tasks("TaskStats").task_stats(task_id, interval)

    async def signal_task(self, task_id: str, signal: str) -> None:
        await self._tasks("SignalTask").signal_task(task_id, signal)

    async def exec_task(
        self, task_id: str, command: Sequence[str], timeout: float | None
    ) -> tuple[bytes, bytes, ExitResult]:
        raise NotSupported("ExecTask", "unikernels have no shell to run commands in")

    async def shutdown(self) -> None:
        """The plugin process is about to exit. Release our resources; leave guests running."""
        if self.tasks is not None:
            await self.tasks.close()
        self._event_queues.clear()


def make_core(config: PluginConfig, agent: AgentInfo | None = None) -> DriverCore:
    """The core the plugin process serves (the one place that picks the task implementation)."""
    from xen_driver.driver.lifecycle import TaskLifecycle

    return DriverCore(config, agent, tasks_factory=TaskLifecycle)
