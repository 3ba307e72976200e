"""Many guests in one job, started concurrently by a real Nomad agent on the testbed (issue 11).

One service job with a ``count`` of N copies of our test unikernel (the 16 MiB guest the other
modules use, ticking) goes to the agent's HTTP API.  N is as many as the testbed holds: the guests
must fit into Xen's free memory (``xl info``, less a margin) and the allocations into Nomad's own
accounting of the node (the memory, disk and CPU it fingerprinted for dom0, with
``ephemeral_disk { size = 10 }`` and a 2 x 2 MB ``logs`` block per allocation); at least
``MIN_GUESTS``.  A testbed holding fewer is a setup problem and fails, naming the limit.

Checked: every allocation and task runs, with one domain each; each allocation's stdout (what
``nomad alloc logs`` prints, read through ``/v1/client/fs/logs``) holds its own guest's console
(its cmdline names its allocation index), its READY line and a tick; no task restarted, failed or
was reported dead; after ``job stop`` every task completed, no domain is left in ``xl list`` and
no file is left in the driver's state and console directories nor in Nomad's allocation
directories once the client's garbage collection ran.

The wall times (submit → all running, stop → all stopped) and the conditions go to
``bench/results/scale_testbed.json``.

N is also capped at ``MAX_GUESTS`` (``NDX_SCALE_MAX_GUESTS`` sets another cap, never below
``MIN_GUESTS``) so the module keeps to its share of the suite's time: under TCG the Nomad client's
per-allocation work (task directory, a logmon process) and ``xl create`` share dom0's two emulated
CPUs, and at the 55 allocations Nomad's accounting admits on the testbed, 11 guests were running
after 6 minutes (logmon launches timing out, domain builds of 30-190 s).

The agent runs the plugin with ``log_collection = "driver"``, the setting the README gives for a
dense node: the driver writes each task's log files, and Nomad starts no logmon process per task.
With Nomad's logmon, the launch of 24 logmon processes at once (each a copy of the Nomad binary,
which go-plugin gives a minute to answer) on dom0's two emulated CPUs timed out for 3 of 24
allocations in one CI run, and those tasks failed before the driver saw them.  The logmon path
itself is proven by the other modules, one allocation at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
import urllib.error
import urllib.request

import pytest

from testbed.nomad import (
    CONSOLE_DIR,
    DATA_DIR,
    IMAGE_DIR,
    REPO,
    STATE_DIR,
    NomadDom0,
    agent_config,
    plugin_pids,
)
from xen_driver import breakdown as bd

pytestmark = [pytest.mark.xen, pytest.mark.nomad, pytest.mark.slow]

RESULTS = REPO / "bench" / "results" / "scale_testbed.json"
JOB = "scale"
GROUP = "guests"
TASK = "guest"
MIN_GUESTS = 20
MAX_GUESTS = 24
GUEST_MEMORY_MIB = 16  # Xen memory of each guest = the task's resources.memory (Nomad's accounting)
TASK_CPU_MHZ = 20
EPHEMERAL_DISK_MB = 10
TICK_S = 5
# Xen memory kept free: the larger of this and XEN_MARGIN_FRACTION of free_memory.
XEN_MARGIN_MIB = 64
XEN_MARGIN_FRACTION = 0.05

# Deadlines: generous for a TCG-emulated Xen on a 2-core host; every wait polls its condition.
RUNNING_DEADLINE_S = 600
LOGS_DEADLINE_S = 180
STOPPED_DEADLINE_S = 600
GC_DEADLINE_S = 180


def scale_agent_config() -> str:
    """nomad-jobs/agent.hcl with the driver writing the tasks' log files (no logmon per task)."""
    text = agent_config("xl")
    line = 'clickos_layout     = "cosmos"'
    assert line in text, "nomad-jobs/agent.hcl no longer has the clickos_layout line this test extends"
    # (the job's own `logs {}` block does not reach the driver: the same limits, set here)
    settings = 'log_collection     = "driver"\n    log_max_files      = 2\n    log_max_file_size_mb = 2'
    return text.replace(line, f"{line}\n    {settings}")


@pytest.fixture(scope="module")
def nomad(testbed, testbed_run_dir, unikernel):
    agent = NomadDom0(testbed, testbed_run_dir, unikernel, config=scale_agent_config())
    agent.install()
    agent.start()
    yield agent
    agent.stop()


def scale_job(count: int) -> str:
    return f"""
job "{JOB}" {{
  datacenters = ["*"]
  type        = "service"

  group "{GROUP}" {{
    count = {count}

    # Nomad's default of 300 MB of ephemeral disk per allocation would cap the node at a few
    # allocations; a unikernel needs none (10 MB is Nomad's minimum), its logs must fit in it.
    ephemeral_disk {{
      size = {EPHEMERAL_DISK_MB}
    }}

    # A guest that dies stays dead: any restart or reschedule would hide a lost guest.
    restart {{
      attempts = 0
      mode     = "fail"
    }}

    reschedule {{
      attempts  = 0
      unlimited = false
    }}

    task "{TASK}" {{
      driver = "xen"

      logs {{
        max_files     = 2
        max_file_size = 2
      }}

      config {{
        kernel       = "{IMAGE_DIR}/ndx-unikernel"
        cmdline      = "tick={TICK_S} alloc=${{NOMAD_ALLOC_INDEX}}"
        boot_marker  = "NDX-GUEST READY"
        boot_timeout = "300s"
      }}

      kill_timeout = "10s"

      resources {{
        cpu    = {TASK_CPU_MHZ}
        memory = {GUEST_MEMORY_MIB}
      }}
    }}
  }}
}}
"""


# ---------------------------------------------------------------- helpers


def api(nomad: NomadDom0, path: str, method: str = "GET", body=None):
    return nomad.api(path, method, body)


def raw_get(nomad: NomadDom0, path: str) -> bytes:
    with urllib.request.urlopen(nomad.addr + path, timeout=60) as resp:
        return resp.read()


def allocs(nomad: NomadDom0) -> list[dict]:
    try:
        return api(nomad, f"/v1/job/{JOB}/allocations")
    except (urllib.error.URLError, OSError, ValueError):
        return []


def task_state(alloc: dict) -> dict:
    return (alloc.get("TaskStates") or {}).get(TASK) or {}


def alloc_index(alloc: dict) -> int:
    return int(alloc["Name"].rsplit("[", 1)[1].rstrip("]"))


def events_text(alloc: dict) -> str:
    return "\n".join(
        f"  {e['Type']}: {e.get('DisplayMessage') or ''} {e.get('Details') or ''}"
        for e in task_state(alloc).get("Events") or []
    )


def xl_domains(tb) -> list[str]:
    out = tb.run(["xl", "list"], timeout=120).stdout.splitlines()[1:]
    return [line.split()[0] for line in out if line.split() and line.split()[0] != "Domain-0"]


def xen_free_mib(tb) -> int:
    return int(tb.run("xl info | awk '$1 == \"free_memory\" {print $3}'", timeout=60).stdout.strip())


def dom0_used_mib(tb) -> int:
    return int(tb.run("free -m | awk '$1 == \"Mem:\" {print $3}'").stdout.strip())


def plugin_rss_mib(tb) -> float | None:
    pids = plugin_pids(tb)
    if not pids:
        return None
    r = tb.run(f"awk '/^VmRSS/ {{print $2}}' /proc/{pids[0]}/status", check=False)
    return round(int(r.stdout.strip()) / 1024, 1) if r.ok and r.stdout.strip() else None


def nomad_capacity(nomad: NomadDom0) -> dict:
    """What Nomad's scheduler can still give on the node: its fingerprint less its reservations
    and the non-terminal allocations already there."""
    node = nomad.node()
    res, rsv = node["NodeResources"], node.get("ReservedResources") or {}
    free = {
        "memory_mb": res["Memory"]["MemoryMB"] - (rsv.get("Memory") or {}).get("MemoryMB", 0),
        "disk_mb": res["Disk"]["DiskMB"] - (rsv.get("Disk") or {}).get("DiskMB", 0),
        "cpu_mhz": res["Cpu"]["CpuShares"] - (rsv.get("Cpu") or {}).get("CpuShares", 0),
    }
    for a in api(nomad, f"/v1/node/{node['ID']}/allocations"):
        if a["ClientStatus"] in ("pending", "running"):
            for t in ((a.get("AllocatedResources") or {}).get("Tasks") or {}).values():
                free["memory_mb"] -= (t.get("Memory") or {}).get("MemoryMB", 0)
                free["cpu_mhz"] -= (t.get("Cpu") or {}).get("CpuShares", 0)
            free["disk_mb"] -= ((a.get("AllocatedResources") or {}).get("Shared") or {}).get("DiskMB", 0)
    return free


def plan_guests(xen_free: int, nomad_free: dict) -> tuple[int, dict]:
    margin = max(XEN_MARGIN_MIB, int(xen_free * XEN_MARGIN_FRACTION))
    fits = {
        "xen_memory": (xen_free - margin) // GUEST_MEMORY_MIB,
        "nomad_memory": nomad_free["memory_mb"] // GUEST_MEMORY_MIB,
        "nomad_disk": nomad_free["disk_mb"] // EPHEMERAL_DISK_MB,
        "nomad_cpu": nomad_free["cpu_mhz"] // TASK_CPU_MHZ,
    }
    cap = max(MIN_GUESTS, int(os.environ.get("NDX_SCALE_MAX_GUESTS") or MAX_GUESTS))
    n = min(*fits.values(), cap)
    return n, {"xen_margin_mib": margin, "fits": fits, "time_budget_cap": cap}


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The largest number of intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def spread(values: list[float]) -> dict:
    if not values:
        return {}
    values = sorted(values)
    return {
        "median": round(statistics.median(values), 1),
        "min": round(values[0], 1),
        "max": round(values[-1], 1),
    }


def write_results(doc: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


# ---------------------------------------------------------------- the test


def test_many_guests_in_one_job_run_log_and_stop_cleanly(nomad, testbed, testbed_report):
    tb = testbed
    assert xl_domains(tb) == [], "the module's agent should start with no guest"
    xen_free = xen_free_mib(tb)
    nomad_free = nomad_capacity(nomad)
    n, plan = plan_guests(xen_free, nomad_free)
    doc: dict = {
        "what": "one Nomad job of N unikernel guests (count = N) through a real Nomad agent on the testbed",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": (
            "Xen 4.17 testbed under QEMU emulation (TCG, 2 vCPUs, 3 GiB, dom0 1 GiB) on a shared 2-core host; "
            "Nomad 1.6.3 server + client in dom0 with the example agent.hcl (xl backend) and "
            'log_collection = "driver" (no logmon per task); test unikernel '
            f"({GUEST_MEMORY_MIB} MiB, 1 vCPU, no vif, tick={TICK_S}); restart/reschedule off; "
            "times measured on the host, polling the agent's HTTP API once a second"
        ),
        "accel": "kvm" if tb.kvm else "tcg",
        "nomad_version": nomad.cli("version").stdout.split()[1],
        "guest_memory_mib": GUEST_MEMORY_MIB,
        "task_resources": {
            "cpu_mhz": TASK_CPU_MHZ,
            "memory_mb": GUEST_MEMORY_MIB,
            "ephemeral_disk_mb": EPHEMERAL_DISK_MB,
        },
        "xen_free_memory_mib_before": xen_free,
        "nomad_node_free": nomad_free,
        "planned": plan,
        "N": n,
        "result": "FAIL",
        "host_load_average_1min_before": round(os.getloadavg()[0], 2),
    }
    binding = min(plan["fits"], key=plan["fits"].get)
    testbed_report.append(
        f"scale: N = {n} guests (fits {plan['fits']}, limit {binding}; cap {plan['time_budget_cap']}; Xen free {xen_free} MiB)"
    )
    if plan["fits"][binding] < MIN_GUESTS:
        write_results(doc | {"result": f"setup problem: only {n} guests fit (limit {binding})"})
        pytest.fail(
            f"testbed setup problem: only {n} guests of {GUEST_MEMORY_MIB} MiB fit, at least {MIN_GUESTS} are needed"
            f" (limit: {binding}; fits: {plan['fits']}; Xen free_memory {xen_free} MiB; Nomad node free {nomad_free})",
            pytrace=False,
        )

    dom0_used_before = dom0_used_mib(tb)
    submitted = False
    try:
        # ---- submit through the HTTP API (parse the HCL, register the job)
        parsed = api(nomad, "/v1/jobs/parse", "POST", {"JobHCL": scale_job(n), "Canonicalize": True})
        t_submit = time.monotonic()
        reg = api(nomad, "/v1/jobs", "POST", {"Job": parsed})
        submitted = True

        def evaluated():
            ev = api(nomad, f"/v1/evaluation/{reg['EvalID']}")
            return ev if ev["Status"] in ("complete", "failed", "canceled", "blocked") else None

        ev = nomad.wait_until(evaluated, 120, "the job's evaluation")
        assert ev["Status"] == "complete" and not ev.get("FailedTGAllocs"), (
            f"Nomad did not place all {n} allocations: {json.dumps(ev.get('FailedTGAllocs'), indent=1)[:3000]}"
        )

        # ---- all running
        def all_running():
            al = allocs(nomad)
            bad = [a for a in al if a["ClientStatus"] in ("failed", "lost", "complete")]
            if bad:
                full = api(nomad, f"/v1/allocation/{bad[0]['ID']}")
                raise AssertionError(
                    f"{len(bad)} allocation(s) ended while starting; first {full['Name']} {full['ClientStatus']}:\n"
                    + events_text(full)
                )
            running = [a for a in al if a["ClientStatus"] == "running" and task_state(a).get("State") == "running"]
            doc["running_at_last_poll"] = {"s": round(time.monotonic() - t_submit, 1), "running": len(running)}
            return al if len(al) == n and len(running) == n else None

        running_allocs = nomad.wait_until(all_running, RUNNING_DEADLINE_S, f"all {n} allocations running", every=1)
        t_running = time.monotonic()
        doc["submit_to_all_running_s"] = round(t_running - t_submit, 1)

        domains = xl_domains(tb)
        assert len(domains) == n, f"{len(domains)} domains for {n} running allocations: {domains}"
        full = {a["ID"]: api(nomad, f"/v1/allocation/{a['ID']}") for a in running_allocs}
        for alloc_id, a in full.items():
            mine = [d for d in domains if d.startswith(f"nomad-{TASK}-{alloc_id[:8]}-")]
            assert len(mine) == 1, f"allocation {a['Name']} has domains {mine}"
        assert sorted(alloc_index(a) for a in full.values()) == list(range(n))
        doc["xen_free_memory_mib_running"] = xen_free_mib(tb)
        doc["dom0_used_mib"] = {"before": dom0_used_before, "running": dom0_used_mib(tb)}
        doc["plugin_rss_mib_running"] = plugin_rss_mib(tb)
        logmons = tb.run(["pgrep", "-f", "nomad logmon"], check=False).stdout.split()
        assert logmons == [], f"{len(logmons)} logmon processes run although the driver collects the logs"

        # ---- every guest's console in its allocation's logs (what `nomad alloc logs` prints)
        def logs_of(alloc_id: str) -> str:
            try:
                data = raw_get(
                    nomad, f"/v1/client/fs/logs/{alloc_id}?task={TASK}&type=stdout&origin=start&offset=0&plain=true"
                )
            except urllib.error.HTTPError:
                return ""
            return data.decode(errors="replace")

        def has_console(alloc: dict, text: str) -> bool:
            return (
                f"cmdline: tick={TICK_S} alloc={alloc_index(alloc)}\n" in text
                and "NDX-GUEST READY" in text
                and "\ntick 1\n" in text
            )

        pending = dict(full)

        def all_logged():
            for alloc_id in list(pending):
                if has_console(pending[alloc_id], logs_of(alloc_id)):
                    del pending[alloc_id]
            return not pending

        try:
            nomad.wait_until(all_logged, LOGS_DEADLINE_S, "every guest's console in `nomad alloc logs`", every=2)
        except AssertionError:
            first = next(iter(pending.values()))
            raise AssertionError(
                f"{len(pending)} of {n} allocations lack their guest's console lines; {first['Name']} has:\n"
                + logs_of(first["ID"])[-2000:]
            ) from None

        # ---- none reported dead, none restarted (fresh view, after the logs wait)
        full = {aid: api(nomad, f"/v1/allocation/{aid}") for aid in full}
        for a in full.values():
            st = task_state(a)
            types = [e["Type"] for e in st.get("Events") or []]
            text = events_text(a)
            assert a["ClientStatus"] == "running" and st.get("State") == "running", f"{a['Name']}:\n{text}"
            assert st.get("Restarts", 0) == 0 and not st.get("Failed"), f"{a['Name']}:\n{text}"
            assert not {"Restarting", "Terminated", "Killing", "Driver Failure", "Not Restarting"} & set(types), (
                f"{a['Name']}:\n{text}"
            )
            assert "outside of Nomad" not in text and "vanished" not in text, f"{a['Name']}:\n{text}"
        assert len(xl_domains(tb)) == n

        # How concurrent the starts were, from the client's own event times (dom0 clock).
        intervals, builds, totals, boots = [], [], [], []
        for a in full.values():
            ev = task_state(a).get("Events") or []
            received = next((e["Time"] for e in ev if e["Type"] == "Received"), None)
            started = next((e["Time"] for e in ev if e["Type"] == "Started"), None)
            assert received and started, f"{a['Name']}: no Received/Started event:\n{events_text(a)}"
            intervals.append((received, started))
            timing = [e for e in ev if bd.is_timing_event(e)]
            if timing:
                d = timing[0]["Details"]
                builds.append(float(d.get("domain_build_ms", 0)))
                boots.append(float(d.get("boot_ms", 0)))
                totals.append(float(d["total_ms"]))
        job_submit_ns = api(nomad, f"/v1/job/{JOB}")["SubmitTime"]
        doc["starts"] = {
            "max_concurrent_received_to_started": max_overlap(intervals),
            "job_submit_to_last_started_s_dom0_clock": round((max(s for _, s in intervals) - job_submit_ns) / 1e9, 1),
            "job_submit_to_first_started_s_dom0_clock": round((min(s for _, s in intervals) - job_submit_ns) / 1e9, 1),
            "received_to_started_s": spread([(s - r) / 1e9 for r, s in intervals]),
            "driver_domain_build_ms": spread(builds),
            "driver_boot_ms": spread(boots),
            "driver_total_ms": spread(totals),
        }

        # ---- job stop: every task completes, no domain left
        t_stop = time.monotonic()
        api(nomad, f"/v1/job/{JOB}", "DELETE")

        def all_stopped():
            al = allocs(nomad)
            return al if al and all(a["ClientStatus"] in ("complete", "failed", "lost") for a in al) else None

        stopped = nomad.wait_until(all_stopped, STOPPED_DEADLINE_S, f"all {n} allocations stopped", every=1)
        t_stopped = time.monotonic()
        doc["stop_to_all_stopped_s"] = round(t_stopped - t_stop, 1)
        nomad.wait_until(lambda: xl_domains(tb) == [], 120, "no domain left in xl list", every=1)
        doc["stop_to_no_domain_s"] = round(time.monotonic() - t_stop, 1)
        failed = [a for a in stopped if a["ClientStatus"] != "complete"]
        if failed:
            a = api(nomad, f"/v1/allocation/{failed[0]['ID']}")
            raise AssertionError(
                f"{len(failed)} allocation(s) did not complete on stop; {a['Name']}:\n{events_text(a)}"
            )
        for a in stopped:
            st = task_state(a)
            assert st.get("State") == "dead" and not st.get("Failed") and st.get("Restarts", 0) == 0, (
                f"{a['Name']}: {st.get('State')} failed={st.get('Failed')} restarts={st.get('Restarts')}"
            )

        # ---- nothing left: driver state, consoles, and Nomad's allocation directories after GC
        nomad.wait_until(lambda: nomad.leftovers() == [], 60, "no driver or console file left", every=1)
        api(nomad, f"/v1/job/{JOB}?purge=true", "DELETE")
        submitted = False
        api(nomad, "/v1/client/gc", "PUT")

        def alloc_dirs():
            r = tb.run(f"ls -1A {DATA_DIR}/alloc 2>/dev/null || true", check=False)
            return [x for x in r.stdout.split() if x]

        try:
            nomad.wait_until(
                lambda: alloc_dirs() == [], GC_DEADLINE_S, "Nomad's allocation directories removed", every=2
            )
        except AssertionError:
            raise AssertionError(f"allocation directories left after client GC: {alloc_dirs()[:5]} ...") from None
        assert xl_domains(tb) == []
        r = tb.run(
            f"ls -1A {STATE_DIR}/domains {STATE_DIR}/tasks 2>/dev/null | grep -v ':$' | grep -v '^$';"
            # this job's console logs (other modules' guests are not this test's to judge)
            f" ls -1A {CONSOLE_DIR} | grep '^guest-nomad-{TASK}-' || true",
            check=False,
        )
        assert r.stdout.strip() == "", f"files left behind:\n{r.stdout}"
        doc["xen_free_memory_mib_after"] = xen_free_mib(tb)
        doc["dom0_used_mib"]["after"] = dom0_used_mib(tb)
        doc["left_behind"] = {"domains": 0, "driver_and_console_files": 0, "alloc_dirs": 0}
        doc["result"] = "pass"
        testbed_report.append(
            f"scale: {n} guests: submit -> all running {doc['submit_to_all_running_s']} s, "
            f"stop -> all stopped {doc['stop_to_all_stopped_s']} s (no domain {doc['stop_to_no_domain_s']} s)"
        )
    except BaseException as exc:
        doc["result"] = f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        raise
    finally:
        doc["host_load_average_1min_after"] = round(os.getloadavg()[0], 2)
        write_results(doc)
        if submitted:  # leave nothing behind for the next module, even after a failure
            try:
                api(nomad, f"/v1/job/{JOB}?purge=true", "DELETE")
                nomad.wait_until(lambda: xl_domains(tb) == [], 300, "the scale job's domains gone", every=2)
            except (AssertionError, OSError) as exc:  # the failure above is what matters
                testbed_report.append(f"scale: clean-up after failure incomplete: {exc}")
