"""StartTask overhead on real Xen: the driver's start path vs a raw ``xl create`` of the same guest.

Both are measured in the same testbed run, alternating, from "go" until the guest's console
shows its boot marker (the moment the guest is really running):

* raw:    ``xl create <cfg>`` then wait for the marker in xenconsoled's log;
* driver: ``TaskLifecycle.start_task`` (validate, render, create, console attach, unpause,
  boot-marker wait) — the code StartTask runs, without the gRPC hop.

Prints the medians and writes ``bench/results/start_overhead.json``.  Goal: overhead <= 5 %.
Under TCG software emulation every ``xl`` invocation costs far more than on hardware, so
the percentage here is an upper bound of what a real host sees.
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

from testbed.vm import Testbed, locate_images  # noqa: E402

DOM0_SCRIPT = r'''
import asyncio, json, os, subprocess, sys, time
sys.path.insert(0, "/src")
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.lifecycle import TaskLifecycle
from xen_driver.driver.models import TaskSpec

RUNS = int(sys.argv[1])
IMAGES = "/var/lib/ndx-bench/images"
KERNEL = f"{IMAGES}/ndx-unikernel"
MARKER = b"NDX-GUEST READY"
CONSOLE = "/var/log/xen/console"

def wait_marker(name, timeout=120):
    path = f"{CONSOLE}/guest-{name}.log"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if MARKER in open(path, "rb").read():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"{name}: no boot marker")

def raw(i):
    name = f"raw-bench-{i}"
    cfg = f"/tmp/{name}.cfg"
    with open(cfg, "w") as fh:
        fh.write(f'name = "{name}"\ntype = "pv"\nkernel = "{KERNEL}"\nmemory = 16\nvcpus = 1\nextra = "tick=5"\n')
    t0 = time.monotonic()
    subprocess.run(["xl", "create", cfg], check=True, capture_output=True)
    wait_marker(name)
    took = time.monotonic() - t0
    subprocess.run(["xl", "destroy", name], check=True, capture_output=True)
    os.unlink(f"{CONSOLE}/guest-{name}.log")
    return took

async def driver_runs(n):
    cfg = PluginConfig.from_dict({"image_dirs": [IMAGES], "state_dir": "/tmp/ndx-bench-state"})
    lc = TaskLifecycle(cfg, lambda e: None)
    out, phases = [], []
    os.makedirs("/tmp/ndx-bench-alloc/t", exist_ok=True)
    try:
        for i in range(n):
            spec = TaskSpec(
                id=f"b{i:07d}-0000-0000-0000-000000000000/t/{i:08d}", name="t", alloc_id=f"b{i:07d}-0000",
                task_group="g", job_name="bench", job_id="bench", namespace="default", node_id="n", node_name="n",
                env={}, memory_mb=16, memory_max_mb=0, cpu_shares=100, alloc_dir="/tmp/ndx-bench-alloc",
                stdout_path=os.devnull, stderr_path=os.devnull,
                config=TaskConfig.from_dict({"kernel": KERNEL, "cmdline": "tick=5", "boot_marker": "NDX-GUEST READY"}),
            )
            t0 = time.monotonic()
            await lc.start_task(spec)
            out.append(time.monotonic() - t0)
            phases.append((await lc.inspect_task(spec.id)).driver_attributes)
            await lc.stop_task(spec.id, 0, "SIGKILL")
            await lc.destroy_task(spec.id, True)
            RAW.append(raw(i))  # alternate, so drift in the emulator affects both alike
    finally:
        await lc.close()
    return out, phases

RAW = []
drv, phases = asyncio.run(driver_runs(RUNS))
print(json.dumps({"driver_s": drv, "raw_s": RAW, "phases": phases}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kvm", action="store_true")
    args = parser.parse_args()
    run_dir = REPO / ".run" / f"bench-start-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    images = locate_images(build=True, log_path=run_dir / "build.log")
    with Testbed(image_dir=images, scratch_dir=run_dir, forwards=(), kvm=args.kvm) as tb:
        tb.write_file("/var/lib/ndx-bench/images/ndx-unikernel", (REPO / "guests/build/ndx-unikernel").read_bytes())
        (run_dir / "bench.py").write_text(DOM0_SCRIPT)
        out = tb.run(["python3", "/host/bench.py", str(args.runs)], timeout=60 * args.runs + 300).stdout
    data = json.loads(out.strip().splitlines()[-1])
    drv = statistics.median(data["driver_s"]) * 1000
    raw = statistics.median(data["raw_s"]) * 1000
    overhead = (drv - raw) / raw * 100
    phase_names = sorted({k for p in data["phases"] for k in p if k.startswith("timing.")})
    phase_medians = {k[len("timing."):]: statistics.median(float(p[k]) for p in data["phases"] if k in p) for k in phase_names}
    print(f"runs: {args.runs} each, alternating; accel: {'kvm' if args.kvm else 'tcg'}")
    print(f"raw `xl create` -> boot marker:   median {raw:8.1f} ms  ({', '.join(f'{x*1000:.0f}' for x in data['raw_s'])})")
    print(f"driver StartTask -> boot marker:  median {drv:8.1f} ms  ({', '.join(f'{x*1000:.0f}' for x in data['driver_s'])})")
    print(f"overhead: {drv - raw:+.1f} ms ({overhead:+.1f} %; goal <= 5 %)")
    print("driver phases (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in phase_medians.items()))
    result = {
        "runs": args.runs,
        "accel": "kvm" if args.kvm else "tcg",
        "raw_xl_create_to_marker_ms": {"median": round(raw, 1), "samples": [round(x * 1000, 1) for x in data["raw_s"]]},
        "driver_start_task_to_marker_ms": {"median": round(drv, 1), "samples": [round(x * 1000, 1) for x in data["driver_s"]]},
        "overhead_ms": round(drv - raw, 1),
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
