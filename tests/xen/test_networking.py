"""Guest networking the Nomad way, on real Xen through a real Nomad agent (issue 15).

A guest with a vif ``ip`` and a ``service`` (Nomad's built-in provider, ``address_mode =
"driver"``): ``nomad service info`` shows the guest's own address and port; it still does after
the plugin is SIGKILLed and recovers the task, and after the agent restarts; ``job stop`` removes
it.  Every vif has a MAC in Xen's range, derived from the task id.  A job asking for a network
mode the driver does not support, or naming a vif to advertise that has no address, fails with
a message that says so.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error

import pytest

from testbed.nomad import REPO, NomadDom0, plugin_pids
from xen_driver.driver import network

pytestmark = [pytest.mark.xen, pytest.mark.nomad]

EXAMPLE = (REPO / "nomad-jobs" / "clickos-service.nomad").read_text()
JOB = "clickos-service"
TASK = "firewall"
SERVICE = "clickos-firewall"
GUEST_IP = "10.99.0.10"  # 10.99.0.1${NOMAD_ALLOC_INDEX}, index 0
KERNEL = "/var/lib/nomad-driver-xen/images/ndx-unikernel"

# The example, plus a port and a service in the default address mode ("auto"), which follows
# the driver's auto_advertise to the guest's address.
ADMIN_PORT = 9100
JOB_TEXT = EXAMPLE.replace(
    '      port "http" {\n        to = 80\n      }\n',
    f'      port "http" {{\n        to = 80\n      }}\n\n      port "admin" {{\n        to = {ADMIN_PORT}\n      }}\n',
).replace(
    "      template {",
    '      service {\n        name     = "clickos-admin"\n        provider = "nomad"\n        port     = "admin"\n      }\n\n'
    "      template {",
    1,
)

assert JOB_TEXT.count('port "admin" {') == 1 and JOB_TEXT.count('name     = "clickos-admin"') == 1, JOB_TEXT

# Asks the running plugin what InspectTask says about a task (Nomad itself never calls it).
INSPECT_PROBE = r"""
import json, sys
sys.path.insert(0, "/src")
import grpc
from xen_driver._proto.nomad import driver_pb2, driver_pb2_grpc
stub = driver_pb2_grpc.DriverStub(grpc.insecure_channel("unix:" + sys.argv[1]))
try:
    r = stub.InspectTask(driver_pb2.InspectTaskRequest(task_id=sys.argv[2]), timeout=30)
except grpc.RpcError as exc:
    print(json.dumps({"error": exc.code().name, "details": exc.details()}))
else:
    n = r.network_override
    print(json.dumps({"state": r.task.state, "has_network": r.HasField("network_override"), "addr": n.addr,
                      "port_map": dict(n.port_map), "auto_advertise": n.auto_advertise}))
"""


def inspect(tb, task_id: str) -> dict:
    """The live plugin's InspectTask answer (``error`` set while it does not know the task)."""
    pids = plugin_pids(tb)
    if len(pids) != 1:
        return {"error": f"plugin processes {pids}"}
    sockets = re.findall(rf"(/tmp/plugin\S+)\s.*pid={pids[0]},", tb.run("ss -xlp", check=False).stdout)
    if not sockets:
        return {"error": f"no listening socket of plugin {pids[0]} yet"}
    tb.write_file("/tmp/ndx-inspect-probe.py", INSPECT_PROBE)
    out = tb.run(["python3", "/tmp/ndx-inspect-probe.py", sockets[0], task_id], timeout=120, check=False).stdout
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"probe said {out!r}"}


def services(nomad: NomadDom0, name: str) -> list[dict]:
    try:
        return nomad.api(f"/v1/service/{name}") or []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def registration(nomad: NomadDom0, name: str) -> list[tuple]:
    return sorted((s["AllocID"], s["Address"], s["Port"], s["ID"]) for s in services(nomad, name))


def events_text(nomad: NomadDom0, alloc: dict, task: str = TASK) -> str:
    return "\n".join(
        f"{e['Type']}: {e.get('DisplayMessage') or ''} {e.get('Details') or ''}" for e in nomad.task_events(alloc, task)
    )


def vif_macs(tb, domain: str) -> list[str]:
    """MACs of the domain's vifs as Xen has them (``xl network-list``)."""
    lines = tb.run(["xl", "network-list", domain], timeout=90).stdout.splitlines()[1:]
    return [line.split()[2].lower() for line in lines if line.split()]


@pytest.fixture(scope="module")
def nomad(testbed, testbed_run_dir, unikernel):
    agent = NomadDom0(testbed, testbed_run_dir, unikernel)
    agent.install()
    agent.start()
    jobs: list[str] = []
    agent.jobs = jobs  # type: ignore[attr-defined]
    try:
        yield agent
    finally:
        # Leave dom0 as the next module expects it: no jobs of ours, no guests, agent stopped.
        for job in jobs:
            with contextlib.suppress(Exception):
                agent.stop_job(job, purge=True)
        with contextlib.suppress(Exception):
            agent.wait_until(lambda: agent.domains() == [], 180, "all guests of this module to be gone", every=2)
        agent.stop()
        with contextlib.suppress(Exception):
            agent.wait_until(lambda: not plugin_pids(testbed), 60, "the plugin to exit", every=1)


def run_job(nomad: NomadDom0, name: str, text: str) -> None:
    nomad.run_job(nomad.write_job(f"{name}.nomad", text))
    nomad.jobs.append(name)  # type: ignore[attr-defined]


class Guest:
    """The running service job: its allocation, domain, task id and what was registered."""

    alloc_id: str
    domain: str
    domid: str
    task_id: str
    admin_host_port: int
    registered: dict[str, list[tuple]]


@pytest.fixture(scope="module")
def guest(nomad, testbed, testbed_report) -> Guest:
    run_job(nomad, JOB, JOB_TEXT)
    alloc = nomad.wait_alloc(JOB, {"running", "failed"}, timeout=300)
    assert alloc["ClientStatus"] == "running", events_text(nomad, alloc)
    g = Guest()
    g.alloc_id = alloc["ID"]
    (g.domain,) = nomad.domains()
    g.domid = testbed.run(["xl", "domid", g.domain]).stdout.strip()
    g.task_id = f"{g.alloc_id}/{TASK}/{g.domain.rsplit('-', 1)[1]}"
    ports = {p["Label"]: p for p in alloc["AllocatedResources"]["Shared"]["Ports"]}
    g.admin_host_port = ports["admin"]["Value"]
    assert ports["http"]["To"] == 80 and ports["admin"]["To"] == ADMIN_PORT, ports
    g.registered = {}
    testbed_report.append(
        f"networking: allocation ports {sorted((p['Label'], p['Value'], p['To']) for p in ports.values())}"
    )
    return g


def test_service_is_registered_at_the_guests_address_and_port(nomad, testbed, guest, testbed_report):
    def both_registered():
        got = {name: registration(nomad, name) for name in (SERVICE, "clickos-admin")}
        return got if all(got.values()) else None

    got = nomad.wait_until(both_registered, 120, "both services to be registered", every=1)
    # address_mode = "driver", port "http" { to = 80 }: the guest's address, the guest's port.
    assert [(a, addr, port) for a, addr, port, _ in got[SERVICE]] == [(guest.alloc_id, GUEST_IP, 80)], got
    # address_mode "auto" (the default) follows auto_advertise: the guest's address too, not
    # the host's address and the host port Nomad reserved for the label.
    assert [(a, addr, port) for a, addr, port, _ in got["clickos-admin"]] == [(guest.alloc_id, GUEST_IP, ADMIN_PORT)], (
        got,
        guest.admin_host_port,
    )
    guest.registered = got

    info = nomad.cli("service", "info", SERVICE).stdout
    assert f"{GUEST_IP}:80" in info and guest.alloc_id[:8] in info, info
    testbed_report.append("networking: `nomad service info " + SERVICE + "`: " + " | ".join(info.split("\n")[:3]))

    # What the plugin says about the task (InspectTask) is what Nomad registered.
    seen = inspect(testbed, guest.task_id)
    assert seen.get("has_network") and seen["addr"] == GUEST_IP and seen["auto_advertise"], seen
    assert seen["port_map"] == {"http": 80, "admin": ADMIN_PORT}, seen

    # The driver's task event says where the guest is advertised.
    alloc = nomad.alloc(guest.alloc_id)
    assert f"advertised at {GUEST_IP}" in events_text(nomad, alloc), events_text(nomad, alloc)


def test_the_vif_has_a_mac_derived_from_the_task_id(testbed, guest):
    # The job gives no MAC: the driver derived one in Xen's OUI (not left to xl's random pick).
    assert vif_macs(testbed, guest.domain) == [network.derive_mac(guest.task_id, 0)]


def test_plugin_sigkill_recovers_the_task_with_the_same_network(nomad, testbed, guest, testbed_report):
    assert guest.registered, "the registration test did not pass"
    before = plugin_pids(testbed)
    assert len(before) == 1, before
    testbed.run(["kill", "-KILL", str(before[0])])
    t0 = time.monotonic()
    nomad.wait_until(lambda: (p := plugin_pids(testbed)) and p != before, 120, "a new plugin process", every=1)

    # RecoverTask has run once the new plugin knows the task: it reports the same network.
    seen = nomad.wait_until(
        lambda: (r := inspect(testbed, guest.task_id)).get("has_network") and r,
        240,
        "the new plugin to recover the task",
        every=2,
    )
    took = time.monotonic() - t0
    assert seen["addr"] == GUEST_IP and seen["port_map"] == {"http": 80, "admin": ADMIN_PORT}, seen
    assert nomad.alloc(guest.alloc_id)["ClientStatus"] == "running"
    assert testbed.run(["xl", "domid", guest.domain]).stdout.strip() == guest.domid  # the same guest
    assert vif_macs(testbed, guest.domain) == [network.derive_mac(guest.task_id, 0)]
    # Nomad's registrations are unchanged (same ids, address and port).
    for name, regs in guest.registered.items():
        assert registration(nomad, name) == regs, name
    testbed_report.append(f"networking: plugin SIGKILL → task recovered with the same network in {took:.0f} s")


def test_agent_restart_keeps_the_same_registration(nomad, testbed, guest):
    assert guest.registered, "the registration test did not pass"
    nomad.stop()  # SIGINT: a clean shutdown; the guest stays, the plugin is stopped
    nomad.wait_until(lambda: not plugin_pids(testbed), 60, "the plugin to exit with the agent", every=1)
    nomad.start()
    nomad.wait_until(
        lambda: nomad.alloc(guest.alloc_id)["ClientStatus"] == "running", 240, "the allocation to be running", every=2
    )
    seen = nomad.wait_until(
        lambda: (r := inspect(testbed, guest.task_id)).get("has_network") and r,
        240,
        "the new plugin to recover the task",
        every=2,
    )
    assert seen["addr"] == GUEST_IP and seen["port_map"] == {"http": 80, "admin": ADMIN_PORT}, seen
    assert testbed.run(["xl", "domid", guest.domain]).stdout.strip() == guest.domid
    nomad.wait_until(
        lambda: all(registration(nomad, n) == regs for n, regs in guest.registered.items()),
        120,
        "the same service registrations after the restart",
        every=2,
    )


def test_job_stop_removes_the_services_and_the_guest(nomad, guest):
    nomad.stop_job(JOB, purge=False)
    alloc = nomad.wait_alloc(JOB, {"complete", "failed"}, timeout=180)
    assert alloc["ClientStatus"] == "complete", events_text(nomad, alloc)
    nomad.wait_until(
        lambda: not services(nomad, SERVICE) and not services(nomad, "clickos-admin"), 60, "the services to be gone"
    )
    assert "No service registrations found" in nomad.cli("service", "info", SERVICE).stdout
    assert nomad.domains() == []
    nomad.wait_until(lambda: nomad.leftovers() == [], 30, "no files left behind", every=0.5)


def _batch(name: str, body: str, group_extra: str = "") -> str:
    return f"""
job "{name}" {{
  datacenters = ["*"]
  type        = "batch"

  group "g" {{
{group_extra}
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

      config {{
        kernel      = "{KERNEL}"
        cmdline     = "tick=1 poweroff_after=2"
        boot_marker = "NDX-GUEST READY"
{body}
      }}

      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
}}
"""


@pytest.mark.parametrize("mode", ["bridge", "none"])
def test_unsupported_network_mode_is_refused_by_nomad_with_a_clear_message(nomad, mode, testbed_report):
    """The driver lists only host; Nomad's client fails the allocation itself, before StartTask."""
    name = f"net-{mode}"
    run_job(nomad, name, _batch(name, "", f'    network {{\n      mode = "{mode}"\n    }}\n'))
    alloc = nomad.wait_alloc(name, {"failed", "complete"}, timeout=180)
    assert alloc["ClientStatus"] == "failed", alloc.get("ClientDescription")
    assert f'does not support "{mode}" networking mode' in alloc["ClientDescription"], alloc["ClientDescription"]
    assert nomad.domains() == []
    testbed_report.append(f"networking: {mode} mode → {alloc['ClientDescription']}")


def test_what_cannot_be_advertised_is_refused_naming_the_field(nomad):
    jobs = {
        # advertise_vif names a vif without an address
        "net-bad-advertise": (
            _batch(
                "net-bad-advertise", '        vif {\n          bridge = "xenbr0"\n        }\n        advertise_vif = 0'
            ),
            ['task config "advertise_vif": got 0', "vif[0] has no ip"],
        ),
        # a port without `to` on a guest with an address: Nomad would register it at port 0
        "net-port-without-to": (
            _batch(
                "net-port-without-to",
                '        vif {\n          bridge = "xenbr0"\n          ip     = "10.99.0.20"\n        }',
                '    network {\n      port "web" {}\n    }\n',
            ),
            ['network port "web.to": got nothing, must be the port the guest serves on', "10.99.0.20"],
        ),
    }
    for name, (text, _) in jobs.items():
        run_job(nomad, name, text)
    for name, (_, expected) in jobs.items():
        alloc = nomad.wait_alloc(name, {"failed", "complete"}, timeout=180)
        events = events_text(nomad, alloc)
        assert alloc["ClientStatus"] == "failed", f"{name}: {events}"
        for text in expected:
            assert text in events, f"{name}: expected {text!r} in the task events:\n{events}"
    assert nomad.domains() == []
    assert nomad.leftovers() == []
