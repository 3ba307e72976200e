"""Task lifecycle on real Xen, driven through a real Nomad agent in dom0 (issue: lifecycle).

Everything here is what an operator does: ``nomad job run nomad-jobs/clickos.nomad``,
``nomad alloc logs``, ``nomad alloc status``, ``nomad job stop``, and ``xl list`` to see that
nothing was left behind.

The module runs twice, once per toolstack the plugin can use (``backend = "xl"`` and
``backend = "libvirt"``, libvirtd with its libxl driver), each with a fresh agent: the same jobs,
the same expectations.  With libvirt "nothing left" also means no persistent definition in
libvirtd (NomadDom0.leftovers).  Configs the driver refuses before it asks the backend anything
(bad fields, a job's own hotplug script, a bridge or a Click configuration outside the plugin's
limits) are sent with xl only; a stock script and an allowed bridge run on both.
"""

from __future__ import annotations

import re
import time
import zlib

import pytest

from testbed.nomad import BACKENDS, DATA_DIR, REPO, NomadDom0

pytestmark = [
    pytest.mark.xen,
    pytest.mark.nomad,
    pytest.mark.parametrize("backend", BACKENDS, scope="module"),
]

CLICKOS = "/src/nomad-jobs/clickos.nomad"
MINIOS = (REPO / "nomad-jobs" / "minios.nomad").read_text()


def _events(nomad: NomadDom0, alloc: dict, task: str) -> str:
    return "\n".join(
        f"{e['Type']}: {e.get('DisplayMessage') or ''} {e.get('Details') or ''}" for e in nomad.task_events(alloc, task)
    )


def _checked_before_any_backend_call(backend: str) -> None:
    """Refusals of the driver's toolstack-neutral checks (driver/planning.py, driver/policy.py)
    come before the backend is asked anything: the xl run proves them for both."""
    if backend != "xl":
        pytest.skip("refused by the driver's checks before any backend call; proven by the xl run")


def _batch_job(name: str, config_body: str) -> str:
    """minios.nomad with another job name and another ``config {}`` body."""
    text = MINIOS.replace('job "minios"', f'job "{name}"')
    block = "config {\n" + config_body + "\n      }"
    # A function replacement: the body holds HCL escapes (\n, \") that re.sub must not interpret.
    return re.sub(r"config \{.*?\n      \}", lambda _: block, text, flags=re.S)


def test_node_reports_healthy_xen_driver(nomad, backend):
    node = nomad.node()
    xen = node["Drivers"]["xen"]
    assert xen["Detected"] and xen["Healthy"], xen
    attrs = node["Attributes"]
    assert attrs["driver.xen"] == "1"
    assert attrs["driver.xen.version"].startswith("4.17"), attrs["driver.xen.version"]
    assert attrs["driver.xen.backend"] == backend


def test_clickos_job_runs_logs_and_stops_cleanly(nomad, testbed, testbed_report):
    nomad.run_job(CLICKOS)
    alloc = nomad.wait_alloc("clickos", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", _events(nomad, alloc, "firewall")
    alloc_id = alloc["ID"]

    # The guest is a domain named after the task and the allocation.
    domains = nomad.domains()
    assert len(domains) == 1 and domains[0].startswith(f"nomad-firewall-{alloc_id[:8]}-"), domains

    # The Click configuration Nomad's template rendered reached the guest through XenStore:
    # the guest echoes its length and CRC-32 on its console, which is in `nomad alloc logs`.
    rendered = testbed.read_file(f"{DATA_DIR}/alloc/{alloc_id}/firewall/local/firewall.click")
    echo = f"config_len={len(rendered)} config_crc32={zlib.crc32(rendered):08x}"

    def logs() -> str | None:
        out = nomad.cli("alloc", "logs", alloc_id, "firewall").stdout
        return out if "NDX-GUEST READY" in out and echo in out else None

    out = nomad.wait_until(logs, 60, "the guest console in `nomad alloc logs`")
    assert out.index("NDX-GUEST READY") < out.index(echo)

    # The spawn/boot breakdown is a task event (visible in `nomad alloc status`).
    status = nomad.cli("alloc", "status", alloc_id).stdout
    assert "booted" in status, status
    alloc = nomad.alloc(alloc_id)
    timing = [e for e in nomad.task_events(alloc, "firewall") if "boot_ms" in (e.get("Details") or {})]
    assert timing, _events(nomad, alloc, "firewall")
    details = timing[0]["Details"]
    for phase in (
        "validate_ms",
        "render_ms",
        "domain_build_ms",
        "clickos_push_ms",
        "unpause_ms",
        "boot_ms",
        "total_ms",
    ):
        assert float(details[phase]) >= 0, details
    assert float(details["total_ms"]) >= float(details["domain_build_ms"]) + float(details["boot_ms"])
    testbed_report.append(
        f"clickos.nomad start ({nomad.backend}): " + ", ".join(f"{k} {v}" for k, v in details.items())
    )

    # Stats in Nomad's own API: the guest's memory, from whichever toolstack runs it.
    def stats() -> dict | None:
        usage = nomad.api(f"/v1/client/allocation/{alloc_id}/stats")
        mem = (((usage or {}).get("Tasks") or {}).get("firewall", {}).get("ResourceUsage") or {}).get(
            "MemoryStats"
        ) or {}
        return usage if int(mem.get("RSS") or 0) > 0 else None

    nomad.wait_until(stats, 60, "task stats with the guest's memory in /v1/client/allocation/<id>/stats")

    nomad.stop_job("clickos", purge=False)
    alloc = nomad.wait_alloc("clickos", {"complete", "failed"}, timeout=120)
    assert alloc["ClientStatus"] == "complete", _events(nomad, alloc, "firewall")
    assert nomad.domains() == []
    nomad.wait_until(lambda: nomad.leftovers() == [], 30, "no files left behind", every=0.5)

    # Nomad's logmon for the task ended without waiting for a FIFO nobody wrote (its stderr).
    def logmon_lines() -> list[str] | None:
        lines = (nomad.run_dir / "nomad-agent.log").read_text(errors="replace").splitlines()
        mine = [ln for ln in lines if alloc_id in ln and "logmon" in ln]
        return mine if any("plugin process exited" in ln for ln in mine) else None

    mine = nomad.wait_until(logmon_lines, 60, "the task's logmon to exit", every=0.5)
    assert not [ln for ln in mine if "timed out waiting for read-side" in ln], mine


def test_batch_guest_powering_off_completes_with_exit_zero(nomad):
    path = nomad.write_job("minios.nomad", MINIOS)
    nomad.run_job(path)
    alloc = nomad.wait_alloc("minios", {"complete", "failed"}, timeout=240)
    assert alloc["ClientStatus"] == "complete", _events(nomad, alloc, "compute")
    terminated = [e for e in nomad.task_events(alloc, "compute") if e["Type"] == "Terminated"]
    assert terminated and terminated[-1]["Details"]["exit_code"] == "0", _events(nomad, alloc, "compute")
    logs = nomad.cli("alloc", "logs", alloc["ID"], "compute").stdout
    assert "NDX-GUEST poweroff" in logs
    assert nomad.domains() == []


def test_crashing_guest_fails_with_nonzero_exit(nomad):
    text = MINIOS.replace('job "minios"', 'job "minios-crash"').replace("poweroff_after=3", "crash_after=1")
    nomad.run_job(nomad.write_job("minios-crash.nomad", text))
    alloc = nomad.wait_alloc("minios-crash", {"complete", "failed"}, timeout=240)
    assert alloc["ClientStatus"] == "failed", _events(nomad, alloc, "compute")
    terminated = [e for e in nomad.task_events(alloc, "compute") if e["Type"] == "Terminated"]
    assert terminated and terminated[-1]["Details"]["exit_code"] != "0", _events(nomad, alloc, "compute")
    assert "crash" in _events(nomad, alloc, "compute")
    assert nomad.domains() == []
    nomad.wait_until(lambda: nomad.leftovers() == [], 30, "no files left behind", every=0.5)


def test_crash_with_coredump_destroy_dumps_through_the_toolstack(nomad, testbed, testbed_report):
    """``on_crash = "coredump-destroy"``: the crashed guest's memory is dumped through the
    toolstack's own API (``xl dump-core``; libvirt's virDomainCoreDump, which libxl implements
    with the same libxl_domain_core_dump) into the task directory, then the domain goes.

    Our test unikernel publishes no P2M table in its shared info, which libxc's dump needs
    (``p2m_size < nr_pages``): with this guest both toolstacks fail the dump the same way, and the
    driver must report that and still leave nothing behind.  A guest with a P2M table (Mini-OS,
    ClickOS) gets ``<domain>.core`` in the task directory."""
    text = _batch_job(
        "minios-core",
        f'        {KERNEL}\n        cmdline = "tick=1 crash_after=1"\n        boot_marker = "NDX-GUEST READY"\n'
        '        on_crash = "coredump-destroy"',
    )
    nomad.run_job(nomad.write_job("minios-core.nomad", text))
    alloc = nomad.wait_alloc("minios-core", {"complete", "failed"}, timeout=240)
    events = _events(nomad, alloc, "compute")
    assert alloc["ClientStatus"] == "failed", events
    terminated = [e for e in nomad.task_events(alloc, "compute") if e["Type"] == "Terminated"]
    assert terminated and terminated[-1]["Details"]["exit_code"] == "1", events
    dumps = [
        e["DisplayMessage"]
        for e in nomad.task_events(alloc, "compute")
        if "Crash dump of" in (e.get("DisplayMessage") or "")
    ]
    assert dumps, events
    cores = testbed.run(f"ls {DATA_DIR}/alloc/{alloc['ID']}/compute/ | grep '[.]core$' || true").stdout.split()
    if "written to" in dumps[-1]:
        assert cores, dumps
    else:
        assert " failed: " in dumps[-1] and not cores, (dumps, cores)
    testbed_report.append(f"coredump-destroy ({nomad.backend}): {dumps[-1][:200]}")
    assert nomad.domains() == []
    nomad.wait_until(lambda: nomad.leftovers() == [], 30, "no files left behind", every=0.5)
    nomad.stop_job("minios-core")


BAD_CONFIGS = {
    "bad-missing-kernel": ('kernel = "/var/lib/nomad-driver-xen/images/no-such-kernel"', '"kernel"'),
    "bad-kernel-outside": ('kernel = "/etc/passwd"', '"kernel"'),
    "bad-memory": (
        'kernel = "/var/lib/nomad-driver-xen/images/ndx-unikernel"\n        memory = 2',
        '"memory"',
    ),
    "bad-vif": (
        'kernel = "/var/lib/nomad-driver-xen/images/ndx-unikernel"\n        vif {\n          mac = "zz:16:3e:00:00:01"\n        }',
        "vif",
    ),
    "bad-cmdline-quote": (
        'kernel = "/var/lib/nomad-driver-xen/images/ndx-unikernel"\n        cmdline = "x\\" on_crash=\\"preserve"',
        '"cmdline"',
    ),
    "bad-cmdline-newline": (
        'kernel = "/var/lib/nomad-driver-xen/images/ndx-unikernel"\n        cmdline = "x\\nmemory = 4096"',
        '"cmdline"',
    ),
    "bad-unknown-key": (
        'kernel = "/var/lib/nomad-driver-xen/images/ndx-unikernel"\n        bogus_key = 1',
        "bogus_key",
    ),
}


def test_bad_configs_fail_with_field_named_and_leave_nothing(backend, nomad):
    _checked_before_any_backend_call(backend)
    for name, (body, _) in BAD_CONFIGS.items():
        nomad.run_job(nomad.write_job(f"{name}.nomad", _batch_job(name, "        " + body)))
    for name, (_, field) in BAD_CONFIGS.items():
        alloc = nomad.wait_alloc(name, {"failed", "complete"}, timeout=240)
        events = _events(nomad, alloc, "compute")
        assert alloc["ClientStatus"] == "failed", f"{name}: {events}"
        assert field in events, f"{name}: expected {field} in the task events:\n{events}"
    assert nomad.domains() == []
    assert nomad.leftovers() == []
    for name in BAD_CONFIGS:
        nomad.stop_job(name)


def test_guest_ignoring_shutdown_is_destroyed_after_kill_timeout(nomad):
    text = (REPO / "nomad-jobs" / "clickos.nomad").read_text()
    text = text.replace('job "clickos"', 'job "stubborn"').replace('"clickos tick=5"', '"clickos ignore_shutdown"')
    text = text.replace('kill_timeout = "10s"', 'kill_timeout = "4s"')
    nomad.run_job(nomad.write_job("stubborn.nomad", text))
    alloc = nomad.wait_alloc("stubborn", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", _events(nomad, alloc, "firewall")

    t0 = time.monotonic()
    nomad.cli("job", "stop", "-detach", "stubborn")
    alloc = nomad.wait_alloc("stubborn", {"complete", "failed"}, timeout=120)
    took = time.monotonic() - t0
    logs = nomad.cli("alloc", "logs", alloc["ID"], "firewall").stdout
    assert "ignoring shutdown request" in logs  # the graceful request was made first ...
    assert took >= 4, took  # ... and honoured for kill_timeout ...
    terminated = [e for e in nomad.task_events(alloc, "firewall") if e["Type"] == "Terminated"]
    assert terminated and terminated[-1]["Details"].get("signal") == "9", _events(nomad, alloc, "firewall")
    assert nomad.domains() == []  # ... before the domain was destroyed


# ---- security: what a job may make dom0 do (docs/SECURITY.md) ----------------------------------

KERNEL = 'kernel = "/var/lib/nomad-driver-xen/images/ndx-unikernel"'
MARKER = "/tmp/ndx-evil-ran"
EVIL = f'#!/bin/sh\necho "ran as $(id -u) args=$*" >> {MARKER}\nexit 0\n'


def _with_template(job: str, destination: str, data: str, perms: str = "755") -> str:
    """Add a ``template`` writing ``data`` to ``destination`` (in the task directory) to the task."""
    block = (
        f'      template {{\n        destination = "{destination}"\n        perms       = "{perms}"\n'
        f"        data        = <<EOT\n{data}EOT\n      }}\n\n      resources {{"
    )
    return job.replace("      resources {", block, 1)


def test_job_scripts_never_run_in_dom0(backend, nomad, testbed):
    """A job naming a hotplug script of its own (written by its template into the task directory,
    or any absolute path) is refused, naming the field and the plugin setting; nothing runs."""
    _checked_before_any_backend_call(backend)
    testbed.run(f"rm -f {MARKER}; printf '%s' '{EVIL}' > /tmp/evil; chmod 755 /tmp/evil")
    jobs = {
        "sec-task-dir-script": _with_template(
            _batch_job(
                "sec-task-dir-script",
                f'        {KERNEL}\n        vif {{\n          bridge = "xenbr0"\n'
                '          script = "${NOMAD_TASK_DIR}/evil.sh"\n        }',
            ),
            "local/evil.sh",
            EVIL,
        ),
        "sec-abs-script": _batch_job(
            "sec-abs-script",
            f'        {KERNEL}\n        vif {{\n          bridge = "xenbr0"\n          script = "/tmp/evil"\n        }}',
        ),
    }
    for name, text in jobs.items():
        nomad.run_job(nomad.write_job(f"{name}.nomad", text))
    for name in jobs:
        alloc = nomad.wait_alloc(name, {"failed", "complete"}, timeout=240)
        events = _events(nomad, alloc, "compute")
        assert alloc["ClientStatus"] == "failed", f"{name}: {events}"
        assert '"vif[0].script"' in events and '"vif_scripts"' in events, f"{name}: {events}"
    assert testbed.run(f"cat {MARKER} 2>/dev/null || true").stdout == ""  # no script ran
    assert nomad.domains() == []
    assert nomad.leftovers() == []
    for name in jobs:
        nomad.stop_job(name)


def test_allowed_stock_script_and_bridge_still_work(nomad):
    text = _batch_job(
        "sec-stock-script",
        f'        {KERNEL}\n        cmdline = "tick=1 poweroff_after=2"\n        boot_marker = "NDX-GUEST READY"\n'
        '        vif {\n          bridge = "xenbr0"\n          script = "vif-bridge"\n        }',
    )
    nomad.run_job(nomad.write_job("sec-stock-script.nomad", text))
    alloc = nomad.wait_alloc("sec-stock-script", {"complete", "failed"}, timeout=240)
    assert alloc["ClientStatus"] == "complete", _events(nomad, alloc, "compute")
    assert nomad.domains() == []
    nomad.stop_job("sec-stock-script")


def test_disallowed_bridge_and_oversized_click_config_are_refused(backend, nomad, testbed_report):
    _checked_before_any_backend_call(backend)
    big = "// " + "x" * 100 + "\n"
    jobs = {
        "sec-bridge": (
            _batch_job("sec-bridge", f'        {KERNEL}\n        vif {{\n          bridge = "lo"\n        }}'),
            ['"vif[0].bridge"', '"vif_bridges"'],
        ),
        "sec-big-click": (
            _with_template(
                _batch_job("sec-big-click", f'        {KERNEL}\n        click_config_file = "local/big.click"'),
                "local/big.click",
                big * 1000,  # 104 kB, over the default cap of 64 KiB
                perms="644",
            ),
            ['"click_config_file"', "at most 65536 bytes", '"max_click_config_bytes"'],
        ),
    }
    for name, (text, _) in jobs.items():
        nomad.run_job(nomad.write_job(f"{name}.nomad", text))
    for name, (_, expected) in jobs.items():
        alloc = nomad.wait_alloc(name, {"failed", "complete"}, timeout=240)
        events = _events(nomad, alloc, "compute")
        assert alloc["ClientStatus"] == "failed", f"{name}: {events}"
        for text in expected:
            assert text in events, f"{name}: expected {text} in the task events:\n{events}"
        if name == "sec-big-click":
            by_type = {e["Type"]: e["Time"] for e in nomad.task_events(alloc, "compute")}
            if "Driver Failure" in by_type and "Task Setup" in by_type:
                took = (by_type["Driver Failure"] - by_type["Task Setup"]) / 1e9
                testbed_report.append(f"oversized Click configuration refused {took:.2f} s after task setup")
    assert nomad.domains() == []
    assert nomad.leftovers() == []
    for name in jobs:
        nomad.stop_job(name)
