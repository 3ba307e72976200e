"""Warm pool on real Xen: a pool hit vs a cold start by the driver vs raw ``xl create -e`` + unpause.

Four ways to get the same ClickOS-mode guest (test unikernel, ``clickos tick=5``, 16 MiB, one
vif on xenbr0) running, measured in one testbed run:

* **pool hit**: StartTask of a task with ``pool = "clickos"`` while a pre-built, paused member
  is ready (claim, Click configuration pushed through XenStore, unpause, boot marker);
* **booted hit**: StartTask with ``pool = "booted"``, a profile with ``idle = "booted"``: the
  member already runs and waits for its configuration (claim, push, the guest's config echo);
* **cold**: StartTask of the same task without ``pool`` (render, ``xl create -e -p``, push,
  unpause, boot marker);
* **raw**: ``xl create -e -p`` of the xl.cfg the driver renders for the cold task (only name and
  uuid differ) and ``xl unpause``, no Click configuration.

Fair-baseline rules as in bench/start_overhead.py: 2 ms console poller threads watch
xenconsoled's log on every side ("running" = the boot marker seen; for the booted hit, whose
boot marker went by before the claim, the config echo); the order of the sides rotates every
round; the first round is a warm-up and is dropped; min, quartiles and max are reported.  The two
pool modes are also compared up to the same point, StartTask → the guest's config echo.  Before
every side both pools are full again and no build is running (refills are waited for outside the
timed span), so a hit is measured the way a steady-state pool serves it.  The pools' memory is
held by idle members meanwhile.

Prints the table and writes ``bench/results/pool.json``.  Goal: pool hit <= 0.1 x raw.
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
from bench.common import MARKER, MarkerPoller
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
from xen_driver.driver.models import TaskSpec
from xen_driver.driver.state import DriverState
from xen_driver.xen.xlcfg import render

ROUNDS = int(sys.argv[1])
IMAGES = "/var/lib/ndx-bench/images"
KERNEL = f"{IMAGES}/ndx-unikernel"
MARKER = b"NDX-GUEST READY"
CONSOLE = "/var/log/xen/console"
CLICK = "in :: FromDevice(0); out :: ToDevice(0); in -> IPFilter(allow dst port 80, deny all) -> out;"
TASK = {"kernel": KERNEL, "cmdline": "clickos tick=5", "boot_marker": "NDX-GUEST READY", "boot_timeout": "120s",
        "click_config": CLICK, "vif": [{"bridge": "xenbr0"}]}
POOL = {"clickos": {"kernel": KERNEL, "cmdline": "clickos tick=5", "memory": 16, "vcpus": 1, "size": 1,
                    "vif": [{"bridge": "xenbr0"}]},
        "booted": {"kernel": KERNEL, "cmdline": "clickos tick=5", "memory": 16, "vcpus": 1, "size": 1,
                   "vif": [{"bridge": "xenbr0"}], "idle": "booted", "boot_marker": "NDX-GUEST READY"}}
# The line the guest prints once it has taken its Click configuration: where both pool modes end.
ECHO = b"status=Running config_len="


def spec_for(i, side, **extra):
    n = i * 4 + {"pool": 1, "cold": 2, "booted": 3}[side]
    return TaskSpec(
        id=f"b{n:07d}-0000-0000-0000-000000000000/t/{n:08d}", name="t", alloc_id=f"b{n:07d}-0000",
        task_group="g", job_name="bench", job_id="bench", namespace="default", node_id="n", node_name="n",
        env={}, memory_mb=16, memory_max_mb=0, cpu_shares=100, alloc_dir="/tmp/ndx-bench-alloc",
        stdout_path=os.devnull, stderr_path=os.devnull, config=TaskConfig.from_dict({**TASK, **extra}),
    )


def raw(lc, i):
    name = f"raw-bench-{i}"
    cfg = f"/tmp/{name}.cfg"
    with open(cfg, "w") as fh:
        fh.write(render(lc.domain_spec(spec_for(i, "cold"), name)))  # the driver's own rendering
    poller = MarkerPoller(name)
    t0 = time.monotonic()
    subprocess.run(["xl", "create", "-e", "-p", cfg], check=True, capture_output=True)
    subprocess.run(["xl", "unpause", name], check=True, capture_output=True)
    running = poller.wait() - t0
    subprocess.run(["xl", "destroy", name], check=True, capture_output=True)
    os.unlink(f"{CONSOLE}/guest-{name}.log")
    os.unlink(cfg)
    return running, None, {}, None


async def full_pool(lc):
    # Outside the timed span: every pool is full and nothing is being built.
    while any(lc.pool.ready(p) < 1 or lc.pool._profiles[p].building for p in POOL):
        await asyncio.sleep(0.05)


async def driver(lc, i, side):
    await full_pool(lc)  # no refill's build overlaps any side's measurement
    echo = None
    if side in ("pool", "booted"):
        profile = "clickos" if side == "pool" else "booted"
        # A booted member printed its boot marker long ago: its task waits for the config echo.
        extra = {"boot_marker": "status=Running"} if side == "booted" else {}
        spec = spec_for(i, side, pool=profile, **extra)
        name = lc.pool._profiles[profile].ready[0].name
        echo = MarkerPoller(name, marker=ECHO)
    else:
        spec = spec_for(i, side)
        name = domain_name_for(spec)
    poller = MarkerPoller(name, marker=ECHO if side == "booted" else MARKER)
    t0 = time.monotonic()
    handle = await lc.start_task(spec)
    returned = time.monotonic() - t0
    running = poller.wait() - t0
    configured = echo.wait() - t0 if echo is not None else None
    assert DriverState.decode(handle.driver_state).domain_name == name
    phases = (await lc.inspect_task(spec.id)).driver_attributes
    await lc.stop_task(spec.id, 0, "SIGKILL")
    await lc.destroy_task(spec.id, True)
    return running, returned, phases, configured


async def main():
    cfg = PluginConfig.from_dict({"image_dirs": [IMAGES], "state_dir": "/tmp/ndx-bench-state", "pool": POOL})
    lc = TaskLifecycle(cfg, lambda e: None)
    os.makedirs("/tmp/ndx-bench-alloc/t", exist_ok=True)
    sides = ("pool", "booted", "cold", "raw")
    out = {s: {"running_s": [], "returned_s": [], "phases": [], "configured_s": []} for s in sides}
    t_start = time.monotonic()
    await lc.pool.start()
    await full_pool(lc)
    out["first_fill_s"] = time.monotonic() - t_start
    out["unpause_path"] = None
    try:
        for i in range(ROUNDS + 1):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            got = {}
            for side in order:
                if side == "raw":
                    await full_pool(lc)
                got[side] = raw(lc, i) if side == "raw" else await driver(lc, i, side)
            if out["unpause_path"] is None:
                out["unpause_path"] = getattr(lc.backend, "unpause_path", None)
            if i == 0:
                continue  # warm-up: caches, first xl call, first console file
            for side in sides:
                running, returned, phases, configured = got[side]
                out[side]["running_s"].append(running)
                if configured is not None:
                    out[side]["configured_s"].append(configured)
                if returned is not None:
                    out[side]["returned_s"].append(returned)
                    out[side]["phases"].append(phases)
            print(f"round {i}/{ROUNDS}: " + ", ".join(f"{s} {got[s][0]*1000:.0f} ms" for s in sides),
                  file=sys.stderr, flush=True)
    finally:
        await lc.close()
        for name in lc.pool.member_names():
            subprocess.run(["xl", "destroy", name], capture_output=True)
    print(json.dumps(out))


asyncio.run(main())
"""


def phase_medians(phases: list[dict]) -> dict:
    names = sorted({k for p in phases for k in p if k.startswith("timing.")})
    return {k[len("timing.") :]: round(statistics.median(float(p[k]) for p in phases if k in p), 1) for k in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds after one warm-up round")
    parser.add_argument("--kvm", action="store_true")
    args = parser.parse_args()
    run_dir = REPO / ".run" / f"bench-pool-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    images = locate_images(build=True, log_path=run_dir / "build.log")
    with Testbed(image_dir=images, scratch_dir=run_dir, forwards=(), kvm=args.kvm) as tb:
        tb.write_file("/var/lib/ndx-bench/images/ndx-unikernel", (REPO / "guests/build/ndx-unikernel").read_bytes())
        (run_dir / "dom0_pool.py").write_text(DOM0_SCRIPT)  # not bench.py: it would shadow the bench package
        load = tb.run("cat /proc/loadavg", check=False).stdout.strip()
        out = tb.run(["python3", "/host/dom0_pool.py", str(args.rounds)], timeout=240 * (args.rounds + 1) + 600).stdout
    data = json.loads(out.strip().splitlines()[-1])
    pool, cold, raw = (spread_ms(data[s]["running_s"]) for s in ("pool", "cold", "raw"))
    pool_ret, cold_ret, booted_ret = (spread_ms(data[s]["returned_s"]) for s in ("pool", "cold", "booted"))
    # Both pool modes up to the same point: the guest has taken its Click configuration.
    pool_cfg, booted_cfg = spread_ms(data["pool"]["configured_s"]), spread_ms(data["booted"]["configured_s"])
    ratio = pool["median"] / raw["median"]
    accel = "kvm" if args.kvm else "tcg"
    print(
        f"rounds: {args.rounds} measured (+1 warm-up dropped), order rotating;"
        f" accel: {accel}; dom0 load at start: {load}"
    )
    print("                                        median      min      p25      p75      max  (ms)")
    for label, d in (
        ("raw xl create -e -p + unpause -> marker", raw),
        ("cold StartTask -> marker seen", cold),
        ("cold StartTask -> returned", cold_ret),
        ("pool hit StartTask -> marker seen", pool),
        ("pool hit StartTask -> returned", pool_ret),
        ("pool hit StartTask -> config echo", pool_cfg),
        ("booted hit StartTask -> config echo", booted_cfg),
        ("booted hit StartTask -> returned", booted_ret),
    ):
        print(f"{label:39s} {d['median']:8.1f} {d['min']:8.1f} {d['p25']:8.1f} {d['p75']:8.1f} {d['max']:8.1f}")
    print(
        f"pool hit / raw (medians): {ratio:.3f} (goal <= 0.1); pool hit / cold: {pool['median'] / cold['median']:.3f}"
    )
    print(f"booted / paused pool hit, to the config echo (medians): {booted_cfg['median'] / pool_cfg['median']:.3f}")
    print(f"unpause path: {data['unpause_path']}; first fill of the pools: {data['first_fill_s']:.1f} s")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "conditions": (
            f"Xen 4.17 testbed under QEMU ({accel}) on a 2-core host; test unikernel in ClickOS mode, 16 MiB, one vif "
            "on xenbr0; raw = `xl create -e -p` of the driver's rendered xl.cfg + `xl unpause`; cold and pool = "
            "StartTask with a Click configuration pushed through XenStore; one 2 ms console poller for every side; "
            "order rotating per round, first round dropped; two pools of size 1 (idle = paused, idle = booted), "
            "both refilled and idle before every side; config echo = the guest's line after it takes its Click "
            "configuration"
        ),
        "rounds": args.rounds,
        "accel": accel,
        "unpause_path": data["unpause_path"],
        "raw_xl_create_unpause_to_marker_ms": raw,
        "cold_start_task_to_marker_ms": cold,
        "cold_start_task_returned_ms": cold_ret,
        "pool_hit_start_task_to_marker_ms": pool,
        "pool_hit_start_task_returned_ms": pool_ret,
        "pool_hit_over_raw": round(ratio, 4),
        "pool_hit_over_cold": round(pool["median"] / cold["median"], 4),
        "pool_hit_start_task_to_config_echo_ms": pool_cfg,
        "booted_hit_start_task_to_config_echo_ms": booted_cfg,
        "booted_hit_start_task_returned_ms": booted_ret,
        "booted_over_paused_to_config_echo": round(booted_cfg["median"] / pool_cfg["median"], 4),
        "booted_phase_medians_ms": phase_medians(data["booted"]["phases"]),
        "goal_pool_hit_over_raw": 0.1,
        "cold_phase_medians_ms": phase_medians(data["cold"]["phases"]),
        "pool_phase_medians_ms": phase_medians(data["pool"]["phases"]),
        "first_fill_s": round(data["first_fill_s"], 1),
    }
    out_path = REPO / "bench" / "results" / "pool.json"
    # Read-modify-write: other benchmarks keep their own sections in this file (bench/instantiation.py's
    # agent_job_run_to_started_ms); only the keys written here are replaced.
    doc = json.loads(out_path.read_text()) if out_path.exists() else {}
    doc.update(result)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
