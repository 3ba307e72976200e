"""One task the driver runs, and the state every part of the lifecycle shares.

:class:`XenTask` is a task's record (its Nomad spec, the driver state Nomad keeps for it, its
exit); :class:`LifecycleCore` holds the task table and the shared machinery, with the small
helpers every part uses.  :func:`domain_name_for` names a task's domain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from xen_driver.driver.config import PluginConfig
from xen_driver.driver.errors import (
    TaskNotFound,
)
from xen_driver.driver.models import (
    ExitResult,
    TaskEvent,
    TaskHandle,
    TaskSpec,
    TaskState,
)
from xen_driver.driver.state import STATE_VERSION, DriverState
from xen_driver.logging import XenBoundLogger
from xen_driver.xen.backend import (
    Backend,
)
from xen_driver.xen.console import ConsolePump
from xen_driver.xen.keeperclient import FifoKeeperClient
from xen_driver.xen.watcher import DomainWatcher
from xen_driver.xen.xenstore import XenStore

if TYPE_CHECKING:
    from xen_driver.driver.pool import WarmPool


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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


class LifecycleCore:
    """What every part of the lifecycle shares: the plugin configuration, the backend, the task
    table (by Nomad task id and by domain name) and the loops that follow the guests.

    :class:`~xen_driver.driver.lifecycle.TaskLifecycle` sets these up; the parts built on this
    class (planning, consoles, exits, starts) only use them.
    """

    config: PluginConfig
    backend: Backend
    pool: WarmPool
    bridge_exists: Callable[[str], bool]
    host_cpus: int | None
    host_memory_mib: int | None
    host_cpu_mhz: float | None
    _host_facts_asked: float
    _emit: Callable[[TaskEvent], None]
    _log: XenBoundLogger
    _state_dir: Path
    _tasks: dict[str, XenTask]
    _by_domain: dict[str, XenTask]
    _xenstore: XenStore | None
    _watcher: DomainWatcher | None
    _pump: ConsolePump
    _keeper: FifoKeeperClient
    _exit_tasks: set[asyncio.Task[None]]
    #: Background opens of tasks' unused stderr FIFOs (see consoles.py).
    _fifo_jobs: set[asyncio.Task[bool]]
    #: Console copy requests on their way to the keeper, by domain name.
    _console_handoffs: dict[str, asyncio.Task[None]]

    async def _ensure_started(self) -> None:
        """Open XenStore and start the shared loops on first use (TaskLifecycle)."""
        raise NotImplementedError

    async def _reconnect_xenstore(self) -> None:
        """Try xenstored again after it refused us at start-up (TaskLifecycle)."""
        raise NotImplementedError

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
                timestamp=utcnow(),
            )
        )

    def _handle(self, task: XenTask) -> TaskHandle:
        return TaskHandle(
            task_id=task.id,
            version=STATE_VERSION,
            state=TaskState.RUNNING if task.running else TaskState.EXITED,
            driver_state=task.state.encode(),
            network=task.state.network,
        )
