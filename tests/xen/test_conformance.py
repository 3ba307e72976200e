"""Driver conformance, dom0 part: the Go suite of tests/conformance/ run inside the Xen testbed
against the plugin installed there, with real guests (issue: driver conformance).

The suite is compiled on the host (static, CGO_ENABLED=0), copied to the testbed's shared /host
directory and run in dom0 with ``-xen``, so next to the host checks (which run again here with
a healthy fingerprint) it runs the TestXen* lifecycle tests: start/inspect/stats/stop/wait/
destroy, self-terminating and crashing guests, forced stop, signals, concurrent waits,
recovery after a plugin crash and a plugin shutdown that leaves guests running. Each Go test
is one pytest item, so ``pytest -v`` lists them with their result. The host tests that only
exercise plugin loading (many launches, nothing Xen-specific) are left to the host part.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import pytest

from tests.conformance import gotest  # shared with the other conformance wrapper

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.xen, pytest.mark.slow]

BASE = "/var/lib/ndx-conformance"  # plugin dir and driver state of these tests (dom0)
LAUNCHER = f"{BASE}/plugins/nomad-driver-xen"
IMAGE_DIR = "/var/lib/nomad-driver-xen/images"  # where nomad-jobs/*.nomad take their kernel from
PYCACHE = f"{BASE}/pycache"


def _domains(testbed) -> set[str]:
    out = testbed.run(["xl", "list"], timeout=60).stdout.splitlines()[1:]
    return {line.split()[0] for line in out if line.strip()} - {"Domain-0"}


@pytest.fixture(scope="module")
def dom0_run(testbed, testbed_run_dir: Path, unikernel: str, testbed_report: list[str], request):
    try:
        binary = gotest.build()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    shutil.copy2(binary, testbed_run_dir / "conformance.test")

    # The operator's install: the example jobs' kernel into the image dir, our launcher into a
    # plugin dir of its own (the loader scans the whole directory).
    testbed.run(
        f"set -e; mkdir -p {IMAGE_DIR} {BASE}/plugins {BASE}/state;"
        f" install -m 0644 {shlex.quote(unikernel)} {IMAGE_DIR}/ndx-unikernel",
        timeout=120,
    )
    testbed.run(
        ["python3", "-m", "xen_driver", "install", "--plugin-dir", f"{BASE}/plugins", "--name", "nomad-driver-xen"],
        env={"PYTHONPATH": "/src"},
        timeout=120,
    )
    # /src is read-only, so every plugin launch would compile the package again (tens of seconds
    # under TCG, close to go-plugin's 60 s start timeout). Compile once into a cache of ours; the
    # launched plugins inherit PYTHONPYCACHEPREFIX from the suite.
    testbed.run(
        "python3 -c 'import xen_driver.cli, xen_driver.nomad.service, xen_driver.driver.lifecycle,"
        " xen_driver.plugin.server, grpc'",
        env={"PYTHONPATH": "/src", "PYTHONPYCACHEPREFIX": PYCACHE},
        timeout=600,
    )
    before = _domains(testbed)

    plugin_config = {"state_dir": f"{BASE}/state"}
    args = [
        "/host/conformance.test",
        "-test.v",
        "-test.timeout",
        "25m",
        "-test.run",
        gotest.run_pattern(gotest.DOM0_TESTS),
        "-plugin",
        LAUNCHER,
        "-repo",
        "/src",
        "-nomad-version",
        gotest.nomad_version(),
        "-xen",
        "-expect-health",
        "healthy",
        "-plugin-config",
        json.dumps(plugin_config),
        "-log-dir",
        "/host/conformance-logs",
    ]
    started = time.monotonic()
    result = testbed.run(
        f"cd {BASE} && exec {shlex.join(args)} >/host/conformance.out 2>/host/conformance.err",
        env={"PYTHONPYCACHEPREFIX": PYCACHE},
        timeout=1800,
        check=False,
    )
    seconds = time.monotonic() - started
    output = (testbed_run_dir / "conformance.out").read_text(errors="replace")
    run = gotest.Run.parse(output, result.rc, seconds)
    run.leftover_domains = sorted(_domains(testbed) - before)

    names = gotest.DOM0_TESTS
    title = (
        f"conformance suite in dom0 ({seconds:.1f}s; output: {testbed_run_dir / 'conformance.out'},"
        f" logs: {testbed_run_dir / 'conformance-logs'}):"
    )
    testbed_report.append(title)
    testbed_report.extend(run.summary(names))
    gotest.report(request.config, title, run.summary(names))
    return run


@pytest.mark.parametrize("name", gotest.DOM0_TESTS)
def test_conformance_in_dom0(dom0_run, name: str):
    dom0_run.check(name)


def test_dom0_run_ended_cleanly(dom0_run):
    """No panic or suite timeout, exit status matching the results, and no guest left behind."""
    assert "panic:" not in dom0_run.output, dom0_run.output[-4000:]
    failed = [n for n, o in dom0_run.results.items() if o.status == "FAIL"]
    assert (dom0_run.returncode == 0) == (not failed), (dom0_run.returncode, failed)
    assert dom0_run.leftover_domains == [], f"domains left behind by the suite: {dom0_run.leftover_domains}"
