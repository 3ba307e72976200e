"""Driver conformance, host part: Nomad's own Go code (go-plugin with Nomad's handshake, the
agent's plugin loader, its gRPC driver client and driver harness) against our installed plugin.

The Go suite lives in tests/conformance/ (see its README.md). It is compiled once into a
static test binary and run here against a launcher written by ``nomad-driver-xen install``;
every top-level Go test becomes one pytest item below, so ``pytest -v`` lists them with their
result. The lifecycle tests (TestXen*) need real guests and run in the Xen testbed
(tests/xen/test_conformance.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conformance import gotest  # shared with the other conformance wrapper

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.slow
LAUNCHER = "nomad-driver-xen"


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return gotest.build()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def host_run(binary: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """One run of every host test of the suite against a freshly installed launcher."""
    from xen_driver.cli import install
    from xen_driver.xen.probe import find_xl

    work = tmp_path_factory.mktemp("conformance")
    launcher = install(str(work / "plugins"), LAUNCHER)
    # Without Xen on this machine the fingerprint must say "undetected" (no xl at all).
    expect = "undetected" if find_xl("xl") is None else "any"
    plugin_config = {"state_dir": str(work / "state")}
    cmd = [
        str(binary),
        "-test.v",
        "-test.timeout",
        "10m",
        "-test.skip",
        f"^{gotest.XEN_PREFIX}",
        "-plugin",
        str(launcher),
        "-repo",
        str(REPO),
        "-nomad-version",
        gotest.nomad_version(),
        "-expect-health",
        expect,
        "-plugin-config",
        json.dumps(plugin_config),
        "-log-dir",
        str(work / "logs"),
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    run = gotest.Run.parse(proc.stdout, proc.returncode, time.monotonic() - started)
    (work / "conformance.out").write_text(proc.stdout)
    (work / "conformance.err").write_text(proc.stderr)
    gotest.report(
        request.config,
        f"conformance suite, host part ({run.seconds:.1f}s, output in {work}):",
        run.summary(gotest.HOST_TESTS),
    )
    return run


def test_go_module_pins_the_agents_nomad_version():
    """tests/conformance/go.mod requires exactly tools/nomad/VERSION, with that release's
    replaces and api commit (pin.sh --check); the text check needs no Go at all."""
    version = gotest.nomad_version()
    gomod = (REPO / "tests" / "conformance" / "go.mod").read_text()
    assert re.search(rf"^\s*github\.com/hashicorp/nomad v{re.escape(version)}$", gomod, re.M), (
        f"tests/conformance/go.mod does not require github.com/hashicorp/nomad v{version}; run tests/conformance/pin.sh"
    )
    proc = subprocess.run(
        ["bash", str(REPO / "tests" / "conformance" / "pin.sh"), "--check"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr


def test_suite_has_exactly_the_known_tests(binary: Path):
    """A Go test added without being wired into a wrapper (or one that vanished) fails here."""
    assert sorted(gotest.listed_tests(binary)) == sorted(gotest.HOST_TESTS + gotest.XEN_TESTS)


@pytest.mark.parametrize("name", gotest.HOST_TESTS)
def test_conformance(host_run, name: str):
    host_run.check(name)


def test_run_ended_cleanly(host_run):
    """No panic, no test timeout, and exit status 0 exactly when every test passed."""
    assert "panic:" not in host_run.output, host_run.output[-4000:]
    failed = [n for n, o in host_run.results.items() if o.status == "FAIL"]
    assert (host_run.returncode == 0) == (not failed), (host_run.returncode, failed)
