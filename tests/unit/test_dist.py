"""`make dist`: the artifacts, and the single file run the way an operator's Nomad agent runs it.

Uses dist/ when it is newer than everything it is built from (``make test`` builds it first),
else builds into a temporary directory with tools/dist.py (PyPI needed: about half a minute).
The single file is copied into an empty plugin directory whose parent is read-only too, and
started with a clean environment (only PATH, plus go-plugin's variables for the handshake).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import grpc
import pytest

from xen_driver import __version__
from xen_driver._proto.goplugin import controller_pb2, controller_pb2_grpc
from xen_driver._proto.nomad import base_pb2, base_pb2_grpc, driver_pb2, driver_pb2_grpc
from xen_driver.nomad import cty
from xen_driver.nomad.schemas import PLUGIN_SCHEMA
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NAME = "nomad-driver-xen"
HANDSHAKE_RE = re.compile(r"^1\|2\|unix\|(/[^|]+)\|grpc\|(\|false)?\n$")
VERSION_RE = re.compile(rf"^nomad-driver-xen {re.escape(__version__)} \(commit [0-9a-f]{{12}}(\+dirty)?\)\n$")
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
INPUTS = ["xen_driver", "packaging", "tools/dist.py", "pyproject.toml"]


def _newest_input() -> float:
    newest = 0.0
    for top in INPUTS:
        path = REPO / top
        for p in [path] if path.is_file() else path.rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                newest = max(newest, p.stat().st_mtime)
    return newest


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    built = REPO / "dist" / NAME
    if built.exists() and built.stat().st_mtime >= _newest_input():
        return built.parent
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "tools" / "dist.py"), "--out", str(out)], check=True, timeout=900)
    return out


@pytest.fixture
def plugin_copy(dist, tmp_path):
    """dist/nomad-driver-xen in an empty plugin_dir; plugin_dir and its parent read-only."""
    parent = tmp_path / "opt-nomad"
    plugin_dir = parent / "plugins"
    plugin_dir.mkdir(parents=True)
    shutil.copy2(dist / NAME, plugin_dir / NAME)
    plugin_dir.chmod(0o555)
    parent.chmod(0o555)
    yield plugin_dir / NAME
    parent.chmod(0o755)
    plugin_dir.chmod(0o755)


def build_id(single_file: Path) -> str:
    with zipfile.ZipFile(single_file) as z:
        return json.loads(z.read("environment.json"))["build_id"]


@pytest.fixture
def home_cache(plugin_copy):
    """Where the plugin unpacks itself with HOME unset: the passwd home's .shiv. Removed afterwards
    when this test put it there."""
    import pwd

    unpacked = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".shiv" / f"{NAME}_{build_id(plugin_copy)}"
    existed = unpacked.exists()
    yield unpacked
    if not existed:
        shutil.rmtree(unpacked, ignore_errors=True)
        for leftover in (unpacked.parent / f".{unpacked.name}_lock", unpacked.parent / f"{unpacked.name}.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()


def test_make_dist_artifacts(dist):
    single = dist / NAME
    assert os.access(single, os.X_OK)
    assert single.read_bytes().startswith(b"#!/usr/bin/python3 -sE\n")
    with zipfile.ZipFile(single) as z:
        names = set(z.namelist())
        assert {"__main__.py", "environment.json", "_bootstrap/__init__.py"} <= names
        assert "site-packages/xen_driver/cli.py" in names
        assert "site-packages/xen_driver/_build.py" in names
        # bytecode inside (unchecked-hash pycs): nothing compiled on a small dom0's first start
        py = {n for n in names if n.startswith("site-packages/") and n.endswith(".py")}
        for n in py:
            d, f = n.rsplit("/", 1)
            assert f"{d}/__pycache__/{f[:-3]}.cpython-311.pyc" in names, n
        pyc = z.read("site-packages/xen_driver/__pycache__/cli.cpython-311.pyc")
        assert int.from_bytes(pyc[4:8], "little") == 0b01  # PEP 552: hash-based, not checked
        # binary wheels for CPython 3.11 on x86_64 Linux, not whatever the build host had
        assert any(re.match(r"site-packages/grpc/_cython/cygrpc\.cpython-311-x86_64-linux-gnu\.so$", n) for n in names)
        assert not any(n.startswith("site-packages/libvirt") for n in names)  # Debian's python3-libvirt instead
        assert b"SHIV_ROOT" in z.read("__main__.py")  # ours, choosing where to unpack

    wheel = dist / f"nomad_driver_xen-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        assert "xen_driver/_build.py" in z.namelist()
    sdist = dist / f"nomad_driver_xen-{__version__}.tar.gz"
    with tarfile.open(sdist) as t:
        assert f"nomad_driver_xen-{__version__}/xen_driver/cli.py" in t.getnames()

    deb = dist / f"{NAME}_{__version__}_amd64.deb"

    def field(name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True, text=True
        ).stdout.strip()

    assert field("Package") == NAME and field("Version") == __version__ and field("Architecture") == "amd64"
    assert "python3 (>= 3.11)" in field("Depends")
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        member = t.getmember(f"./opt/nomad/plugins/{NAME}")
        assert member.mode & 0o111 and member.uname == "root"
        assert t.extractfile(member).read() == single.read_bytes()
        readme = t.extractfile(f"./usr/share/doc/{NAME}/README.Debian").read().decode()
        assert f'plugin "{NAME}"' in readme and "python3-libvirt" in readme
        assert f"./usr/share/doc/{NAME}/examples/xen-client.hcl" in t.getnames()

    sums = (dist / "SHA256SUMS").read_text()
    for artifact in (single, wheel, sdist, deb):
        assert artifact.name in sums


def test_version_from_a_read_only_plugin_dir_with_a_clean_environment(plugin_copy, home_cache):
    r = subprocess.run(
        ["env", "-i", f"PATH={CLEAN_PATH}", str(plugin_copy), "version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    assert VERSION_RE.match(r.stdout), r.stdout
    assert home_cache.joinpath("site-packages", "xen_driver", "cli.py").is_file()  # unpacked once, there
    assert os.listdir(plugin_copy.parent) == [NAME]  # nothing written next to it


def test_refuses_without_nomad(plugin_copy, home_cache):
    r = subprocess.run(
        ["env", "-i", f"PATH={CLEAN_PATH}", str(plugin_copy)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and r.stdout == ""
    assert "This binary is a plugin" in r.stderr


class Started:
    """The single file started as go-plugin starts a plugin, with nothing else in its environment."""

    def __init__(self, path: Path, tmpdir: Path, **extra: str) -> None:
        env = {
            "PATH": CLEAN_PATH,
            "NOMAD_PLUGIN_MAGIC_COOKIE": NOMAD_HANDSHAKE.cookie_value,
            "PLUGIN_PROTOCOL_VERSIONS": "2",
            "PLUGIN_MIN_PORT": "10000",
            "PLUGIN_MAX_PORT": "25000",
            "TMPDIR": str(tmpdir),
            **extra,
        }
        self.proc = subprocess.Popen([str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        self.line = self.proc.stdout.readline().decode()
        m = HANDSHAKE_RE.match(self.line)
        if not m:
            self.kill()
            raise AssertionError(f"bad handshake line {self.line!r}; stderr: {self.proc.stderr.read().decode()}")
        self.channel = grpc.insecure_channel("unix:" + m.group(1))

    def mapped_files(self) -> str:
        return Path(f"/proc/{self.proc.pid}/maps").read_text()

    def shutdown(self) -> int:
        controller_pb2_grpc.GRPCControllerStub(self.channel).Shutdown(controller_pb2.Empty(), timeout=10)
        self.channel.close()
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def started(plugin_copy, tmp_path):
    procs: list[Started] = []

    def start(**extra: str) -> Started:
        tmpdir = tmp_path / f"tmp{len(procs)}"
        tmpdir.mkdir()
        procs.append(Started(plugin_copy, tmpdir, **extra))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()


def test_handshake_from_a_read_only_plugin_dir_with_a_clean_environment(plugin_copy, home_cache, started):
    plugin = started()
    # grpc's binary module comes from the file itself, unpacked once below the (unset) HOME's passwd entry
    assert str(home_cache / "site-packages" / "grpc" / "_cython") in plugin.mapped_files()
    base_pb2_grpc.BasePluginStub(plugin.channel).SetConfig(
        base_pb2.SetConfigRequest(msgpack_config=cty.encode({}, PLUGIN_SCHEMA.cty_type), plugin_api_version="0.1.0"),
        timeout=30,
    )
    info = base_pb2_grpc.BasePluginStub(plugin.channel).PluginInfo(base_pb2.PluginInfoRequest(), timeout=30)
    assert info.name == "xen" and info.plugin_version == __version__
    assert plugin.shutdown() == 0
    assert os.listdir(plugin_copy.parent) == [NAME]


def test_unpacks_into_a_private_temporary_directory_when_home_is_unusable(plugin_copy, started, tmp_path):
    # HOME below a regular file: ~/.shiv can never be created (as a read-only home for root)
    plugin = started(HOME="/dev/null/home")
    private = tmp_path / "tmp0" / f"nomad-driver-xen-{os.getuid()}"
    assert (os.stat(private).st_mode & 0o777) == 0o700
    assert str(private / "shiv" / f"{NAME}_{build_id(plugin_copy)}" / "site-packages" / "grpc") in plugin.mapped_files()
    assert plugin.shutdown() == 0


XL_INFO = (
    "xen_version            : 4.17.5\nxen_scheduler          : credit2\nfree_memory            : 1843\n"
    "total_memory           : 3071\nnr_cpus                : 2\n"
)


def test_libvirt_backend_without_the_binding_names_the_debian_package(plugin_copy, home_cache, started, tmp_path):
    has_binding = subprocess.run(["/usr/bin/python3", "-c", "import libvirt"], capture_output=True).returncode == 0
    if has_binding:
        pytest.skip("this host's python3 has python3-libvirt")
    xl = tmp_path / "xl"  # a Xen host as far as the toolstack goes
    xl.write_text(f"#!/bin/sh\ncat <<'EOF'\n{XL_INFO}EOF\n")
    xl.chmod(0o755)
    plugin = started()
    config = {"backend": "libvirt", "xl_path": str(xl)}
    base_pb2_grpc.BasePluginStub(plugin.channel).SetConfig(
        base_pb2.SetConfigRequest(
            msgpack_config=cty.encode(config, PLUGIN_SCHEMA.cty_type), plugin_api_version="0.1.0"
        ),
        timeout=30,
    )
    stream = driver_pb2_grpc.DriverStub(plugin.channel).Fingerprint(driver_pb2.FingerprintRequest(), timeout=60)
    first = next(stream)
    stream.cancel()
    assert "python3-libvirt" in first.health_description, first.health_description
    assert plugin.shutdown() == 0
