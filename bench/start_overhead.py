"""StartTask overhead on real Xen: the driver's start path vs a raw ``xl create -e`` of the same guest.

A fair baseline, in the same testbed run:

* **Same guest, same config.**  The raw side creates the xl.cfg the driver renders for the same
  task (:func:`xen_driver.xen.xlcfg.render` of the driver's own domain spec, only the name and
  uuid differ), with ``xl create -e`` (no monitor process), as the driver does.
* **Same way of waiting.**  One poller thread watches xenconsoled's log of the guest for the boot
  marker on both sides, every 2 ms; "running" is when it sees the marker.  For the driver,
  "returned" (when StartTask returns, after its own boot-marker wait) is reported too.
* **Alternating order** (driver first in even rounds, raw first in odd ones), so drift in the
  emulator affects both alike; the first round is a warm-up and is dropped.
* **Spread**: min, quartiles, max of each side.

Prints the table and writes ``bench/results/start_overhead.json``.  Goal: overhead <= 5 %.
Under TCG software emulation every ``xl`` invocation costs far more than on hardware.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import spread_ms  # noqa: E402
from testbed.vm import Testbed, locate_images  # noqa: E402

DOM0_SCRIPT = r"""
import asyncio, json, os, subprocess, sys, threading, time
sys.path.insert(0, "/src")
from bench.common import MarkerPoller
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
from xen_driver.driver.models import TaskSpec
from xen_driver.xen.xlcfg import render

ROUNDS = int(sys.argv[1])
IMAGES = "/var/lib/ndx-bench/images"
KERNEL = f"{IMAGES}/ndx-unikernel"
MARKER = b"NDX-GUEST READY"
CONSOLE = "/var/log/xen/console"
TASK = {"kernel": KERNEL, "cmdline": "tick=5", "boot_marker": "NDX-GUEST READY"}


def spec_for(i):
    return TaskSpec(
        id=f"b{i:07d}-0000-0000-0000-000000000000/t/{i:08d}", name="t", alloc_id=f"b{i:07d}-0000",
        task_group="g", job_name="bench", job_id="bench", namespace="default", node_id="n", node_name="n",
        env={}, memory_mb=16, memory_max_mb=0, cpu_shares=100, alloc_dir="/tmp/ndx-bench-alloc",
        stdout_path=os.devnull, stderr_path=os.devnull, config=TaskConfig.from_dict(TASK),
    )


def raw(lc, i):
    name = f"raw-bench-{i}"
    cfg = f"/tmp/{name}.cfg"
    with open(cfg, "w") as fh:
        fh.write(render(lc.domain_spec(spec_for(i), name)))  # the driver's own rendering
    poller = MarkerPoller(name)
    t0 = time.monotonic()
    subprocess.run(["xl", "create", "-e", cfg], check=True, capture_output=True)
    running = poller.wait() - t0
    subprocess.run(["xl", "destroy", name], check=True, capture_output=True)
    os.unlink(f"{CONSOLE}/guest-{name}.log")
    os.unlink(cfg)
    return running


async def driver(lc, i):
    spec = spec_for(i)
    poller = MarkerPoller(domain_name_for(spec))
    t0 = time.monotonic()
    await lc.start_task(spec)
    returned = time.monotonic() - t0
    running = poller.wait() - t0
    phases = (await lc.inspect_task(spec.id)).driver_attributes
    await lc.stop_task(spec.id, 0, "SIGKILL")
    await lc.destroy_task(spec.id, True)
    return running, returned, phases


async def main():
    cfg = PluginConfig.from_dict({"image_dirs": [IMAGES], "state_dir": "/tmp/ndx-bench-state"})
    lc = TaskLifecycle(cfg, lambda e: None)
    os.makedirs("/tmp/ndx-bench-alloc/t", exist_ok=True)
    out = {"driver_running_s": [], "driver_returned_s": [], "raw_running_s": [], "phases": []}
    try:
        for i in range(ROUNDS + 1):
            order = ("driver", "raw") if i % 2 == 0 else ("raw", "driver")
            got = {}
            for side in order:
                got[side] = await driver(lc, i) if side == "driver" else raw(lc, i)
            if i == 0:
                continue  # warm-up: caches, first xl call, first console file
            running, returned, phases = got["driver"]
            out["driver_running_s"].append(running)
            out["driver_returned_s"].append(returned)
            out["raw_running_s"].append(got["raw"])
            out["phases"].append(phases)
            print(f"round {i}/{ROUNDS}", file=sys.stderr, flush=True)
    finally:
        await lc.close()
    print(json.dumps(out))


asyncio.run(main())
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="measured rounds after one warm-up round")
    parser.add_argument("--kvm", action="store_true")
    args = parser.parse_args()
    run_dir = REPO / ".run" / f"bench-start-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    images = locate_images(build=True, log_path=run_dir / "build.log")
    with Testbed(image_dir=images, scratch_dir=run_dir, forwards=(), kvm=args.kvm) as tb:
        tb.write_file("/var/lib/ndx-bench/images/ndx-unikernel", (REPO / "guests/build/ndx-unikernel").read_bytes())
        (run_dir / "dom0_start_overhead.py").write_text(DOM0_SCRIPT)  # not bench.py: it would shadow the bench package
        load = tb.run("cat /proc/loadavg", check=False).stdout.strip()
        out = tb.run(
            ["python3", "/host/dom0_start_overhead.py", str(args.rounds)], timeout=90 * (args.rounds + 1) + 300
        ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    drv = spread_ms(data["driver_running_s"])
    ret = spread_ms(data["driver_returned_s"])
    raw = spread_ms(data["raw_running_s"])
    overhead = (drv["median"] - raw["median"]) / raw["median"] * 100
    phase_names = sorted({k for p in data["phases"] for k in p if k.startswith("timing.")})
    phase_medians = {
        k[len("timing.") :]: round(statistics.median(float(p[k]) for p in data["phases"] if k in p), 1)
        for k in phase_names
    }
    accel = "kvm" if args.kvm else "tcg"
    print(
        f"rounds: {args.rounds} measured (+1 warm-up dropped), alternating; accel: {accel}; dom0 load at start: {load}"
    )
    print("                                       median      min      p25      p75      max  (ms)")
    for label, d in (
        ("raw xl create -e -> marker seen", raw),
        ("driver StartTask -> marker seen", drv),
        ("driver StartTask -> returned", ret),
    ):
        print(f"{label:36s} {d['median']:8.1f} {d['min']:8.1f} {d['p25']:8.1f} {d['p75']:8.1f} {d['max']:8.1f}")
    print(f"overhead (marker seen, medians): {drv['median'] - raw['median']:+.1f} ms ({overhead:+.1f} %; goal <= 5 %)")
    print("driver phases (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in phase_medians.items()))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "conditions": f"Xen 4.17 testbed under QEMU ({accel}) on a 2-core host; same rendered xl.cfg, "
        "`xl create -e` on both sides, one 2 ms console poller for both, alternating order, first round dropped",
        "rounds": args.rounds,
        "accel": accel,
        "raw_xl_create_e_to_marker_ms": raw,
        "driver_start_task_to_marker_ms": drv,
        "driver_start_task_returned_ms": ret,
        "overhead_ms": round(drv["median"] - raw["median"], 1),
        "overhead_percent": round(overhead, 2),
        "goal_percent": 5,
        "driver_phase_medians_ms": phase_medians,
    }
    out_path = REPO / "bench" / "results" / "start_overhead.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
