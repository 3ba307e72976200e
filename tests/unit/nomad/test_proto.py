"""The generated modules are fresh, and our .proto files carry Nomad's wire contract."""

from __future__ import annotations

import pytest

from xen_driver import _gen
from xen_driver._proto.goplugin import broker_pb2, controller_pb2, stdio_pb2
from xen_driver._proto.nomad import base_pb2, driver_pb2, hclspec_pb2, structs_pb2


def test_generated_modules_are_not_stale():
    stale = _gen.stale_files()
    assert stale == [], f"run `make proto`: these generated files differ: {stale}"


def _fields(message) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


@pytest.mark.parametrize(
    "message,full_name,fields",
    [
        (
            base_pb2.PluginInfoResponse,
            "hashicorp.nomad.plugins.base.proto.PluginInfoResponse",
            {"type": 1, "plugin_api_versions": 2, "plugin_version": 3, "name": 4},
        ),
        (
            base_pb2.SetConfigRequest,
            "hashicorp.nomad.plugins.base.proto.SetConfigRequest",
            {"msgpack_config": 1, "nomad_config": 2, "plugin_api_version": 3},
        ),
        (
            base_pb2.NomadDriverConfig,
            "hashicorp.nomad.plugins.base.proto.NomadDriverConfig",
            {"ClientMaxPort": 1, "ClientMinPort": 2, "Topology": 3},
        ),
        (
            driver_pb2.FingerprintResponse,
            "hashicorp.nomad.plugins.drivers.proto.FingerprintResponse",
            {"attributes": 1, "health": 2, "health_description": 3, "err": 4},
        ),
        (
            driver_pb2.DriverCapabilities,
            "hashicorp.nomad.plugins.drivers.proto.DriverCapabilities",
            {
                "send_signals": 1,
                "exec": 2,
                "fs_isolation": 3,
                "network_isolation_modes": 4,
                "must_create_network": 5,
                "mount_configs": 6,
                "disable_log_collection": 8,
                "dynamic_workload_users": 9,
            },
        ),
        (
            driver_pb2.TaskHandle,
            "hashicorp.nomad.plugins.drivers.proto.TaskHandle",
            {"version": 1, "config": 2, "state": 3, "driver_state": 4},
        ),
        (
            driver_pb2.AllocatedMemoryResources,
            "hashicorp.nomad.plugins.drivers.proto.AllocatedMemoryResources",
            {"memory_mb": 2, "memory_max_mb": 3},
        ),
        (
            driver_pb2.MemoryUsage,
            "hashicorp.nomad.plugins.drivers.proto.MemoryUsage",
            {
                "rss": 1,
                "cache": 2,
                "max_usage": 3,
                "kernel_usage": 4,
                "kernel_max_usage": 5,
                "measured_fields": 6,
                "usage": 7,
                "swap": 8,
            },
        ),
        (
            hclspec_pb2.Spec,
            "hashicorp.nomad.plugins.shared.hclspec.Spec",
            {
                "object": 1,
                "array": 2,
                "Attr": 3,
                "block_value": 4,
                "block_attrs": 5,
                "block_list": 6,
                "block_set": 7,
                "block_map": 8,
                "default": 9,
                "literal": 10,
            },
        ),
        (
            structs_pb2.Attribute,
            "hashicorp.nomad.plugins.shared.structs.Attribute",
            {"float_val": 1, "int_val": 2, "string_val": 3, "bool_val": 4, "unit": 5},
        ),
        (structs_pb2.RecoverableError, "hashicorp.nomad.plugins.shared.structs.RecoverableError", {"recoverable": 1}),
        (controller_pb2.Empty, "plugin.Empty", {}),
        (stdio_pb2.StdioData, "plugin.StdioData", {"channel": 1, "data": 2}),
        (broker_pb2.ConnInfo, "plugin.ConnInfo", {"service_id": 1, "network": 2, "address": 3, "knock": 4}),
    ],
)
def test_wire_contract(message, full_name, fields):
    assert message.DESCRIPTOR.full_name == full_name
    assert _fields(message) == fields


def test_task_config_field_numbers():
    expected = [
        "id",
        "name",
        "msgpack_driver_config",
        "env",
        "device_env",
        "resources",
        "mounts",
        "devices",
        "user",
        "alloc_dir",
        "stdout_path",
        "stderr_path",
        "task_group_name",
        "job_name",
        "alloc_id",
        "network_isolation_spec",
        "dns",
        "job_id",
        "namespace",
        "node_name",
        "node_id",
        "parent_job_id",
    ]
    assert _fields(driver_pb2.TaskConfig) == {name: i + 1 for i, name in enumerate(expected)}


def test_service_method_paths():
    svc = driver_pb2.DESCRIPTOR.services_by_name["Driver"]
    assert svc.full_name == "hashicorp.nomad.plugins.drivers.proto.Driver"
    streaming = {m.name for m in svc.methods if m.server_streaming}
    assert streaming == {"Fingerprint", "TaskStats", "TaskEvents", "ExecTaskStreaming"}
    assert (
        base_pb2.DESCRIPTOR.services_by_name["BasePlugin"].full_name == "hashicorp.nomad.plugins.base.proto.BasePlugin"
    )
    assert controller_pb2.DESCRIPTOR.services_by_name["GRPCController"].full_name == "plugin.GRPCController"
    assert stdio_pb2.DESCRIPTOR.services_by_name["GRPCStdio"].full_name == "plugin.GRPCStdio"
    assert broker_pb2.DESCRIPTOR.services_by_name["GRPCBroker"].full_name == "plugin.GRPCBroker"


def test_enum_numbers():
    assert base_pb2.DRIVER == 2 and base_pb2.DEVICE == 3
    assert driver_pb2.FingerprintResponse.HEALTHY == 2 and driver_pb2.FingerprintResponse.UNHEALTHY == 1
    assert driver_pb2.DriverCapabilities.NO_MOUNTS == 1 and driver_pb2.DriverCapabilities.NONE == 0
    assert driver_pb2.NetworkIsolationSpec.NONE == 3
    assert driver_pb2.RUNNING == 1 and driver_pb2.EXITED == 2
