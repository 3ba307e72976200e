"""Task stats in Nomad's own views, on real Xen through a real Nomad agent in dom0 (issue 9).

What an operator looks at: ``/v1/client/allocation/<id>/stats`` and ``nomad alloc status -stats``
for a xen task whose guest burns CPU (the unikernel's ``burn=<pct>`` mode). The agent runs with
``nomad-jobs/agent.hcl`` as shipped, telemetry block included.
"""

from __future__ import annotations

import re
import urllib.error

import pytest

from testbed.nomad import NomadDom0

pytestmark = [pytest.mark.xen, pytest.mark.nomad]

TASK = "burn"
MEMORY_MIB = 32
CPU_MHZ = 100  # the task's resources.cpu

JOB = f"""
job "burner" {{
  datacenters = ["*"]
  type        = "service"

  group "g" {{
    restart {{
      attempts = 0
      mode     = "fail"
    }}

    task "{TASK}" {{
      driver       = "xen"
      kill_timeout = "30s"

      config {{
        kernel       = "/var/lib/nomad-driver-xen/images/ndx-unikernel"
        cmdline      = "burn=50 tick=5"
        boot_marker  = "NDX-GUEST READY"
        boot_timeout = "60s"
      }}

      resources {{
        cpu    = {CPU_MHZ}
        memory = {MEMORY_MIB}
      }}
    }}
  }}
}}
"""


def _usage(nomad: NomadDom0, alloc_id: str) -> dict | None:
    """Tasks.<task> of the allocation's stats (ResourceUsage, Timestamp), or None while absent."""
    try:
        stats = nomad.api(f"/v1/client/allocation/{alloc_id}/stats")
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return None
    task = ((stats or {}).get("Tasks") or {}).get(TASK)
    return task if task and task.get("ResourceUsage") else None


def test_cpu_burning_guest_shows_memory_and_mhz_in_nomad(nomad, testbed_report):
    nomad.run_job(nomad.write_job("burner.nomad", JOB))
    alloc = nomad.wait_alloc("burner", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", nomad.task_events(alloc, TASK)
    alloc_id = alloc["ID"]

    # The stats API has a sample with the guest's memory and CPU in MHz.
    def measured() -> dict | None:
        task = _usage(nomad, alloc_id)
        if task is None:
            return None
        ru = task["ResourceUsage"]
        return task if ru["MemoryStats"]["RSS"] > 0 and ru["CpuStats"]["TotalTicks"] > 0 else None

    first = nomad.wait_until(measured, 180, f"RSS > 0 and TotalTicks > 0 in /v1/client/allocation/{alloc_id}/stats")
    mem, cpu = first["ResourceUsage"]["MemoryStats"], first["ResourceUsage"]["CpuStats"]
    # RSS is the domain's memory allocation: the task's memory (a PV guest may show a MiB less).
    assert abs(mem["RSS"] - MEMORY_MIB * 2**20) <= 2**20, mem
    assert "RSS" in mem["Measured"], mem
    # TotalTicks is sent but not listed as measured (the CLI has no column for it).
    assert cpu["Measured"] == ["Percent"], cpu
    assert cpu["Percent"] > 0, cpu

    # Live: the sample's timestamp moves on between two polls.
    second = nomad.wait_until(
        lambda: (t := _usage(nomad, alloc_id)) is not None and t["Timestamp"] > first["Timestamp"] and t,
        60,
        "a newer stats sample",
    )
    assert second["ResourceUsage"]["CpuStats"]["TotalTicks"] > 0, second
    testbed_report.append(
        "stats through the agent (burn=50): "
        f"RSS {mem['RSS'] / 2**20:.1f} MiB, CPU {cpu['Percent']:.1f} % = {cpu['TotalTicks']:.0f} MHz;"
        f" next sample {(second['Timestamp'] - first['Timestamp']) / 1e9:.1f} s later:"
        f" {second['ResourceUsage']['CpuStats']['Percent']:.1f} % = {second['ResourceUsage']['CpuStats']['TotalTicks']:.0f} MHz"
    )

    # The CLI: Memory Stats and CPU Stats tables, and MHz used out of the task's MHz.
    def cli() -> tuple[str, int] | None:
        out = nomad.cli("alloc", "status", "-stats", alloc_id).stdout
        used = re.search(rf"(\d+)/{CPU_MHZ} MHz", out)
        return (out, int(used.group(1))) if used and int(used.group(1)) > 0 else None

    out, mhz = nomad.wait_until(cli, 60, "non-zero MHz in `nomad alloc status -stats`")
    assert "Memory Stats" in out and "CPU Stats" in out, out
    memory_table = out[out.index("Memory Stats") :].splitlines()[1:3]
    assert "RSS" in memory_table[0] and "MiB" in memory_table[1], out
    cpu_table = out[out.index("CPU Stats") :].splitlines()[1:3]
    assert cpu_table[0].split() == ["Percent"] and cpu_table[1].strip().endswith("%"), out
    testbed_report.append(
        f"`nomad alloc status -stats`: {mhz}/{CPU_MHZ} MHz; "
        + " | ".join(line.strip() for line in memory_table + cpu_table)
    )

    # A burning guest still serves the shutdown request: a graceful stop, nothing left.
    nomad.stop_job("burner", purge=False)
    alloc = nomad.wait_alloc("burner", {"complete", "failed"}, timeout=120)
    assert alloc["ClientStatus"] == "complete", nomad.task_events(alloc, TASK)
    logs = nomad.cli("alloc", "logs", alloc_id, TASK).stdout
    assert "NDX-GUEST burning 50% of a CPU" in logs and "NDX-GUEST poweroff" in logs, logs
    assert nomad.domains() == []
    nomad.wait_until(lambda: nomad.leftovers() == [], 30, "no files left behind", every=0.5)
    nomad.stop_job("burner")
