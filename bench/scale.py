"""What N guests on one node cost the plugin, with the real plugin process and a fake toolstack.

For each N: the plugin (``python -m xen_driver``, started with Nomad's cookie the way the agent
starts it) is configured over gRPC to use our fake toolstack (tests/fakes/: an ``xl`` keeping
the domain table in a file, a xenstored speaking the wire protocol over a unix socket and
playing the guests' side, one real stdout FIFO per task drained like Nomad's logmon). Then:

1. N StartTask calls, ``--concurrency`` at a time, in ten deciles: the plugin's CPU time
   (utime + stime of /proc/<pid>/stat, the plugin process only, not the ``xl`` processes it
   runs) per StartTask, as the mean of each decile;
2. every task gets a WaitTask and a TaskStats stream (1 s interval), as the agent opens them;
   after a warm-up the plugin's CPU over ``--idle-s`` seconds is its idle cost; RSS, open
   descriptors, threads and child processes are read from /proc; the fifo keeper (its own
   session, so found by its command line) has its CPU measured over the same windows and
   reported apart (``keeper_*``), since it copies the consoles into the FIFOs;
3. a guest whose WaitTask returns before it was stopped was wrongly reported dead; a task
   whose console never reached its FIFO is counted too;
4. StopTask + DestroyTask for all (``--stop-concurrency`` at a time), then the plugin is shut
   down as the agent does it; what is left (domains, XenStore domain nodes, configs, task
   state directories, console logs, processes) is counted.

Every process the bench starts is ended by it.

    python bench/scale.py [--n 10 100 1000] [--nofile-run 1000] [--label after]

Prints a table and writes bench/results/scale.json (runs under ``--label`` are replaced, others
kept, so a before/after pair can live in one file). Goals at N=1000: 0 wrongly reported,
StartTask CPU median <= 10 ms and the last decile <= 1.3x the first, idle CPU <= 10 % of one
core, RSS <= 120 MB, nothing left after stop; the same with a soft open-file limit of 1024.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402

from tests.fakes.domains import DomainTable  # noqa: E402
from tests.fakes.logmon import Logmon  # noqa: E402
from xen_driver._proto.goplugin import controller_pb2, controller_pb2_grpc  # noqa: E402
from xen_driver._proto.nomad import base_pb2, base_pb2_grpc, driver_pb2, driver_pb2_grpc  # noqa: E402
from xen_driver.nomad import cty  # noqa: E402
from xen_driver.nomad.schemas import PLUGIN_SCHEMA, TASK_SCHEMA  # noqa: E402
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE  # noqa: E402

FAKE_XL = REPO / "tests" / "fakes" / "xl"
RESULTS = REPO / "bench" / "results" / "scale.json"
CLK = os.sysconf("SC_CLK_TCK")
#: The fifo keeper leaves this long after it holds nothing and no plugin is connected.
KEEPER_IDLE_EXIT_S = 30.0
GOALS = {
    "wrongly_reported_dead": 0,
    "start_cpu_ms_median": 10.0,
    "start_cpu_last_over_first_decile": 1.3,
    "idle_cpu_percent": 10.0,
    "rss_mb": 120.0,
    "leftovers": 0,
}


# ------------------------------------------------------------------ /proc
def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def snapshot(pid: int) -> dict:
    return {
        "rss_mb": round(status(pid, "VmRSS") / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": status(pid, "Threads"),
        "processes": 1 + len(descendants(pid)),
    }


# ------------------------------------------------------------------ the rig
class Rig:
    """Temp dir, fake xenstored, logmon, and the plugin process (with its socket)."""

    def __init__(self, nofile_soft: int | None):
        self.tmp = Path(tempfile.mkdtemp(prefix="ndx-scale-"))
        self.xen_dir = self.tmp / "xen"
        self.console_dir = self.tmp / "console"
        self.state_dir = self.tmp / "state"
        self.images = self.tmp / "images"
        self.allocs = self.tmp / "allocs"
        for d in (self.xen_dir, self.console_dir, self.state_dir, self.images, self.allocs):
            d.mkdir()
        self.kernel = self.images / "unikernel"
        self.kernel.write_bytes(b"\x7fELF fake kernel\n")
        self.xs_socket = str(self.tmp / "xenstored.sock")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_"))}
        env.update(
            FAKE_XEN_DIR=str(self.xen_dir),
            FAKE_XEN_CONSOLE_DIR=str(self.console_dir),
            XENSTORED_PATH=self.xs_socket,
            PYTHONPATH=str(REPO),
        )
        self.env = env
        self.xenstored = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.xenstored", "--socket", self.xs_socket, "--domains", str(self.xen_dir)],
            env=env,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert self.xenstored.stdout is not None
        if self.xenstored.stdout.readline().strip() != b"ready":
            raise RuntimeError("fake xenstored did not start")
        plugin_env = dict(env)
        plugin_env.update(
            NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value,
            PLUGIN_PROTOCOL_VERSIONS="2",
            PLUGIN_MIN_PORT="10000",
            PLUGIN_MAX_PORT="25000",
            TMPDIR=str(self.tmp),
            NOMAD_DRIVER_XEN_LOG_LEVEL="warn",
        )

        def limit() -> None:
            if nofile_soft is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))

        self.stderr = open(self.tmp / "plugin.stderr", "wb")
        self.plugin = subprocess.Popen(
            [sys.executable, "-m", "xen_driver"],
            env=plugin_env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            preexec_fn=limit,
            cwd=REPO,
        )
        assert self.plugin.stdout is not None
        line = self.plugin.stdout.readline().decode()
        self.socket = line.split("|")[3]
        self.pid = self.plugin.pid
        self.logmon = Logmon()
        self.keeper_pids: list[int] = []

    def configure(self, channel: grpc.Channel) -> None:
        config = {
            "backend": "xl",
            "xl_path": str(FAKE_XL),
            "xenstored_socket": self.xs_socket,
            "console_log_dir": str(self.console_dir),
            "state_dir": str(self.state_dir),
            "image_dirs": [str(self.images)],
        }
        base_pb2_grpc.BasePluginStub(channel).SetConfig(
            base_pb2.SetConfigRequest(
                msgpack_config=cty.encode(config, PLUGIN_SCHEMA.cty_type), plugin_api_version="0.1.0"
            ),
            timeout=30,
        )

    def task(self, i: int) -> driver_pb2.TaskConfig:
        alloc = f"{i:08x}-0000-4000-8000-{i:012x}"
        adir = self.allocs / alloc
        (adir / "alloc" / "logs").mkdir(parents=True)
        fifo = self.logmon.add(str(adir / "alloc" / "logs" / ".g.stdout.fifo"))
        return driver_pb2.TaskConfig(
            id=f"{alloc}/g/{i:08x}",
            name="g",
            alloc_id=alloc,
            alloc_dir=str(adir),
            stdout_path=fifo,
            stderr_path=os.devnull,
            msgpack_driver_config=cty.encode({"kernel": str(self.kernel)}, TASK_SCHEMA.cty_type),
            resources=driver_pb2.Resources(
                allocated_resources=driver_pb2.AllocatedTaskResources(
                    memory=driver_pb2.AllocatedMemoryResources(memory_mb=16),
                    cpu=driver_pb2.AllocatedCpuResources(cpu_shares=100),
                )
            ),
        )

    def leftovers(self) -> dict:
        domains = DomainTable(str(self.xen_dir)).snapshot()
        left = {
            "domains": len(domains),
            "configs": len(list((self.state_dir / "domains").glob("*.cfg")))
            if (self.state_dir / "domains").exists()
            else 0,
            "task_dirs": len(list((self.state_dir / "tasks").iterdir())) if (self.state_dir / "tasks").exists() else 0,
            "console_logs": len(list(self.console_dir.iterdir())),
        }
        return left

    def close(self) -> None:
        """End everything this rig started, by pid."""
        procs = [self.plugin.pid, *(self.keeper_pids or keeper_pids(self.state_dir))]
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.plugin.wait()
        self.xenstored.send_signal(signal.SIGTERM)
        try:
            self.xenstored.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.xenstored.kill()
            self.xenstored.wait()
        self.logmon.close()
        self.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def keeper_cpu_s(state_dir: Path) -> float:
    """CPU time of the fifo keeper(s) of this rig (0 while none runs): since the keeper copies
    the consoles into the FIFOs, part of the cost of N guests is there, not in the plugin."""
    total = 0.0
    for pid in keeper_pids(state_dir):
        try:
            total += cpu_s(pid)
        except (OSError, ValueError, IndexError):
            pass
    return total


def keeper_snapshot(state_dir: Path) -> dict:
    pids = keeper_pids(state_dir)
    out = {"keepers": len(pids)}
    try:
        if pids:
            out.update(rss_mb=round(status(pids[0], "VmRSS") / 1024, 1), fds=len(os.listdir(f"/proc/{pids[0]}/fd")))
    except OSError:
        pass
    return out


def keeper_pids(state_dir: Path) -> list[int]:
    """The fifo keeper runs in its own session, so it is not the plugin's descendant: find it
    by its state directory on its command line."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"fifokeeper" in a for a in argv) and any(str(state_dir).encode() in a for a in argv):
            out.append(int(entry))
    return out


# ------------------------------------------------------------------ one run
async def run(
    n: int, *, concurrency: int, stop_concurrency: int, idle_s: float, warmup_s: float, nofile_soft: int | None
) -> dict:
    rig = Rig(nofile_soft)
    result: dict = {"n": n, "nofile_soft_limit": nofile_soft, "concurrency": concurrency}
    try:
        sync_channel = grpc.insecure_channel("unix:" + rig.socket)
        rig.configure(sync_channel)
        sync_channel.close()
        opts = [("grpc.max_concurrent_streams", 100000)]
        channel = grpc.aio.insecure_channel("unix:" + rig.socket, options=opts)
        drv = driver_pb2_grpc.DriverStub(channel)
        tasks = [rig.task(i) for i in range(n)]
        started: list[str] = []
        sem = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def start(t: driver_pb2.TaskConfig) -> None:
            async with sem:
                try:
                    await drv.StartTask(driver_pb2.StartTaskRequest(task=t), timeout=120)
                    started.append(t.id)
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{t.id}: {exc.code().name} {exc.details()}")

        # ---- 1. starts, by decile
        deciles = []
        t0 = time.monotonic()
        size = max(1, n // 10)
        for d in range(0, n, size):
            chunk = tasks[d : d + size]
            c0, k0, w0 = cpu_s(rig.pid), keeper_cpu_s(rig.state_dir), time.monotonic()
            await asyncio.gather(*(start(t) for t in chunk))
            c1, k1, w1 = cpu_s(rig.pid), keeper_cpu_s(rig.state_dir), time.monotonic()
            deciles.append(
                {
                    "starts": len(chunk),
                    "cpu_ms_per_start": round((c1 - c0) * 1000 / len(chunk), 2),
                    "keeper_cpu_ms_per_start": round((k1 - k0) * 1000 / len(chunk), 2),
                    "wall_ms_per_start": round((w1 - w0) * 1000 / len(chunk), 1),
                }
            )
        per = [d["cpu_ms_per_start"] for d in deciles]
        result["start"] = {
            "wall_s": round(time.monotonic() - t0, 1),
            "failed": len(failures),
            "failures": failures[:5],
            "cpu_ms_per_start_by_decile": per,
            "cpu_ms_per_start_median_decile": round(statistics.median(per), 2),
            "cpu_ms_per_start_mean": round(statistics.mean(per), 2),
            "last_over_first_decile": round(per[-1] / per[0], 2) if per[0] else None,
            "wall_ms_per_start_by_decile": [d["wall_ms_per_start"] for d in deciles],
            # the keeper's CPU over the same deciles (a keeper that started during a decile counts
            # from its start; one that was not running yet counts 0)
            "keeper_cpu_ms_per_start_by_decile": [d["keeper_cpu_ms_per_start"] for d in deciles],
            "keeper_cpu_ms_per_start_mean": round(statistics.mean(d["keeper_cpu_ms_per_start"] for d in deciles), 2),
        }
        result["after_start"] = snapshot(rig.pid)

        # ---- 2. WaitTask + TaskStats(1 s) per task; idle cost
        waits = {tid: asyncio.ensure_future(drv.WaitTask(driver_pb2.WaitTaskRequest(task_id=tid))) for tid in started}
        stats_msgs = {"n": 0}
        stat_calls = []

        async def consume(tid: str) -> None:
            call = drv.TaskStats(
                driver_pb2.TaskStatsRequest(task_id=tid, collection_interval=duration_pb2.Duration(seconds=1))
            )
            stat_calls.append(call)
            try:
                async for _msg in call:
                    stats_msgs["n"] += 1
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass

        consumers = [asyncio.ensure_future(consume(tid)) for tid in started]
        await asyncio.sleep(warmup_s)
        m0, c0, k0, w0 = stats_msgs["n"], cpu_s(rig.pid), keeper_cpu_s(rig.state_dir), time.monotonic()
        await asyncio.sleep(idle_s)
        m1, c1, k1, w1 = stats_msgs["n"], cpu_s(rig.pid), keeper_cpu_s(rig.state_dir), time.monotonic()
        result["idle"] = {
            "window_s": round(w1 - w0, 1),
            "cpu_percent_of_one_core": round((c1 - c0) / (w1 - w0) * 100, 1),
            "keeper_cpu_percent_of_one_core": round((k1 - k0) / (w1 - w0) * 100, 1),
            "keeper": keeper_snapshot(rig.state_dir),
            "stats_messages_per_s": round((m1 - m0) / (w1 - w0), 1),
            **snapshot(rig.pid),
        }
        consoles_missing = sum(
            1 for t in tasks if t.id in started and b"booted" not in rig.logmon.received(t.stdout_path)
        )

        # ---- 3. wrongly reported dead
        early = [tid for tid, w in waits.items() if w.done()]
        result["wrongly_reported_dead"] = len(early)
        result["consoles_missing"] = consoles_missing

        # ---- 4. stop everything
        stop_sem = asyncio.Semaphore(stop_concurrency)
        stop_errors: list[str] = []
        exit_codes: dict[int, int] = {}

        async def stop(tid: str) -> None:
            async with stop_sem:
                try:
                    await drv.StopTask(
                        driver_pb2.StopTaskRequest(
                            task_id=tid, timeout=duration_pb2.Duration(seconds=5), signal="SIGTERM"
                        ),
                        timeout=60,
                    )
                    res = await asyncio.wait_for(waits[tid], 30)
                    exit_codes[res.result.exit_code] = exit_codes.get(res.result.exit_code, 0) + 1
                    await drv.DestroyTask(driver_pb2.DestroyTaskRequest(task_id=tid, force=True), timeout=60)
                except (TimeoutError, grpc.aio.AioRpcError) as exc:
                    stop_errors.append(f"{tid}: {exc!r}"[:200])

        c0, k0, t0 = cpu_s(rig.pid), keeper_cpu_s(rig.state_dir), time.monotonic()
        await asyncio.gather(*(stop(tid) for tid in started))
        result["stop"] = {
            "wall_s": round(time.monotonic() - t0, 1),
            "cpu_ms_per_stop": round((cpu_s(rig.pid) - c0) * 1000 / max(1, len(started)), 2),
            "keeper_cpu_ms_per_stop": round((keeper_cpu_s(rig.state_dir) - k0) * 1000 / max(1, len(started)), 2),
            "errors": len(stop_errors),
            "error_samples": stop_errors[:5],
            "exit_codes": {str(k): v for k, v in exit_codes.items()},
        }
        for c in consumers:
            c.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await channel.close()

        # ---- 5. shut the plugin down as the agent does, count what is left
        sync_channel = grpc.insecure_channel("unix:" + rig.socket)
        controller_pb2_grpc.GRPCControllerStub(sync_channel).Shutdown(controller_pb2.Empty(), timeout=10)
        sync_channel.close()
        rig.plugin.wait(timeout=20)
        keepers = keeper_pids(rig.state_dir)
        deadline = time.monotonic() + KEEPER_IDLE_EXIT_S + 10
        while keepers and time.monotonic() < deadline:  # the keeper exits by itself once idle
            await asyncio.sleep(0.1)
            keepers = keeper_pids(rig.state_dir)
        rig.keeper_pids = keepers
        left = rig.leftovers()
        left["processes"] = len(keepers) + len(descendants(rig.pid) if rig.plugin.poll() is None else [])
        left["total"] = sum(left.values())
        result["leftovers"] = left
    finally:
        rig.close()
    return result


# ------------------------------------------------------------------ report
def verdict(run_: dict) -> dict:
    s = run_["start"]
    return {
        "wrongly_reported_dead": run_["wrongly_reported_dead"] <= GOALS["wrongly_reported_dead"],
        "start_cpu_ms_median": s["cpu_ms_per_start_median_decile"] <= GOALS["start_cpu_ms_median"],
        "start_cpu_last_over_first_decile": (s["last_over_first_decile"] or 0)
        <= GOALS["start_cpu_last_over_first_decile"],
        "idle_cpu_percent": run_["idle"]["cpu_percent_of_one_core"] <= GOALS["idle_cpu_percent"],
        "rss_mb": run_["idle"]["rss_mb"] <= GOALS["rss_mb"],
        "leftovers": run_["leftovers"]["total"] <= GOALS["leftovers"]
        and run_["stop"]["errors"] == 0
        and run_["start"]["failed"] == 0,
    }


def table(runs: list[dict]) -> str:
    head = (
        f"{'N':>5} {'nofile':>7} {'start ms/decile (first..last)':>32} {'med':>6} {'keeper':>6} "
        f"{'idle %':>7} {'keeper':>6} {'RSS MB':>7} {'fds':>5} {'thr':>4} {'proc':>4} {'dead':>4} {'left':>4}"
    )
    lines = [head]
    for r in runs:
        per = r["start"]["cpu_ms_per_start_by_decile"]
        lines.append(
            f"{r['n']:>5} {str(r['nofile_soft_limit'] or '-'):>7} {per[0]:>15.2f} .. {per[-1]:<13.2f} "
            f"{r['start']['cpu_ms_per_start_median_decile']:>6.2f} "
            f"{r['start'].get('keeper_cpu_ms_per_start_mean', 0):>6.2f} "
            f"{r['idle']['cpu_percent_of_one_core']:>7.1f} {r['idle'].get('keeper_cpu_percent_of_one_core', 0):>6.1f} "
            f"{r['idle']['rss_mb']:>7.1f} {r['idle']['fds']:>5} {r['idle']['threads']:>4} {r['idle']['processes']:>4} "
            f"{r['wrongly_reported_dead']:>4} {r['leftovers']['total']:>4}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument(
        "--nofile-run", type=int, default=1000, help="N of the run under a soft open-file limit of 1024 (0: none)"
    )
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--stop-concurrency", type=int, default=32)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--warmup-s", type=float, default=8.0)
    ap.add_argument("--label", default="current")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the bench itself holds N FIFOs and 2N streams

    runs = []
    plan = [(n, None) for n in args.n] + ([(args.nofile_run, 1024)] if args.nofile_run else [])
    for n, nofile in plan:
        print(f"N={n} nofile={nofile or '-'} ...", flush=True)
        r = asyncio.run(
            run(
                n,
                concurrency=args.concurrency,
                stop_concurrency=args.stop_concurrency,
                idle_s=args.idle_s,
                warmup_s=args.warmup_s,
                nofile_soft=nofile,
            )
        )
        r["goals_met"] = verdict(r)
        runs.append(r)
        print(json.dumps(r, indent=1), flush=True)
    print(table(runs))

    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    doc.setdefault(
        "what",
        "bench/scale.py: the real plugin process and the fake toolstack of tests/fakes; plugin CPU, "
        "and (runs with keeper_* fields) the fifo keeper's CPU separately",
    )
    doc["goals_at_1000"] = GOALS
    doc.setdefault("runs", {})[args.label] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "note": args.note,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()[0],
        },
        "results": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
