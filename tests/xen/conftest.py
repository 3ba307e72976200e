"""Fixtures for tests on the real-Xen testbed (Xen 4.17 + Debian dom0 under QEMU).

One testbed is booted per pytest session, on first use, and shared by every module under
tests/xen/; it is always powered off at the end (and QEMU killed if it lingers). Nothing here
skips: when the images cannot be built or the machine cannot boot, every test that needs it fails
with the step that failed and the log to read.

Environment:
  NDX_TESTBED_KVM=1     boot with hardware KVM instead of TCG (hosts with real VMX/SVM only)
  NDX_TESTBED_IMAGES    use this image directory instead of building/finding one
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from testbed.nomad import NomadDom0
from testbed.vm import Testbed, TestbedError, locate_images

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
UNIKERNEL = REPO / "guests" / "build" / "ndx-unikernel"
DOM0_GUEST_DIR = "/var/lib/ndx-tests"

# dom0 ports reachable from the host (Testbed.host_port): Nomad's HTTP API, and one spare.
TESTBED_FORWARDS = (4646, 8080)
BOOT_TIMEOUT = 300

_run_dir = REPO / ".run" / f"xen-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
_images: Path | TestbedError | None = None
_REPORT = pytest.StashKey[list]()


def _is_ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_ours(item):
            item.add_marker(pytest.mark.xen)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find) the images before the first test starts, outside any per-test timeout:
    a cold build takes minutes; a cached one is a no-op."""
    global _images
    if session.config.option.collectonly or not any(_is_ours(i) for i in session.items):
        return
    if os.environ.get("NDX_TESTBED_IMAGES"):
        _images = Path(os.environ["NDX_TESTBED_IMAGES"])
        return
    _run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _images = locate_images(build=True, log_path=_run_dir / "build.log")
    except TestbedError as exc:
        _images = exc


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("xen testbed")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def testbed_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines to print in the terminal summary at the end of the session (timings, log paths)."""
    return request.config.stash.setdefault(_REPORT, [])


@pytest.fixture(scope="session")
def testbed_run_dir() -> Path:
    """Host directory of this session's testbed: shared as /host in dom0; serial.log, qemu.log,
    build.log live here."""
    _run_dir.mkdir(parents=True, exist_ok=True)
    return _run_dir


@pytest.fixture(scope="session")
def testbed(testbed_run_dir: Path, testbed_report: list[str]):
    """The booted testbed (testbed.vm.Testbed), shared by the whole session.

    One testbed per host at a time: Testbed.start waits on a host-wide lock until any other
    session's testbed is powered off."""
    images = _images
    if isinstance(images, TestbedError):
        pytest.fail(str(images), pytrace=False)
    yield from _booted_testbed(images, testbed_run_dir, testbed_report)


def _booted_testbed(images: Path, testbed_run_dir: Path, testbed_report: list[str]):
    tb = Testbed(
        image_dir=images,
        scratch_dir=testbed_run_dir,
        forwards=TESTBED_FORWARDS,
        kvm=os.environ.get("NDX_TESTBED_KVM") == "1",
    )
    testbed_report.append(f"run directory (dom0 /host): {testbed_run_dir}")
    try:
        tb.start(timeout=BOOT_TIMEOUT)
    except TestbedError as exc:
        tb.stop()
        pytest.fail(str(exc), pytrace=False)
    if getattr(tb, "lock_wait_s", 0) > 1:
        testbed_report.append(f"waited {tb.lock_wait_s:.0f} s for another session's testbed to finish")
    marks = tb.boot_timings
    testbed_report.append(
        f"boot: toolstack up {marks.get('toolstack')} s, agent {marks.get('agent')} s after QEMU start"
        f" ({'kvm' if tb.kvm else 'tcg'}); serial console: {tb.serial_log}"
    )
    try:
        yield tb
    finally:
        if tb.running:
            try:
                logs = tb.save_dom0_logs()
                testbed_report.append(f"dom0 logs (xen consoles, xl, hotplug, libvirtd): {logs}")
            except Exception as exc:  # the machine may be what failed
                testbed_report.append(f"dom0 logs not saved: {exc}")
        tb.stop()


@pytest.fixture(scope="module")
def backend() -> str:
    """The plugin's ``backend`` for this module's agent: ``"xl"`` unless the module parametrizes
    ``backend`` (module scope, so each backend gets its own fresh agent)."""
    return "xl"


@pytest.fixture(scope="module")
def nomad(testbed, testbed_run_dir, unikernel, backend):
    """A Nomad agent in dom0 with the example agent config (nomad-jobs/agent.hcl, its ``backend``
    set to the module's), fresh for each module (and backend) that asks for one; a module that needs
    another agent config defines its own."""
    agent = NomadDom0(testbed, testbed_run_dir, unikernel, backend=backend)
    agent.install()
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture(scope="session")
def unikernel(testbed: Testbed, testbed_run_dir: Path) -> str:
    """dom0 path of our PV unikernel (guests/build/ndx-unikernel, built if needed)."""
    log = testbed_run_dir / "guests-build.log"
    with open(log, "wb") as out:
        proc = subprocess.run(["make", "-C", str(REPO / "guests")], stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not UNIKERNEL.is_file():
        pytest.fail(
            f"testbed step 'guest build' failed: make -C guests exited {proc.returncode}"
            f" (no {UNIKERNEL.relative_to(REPO)}); log: {log}",
            pytrace=False,
        )
    path = f"{DOM0_GUEST_DIR}/ndx-unikernel"
    testbed.write_file(path, UNIKERNEL.read_bytes(), mode=0o644)
    return path
