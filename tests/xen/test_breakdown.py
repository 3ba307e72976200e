"""`nomad-driver-xen breakdown` against the real agent in the testbed's dom0 (issue 14).

``nomad job run nomad-jobs/clickos.nomad`` in dom0, then the installed command on the host reads the
agent's HTTP API (forwarded to a loopback port): every phase is there and non-negative, the driver
phases are the annotations of the driver's task event, and the phases add up to the total.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.xen, pytest.mark.nomad]

CLICKOS = "/src/nomad-jobs/clickos.nomad"
DRIVER_PHASES = ("validate", "render", "domain_build", "clickos_push", "unpause", "boot")
#: The driver's annotations are rounded to 0.1 ms each; everything else is in nanoseconds.
SUM_TOLERANCE_MS = 1.0


def breakdown(*args: str) -> subprocess.CompletedProcess:
    """The installed command (the virtualenv's console script), as an operator runs it."""
    script = Path(sys.executable).with_name("nomad-driver-xen")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "xen_driver"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMAD_")}
    return subprocess.run([*cmd, "breakdown", *args], capture_output=True, text=True, timeout=120, env=env)


def test_breakdown_of_clickos_matches_the_driver_event_and_adds_up(nomad, testbed_report):
    nomad.run_job(CLICKOS)
    alloc = nomad.wait_alloc("clickos", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", nomad.task_events(alloc, "firewall")

    def timing_event() -> dict | None:
        events = nomad.task_events(nomad.alloc(alloc["ID"]), "firewall")
        found = [e for e in events if e["Type"] == "Driver" and "total_ms" in (e.get("Details") or {})]
        return found[0] if found and any(e["Type"] == "Started" for e in events) else None

    event = nomad.wait_until(timing_event, 60, "the driver's timing event and the Started event")

    proc = breakdown("--json", "-address", nomad.addr, "clickos")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [row] = doc["allocations"]
    assert row["alloc_id"] == alloc["ID"] and row["started"] and row["same_clock"], row
    phases = row["phases_ms"]
    clocks = {p["name"]: p["clock"] for p in doc["phases"]}

    # Every phase measured, none negative.
    assert all(v is not None for v in phases.values()), phases
    assert all(v >= 0 for v in phases.values()), phases
    assert {clocks[n] for n in DRIVER_PHASES} == {"driver"}
    assert (clocks["server"], clocks["scheduling"], clocks["client"]) == ("server", "server", "client")

    # The driver phases are the task event's annotations.
    details = event["Details"]
    assert row["driver_annotations"] == details
    for name in DRIVER_PHASES:
        assert phases[name] == float(details[f"{name}_ms"]), name
    assert phases["driver_other"] == pytest.approx(
        float(details["total_ms"]) - sum(float(details[f"{n}_ms"]) for n in DRIVER_PHASES), abs=0.05 * 8
    )

    # The phases add up to the total (submission -> Started, one agent so one clock).
    parts = sum(v for k, v in phases.items() if k != "total")
    assert abs(parts - phases["total"]) <= SUM_TOLERANCE_MS, (parts, phases)
    # ... and the total is what Nomad itself says: from the job's SubmitTime to the Started event.
    job = nomad.api("/v1/job/clickos")
    started = [e for e in nomad.task_events(nomad.alloc(alloc["ID"]), "firewall") if e["Type"] == "Started"][0]
    assert phases["total"] == pytest.approx((started["Time"] - job["SubmitTime"]) / 1e6, abs=0.01)

    table = breakdown("-address", nomad.addr, alloc["ID"][:8])
    assert table.returncode == 0, table.stderr
    assert alloc["ID"][:8] in table.stdout and "clocks:" in table.stdout
    testbed_report.append("breakdown of clickos.nomad (ms): " + ", ".join(f"{k} {v}" for k, v in phases.items()))

    # Errors are one line and a non-zero exit.
    unknown = breakdown("-address", nomad.addr, "no-such-job")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.strip().count("\n") == 0 and "no job or allocation 'no-such-job'" in unknown.stderr

    nomad.stop_job("clickos", purge=False)
    alloc = nomad.wait_alloc("clickos", {"complete", "failed"}, timeout=120)
    assert alloc["ClientStatus"] == "complete", nomad.task_events(alloc, "firewall")
    assert nomad.domains() == []
    nomad.wait_until(lambda: nomad.leftovers() == [], 30, "no files left behind", every=0.5)
    nomad.stop_job("clickos")  # purge, so a later module's clickos job starts fresh
