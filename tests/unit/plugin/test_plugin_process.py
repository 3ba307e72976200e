"""The plugin as a process, driven over its socket the way a go-plugin host drives it."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xen_driver._proto.goplugin import broker_pb2, broker_pb2_grpc, controller_pb2, controller_pb2_grpc, stdio_pb2_grpc
from xen_driver._proto.nomad import base_pb2, base_pb2_grpc, driver_pb2, driver_pb2_grpc
from xen_driver.nomad import cty
from xen_driver.nomad.schemas import PLUGIN_SCHEMA, TASK_SCHEMA
from xen_driver.nomad.service import REFUSED_CONFIG_EXIT_S
from xen_driver.nomad.status import recoverable_from_metadata
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE

REPO = Path(__file__).resolve().parents[3]
HANDSHAKE_RE = re.compile(r"^1\|2\|unix\|(/[^|]+)\|grpc\|(\|false)?\n$")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

XL_INFO = (
    "xen_version            : 4.17.5\nxen_scheduler          : credit2\nfree_memory            : 1843\n"
    "total_memory           : 3071\nnr_cpus                : 2\n"
)


class Plugin:
    def __init__(self, tmp_path: Path, **extra_env: str) -> None:
        self.tmp = tmp_path / "tmpdir"
        self.tmp.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_"))}
        env.update(
            NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value,
            PLUGIN_PROTOCOL_VERSIONS="2",
            PLUGIN_MIN_PORT="10000",
            PLUGIN_MAX_PORT="25000",
            TMPDIR=str(self.tmp),
            PYTHONPATH=str(REPO),
        )
        env.update(extra_env)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xen_driver"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.stderr_lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.line = self.proc.stdout.readline().decode()
        self.handshake_s = time.monotonic() - self.started
        m = HANDSHAKE_RE.match(self.line)
        assert m, f"bad handshake line {self.line!r}; stderr: {self.stderr_text()}"
        self.path = m.group(1)
        self.channel = grpc.insecure_channel("unix:" + self.path)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stderr_text(self) -> str:
        return b"".join(self.stderr_lines).decode(errors="replace")

    def records(self) -> list[dict]:
        self._reader.join(timeout=5)
        out = []
        for raw in self.stderr_lines:
            record = json.loads(raw)
            for key in ("@message", "@level", "@timestamp"):
                assert isinstance(record[key], str)
            assert record["@level"] in {"trace", "debug", "info", "warn", "error"}
            assert TS_RE.match(record["@timestamp"])
            out.append(record)
        return out

    def shutdown(self) -> float:
        start = time.monotonic()
        controller_pb2_grpc.GRPCControllerStub(self.channel).Shutdown(controller_pb2.Empty(), timeout=5)
        self.channel.close()
        self.proc.wait(timeout=10)
        return time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.channel.close()


@pytest.fixture
def plugin(tmp_path):
    p = Plugin(tmp_path)
    yield p
    p.kill()


def set_config(plugin: Plugin, **config) -> None:
    base_pb2_grpc.BasePluginStub(plugin.channel).SetConfig(
        base_pb2.SetConfigRequest(
            msgpack_config=cty.encode(config, PLUGIN_SCHEMA.cty_type), plugin_api_version="0.1.0"
        ),
        timeout=10,
    )


def fake_xl(tmp_path: Path, body: str) -> str:
    path = tmp_path / "xl"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_socket_in_tmpdir_with_mode_0600_and_health_serving(plugin):
    assert plugin.line.count("|") == 5  # no 7th field unless the host asks for multiplexing
    assert os.path.dirname(plugin.path) == str(plugin.tmp)
    mode = os.stat(plugin.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    health = health_pb2_grpc.HealthStub(plugin.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_plugin_info_and_schemas(plugin):
    base = base_pb2_grpc.BasePluginStub(plugin.channel)
    info = base.PluginInfo(base_pb2.PluginInfoRequest(), timeout=5)
    assert (info.type, list(info.plugin_api_versions), info.name) == (base_pb2.DRIVER, ["0.1.0"], "xen")
    from xen_driver import __version__

    assert info.plugin_version == __version__
    assert base.ConfigSchema(base_pb2.ConfigSchemaRequest(), timeout=5).spec == PLUGIN_SCHEMA.to_proto()
    drv = driver_pb2_grpc.DriverStub(plugin.channel)
    assert drv.TaskConfigSchema(driver_pb2.TaskConfigSchemaRequest(), timeout=5).spec == TASK_SCHEMA.to_proto()
    caps = drv.Capabilities(driver_pb2.CapabilitiesRequest(), timeout=5).capabilities
    assert caps.fs_isolation == driver_pb2.DriverCapabilities.NONE and caps.exec is False
    assert caps.mount_configs == driver_pb2.DriverCapabilities.NO_MOUNTS
    # Only host: Nomad's client itself fails allocations asking for bridge, none, cni/* or driver.
    assert list(caps.network_isolation_modes) == [driver_pb2.NetworkIsolationSpec.HOST]


def test_bad_set_config_names_the_field(plugin):
    with pytest.raises(grpc.RpcError) as err:
        set_config(plugin, backend="kvm")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == 'plugin config "backend": got "kvm", must be one of "xl", "libvirt"'


def test_a_process_whose_configuration_was_refused_stops_by_itself(plugin):
    """Nomad 1.6's plugin loader leaves a plugin whose SetConfig failed running (the agent then
    exits); such a process must not linger."""
    with pytest.raises(grpc.RpcError):
        set_config(plugin, backend="kvm")
    assert plugin.proc.wait(timeout=REFUSED_CONFIG_EXIT_S + 10) == 0
    assert time.monotonic() - plugin.started >= REFUSED_CONFIG_EXIT_S
    assert not os.path.exists(plugin.path)
    records = plugin.records()
    stop = [r for r in records if r["@message"].startswith("stopping: the plugin host refused")]
    assert stop and stop[0]["@level"] == "info", records


def test_a_refusal_followed_by_an_accepted_configuration_keeps_serving(plugin, tmp_path):
    with pytest.raises(grpc.RpcError):
        set_config(plugin, backend="kvm")
    set_config(plugin, xl_path=str(tmp_path / "none"))
    with pytest.raises(subprocess.TimeoutExpired):
        plugin.proc.wait(timeout=REFUSED_CONFIG_EXIT_S + 2)
    base = base_pb2_grpc.BasePluginStub(plugin.channel)
    assert base.PluginInfo(base_pb2.PluginInfoRequest(), timeout=5).name == "xen"


def test_set_config_twice_then_fingerprint_healthy_with_attributes(plugin, tmp_path):
    xl = fake_xl(tmp_path, f"cat <<'EOF'\n{XL_INFO}EOF\n")
    set_config(plugin, xl_path=xl, fingerprint_period="1s")
    set_config(plugin, xl_path=xl, fingerprint_period="1s")  # Nomad's validation process repeats it
    drv = driver_pb2_grpc.DriverStub(plugin.channel)
    stream = drv.Fingerprint(driver_pb2.FingerprintRequest(), timeout=20)
    start = time.monotonic()
    first = next(stream)
    assert time.monotonic() - start < 2.0  # "immediately"
    assert first.health == driver_pb2.FingerprintResponse.HEALTHY
    attrs = first.attributes
    assert attrs["driver.xen.version"].string_val == "4.17.5"
    assert (attrs["driver.xen.total_memory"].int_val, attrs["driver.xen.total_memory"].unit) == (3071, "MiB")
    assert "driver.xen.free_memory" not in attrs  # it changes with every guest (see test_core)
    assert attrs["driver.xen.scheduler"].string_val == "credit2"
    assert attrs["driver.xen.backend"].string_val == "xl"
    for a in attrs.values():
        assert a.WhichOneof("value") is not None
    second = next(stream)  # periodic
    assert 0.5 < time.monotonic() - start < 5 and second.health == driver_pb2.FingerprintResponse.HEALTHY
    stream.cancel()


def test_fingerprint_undetected_and_unhealthy(plugin, tmp_path):
    drv = driver_pb2_grpc.DriverStub(plugin.channel)
    set_config(plugin, xl_path=str(tmp_path / "nowhere" / "xl"))
    stream = drv.Fingerprint(driver_pb2.FingerprintRequest(), timeout=20)
    fp = next(stream)
    assert fp.health == driver_pb2.FingerprintResponse.UNDETECTED and "Xen toolstack not found" in fp.health_description
    stream.cancel()
    xl = fake_xl(tmp_path, 'echo "cannot init xl context" >&2\nexit 1\n')
    set_config(plugin, xl_path=xl)
    stream = drv.Fingerprint(driver_pb2.FingerprintRequest(), timeout=20)
    fp = next(stream)
    assert fp.health == driver_pb2.FingerprintResponse.UNHEALTHY and "cannot init xl context" in fp.health_description
    stream.cancel()


def _stays_open(call_factory) -> None:
    call = call_factory(timeout=0.7)
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # open until the client gives up


def test_idle_streams_stay_open(plugin):
    drv = driver_pb2_grpc.DriverStub(plugin.channel)
    _stays_open(lambda timeout: drv.TaskEvents(driver_pb2.TaskEventsRequest(), timeout=timeout))
    stdio = stdio_pb2_grpc.GRPCStdioStub(plugin.channel)
    _stays_open(lambda timeout: stdio.StreamStdio(empty_pb2.Empty(), timeout=timeout))
    broker = broker_pb2_grpc.GRPCBrokerStub(plugin.channel)
    never = threading.Event()

    def requests():
        never.wait(5)
        return
        yield broker_pb2.ConnInfo()

    _stays_open(lambda timeout: broker.StartStream(requests(), timeout=timeout))


def test_task_rpcs_answer_without_crashing(plugin):
    drv = driver_pb2_grpc.DriverStub(plugin.channel)
    task = driver_pb2.TaskConfig(
        id="a1/web/0123abcd", name="web", msgpack_driver_config=cty.encode({"kernel": "local/k"}, TASK_SCHEMA.cty_type)
    )
    with pytest.raises(grpc.RpcError) as err:
        drv.StartTask(driver_pb2.StartTaskRequest(task=task), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'task config "kernel"' in err.value.details()  # relative, and the task has no task dir
    task.msgpack_driver_config = cty.encode({"kernel": "k", "vcpus": -1}, TASK_SCHEMA.cty_type)
    with pytest.raises(grpc.RpcError) as err:
        drv.StartTask(driver_pb2.StartTaskRequest(task=task), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == 'task config "vcpus": got -1, must be an integer between 1 and 128'
    for call, req in [
        (drv.WaitTask, driver_pb2.WaitTaskRequest(task_id="x")),
        (drv.StopTask, driver_pb2.StopTaskRequest(task_id="x")),
        (drv.DestroyTask, driver_pb2.DestroyTaskRequest(task_id="x", force=True)),
        (drv.InspectTask, driver_pb2.InspectTaskRequest(task_id="x")),
        (drv.SignalTask, driver_pb2.SignalTaskRequest(task_id="x", signal="SIGHUP")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, call
        assert err.value.details() == "task not found for given id"
    # A handle we did not make cannot be recovered; unikernels have no shell; no netns.
    task.msgpack_driver_config = cty.encode({"kernel": "/k"}, TASK_SCHEMA.cty_type)
    for call, req, code in [
        (
            drv.RecoverTask,
            driver_pb2.RecoverTaskRequest(handle=driver_pb2.TaskHandle(version=1, config=task)),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (drv.ExecTask, driver_pb2.ExecTaskRequest(task_id="x", command=["sh"]), grpc.StatusCode.UNIMPLEMENTED),
        (drv.CreateNetwork, driver_pb2.CreateNetworkRequest(alloc_id="a"), grpc.StatusCode.UNIMPLEMENTED),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=5)
        assert err.value.code() == code, (call, err.value)
    # TaskStats of an unknown task must be a non-recoverable error, or Nomad retries forever.
    with pytest.raises(grpc.RpcError) as err:
        next(drv.TaskStats(driver_pb2.TaskStatsRequest(task_id="x"), timeout=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert recoverable_from_metadata(err.value.trailing_metadata()) is False
    assert drv.Init(driver_pb2.InitRequest(), timeout=5) == driver_pb2.InitResponse()
    assert drv.Shutdown(driver_pb2.ShutdownRequest(), timeout=5) == driver_pb2.ShutdownResponse()
    assert plugin.proc.poll() is None


def test_sigint_is_ignored(plugin):
    plugin.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert plugin.proc.poll() is None
    base = base_pb2_grpc.BasePluginStub(plugin.channel)
    assert base.PluginInfo(base_pb2.PluginInfoRequest(), timeout=5).name == "xen"


def test_shutdown_exits_quickly_and_removes_the_socket(plugin):
    drv = driver_pb2_grpc.DriverStub(plugin.channel)
    stream = drv.Fingerprint(driver_pb2.FingerprintRequest(), timeout=30)  # an open stream must not hold us
    next(stream)
    elapsed = plugin.shutdown()
    assert elapsed < 2.0, f"took {elapsed:.2f}s; go-plugin SIGKILLs after 2s"
    assert plugin.proc.returncode == 0
    assert not os.path.exists(plugin.path)
    records = plugin.records()
    messages = [r["@message"] for r in records]
    assert "shutdown requested by the plugin host" in messages
    assert not [r for r in records if r["@level"] == "error"], records


def test_sigterm_exits(plugin):
    plugin.proc.send_signal(signal.SIGTERM)
    assert plugin.proc.wait(timeout=5) == 0
    assert not os.path.exists(plugin.path)


def test_stderr_is_only_go_plugin_json(plugin, tmp_path):
    set_config(plugin, xl_path=str(tmp_path / "none"))
    plugin.shutdown()
    records = plugin.records()
    assert records, "expected log records"
    assert {"plugin serving", "plugin configured"} <= {r["@message"] for r in records}
    assert any(r["@message"] == "plugin configured" and r["@level"] == "info" for r in records)


def test_multiplex_request_is_answered_with_false(tmp_path):
    p = Plugin(tmp_path, PLUGIN_MULTIPLEX_GRPC="true")
    try:
        assert p.line.endswith("|grpc||false\n")
        assert p.shutdown() < 2.0
    finally:
        p.kill()
