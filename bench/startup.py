"""Startup cost of the plugin as Nomad sees it, for both ways of installing it, in one run.

Two plugins, each exactly what the agent executes: the single file of `make dist`
(dist/nomad-driver-xen, a zipapp; built first unless --single-file names one) and the launcher
that `nomad-driver-xen install` writes for a virtualenv. For each of N rounds, each plugin in turn
(alternating, so both see the same machine): exec it, time until the go-plugin handshake line is
on stdout, configure it and read the first fingerprint over gRPC, let it idle, read its resident
memory, then stop it the way the agent does (GRPCController.Shutdown) and time the exit.

The single file unpacks its dependencies once per build (into SHIV_ROOT); its first start,
measured a few times on an empty SHIV_ROOT, is reported apart ("first start").

    python bench/startup.py [--runs 20] [--single-file dist/nomad-driver-xen]

Prints a summary and writes bench/results/startup.json. Goals (medians): handshake <= 300 ms and
the single file's <= 1.2x the virtualenv's; idle RSS <= 60 MB.
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
GOAL_SINGLE_FILE_RATIO = 1.2
FIRST_START_RUNS = 3
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
    proc = subprocess.Popen([launcher], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
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


def summarize(runs: list[dict[str, float]]) -> dict:
    return {
        key: summary([r[key] for r in runs])
        for key in ("handshake_ms", "first_fingerprint_ms", "idle_rss_mb", "shutdown_ms")
    }


def build_single_file() -> Path:
    subprocess.run([sys.executable, str(REPO / "tools" / "dist.py")], check=True, stdout=subprocess.DEVNULL)
    return REPO / "dist" / "nomad-driver-xen"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--single-file", default=None, help="a built dist/nomad-driver-xen (default: build it now)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "startup.json"))
    args = parser.parse_args()

    single = Path(args.single_file).resolve() if args.single_file else build_single_file()
    with tempfile.TemporaryDirectory(prefix="ndx-bench-") as tmp:
        venv_launcher = str(install(os.path.join(tmp, "plugins"), "nomad-driver-xen"))
        # Where the operator puts it: a plugin_dir of its own (read-only here, as it may be).
        single_dir = Path(tmp, "plugin-dir")
        single_dir.mkdir()
        single_file = single_dir / "nomad-driver-xen"
        single_file.write_bytes(single.read_bytes())
        single_file.chmod(0o755)
        single_dir.chmod(0o555)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_", "SHIV_"))}
        env.update(NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value, PLUGIN_PROTOCOL_VERSIONS="2")
        single_env = dict(env, SHIV_ROOT=os.path.join(tmp, "shiv"))

        try:
            # First starts: an empty unpack directory each time (the file just copied to a new host).
            first = [
                one_run(str(single_file), dict(env, SHIV_ROOT=os.path.join(tmp, f"shiv-first-{i}")))
                for i in range(FIRST_START_RUNS)
            ]

            one_run(venv_launcher, env)  # warm the page cache (and the single file's unpacked copy); not counted
            one_run(str(single_file), single_env)
            venv_runs, single_runs = [], []
            for _ in range(args.runs):
                venv_runs.append(one_run(venv_launcher, env))
                single_runs.append(one_run(str(single_file), single_env))
        finally:
            single_dir.chmod(0o755)

    venv_res, single_res = summarize(venv_runs), summarize(single_runs)
    ratio = round(single_res["handshake_ms"]["median"] / venv_res["handshake_ms"]["median"], 2)
    result = {
        "benchmark": "plugin startup (exec -> handshake line), idle RSS, shutdown: single file vs virtualenv, same run",
        "version": __version__,
        "runs": args.runs,
        "python": platform.python_version(),
        "single_file_python": subprocess.run(
            ["/usr/bin/python3", "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        "virtualenv": venv_res,
        "single_file": single_res,
        "single_file_first_start": {
            "runs": FIRST_START_RUNS,
            "handshake_ms": summary([r["handshake_ms"] for r in first]),
            "note": "empty SHIV_ROOT: unpacks the bundled site-packages, then compiles what it imports",
        },
        "single_file_size_kib": single.stat().st_size // 1024,
        "handshake_median_ratio_single_file_to_virtualenv": ratio,
        "goals": {
            "handshake_ms_median": GOAL_HANDSHAKE_MS,
            "single_file_to_virtualenv_handshake_ratio": GOAL_SINGLE_FILE_RATIO,
            "idle_rss_mb_median": GOAL_RSS_MB,
        },
    }
    result["goals_met"] = (
        all(
            r["handshake_ms"]["median"] <= GOAL_HANDSHAKE_MS and r["idle_rss_mb"]["median"] <= GOAL_RSS_MB
            for r in (venv_res, single_res)
        )
        and ratio <= GOAL_SINGLE_FILE_RATIO
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"runs:                {args.runs} per plugin, alternating")
    for label, res in (("virtualenv", venv_res), ("single file", single_res)):
        h, m, s, f = res["handshake_ms"], res["idle_rss_mb"], res["shutdown_ms"], res["first_fingerprint_ms"]
        print(f"{label}:")
        print(
            f"  exec -> handshake:   median {h['median']} ms"
            f"  (min {h['min']}, p90 {h['p90']}, max {h['max']}; goal <= {GOAL_HANDSHAKE_MS:g})"
        )
        print(f"  exec -> fingerprint: median {f['median']} ms")
        print(f"  idle RSS:            median {m['median']} MB  (max {m['max']}; goal <= {GOAL_RSS_MB:g})")
        print(f"  Shutdown -> exit:    median {s['median']} ms  (max {s['max']}; go-plugin kills after 2000)")
    fs = result["single_file_first_start"]["handshake_ms"]
    print(f"single file, first start (unpack): median {fs['median']} ms (max {fs['max']}; go-plugin allows 60000)")
    print(f"handshake ratio single/venv: {ratio} (goal <= {GOAL_SINGLE_FILE_RATIO})")
    print(f"goals met:           {result['goals_met']}")
    print(f"written:             {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
