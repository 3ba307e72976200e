"""The Superfluidity instantiation experiment, re-done live on the Xen testbed.

Boots the testbed (Xen 4.17 + Debian dom0 under QEMU), installs the pinned Nomad and our plugin in
dom0 as an operator would, then submits ClickOS jobs (``nomad-jobs/clickos.nomad`` under the names
``inst-<path>-<n>``) through the HTTP API, as the study's job pusher did: ``PUT /v1/jobs``, wait
until the task has started, read its breakdown (``nomad-driver-xen breakdown``'s code: Nomad's own
time stamps plus the driver's timing event), stop and purge the job, next.  One job at a time, so
each instantiation is measured alone.  ``total`` is job submitted → task Started, on Nomad's clocks.

Two modes:

* **alternating** (the default; the fair comparison): ONE agent whose plugin configuration is the
  union of what the start paths need (the pool path's profile is there for the cold path too, so
  both run on the same node with the same memory held by the idle member), ``-n`` rounds of one
  job per path with the order rotating every round, the first ``--warmup`` round(s) dropped.
  Before every job, outside the timed span, the same preconditions whatever the path: no task
  guest left, every pool full and idle (its members built, recorded and paused, no build running,
  and the node's ``driver.xen.pool.<name>.ready`` attribute showing it), no evaluation pending
  on the server (a changed attribute re-registers the node, and the server then evaluates every
  job with an allocation on it: that work is done before the next job goes in), and dom0 quiet
  (at most QUIET_BUSY of its CPU busy over a second: the teardown of the job before, or a
  refill, is over).  Paths whose agent
  configurations conflict cannot alternate: the run refuses them (use ``--sequential``).
* ``--sequential``: all ``-n`` jobs of one path, then the next, each path under its own agent
  configuration, nothing dropped (the experiment's first form).

Writes ``bench/results/instantiation.json`` (every row, median and p90 per phase and path, the
spread of ``total`` per path, the pool/cold ratio in the alternating mode, the run's date and
conditions) and ``bench/results/instantiation.png`` (stacked bars, one per measured job and one of
the medians per path), and prints the tables.  An alternating run of both ``xl`` and ``pool`` also
merges its comparison into ``bench/results/pool.json`` under ``agent_job_run_to_started_ms``
(read-modify-write: the other keys stay as bench/pool.py wrote them).  Goal: pool <= 0.3 x cold.

    python bench/instantiation.py [-n 5] [--paths xl,pool] [--warmup 1] [--sequential] [--kvm]
                                                                        (or: make instantiation)

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

from bench.common import spread_ms  # noqa: E402
from testbed.nomad import NOMAD_DIR, STATE_DIR, NomadDom0  # noqa: E402
from testbed.vm import Testbed, locate_images  # noqa: E402
from xen_driver import breakdown as bd  # noqa: E402
from xen_driver.driver.pool_members import MEMBER_PREFIX  # noqa: E402

RESULTS = REPO / "bench" / "results"
JOB_FILE = REPO / "nomad-jobs" / "clickos.nomad"
TASK = "firewall"
#: The key of bench/results/pool.json this benchmark owns (bench/pool.py writes the others).
POOL_JSON_KEY = "agent_job_run_to_started_ms"
#: ... and the one of a run whose plugin writes the task log files itself (no logmon per task).
POOL_JSON_KEY_DRIVER_LOGS = "agent_job_run_to_started_ms_driver_logs"
GOAL_POOL_OVER_COLD = 0.3


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
    #: The start_path the driver's timing event must name ("pool"; None: a cold start, no annotation).
    start_path: str | None = None


def dom0_guests(nomad: NomadDom0) -> tuple[dict[str, str], set[str]] | None:
    """Every domain but Domain-0 (name → ``xl list`` state flags), and the pool members the driver
    recorded as built (a member still being built is paused too, but has no record yet); None
    when ``xl list`` failed."""
    sep = "--- recorded pool members ---"
    r = nomad.tb.run(
        f"xl list && echo '{sep}' && (ls -1 {STATE_DIR}/pool/members 2>/dev/null || true)", check=False, timeout=90
    )
    listing, found, recorded = r.stdout.partition(sep)
    if not found:
        return None
    domains = {}
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[0] != "Domain-0":
            domains[parts[0]] = parts[4]
    return domains, set(recorded.split())


def idle_only(nomad: NomadDom0, own: tuple[str, ...]) -> bool:
    """No task guest is left: every domain is a paused domain of a path's own prefix (an idle pool
    member or one being built; a claimed member runs under its member name until destroyed)."""
    seen = dom0_guests(nomad)
    return seen is not None and all(name.startswith(own) and "p" in flags for name, flags in seen[0].items())


def no_pending_evaluations(nomad: NomadDom0) -> bool:
    """Nomad's server has no evaluation waiting: a node update (a changed pool attribute
    re-registers the node, and the server then evaluates every job with an allocation on it) is
    fully handled before the next job is submitted, whichever path that job takes."""
    try:
        evals = nomad.api("/v1/evaluations")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return not any(e.get("Status") == "pending" for e in evals or ())


#: dom0 counts as quiet when at most this share of its CPU time was busy over QUIET_WINDOW_S
#: (an idle agent, server and client, with the plugin fingerprinting every 5 s: about 0.17 under TCG).
QUIET_BUSY = 0.3
QUIET_WINDOW_S = 1.0


def dom0_busy(nomad: NomadDom0, window: float = QUIET_WINDOW_S) -> float | None:
    """The share of dom0's CPU time that was busy over ``window`` seconds (/proc/stat)."""
    r = nomad.tb.run(f"head -1 /proc/stat; sleep {window}; head -1 /proc/stat", check=False, timeout=60)
    lines = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("cpu ")]
    if len(lines) != 2:
        return None
    a, b = ([int(x) for x in line] for line in lines)
    total = sum(b) - sum(a)
    idle = (b[3] + b[4]) - (a[3] + a[4])  # idle + iowait
    return None if total <= 0 else round(1 - idle / total, 3)


def dom0_quiet(nomad: NomadDom0) -> bool:
    busy = dom0_busy(nomad)
    return busy is not None and busy <= QUIET_BUSY


def pool_full(name: str, size: int) -> Callable[[NomadDom0], bool]:
    """The pool is full and idle: the node reports ``size`` ready members, and in dom0 the
    profile's domains are exactly ``size`` members, built (recorded) and paused: no build running,
    no claimed member left."""
    prefix = f"{MEMBER_PREFIX}{name}-"

    def check(nomad: NomadDom0) -> bool:
        try:
            attrs = nomad.node().get("Attributes") or {}
        except (urllib.error.URLError, OSError, AssertionError, ValueError):
            return False
        if int(attrs.get(f"driver.xen.pool.{name}.ready") or 0) < size:
            return False
        seen = dom0_guests(nomad)
        if seen is None:
            return False
        domains, recorded = seen
        members = [d for d in domains if d.startswith(prefix)]
        idle = [d for d in members if "p" in domains[d] and d in recorded]
        return len(members) == len(idle) == size

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
        settle_what="the pool to be full and idle",
        own_domains=f"{MEMBER_PREFIX}clickos-",
        start_path="pool",
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


class Incompatible(ValueError):
    """Two start paths need different values of one plugin setting: they cannot share an agent."""


def union_config(paths: list[StartPath]) -> tuple[dict[str, Any], str]:
    """The plugin settings and blocks every one of ``paths`` needs, for one agent that serves them
    all (a pool profile one path needs is there for the others too)."""
    settings: dict[str, Any] = {}
    owner: dict[str, str] = {}
    blocks: list[str] = []
    for path in paths:
        for key, value in path.plugin_config.items():
            if key in settings and settings[key] != value:
                raise Incompatible(
                    f"start paths {owner[key]!r} and {path.name!r} need different agent configs"
                    f" ({key} = {hcl_value(settings[key])} vs {hcl_value(value)})"
                )
            settings[key] = value
            owner.setdefault(key, path.name)
        if path.plugin_hcl and path.plugin_hcl not in blocks:
            blocks.append(path.plugin_hcl)
    return settings, "\n    ".join(b.strip() for b in blocks)


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


def stop_and_purge(nomad: NomadDom0, job_id: str, own_domains: str | tuple[str, ...] = ()) -> None:
    nomad.api(f"/v1/job/{job_id}", method="DELETE")
    nomad.wait_alloc(job_id, {"complete", "failed", "lost"}, timeout=180)
    nomad.api(f"/v1/job/{job_id}?purge=true", method="DELETE")
    own = (own_domains,) if isinstance(own_domains, str) and own_domains else tuple(own_domains or ())
    nomad.wait_until(lambda: idle_only(nomad, own), 60, f"the domain of {job_id} to be gone", every=0.5)


@dataclass
class Pushed:
    """One job: its breakdown rows (one per allocation), the pusher's PUT round trip and the
    client status its task reached."""

    rows: list[bd.TaskBreakdown]
    submit_rtt_ms: float
    status: str

    @property
    def total(self) -> float | None:
        return self.rows[-1].phases.get("total") if self.rows else None


def push(
    nomad: NomadDom0,
    api: bd.NomadAPI,
    path: StartPath,
    job: dict,
    job_id: str,
    timeout: float,
    own_domains: str | tuple[str, ...],
) -> Pushed:
    """Submit ``job`` as ``job_id`` with the path's task settings, wait until it has started, read
    its breakdown, stop and purge it and wait until its guest is gone."""
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
    rtt = round((time.monotonic() - t0) * 1000, 1)  # the pusher's own view, host clock
    alloc = wait_started(nomad, job_id, timeout)
    report = bd.collect(api, job_id)
    stop_and_purge(nomad, job_id, own_domains)
    return Pushed(report.rows, rtt, alloc["ClientStatus"])


def wrong_path(path: StartPath, rows: list[bd.TaskBreakdown]) -> bool:
    """The driver started the task another way than the path means (a pool miss starts cold)."""
    return any(r.started and r.start_path != path.start_path for r in rows)


def run_path(nomad: NomadDom0, path: StartPath, job: dict, n: int, timeout: float) -> dict[str, Any]:
    """Sequential mode: ``n`` jobs of one path, one after another."""
    api = bd.NomadAPI(nomad.addr, env={})
    rows: list[bd.TaskBreakdown] = []
    rtts: list[float] = []
    wrong: list[str] = []
    progress = Progress(path.name, n)
    try:
        for i in range(n):
            job_id = f"inst-{path.name}-{i + 1:03d}"
            if path.settle is not None:
                progress.show(f"waiting for {path.settle_what}")
                nomad.wait_until(lambda: path.settle(nomad), 600, path.settle_what, every=1.0)
            progress.show(f"{job_id} submitted")
            pushed = push(nomad, api, path, job, job_id, timeout, path.own_domains)
            rows.extend(pushed.rows)
            rtts.append(pushed.submit_rtt_ms)
            if wrong_path(path, pushed.rows):
                wrong.append(job_id)
            total = pushed.total
            progress.step(f"{job_id}: {pushed.status}" + (f", {total / 1000:.1f} s submit→started" if total else ""))
    finally:
        progress.close()
    return {"rows": rows, "warmup_rows": [], "submit_rtt_ms": rtts, "wrong_start_path": wrong}


def run_rounds(
    nomad: NomadDom0, paths: list[StartPath], job: dict, rounds: int, warmup: int, timeout: float
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], str | None]:
    """Alternating mode: ``rounds`` rounds of one job per path on the agent that serves them all,
    the order rotating every round, the first ``warmup`` rounds kept apart (dropped from the
    statistics).  Before every job, whatever its path, the same preconditions are waited for
    (outside the timed span): no task guest left and every path's settle condition (the pool full
    and idle).  Returns per path its rows, the round log, and the error that stopped the run."""
    api = bd.NomadAPI(nomad.addr, env={})
    own = tuple(p.own_domains for p in paths if p.own_domains)
    settles = [p for p in paths if p.settle is not None]
    what = ", ".join(["no task guest left", *(p.settle_what for p in settles), "no evaluation pending", "dom0 quiet"])

    def settled() -> bool:
        return (
            idle_only(nomad, own)
            and all(p.settle(nomad) for p in settles if p.settle is not None)
            and no_pending_evaluations(nomad)
            and dom0_quiet(nomad)
        )

    out: dict[str, dict[str, Any]] = {
        p.name: {"rows": [], "warmup_rows": [], "submit_rtt_ms": [], "wrong_start_path": []} for p in paths
    }
    log: list[dict[str, Any]] = []
    error: str | None = None
    progress = Progress("rounds", rounds * len(paths))
    try:
        for r in range(rounds):
            k = r % len(paths)
            order = paths[k:] + paths[:k]
            entry: dict[str, Any] = {
                "round": r,
                "warmup": r < warmup,
                "order": [p.name for p in order],
                "total_ms": {},
            }
            log.append(entry)
            for path in order:
                job_id = f"inst-{path.name}-{r:03d}"
                progress.show(f"round {r}{' (warm-up)' if r < warmup else ''}: waiting for {what}")
                nomad.wait_until(settled, 600, what, every=1.0)
                progress.show(f"{job_id} submitted")
                pushed = push(nomad, api, path, job, job_id, timeout, own)
                dest = out[path.name]
                dest["warmup_rows" if r < warmup else "rows"].extend(pushed.rows)
                if r >= warmup:
                    dest["submit_rtt_ms"].append(pushed.submit_rtt_ms)
                if wrong_path(path, pushed.rows):
                    dest["wrong_start_path"].append(job_id)
                total = pushed.total
                entry["total_ms"][path.name] = None if total is None else round(total, 3)
                progress.step(
                    f"{job_id}: {pushed.status}" + (f", {total / 1000:.2f} s submit→started" if total else "")
                )
    except (AssertionError, OSError, bd.BreakdownError, SystemExit) as exc:
        # Every path runs on this one agent: a failure ends the run; what was measured is kept.
        error = str(exc)
        print(f"\nthe alternating run stopped: {exc}", file=sys.stderr)
    finally:
        progress.close()
    return out, log, error


def measured_totals(path: StartPath, r: dict[str, Any]) -> list[float]:
    """``total`` of every measured job that started the way its path means, in ms."""
    wrong = set(r.get("wrong_start_path") or ())
    return [
        float(x.phases["total"])
        for x in r["rows"]
        if x.started and x.phases.get("total") is not None and x.job_id not in wrong
    ]


def print_spread(totals: dict[str, dict[str, Any]]) -> None:
    print("\njob submitted → task Started (total)   median      min      p25      p75      max   n  (ms)")
    for name, d in totals.items():
        print(
            f"  {name:36s} {d['median']:8.1f} {d['min']:8.1f} {d['p25']:8.1f} {d['p75']:8.1f} {d['max']:8.1f}"
            f" {len(d['samples']):3d}"
        )


def source_state() -> dict[str, Any]:
    """The commit the plugin was built from, and the files of the plugin's sources that differed
    from it (the working tree is what ``make dist`` packs)."""
    import subprocess

    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "xen_driver", "packaging", "tools/dist.py")
    return {"commit": git("rev-parse", "--short=12", "HEAD") or None, "uncommitted": changed.splitlines()}


def merge_pool_json(section: dict[str, Any], path: Path, key: str = POOL_JSON_KEY) -> None:
    """Read-modify-write of bench/results/pool.json: only ``key`` changes."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[key] = section
    path.write_text(json.dumps(doc, indent=2) + "\n")  # as bench/pool.py writes it: the other keys keep their bytes


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-n",
        type=int,
        default=5,
        help="jobs per start path (default 5); in the alternating mode, rounds, the first --warmup of them dropped",
    )
    parser.add_argument(
        "--paths", default="xl,pool", help=f"comma-separated start paths of {sorted(START_PATHS)} (default xl,pool)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="all jobs of one path, then the next, each path under its own agent config, nothing dropped"
        " (default: alternating rounds on one agent)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="alternating mode: rounds dropped as warm-up (default 1)")
    parser.add_argument(
        "--log-collection",
        choices=("nomad", "driver"),
        default="nomad",
        help="the plugin's log_collection for every path: Nomad's logmon per task (default) or the driver"
        " writing the log files itself",
    )
    parser.add_argument("--kvm", action="store_true", help="boot the testbed with hardware KVM instead of TCG")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a job may take to start")
    parser.add_argument("--out", default=str(RESULTS / "instantiation"), help="results path without suffix")
    parser.add_argument(
        "--pool-json",
        default=str(RESULTS / "pool.json"),
        help=f"where an alternating xl,pool run merges its {POOL_JSON_KEY} section ('' : nowhere)",
    )
    args = parser.parse_args()

    paths = []
    for name in [p.strip() for p in args.paths.split(",") if p.strip()]:
        if name not in START_PATHS:
            parser.error(f"unknown start path {name!r}: one of {', '.join(START_PATHS)}")
        if not START_PATHS[name].ready:
            parser.error(f"start path {name!r}: {START_PATHS[name].not_ready}")
        if START_PATHS[name] not in paths:
            paths.append(START_PATHS[name])
    if not paths:
        parser.error("no start path given")
    alternate = not args.sequential
    union: tuple[dict[str, Any], str] = ({}, "")
    if alternate:
        if not 0 <= args.warmup < args.n:
            parser.error(f"-n {args.n} rounds leave none measured after --warmup {args.warmup}")
        try:
            union = union_config(paths)
            union[0]["log_collection"] = args.log_collection
        except Incompatible as exc:
            parser.error(f"{exc}: they cannot alternate on one agent; measure them with --sequential")
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
    round_log: list[dict[str, Any]] = []
    run_error: str | None = None
    print(f"booting the testbed ({'kvm' if args.kvm else 'tcg'}); run directory {run_dir}", file=sys.stderr)
    with Testbed(image_dir=images, scratch_dir=run_dir, forwards=(4646,), kvm=args.kvm) as tb:
        # The run's date and duration start once the testbed is ours (it may wait for another's).
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
        wall = time.monotonic()
        lock_wait = getattr(tb, "lock_wait_s", None)
        load = tb.run("cat /proc/loadavg", check=False).stdout.strip()
        tb.write_file("/var/lib/ndx-bench/ndx-unikernel", unikernel.read_bytes())
        nomad = NomadDom0(tb, run_dir, "/var/lib/ndx-bench/ndx-unikernel")
        plugin_source = source_state()  # install() packs the working tree into dist/ when it is newer
        nomad.install()
        job: dict | None = None
        current: str | None = None

        def ensure_agent(wanted: str) -> dict:
            """The agent runs ``wanted``; returns the parsed job."""
            nonlocal current, job
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
            return job

        try:
            if alternate:
                node: dict = {}
                try:
                    parsed = ensure_agent(agent_config(base_agent, *union))
                    node = nomad.node()
                    out, round_log, run_error = run_rounds(nomad, paths, parsed, args.n, args.warmup, args.timeout)
                except (AssertionError, OSError, bd.BreakdownError, SystemExit) as exc:
                    run_error = str(exc)
                    print(f"the agent for the alternating run failed: {exc}", file=sys.stderr)
                    out = {p.name: {"rows": [], "warmup_rows": [], "submit_rtt_ms": []} for p in paths}
                for path in paths:
                    results[path.name] = {"path": path, "node": node, **out[path.name]}
            else:
                for path in paths:
                    node = {}
                    try:
                        settings = {**path.plugin_config, "log_collection": args.log_collection}
                        parsed = ensure_agent(agent_config(base_agent, settings, path.plugin_hcl))
                        node = nomad.node()
                        seq = run_path(nomad, path, parsed, args.n, args.timeout)
                    except (AssertionError, OSError, bd.BreakdownError, SystemExit) as exc:
                        # One path failing must not cost the others' results.
                        print(f"start path {path.name} failed: {exc}", file=sys.stderr)
                        results[path.name] = {
                            "path": path,
                            "node": node,
                            "rows": [],
                            "warmup_rows": [],
                            "submit_rtt_ms": [],
                            "error": str(exc),
                        }
                        continue
                    results[path.name] = {"path": path, "node": node, **seq}
        finally:
            nomad.stop()
        boot = dict(tb.boot_timings)
    wall = time.monotonic() - wall

    all_rows = [row for r in results.values() for row in (*r["warmup_rows"], *r["rows"])]
    phases = bd.phase_list([n for row in all_rows for n in row.phases])
    accel = "KVM" if args.kvm else "TCG software emulation"
    measured = args.n - args.warmup if alternate else args.n
    conditions: dict[str, Any] = {
        "testbed": f"Xen under QEMU ({accel}), 2 vCPUs, 3 GiB, dom0 1 GiB",
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "nomad": (REPO / "tools" / "nomad" / "VERSION").read_text().strip(),
        "job": "nomad-jobs/clickos.nomad (ClickOS-style unikernel, 16 MiB, one vif, Click configuration via XenStore)",
    }
    if alternate:
        conditions |= {
            "mode": "alternating: one agent for every path, one job per path per round, the order rotating per round",
            "submission": "PUT /v1/jobs one job at a time; each waits (0.25 s API poll) until its task has started,"
            " is measured, stopped and purged",
            "precondition": "before every job, whatever its path, outside the timed span: no task guest left, every"
            " pool full and idle (members built, recorded and paused, no build running; the node's"
            " driver.xen.pool.<name>.ready attribute showing it), no evaluation pending on the server (the"
            " node-update evaluations of that attribute change done), and dom0 quiet (at most"
            f" {QUIET_BUSY:.0%} of its CPU busy over {QUIET_WINDOW_S:g} s)",
            "agent_plugin_config": union[0],
            "agent_plugin_blocks": union[1],
            "rounds": args.n,
            "warmup_rounds_dropped": args.warmup,
            "measured_rounds": measured,
        }
    else:
        conditions |= {
            "mode": "sequential: all jobs of one path, then the next, each path under its own agent config;"
            " nothing dropped",
            "submission": "PUT /v1/jobs one job at a time; each waits until its task has started,"
            " is measured, stopped and purged",
            "jobs_per_path": args.n,
        }
    conditions |= {
        "plugin_source": plugin_source,
        "dom0_loadavg_at_start": load,
        "testbed_boot_s": boot,
        "waited_for_another_testbed_s": lock_wait,
        "wall_s_after_boot": round(wall, 1),
    }
    doc: dict[str, Any] = {
        "date": date,
        "conditions": conditions,
        "unit": "ms",
        "clocks": bd.CLOCKS,
        "phases": [{"name": p.name, "span": p.span, "clock": p.clock} for p in phases],
        "paths": {},
    }
    if run_error:
        doc["error"] = run_error
    bars: list[tuple[str, dict[str, float | None]]] = []
    totals: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        rows = r["rows"]
        node = r["node"]
        if node:
            doc["conditions"].setdefault("xen", node["Attributes"].get("driver.xen.version"))
        summary = bd.summarize(rows, phases)
        samples = measured_totals(r["path"], r)
        if samples:
            totals[name] = spread_ms([x / 1000 for x in samples])
        doc["paths"][name] = {
            "description": r["path"].description,
            "plugin_config": r["path"].plugin_config,
            "task_config": r["path"].task_config,
            "started": sum(1 for x in rows if x.started),
            "of": len(rows),
            "submit_rtt_ms": r["submit_rtt_ms"],
            **({"error": r["error"]} if r.get("error") else {}),
            **({"wrong_start_path": r["wrong_start_path"]} if r.get("wrong_start_path") else {}),
            "total_ms": totals.get(name),
            "summary_ms": summary,
            "allocations": [x.to_json(phases) for x in rows],
            **({"warmup_allocations": [x.to_json(phases) for x in r["warmup_rows"]]} if alternate else {}),
        }
        report = bd.Report(nomad.addr, "default", name, "job", f"inst-{name}-* ({len(rows)} jobs)", "xen", rows)
        print(f"\n== start path {name}: {r['path'].description}")
        print(bd.render_table(report), end="")
        bars += [(f"{name} {x.job_id.rsplit('-', 1)[-1]}", dict(x.phases)) for x in rows if x.started]
        bars.append((f"{name} median", {k: (v or {}).get("median") for k, v in summary.items()}))
    doc["total_ms"] = totals
    ratio = None
    if alternate and "pool" in totals and "xl" in totals:
        ratio = round(totals["pool"]["median"] / totals["xl"]["median"], 4)
        doc["pool_over_cold"] = ratio
        doc["goal_pool_over_cold"] = GOAL_POOL_OVER_COLD
    if alternate:
        doc["rounds"] = round_log

    if totals:
        print_spread(totals)
    if ratio is not None:
        print(
            f"pool / cold (xl), medians: {ratio:.3f} (goal <= {GOAL_POOL_OVER_COLD});"
            f" {measured} alternating rounds, {args.warmup} warm-up round(s) dropped"
        )

    out = Path(args.out)
    if args.log_collection == "driver" and args.out == parser.get_default("out"):
        out = out.with_name(out.name + "_driver_logs")  # beside the default run's files, not over them
    json_key = POOL_JSON_KEY_DRIVER_LOGS if args.log_collection == "driver" else POOL_JSON_KEY
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    how = (
        f"{measured} alternating rounds on one agent (+{args.warmup} warm-up dropped)"
        if alternate
        else f"{args.n} jobs per start path, one path after the other"
    )
    bd.plot_stacked(
        bars,
        str(out.with_suffix(".png")),
        title=f"ClickOS instantiation on Nomad {doc['conditions']['nomad']}"
        f" + Xen {doc['conditions'].get('xen', '?')}, by phase",
        subtitle=f"{date}; testbed: {doc['conditions']['testbed']}; {how}",
        phases=phases,
    )
    written = [str(out.with_suffix(".json")), str(out.with_suffix(".png"))]
    failed = [x for r in results.values() for x in (*r["warmup_rows"], *r["rows"]) if not x.started]
    wrong = [j for r in results.values() for j in r.get("wrong_start_path") or ()]
    errors = run_error or any(r.get("error") for r in results.values())
    if wrong:
        print(f"started another way than their path means (left out of total_ms): {', '.join(wrong)}")
    if ratio is not None and args.pool_json and not (failed or wrong or errors):
        section = {
            "date": date,
            "source": "bench/instantiation.py (make instantiation); every job's breakdown in"
            " bench/results/instantiation.json",
            "span": "job submitted (Nomad's SubmitTime) -> task Started event, Nomad's own time stamps (one agent:"
            " server and client share the clock)",
            "conditions": f"Xen 4.17 testbed under QEMU ({'kvm' if args.kvm else 'tcg'}) on a"
            f" {os.cpu_count()}-core host; Nomad {conditions['nomad']}, one agent (server + client) in dom0 whose"
            " plugin config is the union both paths need (pool profile clickos, size 1, 16 MiB; fingerprint 5 s;"
            f" log_collection {args.log_collection!r}),"
            " so cold jobs run beside the idle member too; nomad-jobs/clickos.nomad through PUT /v1/jobs, one job"
            " at a time, the same 0.25 s API poll for Started; cold = the job as it is (xl create), pool = the"
            ' same job with pool = "clickos"; order rotating per round, first round dropped; before every job'
            " the pool full and idle, no task guest left, no evaluation pending and dom0 quiet (waited outside"
            " the timed span)",
            "accel": "kvm" if args.kvm else "tcg",
            "log_collection": args.log_collection,
            "rounds": measured,
            "warmup_rounds_dropped": args.warmup,
            "pool": totals["pool"],
            "cold": totals["xl"],
            "pool_over_cold": ratio,
            "goal_pool_over_cold": GOAL_POOL_OVER_COLD,
        }
        merge_pool_json(section, Path(args.pool_json), json_key)
        written.append(f"{args.pool_json} ({json_key})")
    print(f"\nwritten: {', '.join(written)}  ({wall:.0f} s)")
    return 1 if failed or wrong or errors else 0


if __name__ == "__main__":
    sys.exit(main())
