"""dist/nomad-driver-xen on the testbed's dom0 (Debian 12, CPython 3.11, a small emulated machine):
its first start, which unpacks the bundled site-packages, and a later one, each up to the go-plugin
handshake line, from a read-only plugin directory with a clean environment; beside them, for
comparison, a later start of the launcher that ``nomad-driver-xen install`` writes (the package
from the read-only /src, the runtime wheels in dom0's site-packages, precompiled).

go-plugin gives a plugin 60 s to print that line; the first start must stay far inside it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from testbed.nomad import REPO
from xen_driver import __version__
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE

pytestmark = [pytest.mark.xen, pytest.mark.slow]

FIRST_START_LIMIT_S = 30.0  # half of go-plugin's handshake timeout

# Runs in dom0 on Debian's python3: start the plugin as go-plugin does (only PATH and the
# handshake variables), time the handshake line, end it, report as JSON.
DRIVE = r"""
import json, os, signal, subprocess, sys, time
plugin, shiv_root, tmp, cookie = sys.argv[1:5]
env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOMAD_PLUGIN_MAGIC_COOKIE": cookie,
       "PLUGIN_PROTOCOL_VERSIONS": "2", "TMPDIR": tmp}
if shiv_root:
    env["SHIV_ROOT"] = shiv_root
start = time.monotonic()
p = subprocess.Popen([plugin], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
line = p.stdout.readline().decode()
elapsed = time.monotonic() - start
maps = open("/proc/%d/maps" % p.pid).read() if p.poll() is None else ""
p.send_signal(signal.SIGKILL)
p.wait()
print(json.dumps({"line": line, "seconds": elapsed, "maps_grpc": [l.split()[-1] for l in maps.splitlines() if "cygrpc" in l][:1],
                  "stderr": p.stderr.read().decode()[-2000:]}))
"""


@pytest.fixture(scope="module")
def dom0_plugin(testbed, testbed_run_dir):
    plugin = REPO / "dist" / "nomad-driver-xen"
    if not plugin.exists():
        pytest.fail("dist/nomad-driver-xen is missing: run `make dist` (make test does)", pytrace=False)
    shutil.copy2(plugin, testbed_run_dir / "dist-nomad-driver-xen")
    testbed.run(
        "set -e; rm -rf /opt/ndx-dist; mkdir -p /opt/ndx-dist/plugins /tmp/ndx-dist;"
        " install -m 0755 /host/dist-nomad-driver-xen /opt/ndx-dist/plugins/nomad-driver-xen;"
        " chmod 0555 /opt/ndx-dist/plugins /opt/ndx-dist",
        timeout=120,
    )
    yield "/opt/ndx-dist/plugins/nomad-driver-xen"
    testbed.run("chmod -R u+w /opt/ndx-dist; rm -rf /opt/ndx-dist /tmp/ndx-dist", timeout=120, check=False)


def drive(testbed, plugin: str, shiv_root: str, tmp: str) -> dict:
    testbed.run(["mkdir", "-p", tmp], timeout=60)
    r = testbed.run(["python3", "-c", DRIVE, plugin, shiv_root, tmp, NOMAD_HANDSHAKE.cookie_value], timeout=180)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_version_in_dom0_with_a_clean_environment(testbed, dom0_plugin):
    r = testbed.run(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", dom0_plugin, "version"], timeout=120)
    assert r.stdout.startswith(f"nomad-driver-xen {__version__} (commit "), r.stdout


def test_first_and_later_start_in_dom0_stay_far_inside_the_handshake_limit(testbed, dom0_plugin, testbed_report):
    root = "/tmp/ndx-dist/shiv"  # empty: the first start unpacks
    first = drive(testbed, dom0_plugin, root, "/tmp/ndx-dist/t1")
    assert first["line"].startswith("1|2|unix|"), first
    assert first["maps_grpc"] and first["maps_grpc"][0].startswith(root + "/nomad-driver-xen_"), first
    later = drive(testbed, dom0_plugin, root, "/tmp/ndx-dist/t2")
    assert later["line"].startswith("1|2|unix|"), later

    testbed.run(
        ["python3", "-m", "xen_driver", "install", "--plugin-dir", "/tmp/ndx-dist/launcher"],
        env={"PYTHONPATH": "/src"},
        timeout=300,
    )
    drive(testbed, "/tmp/ndx-dist/launcher/nomad-driver-xen", "", "/tmp/ndx-dist/t3")  # page cache
    launcher = drive(testbed, "/tmp/ndx-dist/launcher/nomad-driver-xen", "", "/tmp/ndx-dist/t4")
    assert launcher["line"].startswith("1|2|unix|"), launcher
    testbed_report.append(
        f"dist/nomad-driver-xen in dom0: first start (unpack) {first['seconds']:.1f} s, later start"
        f" {later['seconds']:.1f} s to the handshake line (go-plugin allows 60 s); install's launcher:"
        f" {launcher['seconds']:.1f} s"
    )
    assert first["seconds"] < FIRST_START_LIMIT_S, first
    leftovers = testbed.run("pgrep -f '[/]opt/ndx-dist/plugins/nomad-driver-xen' || true", timeout=60).stdout.strip()
    assert leftovers == ""
