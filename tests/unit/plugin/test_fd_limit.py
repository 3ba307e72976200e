"""Open files: the plugin raises its soft limit when it starts, and names exhaustion plainly.

Under the common soft limit of 1024 the plugin used to run out of descriptors at about 500 guests;
every ``xl`` call then failed and the fingerprint said "not running under the Xen hypervisor".
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from xen_driver.driver.config import PluginConfig
from xen_driver.driver.core import DriverCore
from xen_driver.driver.models import Health
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE
from xen_driver.xen import fdlimit, probe
from xen_driver.xen.probe import ProbeState, probe_host
from xen_driver.xen.xl import XlBackend

REPO = Path(__file__).resolve().parents[3]
XL_INFO = (
    "xen_version            : 4.17.5\nxen_scheduler          : credit2\nfree_memory            : 1843\n"
    "total_memory           : 3071\nnr_cpus                : 2\n"
)
FD_MESSAGE = r"out of file descriptors \((\d+) open, limit (\d+)\): raise LimitNOFILE"


def fake_xl(tmp_path: Path) -> str:
    path = tmp_path / "xl"
    path.write_text(f'#!/bin/sh\ncat <<"EOF"\n{XL_INFO}EOF\n')
    path.chmod(0o755)
    return str(path)


def _limits_of(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def _run_plugin(tmp_path: Path, soft: int, hard: int) -> tuple[tuple[int, int], str]:
    """Start the plugin under the given limits; return its limits once it serves, and its log."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_"))}
    env.update(
        NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value,
        PLUGIN_PROTOCOL_VERSIONS="2",
        TMPDIR=str(tmp),
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "xen_driver"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("1|2|unix|"), f"no handshake: {line!r} {b''.join(stderr)!r}"
        limits = _limits_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    return limits, b"".join(stderr).decode(errors="replace")


def test_plugin_raises_its_soft_open_file_limit_to_the_hard_limit(tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip(f"this machine's hard limit ({hard}) is too low to tell")
    target = 8192 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    limits, log = _run_plugin(tmp_path, 1024, target)
    assert limits == (target, target)
    assert "open-file limit is low" not in log


def test_plugin_warns_when_even_the_hard_limit_is_low(tmp_path):
    limits, log = _run_plugin(tmp_path, 256, 2048)
    assert limits == (2048, 2048)
    [record] = [json.loads(ln) for ln in log.splitlines() if "open-file limit is low" in ln]
    assert record["@level"] == "warn" and record["soft"] == 2048 and "LimitNOFILE" in record["fix"]


def test_raise_soft_limit_caps_an_infinite_hard_limit_at_nr_open(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(fdlimit.resource, "getrlimit", lambda _r: (1024, resource.RLIM_INFINITY))
    monkeypatch.setattr(fdlimit.resource, "setrlimit", lambda _r, lim: calls.append(lim))
    nr_open = tmp_path / "nr_open"
    nr_open.write_text("1048576\n")
    monkeypatch.setattr(fdlimit, "NR_OPEN", str(nr_open))
    fdlimit.raise_soft_limit()
    assert calls == [(1048576, resource.RLIM_INFINITY)]


# ------------------------------------------------------------------ exhaustion, injected


def _emfile(*_a, **_k):
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_probe_names_fd_exhaustion_not_a_missing_hypervisor(monkeypatch, tmp_path):
    xl = fake_xl(tmp_path)
    monkeypatch.setattr(probe.asyncio, "create_subprocess_exec", _emfile)
    result = asyncio.run(probe_host(xl))
    assert result.state is ProbeState.UNHEALTHY
    assert "hypervisor" not in result.reason
    assert re.match(FD_MESSAGE, result.reason), result.reason


def test_xl_call_without_descriptors_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _emfile)
    with pytest.raises(fdlimit.OutOfFileDescriptors, match=FD_MESSAGE):
        asyncio.run(XlBackend(tmp_path, xl=fake_xl(tmp_path)).list_domains())


def test_fingerprint_of_a_prober_that_ran_out_of_descriptors(tmp_path):
    async def prober(_cfg):
        raise OSError(errno.EMFILE, "Too many open files")

    fp = asyncio.run(DriverCore(PluginConfig(), prober=prober).fingerprint_once())
    assert fp.health is Health.UNHEALTHY
    assert re.match(FD_MESSAGE, fp.description), fp.description


def test_fingerprint_is_unhealthy_when_too_few_descriptors_are_left(monkeypatch, tmp_path):
    config = PluginConfig(xl_path=fake_xl(tmp_path), xenstored_socket=str(tmp_path / "xs"))
    assert asyncio.run(DriverCore(config).fingerprint_once()).health is Health.HEALTHY
    monkeypatch.setattr(fdlimit, "spare", lambda wanted: False)
    fp = asyncio.run(DriverCore(config).fingerprint_once())
    assert fp.health is Health.UNHEALTHY and "out of file descriptors" in fp.description
    assert fp.attributes["driver.xen.backend"] == "xl"


def test_exhaustion_is_found_in_the_cause_chain():
    try:
        try:
            _emfile()
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert fdlimit.exhaustion(outer) == errno.EMFILE
    assert fdlimit.exhaustion(OSError(errno.ENFILE, "x")) == errno.ENFILE
    assert fdlimit.exhaustion(OSError(errno.ENOENT, "x")) is None
    assert "fs.file-max" in fdlimit.describe(errno.ENFILE)


# ------------------------------------------------------------------ exhaustion, for real

CHILD = textwrap.dedent(
    """
    import asyncio, errno, json, os, resource, sys
    from xen_driver.driver.config import PluginConfig
    from xen_driver.driver.core import DriverCore

    xl, leave = sys.argv[1], int(sys.argv[2])

    async def main():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        for _ in range(leave):
            os.close(held.pop())
        fp = await DriverCore(PluginConfig(xl_path=xl, xenstored_socket="/nonexistent")).fingerprint_once()
        for fd in held:
            os.close(fd)
        return {"health": fp.health.name, "description": fp.description}

    print(json.dumps(asyncio.run(main())))
    """
)


@pytest.mark.parametrize("leave", [0, 16])
def test_fingerprint_under_a_real_descriptor_shortage(tmp_path, leave):
    """A process at its open-file limit (none left, or a few: enough for ``xl info`` but not for
    more guests) reports the shortage, never a missing hypervisor."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, fake_xl(tmp_path), str(leave)],
        env={**os.environ, "PYTHONPATH": str(REPO), "NOMAD_DRIVER_XEN_LOG_LEVEL": "error"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["health"] == "UNHEALTHY", result
    m = re.match(FD_MESSAGE, result["description"])
    assert m and int(m.group(2)) == 128, result
