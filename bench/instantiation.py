"""The Superfluidity instantiation experiment, re-done live on the Xen testbed.

Boots the testbed (Xen 4.17 + Debian dom0 under QEMU), installs the pinned Nomad and our plugin in
dom0 as an operator would, then for each start path of the driver submits N ClickOS jobs
(``nomad-jobs/clickos.nomad`` under the names ``inst-<path>-<n>``) one after another through the
HTTP API, as the study's job pusher did: ``PUT /v1/jobs``, wait until the task has started, read its
breakdown (``nomad-driver-xen breakdown``'s code: Nomad's own time stamps plus the driver's timing
event), stop and purge the job, next.  One job at a time, so each instantiation is measured alone.

Writes ``bench/results/instantiation.json`` (every row, median and p90 per phase and path, the run's
date and conditions) and ``bench/results/instantiation.png`` (stacked bars, one per job and one of
the medians per path), and prints the tables.

    python bench/instantiation.py [-n 5] [--paths xl,pool] [--kvm]      (or: make instantiation)

Needs the ``[plot]`` extra (matplotlib) for the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.nomad import NOMAD_DIR, NomadDom0  # noqa: E402
from testbed.vm import Testbed, locate_images  # noqa: E402
from xen_driver import breakdown as bd  # noqa: E402

RESULTS = REPO / "bench" / "results"
JOB_FILE = REPO / "nomad-jobs" / "clickos.nomad"
TASK = "firewall"


# ---------------------------------------------------------------------------- start paths


@dataclass(frozen=True)
class StartPath:
    """One way the driver can bring a guest up, as settings of the agent's plugin block and of
    the task's ``config``.  A new start path is one more entry in START_PATHS."""

    name: str
    description: str
    plugin_config: dict[str, Any] = field(default_factory=dict)  # overrides in plugin "nomad-driver-xen" { config {} }
    task_config: dict[str, Any] = field(default_factory=dict)  # overrides in the task's config {}
    plugin_hcl: str = ""  # blocks added to the plugin's config {} (a pool profile, say)
    ready: bool = True  # False: a hook for a path that is not in the driver yet
    not_ready: str = ""
    #: Before each submission, wait until this holds (e.g. the pool is full again), outside the timing.
    settle: Callable[[NomadDom0], bool] | None = None
    settle_what: str = ""
    #: Domains of this prefix belong to the path itself (idle pool members), not to a finished job.
    own_domains: str = ""


def pool_full(name: str, size: int) -> Callable[[NomadDom0], bool]:
    def check(nomad: NomadDom0) -> bool:
        try:
            attrs = nomad.node().get("Attributes") or {}
        except (urllib.error.URLError, OSError, AssertionError, ValueError):
            return False
        return int(attrs.get(f"driver.xen.pool.{name}.ready") or 0) >= size

    return check


POOL_PROFILE = """pool "clickos" {
      kernel  = "/var/lib/nomad-driver-xen/images/ndx-unikernel"
      cmdline = "clickos tick=5"
      memory  = 16
      vcpus   = 1
      vif {
        bridge = "xenbr0"
      }
      size = 1
    }"""


START_PATHS: dict[str, StartPath] = {
    "xl": StartPath("xl", "cold start: the driver renders an xl.cfg and runs xl create", {"backend": "xl"}),
    # Hooks for the start paths being added.  When one lands, fill in the settings that select it
    # and set ready=True; nothing else here changes (the breakdown picks up new driver phases from
    # the timing event by itself).
    "pool": StartPath(
        "pool",
        'warm pool: the task claims a pre-built, paused member (pool = "clickos"); the pool is full before each job',
        # The node shows driver.xen.pool.<name>.ready at each fingerprint: every 5 s here, so the
        # wait for a refilled pool is short (the probe costs a little CPU between measurements).
        plugin_config={"backend": "xl", "fingerprint_period": "5s"},
        plugin_hcl=POOL_PROFILE,
        task_config={"pool": "clickos"},
        settle=pool_full("clickos", 1),
        settle_what="the pool to be full",
        own_domains="ndx-pool-clickos-",
    ),
    "libvirt": StartPath(
        "libvirt",
        "libvirt's libxl driver (the OpenStack/Nova path of the study)",
        plugin_config={"backend": "libvirt"},
        ready=False,
        not_ready="the libvirt start path is not measured yet (enable it here once it is ready)",
    ),
}


def hcl_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)


def agent_config(base: str, overrides: dict[str, Any], blocks: str = "") -> str:
    """nomad-jobs/agent.hcl with the plugin block's ``config`` settings overridden (and ``blocks``
    added to it)."""
    head, sep, rest = base.partition('plugin "nomad-driver-xen" {')
    if not sep:
        raise SystemExit('agent.hcl has no plugin "nomad-driver-xen" block')
    for key, value in overrides.items():
        line = f"{key} = {hcl_value(value)}"
        rest, n = re.subn(rf"(?m)^(\s*){re.escape(key)}\s*=.*$", lambda m, line=line: m.group(1) + line, rest, count=1)
        if not n:
            rest = rest.replace("config {", "config {\n    " + line, 1)
    if blocks:
        rest = rest.replace("config {", "config {\n    " + blocks.strip() + "\n", 1)
    return head + sep + rest


# ---------------------------------------------------------------------------- progress


class Progress:
    """``[xl] [####------] 4/10  last 21.3 s`` on stderr (a line per job when not a terminal)."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty()
        self.show("starting")

    def show(self, what: str) -> None:
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        text = f"[{self.label}] [{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total}  {what}"
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def step(self, what: str) -> None:
        self.done += 1
        self.show(what)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------- the pusher


def wait_started(nomad: NomadDom0, job_id: str, timeout: float) -> dict:
    """The job's allocation once its task has Started and the driver's timing event is in (or it failed)."""

    def check() -> dict | None:
        try:
            stubs = nomad.allocs(job_id)
        except (urllib.error.URLError, OSError):
            return None
        for stub in stubs:
            state = (stub.get("TaskStates") or {}).get(TASK) or {}
            events = state.get("Events") or []
            if stub["ClientStatus"] == "failed":
                return nomad.alloc(stub["ID"])
            if any(e["Type"] == "Started" for e in events) and any(bd.is_timing_event(e) for e in events):
                return nomad.alloc(stub["ID"])
        return None

    return nomad.wait_until(check, timeout, f"job {job_id} to start", every=0.25)


def stop_and_purge(nomad: NomadDom0, job_id: str, own_domains: str = "") -> None:
    nomad.api(f"/v1/job/{job_id}", method="DELETE")
    nomad.wait_alloc(job_id, {"complete", "failed", "lost"}, timeout=180)
    nomad.api(f"/v1/job/{job_id}?purge=true", method="DELETE")

    def gone() -> bool:
        return [d for d in nomad.domains() if not (own_domains and d.startswith(own_domains))] == []

    nomad.wait_until(gone, 60, f"the domain of {job_id} to be gone", every=0.5)


def run_path(nomad: NomadDom0, path: StartPath, job: dict, n: int, timeout: float) -> dict[str, Any]:
    api = bd.NomadAPI(nomad.addr, env={})
    rows: list[bd.TaskBreakdown] = []
    rtts: list[float] = []
    progress = Progress(path.name, n)
    try:
        for i in range(n):
            job_id = f"inst-{path.name}-{i + 1:03d}"
            if path.settle is not None:
                progress.show(f"waiting for {path.settle_what}")
                nomad.wait_until(lambda: path.settle(nomad), 600, path.settle_what, every=0.5)
            body = json.loads(json.dumps(job))
            body["ID"] = body["Name"] = job_id
            for group in body["TaskGroups"]:
                for task in group["Tasks"]:
                    task["Config"].update(path.task_config)
            t0 = time.monotonic()
            try:
                nomad.api("/v1/jobs", method="PUT", body={"Job": body})
            except urllib.error.HTTPError as exc:
                answer = " ".join(exc.read().decode().split())
                raise SystemExit(f"PUT /v1/jobs ({job_id}) answered {exc.code}: {answer}") from exc
            rtts.append(round((time.monotonic() - t0) * 1000, 1))  # the pusher's own view, host clock
            progress.show(f"{job_id} submitted")
            alloc = wait_started(nomad, job_id, timeout)
            report = bd.collect(api, job_id)
            rows.extend(report.rows)
            row = report.rows[-1]
            total = row.phases.get("total")
            stop_and_purge(nomad, job_id, path.own_domains)
            progress.step(
                f"{job_id}: {alloc['ClientStatus']}" + (f", {total / 1000:.1f} s submit→started" if total else "")
            )
    finally:
        progress.close()
    return {"rows": rows, "submit_rtt_ms": rtts}


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="jobs per start path (default 5)")
    parser.add_argument(
        "--paths", default="xl,pool", help=f"comma-separated start paths of {sorted(START_PATHS)} (default xl,pool)"
    )
    parser.add_argument("--kvm", action="store_true", help="boot the testbed with hardware KVM instead of TCG")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a job may take to start")
    parser.add_argument("--out", default=str(RESULTS / "instantiation"), help="results path without suffix")
    args = parser.parse_args()

    paths = []
    for name in [p.strip() for p in args.paths.split(",") if p.strip()]:
        if name not in START_PATHS:
            parser.error(f"unknown start path {name!r}: one of {', '.join(START_PATHS)}")
        if not START_PATHS[name].ready:
            parser.error(f"start path {name!r}: {START_PATHS[name].not_ready}")
        paths.append(START_PATHS[name])
    try:
        import matplotlib  # noqa: F401  -- fail before minutes of testbed, not after
    except ImportError:
        parser.error(bd.PLOT_MISSING.replace("--png", "the figure"))

    run_dir = REPO / ".run" / f"bench-instantiation-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    images = locate_images(build=True, log_path=run_dir / "build.log")
    unikernel = REPO / "guests" / "build" / "ndx-unikernel"
    if not unikernel.is_file():
        raise SystemExit(f"{unikernel.relative_to(REPO)} is missing: run make guests")
    base_agent = (REPO / "nomad-jobs" / "agent.hcl").read_text()
    results: dict[str, Any] = {}
    print(f"booting the testbed ({'kvm' if args.kvm else 'tcg'}); run directory {run_dir}", file=sys.stderr)
    with Testbed(image_dir=images, scratch_dir=run_dir, forwards=(4646,), kvm=args.kvm) as tb:
        # The run's date and duration start once the testbed is ours (it may wait for another's).
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
        wall = time.monotonic()
        lock_wait = getattr(tb, "lock_wait_s", None)
        tb.write_file("/var/lib/ndx-bench/ndx-unikernel", unikernel.read_bytes())
        nomad = NomadDom0(tb, run_dir, "/var/lib/ndx-bench/ndx-unikernel")
        nomad.install()
        job: dict | None = None
        current: str | None = None
        try:
            for path in paths:
                wanted = agent_config(base_agent, path.plugin_config, path.plugin_hcl)
                node: dict = {}
                try:
                    if current != wanted:
                        current = None
                        if nomad.pid is not None:
                            nomad.stop()
                        tb.write_file(f"{NOMAD_DIR}/agent.hcl", wanted)
                        nomad.start()
                        current = wanted
                    if job is None:
                        job = nomad.api(
                            "/v1/jobs/parse", method="POST", body={"JobHCL": JOB_FILE.read_text(), "Canonicalize": True}
                        )
                        # Nomad 1.6.3's parse endpoint gives a group without ephemeral_disk 10 MB, which
                        # its register refuses beside the default 100 MB of task logs; give every job
                        # file the 300 MB Nomad documents as the default, so the disk never decides.
                        for group in job["TaskGroups"]:
                            group["EphemeralDisk"] = {"SizeMB": 300, "Migrate": False, "Sticky": False}
                    node = nomad.node()
                    out = run_path(nomad, path, job, args.n, args.timeout)
                except (AssertionError, OSError, bd.BreakdownError, SystemExit) as exc:
                    # One path failing must not cost the others' results.
                    print(f"start path {path.name} failed: {exc}", file=sys.stderr)
                    results[path.name] = {
                        "path": path,
                        "node": node,
                        "rows": [],
                        "submit_rtt_ms": [],
                        "error": str(exc),
                    }
                    continue
                results[path.name] = {"path": path, "node": node, **out}
        finally:
            nomad.stop()
        boot = dict(tb.boot_timings)
    wall = time.monotonic() - wall

    phases = bd.phase_list([n for r in results.values() for row in r["rows"] for n in row.phases])
    doc: dict[str, Any] = {
        "date": date,
        "conditions": {
            "testbed": f"Xen under QEMU ({'KVM' if args.kvm else 'TCG software emulation'}),"
            " 2 vCPUs, 3 GiB, dom0 1 GiB",
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "nomad": (REPO / "tools" / "nomad" / "VERSION").read_text().strip(),
            "job": "nomad-jobs/clickos.nomad"
            " (ClickOS-style unikernel, 16 MiB, one vif, Click configuration via XenStore)",
            "submission": "PUT /v1/jobs one job at a time;"
            " each waits until its task has started, is measured, stopped and purged",
            "jobs_per_path": args.n,
            "testbed_boot_s": boot,
            "waited_for_another_testbed_s": lock_wait,
            "wall_s_after_boot": round(wall, 1),
        },
        "unit": "ms",
        "clocks": bd.CLOCKS,
        "phases": [{"name": p.name, "span": p.span, "clock": p.clock} for p in phases],
        "paths": {},
    }
    bars: list[tuple[str, dict[str, float | None]]] = []
    for name, r in results.items():
        rows = r["rows"]
        node = r["node"]
        if node:
            doc["conditions"].setdefault("xen", node["Attributes"].get("driver.xen.version"))
        summary = bd.summarize(rows, phases)
        doc["paths"][name] = {
            "description": r["path"].description,
            "plugin_config": r["path"].plugin_config,
            "task_config": r["path"].task_config,
            "started": sum(1 for x in rows if x.started),
            "of": len(rows),
            "submit_rtt_ms": r["submit_rtt_ms"],
            **({"error": r["error"]} if r.get("error") else {}),
            "summary_ms": summary,
            "allocations": [x.to_json(phases) for x in rows],
        }
        report = bd.Report(nomad.addr, "default", name, "job", f"inst-{name}-* ({len(rows)} jobs)", "xen", rows)
        print(f"\n== start path {name}: {r['path'].description}")
        print(bd.render_table(report), end="")
        bars += [(f"{name} #{i + 1}", dict(x.phases)) for i, x in enumerate(rows) if x.started]
        bars.append((f"{name} median", {k: (v or {}).get("median") for k, v in summary.items()}))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    bd.plot_stacked(
        bars,
        str(out.with_suffix(".png")),
        title=f"ClickOS instantiation on Nomad {doc['conditions']['nomad']}"
        f" + Xen {doc['conditions'].get('xen', '?')}, by phase",
        subtitle=f"{date}; testbed: {doc['conditions']['testbed']}; {args.n} jobs per start path",
        phases=phases,
    )
    print(f"\nwritten: {out.with_suffix('.json')}, {out.with_suffix('.png')}  ({wall:.0f} s)")
    failed = [x for r in results.values() for x in r["rows"] if not x.started]
    return 1 if failed or any(r.get("error") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
