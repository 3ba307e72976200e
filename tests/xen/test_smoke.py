"""Smoke test of the real-Xen testbed with our unikernel: everything the driver relies on, shown
with plain xl / xenstore tools in dom0.

The tests run in file order and share one guest (``ndx-smoke``): boot, console banner, ClickOS
configuration round trip through XenStore, xl shutdown; then a guest that crashes; then an empty
host. The timings seen are printed at the end and written to bench/results/testbed.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import zlib
from pathlib import Path

import pytest

from testbed.vm import Testbed

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "testbed.json"
GUEST = "ndx-smoke"
CRASHER = "ndx-smoke-crash"
NETGUEST = "ndx-smoke-vif"
CONSOLE = "/var/log/xen/console/guest-{}.log"
XL_LOG = "/var/log/xen/xl-{}.log"  # written by the xl monitor process of each domain
CHUNK = 992  # cosmos' chunk size for clickos/<router>/config/<n>

# Runs in dom0: xl create, then poll the console log for the banner and the READY marker.
CREATE_AND_WATCH = r"""
import json, subprocess, sys, time
cfg, log, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
t0 = time.monotonic()
proc = subprocess.run(["xl", "create", cfg], capture_output=True, text=True)
t1 = time.monotonic()
if proc.returncode != 0:
    print(json.dumps({"error": "xl create exited %d: %s" % (proc.returncode, proc.stderr)}))
    sys.exit(0)
seen = {}
while time.monotonic() - t0 < timeout and "ready" not in seen:
    try:
        text = open(log, "rb").read()
    except FileNotFoundError:
        text = b""
    now = time.monotonic() - t0
    if b"ndx-unikernel " in text and b" booting domid=" in text:
        seen.setdefault("banner", now)
    if b"NDX-GUEST READY" in text:
        seen.setdefault("ready", now)
    time.sleep(0.01)
print(json.dumps({"xl_create": t1 - t0, "create_to_banner": seen.get("banner"),
                  "create_to_ready": seen.get("ready")}))
"""

# Runs in dom0: write the given XenStore nodes (in order, one transaction-less write each, the
# status node last) and wait until the guest's console shows the expected line.
WRITE_AND_WATCH = r"""
import json, re, subprocess, sys, time
log, pattern, timeout = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
nodes = json.loads(sys.stdin.read())
start = len(open(log, "rb").read())
t0 = time.monotonic()
for path, value in nodes:
    subprocess.run(["xenstore-write", path, value], check=True)
t1 = time.monotonic()
while time.monotonic() - t0 < timeout:
    m = re.search(pattern, open(log, "rb").read()[start:])
    if m:
        print(json.dumps({"write": t1 - t0, "write_to_echo": time.monotonic() - t0,
                          "line": m.group(0).decode()}))
        sys.exit(0)
    time.sleep(0.01)
print(json.dumps({"error": "no console line matching %r" % pattern.decode()}))
"""

CLICK_CONFIG = (
    "\n".join(
        ["// ndx smoke test: a Click configuration longer than one XenStore chunk"]
        + [f"src{i} :: InfiniteSource(LENGTH 64, LIMIT {i + 1}) -> Counter -> Discard;" for i in range(40)]
    )
    + "\n"
)


@pytest.fixture(scope="module")
def timings(testbed: Testbed, testbed_report: list[str]):
    """Timings the smoke test sees; printed and written to bench/results/testbed.json at the end."""
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    seen: dict[str, float] = {}
    yield seen
    seen["smoke_tests_total"] = time.monotonic() - started
    boot = testbed.boot_timings
    manifest = _manifest(testbed)
    result = {
        "what": "real-Xen testbed smoke test (tests/xen/test_smoke.py), seconds",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # other work on the host slows an emulated machine down: the load says how busy it was
        "machine": {
            "cpus": os.cpu_count(),
            "accel": "kvm" if testbed.kvm else "tcg",
            "python": platform.python_version(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "image": {k: manifest.get(k) for k in ("key", "xen_version", "dom0_kernel")},
        "boot": {
            "qemu_to_xen": boot.get("xen"),
            "qemu_to_dom0_kernel": boot.get("dom0_kernel"),
            "qemu_to_dom0_init": boot.get("dom0_init"),
            "qemu_to_toolstack": boot.get("toolstack"),
            "qemu_to_agent": boot.get("agent"),
        },
        "guest": {k: round(v, 3) for k, v in seen.items()},
        "complete": all(k in seen for k in ("xl_create", "create_to_banner", "xl_shutdown", "crash_create_to_gone")),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    testbed_report.append(f"smoke test timings (s), written to {RESULTS.relative_to(REPO)}:")
    testbed_report.extend(f"  boot  {k:<24} {v}" for k, v in result["boot"].items())
    testbed_report.extend(f"  guest {k:<24} {v}" for k, v in result["guest"].items())


def _manifest(tb: Testbed) -> dict:
    try:
        return json.loads((Path(tb.image_dir) / "manifest.json").read_text())
    except (OSError, TypeError, ValueError):
        return {}


def _xl_cfg(name: str, kernel: str, extra: str, **more: str) -> str:
    lines = {
        "name": f'"{name}"',
        "type": '"pv"',
        "kernel": f'"{kernel}"',
        "memory": "16",
        "vcpus": "1",
        "extra": f'"{extra}"',
        "on_poweroff": '"destroy"',
        "on_reboot": '"destroy"',
        "on_crash": '"destroy"',
        **more,
    }
    return "".join(f"{k} = {v}\n" for k, v in lines.items())


def _create(tb: Testbed, name: str, cfg: str, timeout: float = 60) -> dict:
    path = f"/var/lib/ndx-tests/{name}.cfg"
    tb.write_file(path, cfg)
    r = tb.run(["python3", "-c", CREATE_AND_WATCH, path, CONSOLE.format(name), str(timeout)], timeout=timeout + 30)
    out = json.loads(r.stdout)
    assert "error" not in out, f"step 'xl create {name}': {out['error']} (config: dom0:{path})"
    out["timeout"] = timeout
    return out


def _no_banner(tb: Testbed, name: str, seen: dict, what: str = "banner") -> str:
    return (
        f"step 'guest {what}': guest {name} printed no {what} within {seen['timeout']} s of"
        f" xl create; console log dom0:{CONSOLE.format(name)}, xl log dom0:{XL_LOG.format(name)},"
        f" (both saved under {Path(tb.serial_log).parent}/dom0-logs/ at the end of the session),"
        f" serial log {tb.serial_log}; console so far:\n{tb.guest_console(name)[-2000:]}"
    )


def _domains(tb: Testbed) -> list[str]:
    lines = tb.run(["xl", "list"]).stdout.strip().splitlines()[1:]
    return [line.split()[0] for line in lines]


def _wait_gone(tb: Testbed, name: str, timeout: float = 30) -> float:
    t0 = time.monotonic()
    while name in _domains(tb):
        assert time.monotonic() - t0 < timeout, f"domain {name} still there after {timeout} s"
        time.sleep(0.2)
    return time.monotonic() - t0


def _xl_log(tb: Testbed, name: str) -> str:
    r = tb.run(["cat", XL_LOG.format(name)], check=False)
    return r.stdout


# ------------------------------------------------------------------------------------------------


def test_xl_info_reports_the_hypervisor(testbed: Testbed, timings: dict):
    info = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in testbed.run(["xl", "info"]).stdout.splitlines())
        if _
    )
    assert info["xen_major"] == "4" and info["xen_minor"] == "17", info
    built = _manifest(testbed).get("xen_version", "")
    running = f"{info['xen_major']}.{info['xen_minor']}{info['xen_extra']}"
    assert built.startswith(running.split("-")[0]), (built, running)
    assert "pv" in info["virt_caps"].split(), info["virt_caps"]
    # the toolstack daemons are up, the tools are there; dom0 is the only domain
    procs = testbed.run(["ps", "-eo", "comm="]).stdout.split()
    assert "xenstored" in procs and "xenconsoled" in procs, procs
    assert testbed.run(["xenstore-read", "/local/domain/0/name"]).stdout.strip() == "Domain-0"
    assert "Domain-0" in testbed.run(["xentop", "-b", "-i", "1"]).stdout
    assert _domains(testbed) == ["Domain-0"]
    assert testbed.boot_timings.get("toolstack"), testbed.boot_timings


def test_unikernel_boots_and_prints_banner(testbed: Testbed, unikernel: str, timings: dict):
    cfg = _xl_cfg(GUEST, unikernel, "clickos tick=2")
    seen = _create(testbed, GUEST, cfg)
    timings["xl_create"] = seen["xl_create"]
    assert seen["create_to_banner"] is not None, _no_banner(testbed, GUEST, seen)
    timings["create_to_banner"] = seen["create_to_banner"]
    timings["create_returned_to_banner"] = max(0.0, seen["create_to_banner"] - seen["xl_create"])
    assert seen["create_to_ready"] is not None, _no_banner(testbed, GUEST, seen, "READY marker")
    timings["create_to_ready"] = seen["create_to_ready"]

    domid = int(testbed.run(["xl", "domid", GUEST]).stdout)
    console = testbed.guest_console(GUEST)
    assert re.search(rf"^ndx-unikernel \S+ booting domid={domid}$", console, re.M), console


def test_clickos_config_is_echoed_by_the_guest(testbed: Testbed, timings: dict):
    domid = int(testbed.run(["xl", "domid", GUEST]).stdout)
    base = f"/local/domain/{domid}/clickos/0"
    chunks = [CLICK_CONFIG[i : i + CHUNK] for i in range(0, len(CLICK_CONFIG), CHUNK)]
    assert len(chunks) > 1
    nodes = [(f"{base}/config/{n}", chunk) for n, chunk in enumerate(chunks)]
    nodes += [(f"{base}/config_name", "smoke.click"), (f"{base}/status", "Running")]
    r = testbed.run(
        [
            "python3",
            "-c",
            WRITE_AND_WATCH,
            CONSOLE.format(GUEST),
            r"CLICKOS router=0 status=Running config_len=\d+ config_crc32=[0-9a-f]{8}",
            "20",
        ],
        input=json.dumps(nodes),
    )
    out = json.loads(r.stdout)
    assert "error" not in out, f"{out['error']}; console:\n{testbed.guest_console(GUEST)}"
    data = CLICK_CONFIG.encode()
    expected = f"config_len={len(data)} config_crc32={zlib.crc32(data):08x}"
    assert out["line"].endswith(expected), (out["line"], expected)
    timings["clickos_config_to_echo"] = out["write_to_echo"]

    r = testbed.run(
        ["python3", "-c", WRITE_AND_WATCH, CONSOLE.format(GUEST), r"CLICKOS router=0 status=Halted", "20"],
        input=json.dumps([[f"{base}/status", "Halted"]]),
    )
    out = json.loads(r.stdout)
    assert "error" not in out, f"{out['error']}; console:\n{testbed.guest_console(GUEST)}"
    timings["clickos_halt_to_echo"] = out["write_to_echo"]


def test_xl_shutdown_ends_the_guest_with_poweroff(testbed: Testbed, timings: dict):
    r = testbed.run(["xl", "shutdown", "-w", GUEST], timeout=60)
    timings["xl_shutdown"] = r.duration
    _wait_gone(testbed, GUEST)
    console = testbed.guest_console(GUEST)
    assert "NDX-GUEST shutdown requested" in console, console
    log = _xl_log(testbed, GUEST)
    assert re.search(r"Domain \d+ has shut down, reason code 0 ", log), log  # 0 = poweroff


def test_crashing_guest_ends_with_crash(testbed: Testbed, unikernel: str, timings: dict):
    seen = _create(testbed, CRASHER, _xl_cfg(CRASHER, unikernel, "crash_after=0.5"))
    assert seen["create_to_ready"] is not None, _no_banner(testbed, CRASHER, seen, "READY marker")
    t0 = time.monotonic()
    _wait_gone(testbed, CRASHER)
    timings["crash_ready_to_gone"] = time.monotonic() - t0
    timings["crash_create_to_gone"] = seen["create_to_ready"] + timings["crash_ready_to_gone"]
    log = _xl_log(testbed, CRASHER)
    assert re.search(r"Domain \d+ has shut down, reason code 3 ", log), log  # 3 = crash
    assert "NDX-GUEST crash" in testbed.guest_console(CRASHER)


def test_guest_vif_joins_the_xenbr0_bridge(testbed: Testbed, unikernel: str, timings: dict):
    seen = _create(testbed, NETGUEST, _xl_cfg(NETGUEST, unikernel, "", vif="['bridge=xenbr0']"))
    timings["xl_create_with_vif"] = seen["xl_create"]
    domid = int(testbed.run(["xl", "domid", NETGUEST]).stdout)
    # libxl ran the vif-bridge hotplug script: the backend interface is a port of xenbr0
    testbed.run(["test", "-e", f"/sys/class/net/xenbr0/brif/vif{domid}.0"])
    r = testbed.run(["xl", "destroy", NETGUEST])
    timings["xl_destroy_with_vif"] = r.duration
    _wait_gone(testbed, NETGUEST)
    testbed.run(f"for i in $(seq 50); do [ -e /sys/class/net/vif{domid}.0 ] || exit 0; sleep 0.2; done; exit 1")


LIBVIRT_CREATE = r"""
import json, sys, time, libvirt
name, kernel, log = sys.argv[1:4]
conn = libvirt.open("xen:///system")
names = sorted(d.name() for d in conn.listAllDomains())
xml = (f"<domain type='xen'><name>{name}</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>"
       f"<os><type>linux</type><kernel>{kernel}</kernel><cmdline>tick=5</cmdline></os>"
       "<on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>"
       "<devices><console type='pty'/></devices></domain>")
t0 = time.monotonic()
dom = conn.createXML(xml)
created = time.monotonic() - t0
banner = None
while time.monotonic() - t0 < 30 and banner is None:
    try:
        if b"NDX-GUEST READY" in open(log, "rb").read():
            banner = time.monotonic() - t0
    except FileNotFoundError:
        pass
    time.sleep(0.02)
dom.destroy()
print(json.dumps({"domains_before": names, "create": created, "create_to_ready": banner,
                  "type": conn.getType()}))
"""


def test_libvirt_libxl_driver_runs_the_unikernel(testbed: Testbed, unikernel: str, timings: dict):
    """The second backend's prerequisite: libvirtd's libxl driver works on this dom0."""
    t0 = time.monotonic()
    testbed.ensure_libvirtd()
    timings["libvirtd_start"] = time.monotonic() - t0
    name = "ndx-smoke-libvirt"
    r = testbed.run(["python3", "-c", LIBVIRT_CREATE, name, unikernel, CONSOLE.format(name)], timeout=90)
    out = json.loads(r.stdout)
    assert out["type"] == "Xen" and "Domain-0" in out["domains_before"], out
    assert out["create_to_ready"] is not None, testbed.guest_console(name)
    timings["libvirt_create"] = out["create"]
    _wait_gone(testbed, name)


def test_only_domain0_is_left(testbed: Testbed):
    assert _domains(testbed) == ["Domain-0"]
