"""Plain data the Nomad layer hands to the driver core and gets back from it.

No protobuf, no gRPC: ``xen_driver.nomad.convert`` translates between these dataclasses and the
wire messages, so the core can be exercised directly in tests.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from xen_driver.driver.config import TaskConfig


class Health(enum.IntEnum):
    """Driver health as Nomad's fingerprint understands it (numbers match the wire enum)."""

    UNDETECTED = 0  # no Xen toolstack on this node: the driver is not offered at all
    UNHEALTHY = 1  # toolstack present but the hypervisor/xenstored does not answer
    HEALTHY = 2


@dataclass(frozen=True)
class Attr:
    """A node attribute value with a unit, e.g. ``Attr(2048, "MiB")``."""

    value: int | float | str | bool
    unit: str = ""


AttributeValue = int | float | str | bool | Attr


@dataclass(frozen=True)
class Fingerprint:
    health: Health
    description: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    #: Set when fingerprinting itself failed (Nomad then marks the driver unhealthy and retries).
    err: str = ""


class NetworkMode(enum.IntEnum):
    """Nomad network isolation modes (numbers match the wire enum)."""

    HOST = 0
    GROUP = 1
    TASK = 2
    NONE = 3


@dataclass(frozen=True)
class Capabilities:
    """What the driver can really do; sent verbatim to Nomad."""

    send_signals: bool = False
    exec: bool = False
    #: Xen guests see no host file system: Nomad must use host paths for the task dir.
    fs_isolation_none: bool = True
    #: Only ``host``: a guest gets its own addresses from its vifs, never a network namespace.
    #: Nomad's client maps a job's ``bridge``, ``none`` and ``cni/*`` modes to GROUP and
    #: ``driver`` to TASK, and fails such an allocation itself ("does not support ... networking
    #: mode") when the driver does not list them (docs/PROTOCOL.md §5.12).
    network_modes: tuple[NetworkMode, ...] = (NetworkMode.HOST,)
    must_create_network: bool = False
    #: No volume mounts (CSI/host volumes) can be given to a PV unikernel.
    no_mounts: bool = True
    disable_log_collection: bool = False


@dataclass(frozen=True)
class AgentInfo:
    """Facts about the Nomad agent sent with SetConfig in the long-lived plugin process."""

    client_min_port: int = 0
    client_max_port: int = 0


@dataclass(frozen=True)
class PortMapping:
    """One of Nomad's allocated ports (a group ``network { port "<label>" { ... } }``).

    ``value`` is the port Nomad reserved on the host, ``to`` the port the task serves on
    (0 when the job gave none; Nomad has already turned ``to = -1`` into ``value``).
    ``legacy`` marks a port of a task-level ``resources { network {} }`` block, which reaches
    the driver without its ``to``.
    """

    label: str
    value: int
    to: int = 0
    host_ip: str = ""
    legacy: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """Everything the core needs to start (or recover) one task."""

    id: str  # "<alloc id>/<task name>/<random>": contains slashes
    name: str
    alloc_id: str
    task_group: str
    job_name: str
    job_id: str
    namespace: str
    node_id: str
    node_name: str
    env: Mapping[str, str]
    memory_mb: int
    memory_max_mb: int
    cpu_shares: int
    alloc_dir: str
    stdout_path: str
    stderr_path: str
    config: TaskConfig
    #: The job's ``config {}`` as Nomad sent it (cty-msgpack).  Kept in the driver state, because
    #: Nomad does not persist it in its own copy of the task handle (see driver/state.py).
    raw_config: bytes = b""
    #: The allocation's ports (group ``network`` block), for the guest's port map.
    ports: tuple[PortMapping, ...] = ()

    @property
    def task_dir(self) -> str:
        """Host path of this task's directory inside the alloc dir."""
        return f"{self.alloc_dir.rstrip('/')}/{self.name}" if self.alloc_dir else ""


class TaskState(enum.IntEnum):
    UNKNOWN = 0
    RUNNING = 1
    EXITED = 2


@dataclass(frozen=True)
class NetworkOverride:
    """Address (and port map) Nomad should advertise for a guest with its own IP.

    Nomad's DriverNetwork: services with ``address_mode = "driver"`` (or ``"auto"`` when
    ``auto_advertise`` is set) register at ``addr`` and, for a port label, at ``port_map[label]``.
    """

    addr: str
    port_map: Mapping[str, int] = field(default_factory=dict)
    auto_advertise: bool = False


@dataclass(frozen=True)
class TaskHandle:
    """What Nomad persists for a started task and returns on RecoverTask.

    ``driver_state`` is opaque to Nomad (see ``xen_driver.driver.state``); ``version`` is the
    schema version of that blob and must be >= 1 (0 marks pre-0.9 handles in Nomad).
    """

    task_id: str
    version: int
    state: TaskState
    driver_state: bytes
    network: NetworkOverride | None = None


@dataclass(frozen=True)
class RecoveredTask:
    """A handle given back by Nomad, with the task it belongs to decoded again."""

    spec: TaskSpec
    version: int
    state: TaskState
    driver_state: bytes


@dataclass(frozen=True)
class ExitResult:
    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    #: Human-readable exit message; becomes the task's exit error in Nomad when non-empty.
    err: str = ""


@dataclass(frozen=True)
class TaskStatus:
    id: str
    name: str
    state: TaskState
    started_at: _dt.datetime | None = None
    completed_at: _dt.datetime | None = None
    exit: ExitResult | None = None
    driver_attributes: Mapping[str, str] = field(default_factory=dict)
    network: NetworkOverride | None = None


@dataclass(frozen=True)
class CpuUsage:
    system_mode: float | None = None
    user_mode: float | None = None
    total_ticks: float | None = None
    percent: float | None = None


@dataclass(frozen=True)
class MemoryUsage:
    rss: int | None = None
    usage: int | None = None
    max_usage: int | None = None


@dataclass(frozen=True)
class TaskStats:
    """One resource sample; fields left ``None`` are reported as not measured."""

    task_id: str
    timestamp: _dt.datetime
    cpu: CpuUsage = field(default_factory=CpuUsage)
    memory: MemoryUsage = field(default_factory=MemoryUsage)


@dataclass(frozen=True)
class TaskEvent:
    """Becomes a "Driver" task event in ``nomad alloc status``."""

    task_id: str
    alloc_id: str
    task_name: str
    message: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    timestamp: _dt.datetime | None = None
