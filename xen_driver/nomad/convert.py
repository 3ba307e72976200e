"""Translation between Nomad's wire messages and the driver's dataclasses.

Every message Nomad dereferences without a nil check is always filled here (docs/PROTOCOL.md
§10): a handle's ``config``, ``WaitTaskResponse.result``, ``TaskStats.timestamp`` and
``agg_resource_usage``, a task status's timestamps and result, exactly one value per Attribute.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from decimal import Decimal
from typing import TypeVar, cast

from google.protobuf import timestamp_pb2

from xen_driver._proto.nomad import driver_pb2 as dpb
from xen_driver._proto.nomad import structs_pb2
from xen_driver.driver.config import TaskConfig
from xen_driver.driver.models import (
    Attr,
    AttributeValue,
    Capabilities,
    ExitResult,
    Fingerprint,
    NetworkOverride,
    PortMapping,
    RecoveredTask,
    TaskEvent,
    TaskHandle,
    TaskSpec,
    TaskState,
    TaskStats,
    TaskStatus,
)
from xen_driver.driver.state import stored_driver_config
from xen_driver.nomad.schemas import TASK_SCHEMA

#: Go's zero time.Time as a protobuf Timestamp (0001-01-01T00:00:00Z).
ZERO_TIME_SECONDS = -62135596800


# ---- timestamps ------------------------------------------------------------------------------


def timestamp(when: _dt.datetime | None) -> timestamp_pb2.Timestamp:
    if when is None:
        return timestamp_pb2.Timestamp(seconds=ZERO_TIME_SECONDS)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(_dt.UTC))
    return ts


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


_W = TypeVar("_W", bound=int)


def _wire(wire_enum: type[_W], value: enum.IntEnum) -> _W:
    """A model enum as the protobuf enum of the same numbers (models.py keeps them equal).

    The generated stubs type enum fields as the wire enum's own int subclass, which our IntEnums
    are not; on the wire both are the number.
    """
    return cast(_W, int(value))


# ---- attributes / fingerprint / capabilities -------------------------------------------------


def attribute(value: AttributeValue) -> structs_pb2.Attribute:
    unit = ""
    if isinstance(value, Attr):
        unit = value.unit
        value = value.value
    if isinstance(value, bool):
        return structs_pb2.Attribute(bool_val=value, unit=unit)
    if isinstance(value, int):
        return structs_pb2.Attribute(int_val=value, unit=unit)
    if isinstance(value, (float, Decimal)):
        return structs_pb2.Attribute(float_val=float(value), unit=unit)
    return structs_pb2.Attribute(string_val=str(value), unit=unit)


def fingerprint(fp: Fingerprint) -> dpb.FingerprintResponse:
    msg = dpb.FingerprintResponse(
        health=_wire(dpb.FingerprintResponse.HealthState, fp.health), health_description=fp.description, err=fp.err
    )
    for key, value in fp.attributes.items():
        msg.attributes[key].CopyFrom(attribute(value))
    return msg


def capabilities(caps: Capabilities) -> dpb.DriverCapabilities:
    return dpb.DriverCapabilities(
        send_signals=caps.send_signals,
        exec=caps.exec,
        fs_isolation=dpb.DriverCapabilities.NONE if caps.fs_isolation_none else dpb.DriverCapabilities.IMAGE,
        network_isolation_modes=[_wire(dpb.NetworkIsolationSpec.NetworkIsolationMode, m) for m in caps.network_modes],
        must_create_network=caps.must_create_network,
        mount_configs=dpb.DriverCapabilities.NO_MOUNTS if caps.no_mounts else dpb.DriverCapabilities.ANY_MOUNTS,
        disable_log_collection=caps.disable_log_collection,
    )


# ---- tasks ----------------------------------------------------------------------------------


def task_spec(task: dpb.TaskConfig, raw_config: bytes | None = None) -> TaskSpec:
    """Decode a TaskConfig (including the job's driver config) into a TaskSpec.

    ``raw_config`` replaces the request's own driver config bytes.  Raises ConfigError /
    CtyDecodeError for an unacceptable driver config.
    """
    raw = task.msgpack_driver_config if raw_config is None else raw_config
    res = task.resources.allocated_resources
    return TaskSpec(
        id=task.id,
        name=task.name,
        alloc_id=task.alloc_id,
        task_group=task.task_group_name,
        job_name=task.job_name,
        job_id=task.job_id,
        namespace=task.namespace,
        node_id=task.node_id,
        node_name=task.node_name,
        env=dict(task.env),
        memory_mb=res.memory.memory_mb,
        memory_max_mb=res.memory.memory_max_mb,
        cpu_shares=res.cpu.cpu_shares,
        alloc_dir=task.alloc_dir,
        stdout_path=task.stdout_path,
        stderr_path=task.stderr_path,
        config=TaskConfig.from_dict(TASK_SCHEMA.decode(raw)),
        raw_config=raw,
        ports=ports(task.resources),
    )


def ports(resources: dpb.Resources) -> tuple[PortMapping, ...]:
    """The allocation's ports: the group network's (``Resources.ports``, with ``to``), then those
    of a legacy task-level network (label and host port only) whose labels are not among them."""
    out = [PortMapping(label=p.label, value=p.value, to=p.to, host_ip=p.host_ip) for p in resources.ports]
    seen = {p.label for p in out}
    for net in resources.allocated_resources.networks:
        for p in list(net.reserved_ports) + list(net.dynamic_ports):
            if p.label and p.label not in seen:
                out.append(PortMapping(label=p.label, value=p.value, host_ip=net.ip, legacy=True))
                seen.add(p.label)
    return tuple(out)


def network_override(net: NetworkOverride | None) -> dpb.NetworkOverride | None:
    if net is None:
        return None
    msg = dpb.NetworkOverride(addr=net.addr, auto_advertise=net.auto_advertise)
    for label, port in net.port_map.items():
        msg.port_map[label] = int(port)
    return msg


def task_handle(handle: TaskHandle, config: dpb.TaskConfig) -> dpb.TaskHandle:
    """The handle Nomad persists; ``config`` echoes the StartTask request (its id is the key)."""
    if handle.version < 1:
        raise ValueError("task handle version must be >= 1 (0 marks pre-0.9 handles in Nomad)")
    msg = dpb.TaskHandle(
        version=handle.version, state=_wire(dpb.TaskState, handle.state), driver_state=handle.driver_state
    )
    msg.config.CopyFrom(config)
    if not msg.config.id:
        msg.config.id = handle.task_id
    return msg


def start_response(handle: TaskHandle, config: dpb.TaskConfig) -> dpb.StartTaskResponse:
    msg = dpb.StartTaskResponse(result=dpb.StartTaskResponse.SUCCESS)
    msg.handle.CopyFrom(task_handle(handle, config))
    net = network_override(handle.network)
    if net is not None:
        msg.network_override.CopyFrom(net)
    return msg


def recovered_task(handle: dpb.TaskHandle) -> RecoveredTask:
    """The task of a handle Nomad gives back to RecoverTask.

    After a client restart the handle's config has no driver config any more (Nomad does not
    persist it), so the copy we keep in driver_state is used instead (driver/state.py).
    """
    raw = handle.config.msgpack_driver_config or stored_driver_config(handle.driver_state)
    return RecoveredTask(
        spec=task_spec(handle.config, raw),
        version=handle.version,
        state=TaskState(handle.state) if handle.state in (0, 1, 2) else TaskState.UNKNOWN,
        driver_state=handle.driver_state,
    )


def exit_result(result: ExitResult | None) -> dpb.ExitResult:
    result = result or ExitResult()
    return dpb.ExitResult(exit_code=result.exit_code, signal=result.signal, oom_killed=result.oom_killed)


def wait_response(result: ExitResult) -> dpb.WaitTaskResponse:
    return dpb.WaitTaskResponse(result=exit_result(result), err=result.err)


def inspect_response(status: TaskStatus) -> dpb.InspectTaskResponse:
    msg = dpb.InspectTaskResponse(
        task=dpb.TaskStatus(
            id=status.id,
            name=status.name,
            state=_wire(dpb.TaskState, status.state),
            started_at=timestamp(status.started_at),
            completed_at=timestamp(status.completed_at),
            result=exit_result(status.exit),
        ),
        driver=dpb.TaskDriverStatus(attributes=dict(status.driver_attributes)),
    )
    net = network_override(status.network)
    if net is not None:
        msg.network_override.CopyFrom(net)
    return msg


def stats_response(stats: TaskStats) -> dpb.TaskStatsResponse:
    """One sample for Nomad; fields left None are neither set nor listed as measured.

    ``total_ticks`` (MHz used, which Nomad's CLI and UI show) is set but never listed in
    ``measured_fields``: Nomad's ``alloc status -stats`` prints one column per listed field and
    has none for it, so listing it would shift the CPU Stats values under the wrong headings.
    """
    cpu, mem = stats.cpu, stats.memory
    cpu_msg = dpb.CPUUsage()
    if cpu.total_ticks is not None:
        cpu_msg.total_ticks = float(cpu.total_ticks)
    for name, enum_value in (
        ("system_mode", dpb.CPUUsage.SYSTEM_MODE),
        ("user_mode", dpb.CPUUsage.USER_MODE),
        ("percent", dpb.CPUUsage.PERCENT),
    ):
        value = getattr(cpu, name)
        if value is not None:
            setattr(cpu_msg, name, float(value))
            cpu_msg.measured_fields.append(enum_value)
    mem_msg = dpb.MemoryUsage()
    for name, mem_field in (
        ("rss", dpb.MemoryUsage.RSS),
        ("usage", dpb.MemoryUsage.USAGE),
        ("max_usage", dpb.MemoryUsage.MAX_USAGE),
    ):
        value = getattr(mem, name)
        if value is not None:
            setattr(mem_msg, name, int(value))
            mem_msg.measured_fields.append(mem_field)
    return dpb.TaskStatsResponse(
        stats=dpb.TaskStats(
            id=stats.task_id,
            timestamp=timestamp(stats.timestamp),
            agg_resource_usage=dpb.TaskResourceUsage(cpu=cpu_msg, memory=mem_msg),
        )
    )


def task_event(event: TaskEvent) -> dpb.DriverTaskEvent:
    return dpb.DriverTaskEvent(
        task_id=event.task_id,
        alloc_id=event.alloc_id,
        task_name=event.task_name,
        timestamp=timestamp(event.timestamp or now()),
        message=event.message,
        annotations=dict(event.annotations),
    )


def duration_seconds(duration) -> float:
    """google.protobuf.Duration -> seconds (0 when unset)."""
    return duration.seconds + duration.nanos / 1e9


def string_map(values: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items()}
