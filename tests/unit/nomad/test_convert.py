"""proto <-> model conversion: every field Nomad dereferences is always filled."""

from __future__ import annotations

import datetime as dt

import pytest

from xen_driver._proto.nomad import driver_pb2
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.models import (
    Attr,
    Capabilities,
    CpuUsage,
    ExitResult,
    Fingerprint,
    Health,
    MemoryUsage,
    NetworkOverride,
    TaskEvent,
    TaskHandle,
    TaskState,
    TaskStats,
    TaskStatus,
)
from xen_driver.nomad import convert, cty
from xen_driver.nomad.schemas import TASK_SCHEMA


def task_config(**driver_config) -> driver_pb2.TaskConfig:
    t = driver_pb2.TaskConfig(
        id="5e1c/web/0a1b2c3d",
        name="web",
        alloc_id="5e1c",
        task_group_name="g",
        job_name="j",
        job_id="j",
        namespace="default",
        node_id="n1",
        node_name="node",
        alloc_dir="/var/nomad/alloc/5e1c",
        stdout_path="/var/nomad/alloc/5e1c/alloc/logs/.web.stdout.fifo",
        stderr_path="/var/nomad/alloc/5e1c/alloc/logs/.web.stderr.fifo",
        msgpack_driver_config=cty.encode(driver_config or {"kernel": "local/k"}, TASK_SCHEMA.cty_type),
    )
    t.env["NOMAD_TASK_NAME"] = "web"
    t.resources.allocated_resources.memory.memory_mb = 32
    t.resources.allocated_resources.memory.memory_max_mb = 64
    t.resources.allocated_resources.cpu.cpu_shares = 500
    return t


def test_task_spec_from_proto():
    spec = convert.task_spec(task_config(kernel="local/k", memory=16))
    assert (spec.id, spec.name, spec.alloc_id, spec.task_group, spec.job_name) == (
        "5e1c/web/0a1b2c3d",
        "web",
        "5e1c",
        "g",
        "j",
    )
    assert (spec.memory_mb, spec.memory_max_mb, spec.cpu_shares) == (32, 64, 500)
    assert spec.env == {"NOMAD_TASK_NAME": "web"}
    assert spec.config.kernel == "local/k" and spec.config.memory == 16
    assert spec.task_dir == "/var/nomad/alloc/5e1c/web"


def test_bad_driver_config_is_a_config_error():
    with pytest.raises(ConfigError, match='task config "on_crash"'):
        convert.task_spec(task_config(kernel="k", on_crash="explode"))


def test_start_response_echoes_the_config():
    cfg = task_config()
    handle = TaskHandle(
        task_id=cfg.id,
        version=1,
        state=TaskState.RUNNING,
        driver_state=b"\x81\xa1v\x01",
        network=NetworkOverride(addr="10.0.0.2", port_map={"http": 80}, auto_advertise=True),
    )
    msg = convert.start_response(handle, cfg)
    assert msg.handle.config == cfg and msg.handle.config.id == cfg.id
    assert (
        msg.handle.version == 1
        and msg.handle.state == driver_pb2.RUNNING
        and msg.handle.driver_state == b"\x81\xa1v\x01"
    )
    assert msg.network_override.addr == "10.0.0.2" and dict(msg.network_override.port_map) == {"http": 80}
    with pytest.raises(ValueError):
        convert.task_handle(TaskHandle(task_id="x", version=0, state=TaskState.RUNNING, driver_state=b""), cfg)


def test_recovered_task_from_handle():
    handle = driver_pb2.TaskHandle(version=1, config=task_config(), state=driver_pb2.RUNNING, driver_state=b"s")
    rec = convert.recovered_task(handle)
    assert rec.spec.id == "5e1c/web/0a1b2c3d" and rec.state is TaskState.RUNNING and rec.driver_state == b"s"


def test_wait_response_always_has_a_result():
    msg = convert.wait_response(ExitResult(exit_code=3, err="crashed"))
    assert msg.HasField("result") and msg.result.exit_code == 3 and msg.err == "crashed"
    assert convert.wait_response(ExitResult()).HasField("result")


def test_inspect_fills_zero_times():
    msg = convert.inspect_response(
        TaskStatus(id="x", name="web", state=TaskState.RUNNING, started_at=dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
    )
    assert msg.task.started_at.seconds == 1714521600
    assert msg.task.completed_at.seconds == convert.ZERO_TIME_SECONDS
    assert msg.task.HasField("result")


def test_stats_always_have_timestamp_and_aggregate():
    now = dt.datetime.now(dt.UTC)
    msg = convert.stats_response(TaskStats(task_id="x", timestamp=now))
    assert msg.HasField("stats") and msg.stats.HasField("timestamp") and msg.stats.HasField("agg_resource_usage")
    assert list(msg.stats.agg_resource_usage.cpu.measured_fields) == []
    msg = convert.stats_response(
        TaskStats(task_id="x", timestamp=now, cpu=CpuUsage(total_ticks=12.5, percent=1.0), memory=MemoryUsage(rss=4096))
    )
    cpu, mem = msg.stats.agg_resource_usage.cpu, msg.stats.agg_resource_usage.memory
    # total_ticks is sent (Nomad's MHz figure) but not listed: `nomad alloc status -stats` has
    # no column for it and would print the CPU Stats values under the wrong headings.
    assert cpu.total_ticks == 12.5 and list(cpu.measured_fields) == [driver_pb2.CPUUsage.PERCENT]
    assert mem.rss == 4096 and list(mem.measured_fields) == [driver_pb2.MemoryUsage.RSS]
    msg = convert.stats_response(TaskStats(task_id="x", timestamp=now, memory=MemoryUsage(rss=1, usage=1, max_usage=2)))
    mem = msg.stats.agg_resource_usage.memory
    assert (mem.rss, mem.usage, mem.max_usage) == (1, 1, 2)
    assert list(mem.measured_fields) == [
        driver_pb2.MemoryUsage.RSS,
        driver_pb2.MemoryUsage.USAGE,
        driver_pb2.MemoryUsage.MAX_USAGE,
    ]


def test_fingerprint_attributes_have_exactly_one_value():
    msg = convert.fingerprint(
        Fingerprint(Health.HEALTHY, "ok", {"a": 1, "b": 1.5, "c": "s", "d": True, "e": Attr(512, "MiB")})
    )
    assert msg.health == driver_pb2.FingerprintResponse.HEALTHY and msg.health_description == "ok"
    kinds = {k: v.WhichOneof("value") for k, v in msg.attributes.items()}
    assert kinds == {"a": "int_val", "b": "float_val", "c": "string_val", "d": "bool_val", "e": "int_val"}
    assert msg.attributes["e"].unit == "MiB"


def test_capabilities():
    caps = convert.capabilities(Capabilities())
    assert caps.fs_isolation == driver_pb2.DriverCapabilities.NONE
    assert caps.mount_configs == driver_pb2.DriverCapabilities.NO_MOUNTS
    assert not caps.send_signals and not caps.exec and not caps.must_create_network


def test_task_event_gets_a_timestamp():
    msg = convert.task_event(
        TaskEvent(task_id="x", alloc_id="a", task_name="web", message="booted", annotations={"boot_ms": "31"})
    )
    assert msg.timestamp.seconds > 0 and dict(msg.annotations) == {"boot_ms": "31"}


def test_recovery_after_a_client_restart_takes_the_job_config_from_driver_state():
    """Nomad persists its copy of the handle without the driver config bytes; what RecoverTask
    then gets must still decode to the job's config (from the copy in our driver_state)."""
    from xen_driver.driver.state import DriverState

    started = task_config(kernel="local/k", on_crash="preserve", memory=24)
    spec = convert.task_spec(started)
    assert spec.raw_config == started.msgpack_driver_config
    state = DriverState(
        task_id=spec.id,
        domain_name="nomad-web-5e1c-0a1b2c3d",
        domid=7,
        uuid="u",
        started_at_ns=1,
        backend="xl",
        config_path="/c",
        task_state_dir="/t",
        console_path="/l",
        console_offset=0,
        driver_config=spec.raw_config,
    )
    restored = driver_pb2.TaskConfig()
    restored.CopyFrom(started)
    restored.msgpack_driver_config = b""  # what Nomad hands back after an agent restart
    handle = driver_pb2.TaskHandle(version=2, config=restored, state=driver_pb2.RUNNING, driver_state=state.encode())
    rec = convert.recovered_task(handle)
    assert rec.spec.config == spec.config and rec.spec.config.on_crash == "preserve" and rec.spec.config.memory == 24
    assert rec.spec.stdout_path == started.stdout_path


def test_version_1_driver_state_still_decodes():
    import msgpack

    from xen_driver.driver.state import DriverState, stored_driver_config

    v1 = {
        "v": 1,
        "task_id": "t",
        "domain_name": "d",
        "domid": 3,
        "uuid": "u",
        "started_at_ns": 1,
        "backend": "xl",
        "config_path": "/c",
        "task_state_dir": "/t",
        "console_path": "/l",
        "console_offset": 0,
    }
    blob = msgpack.packb(v1, use_bin_type=True)
    assert DriverState.decode(blob).driver_config == b"" and stored_driver_config(blob) == b""
    assert stored_driver_config(b"junk") == b""


# ---- the guest's network (issue 15) -------------------------------------------------------------


def test_ports_of_the_group_network_reach_the_task_spec():
    """Nomad sends the group network's ports as Resources.ports (label, host port, to, host ip)."""
    t = task_config(kernel="k", vif=[{"bridge": "xenbr0", "ip": "10.0.0.2", "mac": None, "script": None}])
    t.resources.ports.add(label="http", value=23456, to=80, host_ip="192.168.1.10")
    t.resources.ports.add(label="admin", value=23457)
    spec = convert.task_spec(t)
    assert [(p.label, p.value, p.to, p.host_ip) for p in spec.ports] == [
        ("http", 23456, 80, "192.168.1.10"),
        ("admin", 23457, 0, ""),
    ]


def test_ports_of_a_legacy_task_network_come_after_the_groups():
    t = task_config()
    t.resources.ports.add(label="http", value=23456, to=80)
    net = t.resources.allocated_resources.networks.add(ip="192.168.1.10")
    net.reserved_ports.add(label="dns", value=53)
    net.dynamic_ports.add(label="http", value=29999)  # the group's label wins
    net.dynamic_ports.add(label="metrics", value=23999)
    spec = convert.task_spec(t)
    assert [(p.label, p.value, p.to, p.legacy) for p in spec.ports] == [
        ("http", 23456, 80, False),
        ("dns", 53, 0, True),
        ("metrics", 23999, 0, True),
    ]


def test_no_ports_no_network():
    spec = convert.task_spec(task_config())
    assert spec.ports == ()
    msg = convert.start_response(
        TaskHandle(task_id="x", version=3, state=TaskState.RUNNING, driver_state=b"s"), task_config()
    )
    assert not msg.HasField("network_override")


def test_inspect_reports_the_network():
    net = NetworkOverride(addr="fd00::7", port_map={"http": 80, "dns": 53}, auto_advertise=True)
    msg = convert.inspect_response(TaskStatus(id="x", name="web", state=TaskState.RUNNING, network=net))
    assert msg.network_override.addr == "fd00::7" and msg.network_override.auto_advertise is True
    assert dict(msg.network_override.port_map) == {"http": 80, "dns": 53}
    assert not convert.inspect_response(TaskStatus(id="x", name="web", state=TaskState.RUNNING)).HasField(
        "network_override"
    )


def test_capabilities_list_only_the_host_network_mode():
    """Nomad's client maps bridge, none and cni/* to GROUP and driver to TASK, and fails an
    allocation asking for a mode the driver does not list; a Xen guest has its own vifs, no
    network namespace, so only host is true."""
    caps = convert.capabilities(Capabilities())
    assert list(caps.network_isolation_modes) == [driver_pb2.NetworkIsolationSpec.HOST]
    assert not caps.must_create_network
