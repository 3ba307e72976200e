"""SetConfig on a running plugin: open streams follow the new configuration, and a backend whose
binding is missing is reported as the node's health, not as an internal error."""

from __future__ import annotations

import grpc
import pytest

from tests.unit.plugin.test_plugin_process import XL_INFO, Plugin, fake_xl, set_config
from xen_driver._proto.nomad import driver_pb2, driver_pb2_grpc


@pytest.fixture
def plugin(tmp_path):
    p = Plugin(tmp_path)
    yield p
    p.kill()


def test_open_fingerprint_stream_follows_a_new_configuration(plugin, tmp_path):
    healthy = fake_xl(tmp_path, f"cat <<'EOF'\n{XL_INFO}EOF\n")
    set_config(plugin, xl_path=healthy, fingerprint_period="30s")
    stream = driver_pb2_grpc.DriverStub(plugin.channel).Fingerprint(driver_pb2.FingerprintRequest(), timeout=30)
    assert next(stream).health == driver_pb2.FingerprintResponse.HEALTHY
    set_config(plugin, xl_path=str(tmp_path / "nowhere" / "xl"), fingerprint_period="30s")
    fp = next(stream)  # the same stream, well before the 30 s period
    assert fp.health == driver_pb2.FingerprintResponse.UNDETECTED, fp
    stream.cancel()
    errors = [r for r in plugin_records(plugin) if r["@level"] == "error"]
    assert not any("ended unexpectedly" in r["@message"] for r in errors), errors


def test_missing_libvirt_binding_is_an_unhealthy_node_not_an_internal_error(tmp_path):
    # A site directory that shadows the binding with one that cannot be imported.
    shadow = tmp_path / "shadow"
    (shadow / "libvirt").mkdir(parents=True)
    (shadow / "libvirt" / "__init__.py").write_text("raise ImportError('no libvirt here')\n")
    import os

    plugin = Plugin(
        tmp_path,
        PYTHONPATH=f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}{os.pathsep}"
        + str(Plugin.__init__.__globals__["REPO"]),
    )
    try:
        xl = fake_xl(tmp_path, f"cat <<'EOF'\n{XL_INFO}EOF\n")
        set_config(plugin, backend="libvirt", xl_path=xl)  # accepted: the config itself is valid
        drv = driver_pb2_grpc.DriverStub(plugin.channel)
        fp = next(drv.Fingerprint(driver_pb2.FingerprintRequest(), timeout=20))
        assert fp.health != driver_pb2.FingerprintResponse.HEALTHY
        assert "libvirt" in fp.health_description, fp
        with pytest.raises(grpc.RpcError) as err:
            drv.WaitTask(driver_pb2.WaitTaskRequest(task_id="nope"), timeout=10)
        assert err.value.code() != grpc.StatusCode.INTERNAL
    finally:
        plugin.kill()


def plugin_records(plugin: Plugin) -> list[dict]:
    import json

    out = []
    for raw in list(plugin.stderr_lines):
        try:
            out.append(json.loads(raw))
        except ValueError:
            pass
    return out
