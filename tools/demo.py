"""The demo: a real Nomad agent on a real Xen host runs ``nomad-jobs/clickos.nomad``.

Boots the Xen testbed (Xen 4.17 + Debian dom0 under QEMU), installs the pinned Nomad and our
plugin in dom0 exactly as an operator would, then:

  nomad job run nomad-jobs/clickos.nomad
  nomad alloc logs <alloc> firewall        (the guest console)
  nomad alloc status <alloc>               (with the spawn/boot timing event)
  nomad job stop clickos

and prints the driver's phase breakdown beside a raw ``xl create`` of the same guest, measured
in the same run.  Results also go to ``bench/results/demo.json``.

Run with ``make demo`` (which builds everything it needs first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.nomad import DATA_DIR, IMAGE_DIR, NomadDom0  # noqa: E402
from testbed.vm import Testbed, locate_images  # noqa: E402

PHASES = ("validate", "render", "domain_build", "clickos_push", "unpause", "boot", "total")

RAW_SCRIPT = r"""
import subprocess, sys, time, os
name, cfg, marker, click = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4]
log = f"/var/log/xen/console/guest-{name}.log"
t0 = time.monotonic()
subprocess.run(["xl", "create", "-p", "-e", cfg], check=True, capture_output=True)
t1 = time.monotonic()
domid = subprocess.run(["xl", "domid", name], check=True, capture_output=True, text=True).stdout.strip()
base = f"/local/domain/{domid}/clickos/0"
data = open(click, "rb").read()
subprocess.run(["xenstore-write", f"{base}/config/0", data.decode(), f"{base}/config_name", "firewall.click",
                f"{base}/status", "Running"], check=True)
t2 = time.monotonic()
subprocess.run(["xl", "unpause", name], check=True)
t3 = time.monotonic()
while True:
    try:
        if marker in open(log, "rb").read():
            break
    except FileNotFoundError:
        pass
    if time.monotonic() - t3 > 120:
        sys.exit("no boot marker")
    time.sleep(0.005)
t4 = time.monotonic()
subprocess.run(["xl", "destroy", name], check=True)
os.unlink(log)
print(f"{(t1-t0)*1000:.1f} {(t2-t1)*1000:.1f} {(t3-t2)*1000:.1f} {(t4-t3)*1000:.1f} {(t4-t0)*1000:.1f}")
"""


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(cmd: str, out: str) -> None:
    print(f"$ {cmd}")
    print(out.rstrip())


def raw_xl_create(tb: Testbed, run_dir: Path, click_file: str, runs: int) -> list[list[float]]:
    """Create the same guest as clickos.nomad by hand (no Nomad, no plugin), ``runs`` times."""
    (run_dir / "raw.py").write_text(RAW_SCRIPT)
    results = []
    for i in range(runs):
        name = f"raw-clickos-{i}"
        cfg = (
            f'name = "{name}"\ntype = "pv"\nkernel = "{IMAGE_DIR}/ndx-unikernel"\nmemory = 16\nvcpus = 1\n'
            f'extra = "clickos tick=5"\nvif = [ "bridge=xenbr0" ]\n'
            'on_poweroff = "preserve"\non_reboot = "preserve"\non_crash = "preserve"\n'
        )
        tb.write_file(f"/host/{name}.cfg", cfg)
        out = tb.run(
            ["python3", "/host/raw.py", name, f"/host/{name}.cfg", "NDX-GUEST READY", click_file], timeout=300
        ).stdout
        results.append([float(x) for x in out.split()])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kvm", action="store_true", help="boot the testbed with hardware KVM (not under TCG)")
    parser.add_argument("--raw-runs", type=int, default=3, help="raw `xl create` runs to compare with (median)")
    args = parser.parse_args()

    run_dir = REPO / ".run" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    banner("Building / locating the Xen testbed images")
    images = locate_images(build=True, log_path=run_dir / "build.log")
    tb = Testbed(image_dir=images, scratch_dir=run_dir, forwards=(4646,), kvm=args.kvm)
    banner("Booting Xen 4.17 + Debian dom0 under QEMU" + (" (KVM)" if args.kvm else " (TCG, software emulation)"))
    t0 = time.monotonic()
    with tb:
        print(f"dom0 toolstack up after {tb.boot_timings.get('toolstack')} s; serial console: {tb.serial_log}")
        unikernel = REPO / "guests" / "build" / "ndx-unikernel"
        tb.write_file("/var/lib/ndx-demo/ndx-unikernel", unikernel.read_bytes())
        nomad = NomadDom0(tb, run_dir, "/var/lib/ndx-demo/ndx-unikernel")

        banner("Installing Nomad and nomad-driver-xen in dom0, starting the agent")
        nomad.install()
        show("ls /opt/nomad/plugins", tb.run(["ls", "-l", "/opt/nomad/plugins"]).stdout)
        nomad.start()
        node = nomad.node()
        xen = node["Drivers"]["xen"]
        print(
            f"node {node['Name']}: driver xen detected={xen['Detected']} healthy={xen['Healthy']}"
            f" ({xen['HealthDescription']}); Xen {node['Attributes'].get('driver.xen.version')}"
        )

        banner("nomad job run nomad-jobs/clickos.nomad")
        run = nomad.cli("job", "run", "/src/nomad-jobs/clickos.nomad", timeout=300, check=False)
        show("nomad job run nomad-jobs/clickos.nomad", run.stdout + run.stderr)
        if run.rc not in (0, 2):  # 2: a placement had to wait (the allocation below says how it ended)
            raise SystemExit(f"nomad job run failed (exit {run.rc})")
        alloc = nomad.wait_alloc("clickos", {"running", "failed"})
        alloc_id = alloc["ID"]
        if alloc["ClientStatus"] != "running":
            print(json.dumps(nomad.task_events(alloc, "firewall"), indent=2))
            return 1
        rendered = tb.read_file(f"{DATA_DIR}/alloc/{alloc_id}/firewall/local/firewall.click")
        echo = f"config_len={len(rendered)} config_crc32={zlib.crc32(rendered):08x}"
        nomad.wait_until(lambda: echo in nomad.cli("alloc", "logs", alloc_id, "firewall").stdout, 60, "the Click echo")
        show(f"nomad alloc logs {alloc_id[:8]} firewall", nomad.cli("alloc", "logs", alloc_id, "firewall").stdout)
        print(f"(the guest echoed the Click configuration Nomad's template rendered: {echo})")
        show(f"nomad alloc status {alloc_id[:8]}", nomad.cli("alloc", "status", alloc_id).stdout)
        show("xl list", tb.run(["xl", "list"]).stdout)

        alloc = nomad.alloc(alloc_id)
        event = next(e for e in nomad.task_events(alloc, "firewall") if "boot_ms" in (e.get("Details") or {}))
        driver = {p: float(event["Details"][f"{p}_ms"]) for p in PHASES if f"{p}_ms" in event["Details"]}

        banner("nomad job stop clickos")
        show("nomad job stop clickos", nomad.cli("job", "stop", "clickos", timeout=300).stdout)
        nomad.wait_alloc("clickos", {"complete", "failed"}, timeout=120)
        show("xl list", tb.run(["xl", "list"]).stdout)

        banner(f"Raw `xl create` of the same guest, {args.raw_runs}x (no Nomad, no plugin)")
        raw_runs = raw_xl_create(
            tb, run_dir, f"{DATA_DIR}/alloc/{alloc_id}/firewall/local/firewall.click", args.raw_runs
        )
        nomad.stop()
    raw = [statistics.median(col) for col in zip(*raw_runs, strict=True)]
    raw_map = {"domain_build": raw[0], "clickos_push": raw[1], "unpause": raw[2], "boot": raw[3], "total": raw[4]}

    banner("Instantiation time breakdown (ms)")
    print(f"{'phase':<14}{'nomad-driver-xen':>18}{'raw xl (median)':>18}")
    for phase in PHASES:
        if phase in driver or phase in raw_map:
            d = f"{driver[phase]:.1f}" if phase in driver else "-"
            r = f"{raw_map[phase]:.1f}" if phase in raw_map else "-"
            print(f"{phase:<14}{d:>18}{r:>18}")
    overhead = driver["total"] - raw_map["total"]
    print(
        f"\ndriver total {driver['total']:.1f} ms vs raw {raw_map['total']:.1f} ms: "
        f"overhead {overhead:+.1f} ms ({overhead / raw_map['total'] * 100:+.1f} %)"
    )
    print(
        "(domain_build = `xl create -p`; boot = unpause until the guest prints its boot marker; "
        f"{'KVM' if args.kvm else 'TCG software emulation: expect bare-metal Xen to be ~50-100x faster'})"
    )
    out = REPO / "bench" / "results" / "demo.json"
    out.write_text(
        json.dumps(
            {
                "driver_ms": driver,
                "raw_xl_ms": raw_map,
                "raw_runs_ms": raw_runs,
                "accel": "kvm" if args.kvm else "tcg",
                "wall_s": round(time.monotonic() - t0, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
