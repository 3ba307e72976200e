"""Startup cost of the plugin as Nomad sees it.

For each of N runs: exec the launcher that `nomad-driver-xen install` writes (exactly what the
agent executes), time until the go-plugin handshake line is on stdout, configure it and read the
first fingerprint over gRPC, let it idle, read its resident memory, then stop it the way the
agent does (GRPCController.Shutdown) and time the exit.

    python bench/startup.py [--runs 20]

Prints a summary and writes bench/results/startup.json. Goals: handshake <= 300 ms, idle RSS
<= 60 MB (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from xen_driver import __version__  # noqa: E402
from xen_driver._proto.goplugin import controller_pb2, controller_pb2_grpc  # noqa: E402
from xen_driver._proto.nomad import base_pb2, base_pb2_grpc, driver_pb2, driver_pb2_grpc  # noqa: E402
from xen_driver.cli import install  # noqa: E402
from xen_driver.nomad import cty  # noqa: E402
from xen_driver.nomad.schemas import PLUGIN_SCHEMA  # noqa: E402
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE  # noqa: E402

GOAL_HANDSHAKE_MS = 300.0
GOAL_RSS_MB = 60.0
IDLE_S = 1.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def one_run(launcher: str, env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([launcher], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline().decode()
    handshake_ms = (time.perf_counter() - start) * 1000
    parts = line.strip().split("|")
    if len(parts) < 5 or parts[4] != "grpc":
        proc.kill()
        raise RuntimeError(f"bad handshake line {line!r}")
    channel = grpc.insecure_channel("unix:" + parts[3])
    try:
        base_pb2_grpc.BasePluginStub(channel).SetConfig(
            base_pb2.SetConfigRequest(msgpack_config=cty.encode({}, PLUGIN_SCHEMA.cty_type)), timeout=10
        )
        stream = driver_pb2_grpc.DriverStub(channel).Fingerprint(driver_pb2.FingerprintRequest(), timeout=30)
        next(stream)
        first_fingerprint_ms = (time.perf_counter() - start) * 1000
        time.sleep(IDLE_S)
        rss = rss_mb(proc.pid)
        stream.cancel()
        stop = time.perf_counter()
        controller_pb2_grpc.GRPCControllerStub(channel).Shutdown(controller_pb2.Empty(), timeout=5)
        channel.close()
        proc.wait(timeout=10)
        shutdown_ms = (time.perf_counter() - stop) * 1000
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "handshake_ms": handshake_ms,
        "first_fingerprint_ms": first_fingerprint_ms,
        "idle_rss_mb": rss,
        "shutdown_ms": shutdown_ms,
    }


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "startup.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ndx-bench-") as tmp:
        launcher = str(install(os.path.join(tmp, "plugins"), "nomad-driver-xen"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_"))}
        env.update(NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value, PLUGIN_PROTOCOL_VERSIONS="2")
        one_run(launcher, env)  # warm the page cache; not counted
        runs = [one_run(launcher, env) for _ in range(args.runs)]

    result = {
        "benchmark": "plugin startup (exec -> handshake line), idle RSS, shutdown",
        "version": __version__,
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "handshake_ms": summary([r["handshake_ms"] for r in runs]),
        "first_fingerprint_ms": summary([r["first_fingerprint_ms"] for r in runs]),
        "idle_rss_mb": summary([r["idle_rss_mb"] for r in runs]),
        "shutdown_ms": summary([r["shutdown_ms"] for r in runs]),
        "goals": {"handshake_ms_median": GOAL_HANDSHAKE_MS, "idle_rss_mb_median": GOAL_RSS_MB},
    }
    result["goals_met"] = (
        result["handshake_ms"]["median"] <= GOAL_HANDSHAKE_MS and result["idle_rss_mb"]["median"] <= GOAL_RSS_MB
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    h, m, s, f = result["handshake_ms"], result["idle_rss_mb"], result["shutdown_ms"], result["first_fingerprint_ms"]
    print(f"runs:                {args.runs}")
    print(f"exec -> handshake:   median {h['median']} ms  (min {h['min']}, p90 {h['p90']}, max {h['max']}; goal <= {GOAL_HANDSHAKE_MS:g})")
    print(f"exec -> fingerprint: median {f['median']} ms")
    print(f"idle RSS:            median {m['median']} MB  (max {m['max']}; goal <= {GOAL_RSS_MB:g})")
    print(f"Shutdown -> exit:    median {s['median']} ms  (max {s['max']}; go-plugin kills after 2000)")
    print(f"goals met:           {result['goals_met']}")
    print(f"written:             {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
