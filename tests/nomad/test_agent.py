"""Our driver inside a real Nomad agent, observed only through the agent's HTTP API and log."""

from __future__ import annotations

import asyncio
import re
import stat
import time
from pathlib import Path

import pytest

from xen_driver.xen.probe import ProbeState, probe_host

pytestmark = pytest.mark.nomad

LOADER = "agent.plugin_loader.nomad-driver-xen"
DRIVER_MGR = "client.driver_mgr.nomad-driver-xen"

XL_INFO = """host                   : dom0
nr_cpus                : 2
total_memory           : 3071
free_memory            : 1843
xen_major              : 4
xen_minor              : 17
xen_extra              : .5
xen_version            : 4.17.5
xen_scheduler          : credit2
"""


def log_line(log: str, level: str, logger: str, message: str) -> str | None:
    """The agent's log line for one of our records: `[LEVEL] <logger>: <message>: k=v ...`."""
    pattern = re.compile(r"^.*\[" + level + r"\]\s+" + re.escape(logger) + r": " + re.escape(message) + r":.*$", re.M)
    m = pattern.search(log)
    return m.group(0) if m else None


def test_agent_loads_our_driver_and_reports_this_hosts_health(nomad_agent):
    agent = nomad_agent({"fingerprint_period": "5s"})
    node = agent.node()
    driver = node["Drivers"]["xen"]

    # What our probe says about this machine is what the node must show.
    probe = asyncio.run(probe_host("xl"))
    assert driver["HealthDescription"] == probe.reason
    if probe.state is ProbeState.UNDETECTED:
        # No Xen toolstack on this machine: the driver is not offered at all.
        assert (driver["Detected"], driver["Healthy"]) == (False, False)
        assert driver["HealthDescription"].startswith('Xen toolstack not found: no executable "xl"')
        assert "driver.xen" not in node["Attributes"]
    elif probe.state is ProbeState.UNHEALTHY:
        # xl installed but no hypervisor / xenstored: detected, not schedulable.
        assert (driver["Detected"], driver["Healthy"]) == (True, False)
        assert node["Attributes"]["driver.xen"] == "1"
    else:
        assert (driver["Detected"], driver["Healthy"]) == (True, True)
        assert node["Attributes"]["driver.xen.version"] == probe.info.xen_version

    log = agent.log()
    # Our JSON records arrive in the agent's log at the level we logged them, under the plugin's name.
    assert log_line(log, "DEBUG", LOADER, "plugin serving"), log[-3000:]
    configured = log_line(log, "INFO", DRIVER_MGR, "plugin configured")
    assert configured and "driver=xen" in configured and "backend=xl" in configured and "agent_facts=true" in configured
    level = "INFO" if probe.state is ProbeState.HEALTHY else "WARN"
    fingerprint = log_line(log, level, DRIVER_MGR, "xen host fingerprint")
    assert fingerprint and f"health={probe.state.value}" in fingerprint
    assert log_line(log, "DEBUG", "client.driver_mgr", "initial driver fingerprint") is not None
    assert "panic" not in log

    agent.stop()
    log = agent.log()
    # The loader's short-lived processes and the driver instance all exited on GRPCController.Shutdown.
    assert "plugin failed to exit gracefully" not in log
    assert len(re.findall(r"nomad-driver-xen: shutdown requested by the plugin host", log)) >= 3
    assert "agent: shutdown complete" in log


def test_without_a_plugin_block(nomad_agent, nomad_release):
    """Nomad before 1.10 (the pinned 1.6.3 among them) runs every executable in plugin_dir, with
    or without a `plugin` block: the driver then runs with its defaults. From 1.10 on a plugin
    without a block is not run at all, so the README has operators write one in any case."""
    agent = nomad_agent(None)
    if nomad_release < (1, 10, 0):
        driver = agent.node()["Drivers"]["xen"]
        assert driver["HealthDescription"] == asyncio.run(probe_host("xl")).reason  # default xl_path
        configured = log_line(agent.log(), "INFO", DRIVER_MGR, "plugin configured")
        assert configured and "backend=xl" in configured and "xl_path=xl" in configured, agent.log()[-3000:]
    else:  # as Nomad's loader documents it for 1.10 and later
        agent.wait_for("the agent to skip the plugin", lambda: "plugin not referenced" in agent.log())
        assert "plugin configured" not in agent.log()
    assert "panic" not in agent.log()


def fake_xl(directory: Path) -> tuple[str, Path]:
    """An `xl` that fails like xl on a host without Xen until `<dir>/healthy` exists."""
    flag = directory / "healthy"
    script = directory / "xl"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ]; then cat <<"EOF"\n{XL_INFO}EOF\nexit 0; fi\n'
        'echo "xc: error: Could not obtain handle on privileged command interface: No such file or directory" >&2\n'
        'echo "cannot init xl context" >&2\n'
        "exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script), flag


def test_fingerprint_changes_reach_the_node_and_task_errors_do_not_hurt_the_agent(nomad_agent, tmp_path):
    xl, flag = fake_xl(tmp_path)
    agent = nomad_agent({"xl_path": xl, "fingerprint_period": "1s"})

    node = agent.node()
    driver = node["Drivers"]["xen"]
    assert (driver["Detected"], driver["Healthy"]) == (True, False)
    assert 'xl said: "cannot init xl context"' in driver["HealthDescription"]
    assert node["Attributes"]["driver.xen"] == "1"
    assert node["Attributes"]["driver.xen.backend"] == "xl"

    flag.touch()  # the hypervisor "comes up": the next periodic fingerprint must say so

    def healthy():
        n = agent.api(f"/v1/node/{node['ID']}")
        return n if n["Drivers"]["xen"]["Healthy"] else None

    node = agent.wait_for("driver xen to become healthy", healthy, timeout=30)
    assert node["Drivers"]["xen"]["HealthDescription"] == "Xen 4.17.5 ready (credit2 scheduler)"
    attrs = node["Attributes"]
    assert attrs["driver.xen.version"] == "4.17.5"
    assert attrs["driver.xen.scheduler"] == "credit2"
    assert attrs["driver.xen.total_memory"].startswith("3071")
    assert log_line(agent.log(), "INFO", DRIVER_MGR, "xen host fingerprint")

    # A job lands on the now-healthy driver with a config value we refuse: the task fails with our
    # field-named message, and the agent keeps running.
    job = {
        "Job": {
            "ID": "xen-bad-config",
            "Name": "xen-bad-config",
            "Type": "batch",
            "Datacenters": ["dc1"],
            "TaskGroups": [
                {
                    "Name": "g",
                    "Count": 1,
                    "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                    "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
                    "Tasks": [
                        {
                            "Name": "guest",
                            "Driver": "xen",
                            "Config": {"kernel": "local/clickos_x86_64", "vcpus": -1},
                            "Resources": {"CPU": 100, "MemoryMB": 32},
                        }
                    ],
                }
            ],
        }
    }
    agent.api("/v1/jobs", job)

    def failure_event():
        for alloc in agent.api("/v1/job/xen-bad-config/allocations"):
            state = (alloc.get("TaskStates") or {}).get("guest") or {}
            for event in state.get("Events") or []:
                if event["Type"] == "Driver Failure":
                    return event
        return None

    event = agent.wait_for("the task's Driver Failure event", failure_event, timeout=60)
    assert 'task config "vcpus": got -1, must be an integer between 1 and 128' in event["DisplayMessage"]
    assert agent.proc.poll() is None
    assert agent.api("/v1/agent/health")["client"]["ok"] is True
    assert "panic" not in agent.log()


def test_guests_coming_and_going_do_not_re_register_the_node(nomad_agent, tmp_path):
    """Xen's free memory changes with every guest started or stopped.  Were it a node attribute,
    each change would re-register the node at the next fingerprint, and Nomad's server then
    creates an evaluation for every job with an allocation on the node: on a node of hundreds of
    guests, hundreds of evaluations per fingerprint period while guests come and go."""
    info, calls = tmp_path / "xl-info", tmp_path / "xl-calls"
    info.write_text(XL_INFO)
    script = tmp_path / "xl"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\ncat "{info}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    agent = nomad_agent({"xl_path": str(script), "fingerprint_period": "1s"})

    def healthy():
        n = agent.node()
        return n if n["Drivers"]["xen"]["Healthy"] else None

    agent.wait_for("driver xen to become healthy", healthy, timeout=30)

    def probes() -> int:
        return sum(1 for line in calls.read_text().splitlines() if line.strip() == "info")

    # The node as two more fingerprints of the unchanged host leave it (the update that carried
    # "healthy", and its node event, are in by then).
    seen = probes()
    agent.wait_for("two more fingerprints", lambda: probes() >= seen + 2, timeout=60)
    before = agent.node()
    registrations = agent.log().count("updating node and re-registering")
    seen = probes()
    info.write_text(XL_INFO.replace("free_memory            : 1843", "free_memory            : 1211"))
    # Three more fingerprints see the new free memory (each probe runs `xl info`).
    agent.wait_for("three fingerprints after the change", lambda: probes() >= seen + 3, timeout=60)
    after = agent.node()
    assert after["ModifyIndex"] == before["ModifyIndex"], "the node was re-registered: an attribute changed"
    assert after["Attributes"] == before["Attributes"]
    assert "driver.xen.free_memory" not in after["Attributes"]
    assert after["Attributes"]["driver.xen.total_memory"].startswith("3071")
    assert agent.log().count("updating node and re-registering") == registrations


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"backend": "kvm"}, 'plugin config "backend": got "kvm", must be one of "xl", "libvirt"'),
        (
            {"fingerprint_period": "often"},
            'plugin config "fingerprint_period": got "often", must be a duration such as "500ms", "30s" or "2m"',
        ),
        ({"bakend": "xl"}, '"bakend"'),  # Nomad itself rejects keys our schema does not declare
    ],
    ids=["bad-backend", "bad-duration", "unknown-key"],
)
def test_bad_plugin_config_stops_the_agent_with_our_message(nomad_agent, config, expected):
    agent = nomad_agent(config)
    code = agent.wait_exit(timeout=60)
    log = agent.log()
    assert code != 0
    assert expected in log, log[-4000:]
    assert "failed to create plugin loader" in log
    # No plugin process outlives the agent: Nomad 1.6's loader leaves the plugin whose SetConfig
    # it refused running, so the plugin stops itself (later releases stop it at once).
    deadline = time.monotonic() + 20
    while agent.group_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.group_pids() == [], "plugin processes left running after the agent refused their config"
