"""xl vs libvirt (libxl driver) on real Xen: the same ClickOS guest through both backends, phase by phase.

The analogue of the Superfluidity study's Nomad-vs-OpenStack spawn breakdown (Nova spawns Xen
guests through libvirt's libxl driver; their Nomad driver through ``xl``).  One testbed run, one
dom0 process holding two driver lifecycles (``backend = "xl"`` and ``backend = "libvirt"``, each
with its own state directory); each round starts the same ClickOS-mode task (test unikernel,
``clickos tick=5``, 16 MiB, one vif on xenbr0, a Click configuration pushed through XenStore)
once through each backend, in alternating order, and stops it again before the next start.

Per start: the driver's own breakdown (InspectTask ``timing.*``: validate, render — xl.cfg or
domain XML —, domain_build — ``xl create -e -p`` or libvirt define + start paused —,
clickos_push, unpause, boot, total), StartTask's return and the moment the boot marker
appears in xenconsoled's log (one 2 ms poller, bench/common.py).  The first round is a warm-up
and is dropped.  Medians, quartiles and extremes per phase and backend.

Prints the table and writes ``bench/results/backends.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import spread_ms  # noqa: E402
from testbed.vm import Testbed, locate_images  # noqa: E402

BACKENDS = ("xl", "libvirt")
PHASES = ("validate", "render", "domain_build", "clickos_push", "unpause", "boot", "total")

DOM0_SCRIPT = r"""
import asyncio, json, os, subprocess, sys, time
sys.path.insert(0, "/src")
from bench.common import MarkerPoller
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
from xen_driver.driver.models import TaskSpec

ROUNDS = int(sys.argv[1])
IMAGES = "/var/lib/ndx-bench/images"
KERNEL = f"{IMAGES}/ndx-unikernel"
CLICK = "in :: FromDevice(0); out :: ToDevice(0); in -> IPFilter(allow dst port 80, deny all) -> out;"
TASK = {"kernel": KERNEL, "cmdline": "clickos tick=5", "boot_marker": "NDX-GUEST READY", "boot_timeout": "120s",
        "click_config": CLICK, "vif": [{"bridge": "xenbr0"}]}
BACKENDS = ("xl", "libvirt")


def spec_for(i, backend):
    n = i * 4 + BACKENDS.index(backend) + 1
    return TaskSpec(
        id=f"b{n:07d}-0000-0000-0000-000000000000/t/{n:08d}", name="t", alloc_id=f"b{n:07d}-0000",
        task_group="g", job_name="bench", job_id="bench", namespace="default", node_id="n", node_name="n",
        env={}, memory_mb=16, memory_max_mb=0, cpu_shares=100, alloc_dir="/tmp/ndx-bench-alloc",
        stdout_path=os.devnull, stderr_path=os.devnull, config=TaskConfig.from_dict(TASK),
    )


async def start_stop(lc, i, backend):
    spec = spec_for(i, backend)
    poller = MarkerPoller(domain_name_for(spec))
    t0 = time.monotonic()
    await lc.start_task(spec)
    returned = time.monotonic() - t0
    running = poller.wait() - t0
    attrs = (await lc.inspect_task(spec.id)).driver_attributes
    await lc.stop_task(spec.id, 0, "SIGKILL")
    await lc.destroy_task(spec.id, True)
    phases = {k[len("timing."):-len("_ms")]: float(v) for k, v in attrs.items() if k.startswith("timing.")}
    return {"running_s": running, "returned_s": returned, "phases_ms": phases}


async def main():
    os.makedirs("/tmp/ndx-bench-alloc/t", exist_ok=True)
    lcs = {
        b: TaskLifecycle(
            PluginConfig.from_dict({"backend": b, "image_dirs": [IMAGES], "state_dir": f"/tmp/ndx-bench-state-{b}"}),
            lambda e: None,
        )
        for b in BACKENDS
    }
    out = {b: [] for b in BACKENDS}
    try:
        for i in range(ROUNDS + 1):
            order = BACKENDS if i % 2 == 0 else BACKENDS[::-1]
            got = {b: await start_stop(lcs[b], i, b) for b in order}
            print(f"round {i}/{ROUNDS} ({' then '.join(order)}): "
                  + ", ".join(f"{b} {got[b]['running_s']*1000:.0f} ms" for b in BACKENDS)
                  + (" (warm-up, dropped)" if i == 0 else ""), file=sys.stderr, flush=True)
            if i == 0:
                continue
            for b in BACKENDS:
                out[b].append(got[b])
    finally:
        for lc in lcs.values():
            await lc.close()
    print(json.dumps(out))


asyncio.run(main())
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="measured rounds (each backend once) after one warm-up")
    parser.add_argument("--kvm", action="store_true")
    args = parser.parse_args()
    if args.rounds < 7:
        parser.error("--rounds must be at least 7")
    run_dir = REPO / ".run" / f"bench-backends-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    images = locate_images(build=True, log_path=run_dir / "build.log")
    t0 = time.monotonic()
    with Testbed(image_dir=images, scratch_dir=run_dir, forwards=(), kvm=args.kvm) as tb:
        tb.write_file("/var/lib/ndx-bench/images/ndx-unikernel", (REPO / "guests/build/ndx-unikernel").read_bytes())
        tb.ensure_libvirtd()
        versions = tb.run(
            "dpkg-query -W -f '${Package} ${Version}\\n' libvirt-daemon xen-utils-4.17 python3-libvirt", check=False
        ).stdout.split("\n")
        (run_dir / "backends_dom0.py").write_text(DOM0_SCRIPT)  # "bench.py" would shadow the bench package
        load = tb.run("cat /proc/loadavg", check=False).stdout.strip()
        proc = tb.run(["python3", "/host/backends_dom0.py", str(args.rounds)], timeout=240 * (args.rounds + 1) + 600)
    sys.stderr.write(proc.stderr)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    accel = "kvm" if args.kvm else "tcg"
    result: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "conditions": (
            f"Xen 4.17 testbed under QEMU ({accel}, 2 vCPUs, 3 GiB) on a 2-core host; Debian dom0 (1 GiB) with "
            "libvirtd (libxl driver, xen:///system); one dom0 process with two driver lifecycles, backend xl and "
            "backend libvirt; test unikernel in ClickOS mode (clickos tick=5), 16 MiB, 1 vCPU, one vif on xenbr0, "
            "Click configuration pushed through XenStore (cosmos layout); each round one start per backend, order "
            "alternating, each guest destroyed before the next start; first round dropped; 2 ms console poller"
        ),
        "versions": [v for v in versions if v],
        "dom0_loadavg_at_start": load,
        "rounds": args.rounds,
        "accel": accel,
        "wall_s": round(time.monotonic() - t0, 1),
        "backends": {},
    }
    for b in BACKENDS:
        runs = data[b]
        result["backends"][b] = {
            "phases_ms": {
                p: spread_ms([r["phases_ms"][p] / 1000 for r in runs if p in r["phases_ms"]])
                for p in PHASES
                if any(p in r["phases_ms"] for r in runs)
            },
            "start_task_returned_ms": spread_ms([r["returned_s"] for r in runs]),
            "marker_seen_ms": spread_ms([r["running_s"] for r in runs]),
        }
    xl, lv = result["backends"]["xl"], result["backends"]["libvirt"]
    result["libvirt_over_xl_medians"] = {
        p: round(lv["phases_ms"][p]["median"] / xl["phases_ms"][p]["median"], 2)
        for p in PHASES
        if p in xl["phases_ms"] and p in lv["phases_ms"] and xl["phases_ms"][p]["median"] > 0
    }
    print(f"rounds: {args.rounds} per backend (+1 warm-up dropped), order alternating; accel {accel}; load {load}")
    print(f"{'phase (ms)':22s} {'xl median':>10s} {'xl p25-p75':>16s} {'libvirt median':>15s} {'libvirt p25-p75':>17s}")
    rows = [(p, xl["phases_ms"].get(p), lv["phases_ms"].get(p)) for p in PHASES]
    rows += [("StartTask returned", xl["start_task_returned_ms"], lv["start_task_returned_ms"])]
    rows += [("boot marker seen", xl["marker_seen_ms"], lv["marker_seen_ms"])]
    for label, a, b_ in rows:
        if a is None or b_ is None:
            continue
        print(
            f"{label:22s} {a['median']:10.1f} {a['p25']:7.1f}-{a['p75']:<8.1f} {b_['median']:15.1f}"
            f" {b_['p25']:8.1f}-{b_['p75']:<8.1f}"
        )
    out_path = REPO / "bench" / "results" / "backends.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
