"""Nothing lost: recovery after a plugin crash, agent restarts and Xen-side faults (issue 6).

Everything runs against a real Nomad agent (server + client, persistent data dir, not ``-dev``)
in the testbed's dom0, with real Xen guests.  The recovery job runs five copies of our test
unikernel with ``tick=1``: each prints ``tick 1``, ``tick 2``, ... once a second, so the
stdout Nomad collected (``/v1/client/fs/logs``, what ``nomad alloc logs`` prints) must be
exactly ``1..N``: a gap is a lost console line, a repeat a duplicated one.

Scenarios, in order (they share the agent and the recovery job):

1. the plugin process is SIGKILLed: the agent relaunches it and RecoverTask re-adopts the guests;
2. the agent is stopped cleanly and started again; then SIGKILLed and started again (the
   plugin survives that and is reattached, same pid);
3. a guest is destroyed behind Nomad's back while the plugin is down: recovery reports it as
   exited with a clear message and Nomad's restart policy starts a new guest;
4. the recovery job is stopped: all guests go, nothing is left;
5. toolstack faults (vif hotplug failure after the domain was built, xenstored stalled, console
   log directory missing) with a bystander guest running: each fault is a clear task event,
   leaves no domain and no file, and the bystander keeps running and logging;
6. a property-based sweep of task configs through the real decoding path, the valid ones
   checked by ``xl create -n`` in dom0.

The module runs once per backend (``backend = "xl"``, then ``"libvirt"``, each with a fresh
agent).  With libvirt it runs the scenarios where the backend is asked to find the guests again
(plugin SIGKILL) or to stop them (job stop), plus one of its own: libvirtd restarted while the
guests run.  The agent's restarts (for the backend, a stop + start is a new plugin recovering the
tasks, as after a plugin SIGKILL; after a SIGKILL the plugin lives on and is reattached, with no
call to the toolstack), the faults, the guest destroyed behind Nomad's back (``xl destroy``) and
the sweep (``xl create -n``) run with xl only, to keep ``make test`` short; their rows carry the
backend's name in the table.

The module prints a summary table (also in the pytest terminal summary) and writes it to
``bench/results/recovery.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from testbed.nomad import BACKENDS, CONSOLE_DIR, IMAGE_DIR, REPO, STATE_DIR, NomadDom0, plugin_pids

pytestmark = [
    pytest.mark.xen,
    pytest.mark.nomad,
    pytest.mark.slow,
    pytest.mark.parametrize("backend", BACKENDS, scope="module"),
]


def xl_only(backend: str, why: str) -> None:
    if backend != "xl":
        pytest.skip(f"run with the xl backend only: {why}")


RESULTS = REPO / "bench" / "results" / "recovery.json"
KERNEL = f"{IMAGE_DIR}/ndx-unikernel"
GUESTS = 5
TASK = "tick"
TICK = re.compile(rb"^tick (\d+)$", re.M)

RECOVERY_JOB = f"""
job "recovery" {{
  datacenters = ["*"]
  type        = "service"

  group "guests" {{
    count = {GUESTS}

    # A unikernel needs almost no disk; Nomad's default of 300 MB per allocation does not fit
    # five times into the testbed's dom0 (the scheduler reports the disk dimension exhausted).
    ephemeral_disk {{
      size = 10
    }}

    restart {{
      attempts = 3
      interval = "10m"
      delay    = "2s"
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
        kernel       = "{KERNEL}"
        cmdline      = "tick=1"
        memory       = 16
        boot_marker  = "NDX-GUEST READY"
        boot_timeout = "120s"
      }}

      kill_timeout = "3s"

      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
}}
"""


def batch_job(name: str, config: str, *, task: str = TASK, job_type: str = "batch") -> str:
    """A one-guest job that is never restarted nor rescheduled (a failure stays a failure)."""
    return f"""
job "{name}" {{
  datacenters = ["*"]
  type        = "{job_type}"

  group "g" {{
    ephemeral_disk {{
      size = 10
    }}

    restart {{
      attempts = 0
      mode     = "fail"
    }}

    reschedule {{
      attempts  = 0
      unlimited = false
    }}

    task "{task}" {{
      driver = "xen"

      logs {{
        max_files     = 2
        max_file_size = 2
      }}

      config {{
{config}
      }}

      kill_timeout = "3s"

      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
}}
"""


# ---------------------------------------------------------------- summary table


@dataclass
class Row:
    scenario: str
    backend: str = "xl"
    guests_before: int = 0
    guests_after: int = 0
    lost_guests: int = 0
    duplicated_guests: int = 0
    lost_lines: int = 0
    duplicated_lines: int = 0
    leaked_domains: int = 0
    leaked_files: int = 0
    seconds: float = 0.0
    result: str = "not run"
    note: str = ""


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    backend: str = "xl"  # the agent's backend now (the nomad fixture sets it)

    @contextlib.contextmanager
    def scenario(self, name: str):
        row = Row(scenario=name if self.backend == "xl" else f"{name} [{self.backend}]", backend=self.backend)
        self.rows.append(row)
        t0 = time.monotonic()
        try:
            yield row
        except BaseException as exc:
            row.result = "FAIL"
            row.note = row.note or f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            raise
        else:
            row.result = "pass"
        finally:
            row.seconds = round(time.monotonic() - t0, 1)

    def table(self) -> list[str]:
        head = ("scenario", "before", "after", "lost", "dup", "lost lines", "dup lines", "leaked", "s", "result")
        body = [
            (
                r.scenario,
                str(r.guests_before),
                str(r.guests_after),
                str(r.lost_guests),
                str(r.duplicated_guests),
                str(r.lost_lines),
                str(r.duplicated_lines),
                str(r.leaked_domains + r.leaked_files),
                f"{r.seconds:.0f}",
                r.result,
            )
            for r in self.rows
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        fmt = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))  # noqa: E731
        return [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(b) for b in body]

    def write(self, nomad_version: str) -> None:
        doc = {
            "issue": "recovery after plugin crash, agent restart and Xen-side faults",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "nomad_version": nomad_version,
            "guests_per_recovery_scenario": GUESTS,
            "module_seconds": round(time.monotonic() - self.started, 1),
            "columns": {
                "guests_before/after": "domains of the scenario's job in `xl list` before and after",
                "lost_guests": "guests of before that are gone or have another domid (without being meant to)",
                "duplicated_guests": "domains beyond one per allocation after recovery",
                "lost_lines/duplicated_lines": "gaps / repeats in the `tick <n>` sequence of `nomad alloc logs`",
                "leaked_domains/leaked_files": "domains and driver files left that belong to no running task",
            },
            "scenarios": [r.__dict__ for r in self.rows],
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


# ---------------------------------------------------------------- dom0 and Nomad helpers


def xl_domains(tb) -> dict[str, int]:
    """name → domid of every domain but Domain-0."""
    out = tb.run(["xl", "list"], timeout=90).stdout.splitlines()[1:]
    doms = {}
    for line in out:
        parts = line.split()
        if len(parts) >= 2 and parts[0] != "Domain-0":
            doms[parts[0]] = int(parts[1])
    return doms


def dom0_now_ns(tb) -> int:
    return int(tb.run(["date", "+%s%N"]).stdout.strip())


def raw_get(nomad: NomadDom0, path: str) -> bytes:
    with urllib.request.urlopen(nomad.addr + path, timeout=60) as resp:
        return resp.read()


def alloc_ticks(nomad: NomadDom0, alloc_id: str, task: str = TASK) -> list[int]:
    """The ``tick <n>`` numbers in the task's stdout as Nomad collected it (``nomad alloc logs``)."""
    try:
        data = raw_get(nomad, f"/v1/client/fs/logs/{alloc_id}?task={task}&type=stdout&origin=start&offset=0&plain=true")
    except urllib.error.HTTPError:
        return []
    return [int(n) for n in TICK.findall(data)]


def guest_ticks(tb, domain: str) -> int:
    """How many ticks the guest has printed (xenconsoled's log: the ground truth)."""
    r = tb.run(["cat", f"{CONSOLE_DIR}/guest-{domain}.log"], check=False)
    return len(TICK.findall(r.stdout.encode())) if r.rc == 0 else 0


#: Asks the plugin's FIFO keeper in dom0 which console copies it holds back (``keys``, ``held``).
KEEPER_HELD = f"""
import json, socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect({STATE_DIR + "/fifo-keeper.sock"!r})
s.sendall(b'{{"op": "keys"}}\\n')
data = b""
while not data.endswith(b"\\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
answer = json.loads(data)
print(json.dumps({{"held": answer.get("held") or {{}}, "hold_ends": answer.get("hold_ends") or {{}}}}))
"""


def keeper_held(tb, what: str = "held") -> dict[str, int]:
    """The consoles the keeper holds back from the logmon processes an exited agent left
    (``what="hold_ends"``: how many holds ended so far, by reason)."""
    return json.loads(tb.run(["python3", "-c", KEEPER_HELD]).stdout)[what]


def logmon_pids(tb) -> set[int]:
    out = tb.run(["pgrep", "-f", "^/usr/local/bin/nomad logmon"], check=False).stdout
    return {int(p) for p in out.split()}


def wait_held(nomad: NomadDom0, tb, before: Before) -> None:
    """After the agent exited: the keeper holds every guest's console back from the logmon
    processes the agent left, which lose what they read and had not yet written if they exit
    (see xen_driver/xen/agentwatch.py)."""
    assert before.logmons, "no logmon process: the recovery agent must use Nomad's log collection"
    nomad.wait_until(
        lambda: set(keeper_held(tb)) == set(before.domains),
        30,
        "the keeper to hold every console back from the logmon processes the agent left",
        every=0.5,
    )


def holds_end(nomad: NomadDom0, tb, before: Before, ends: dict[str, int]) -> str:
    """After the agent's start: every hold ends because its old logmon closed the FIFO (the new
    agent reattached to it and restarted its reader), exited (the new agent replaced it) or was
    left as it was after the new agent recovered the task; none by the keeper's backstop.
    ``ends``: the keeper's ``hold_ends`` before the agent exited."""
    t0 = time.monotonic()
    nomad.wait_until(lambda: keeper_held(tb) == {}, 120, "the keeper's holds to end", every=0.5)
    took = time.monotonic() - t0
    now = keeper_held(tb, "hold_ends")
    how = {why: n - ends.get(why, 0) for why, n in now.items() if n != ends.get(why, 0)}
    kept = len(before.logmons & logmon_pids(tb))
    note = (
        f"{GUESTS} consoles held back while the agent was away, released {took:.0f} s after its start"
        f" ({', '.join(f'{n} by {why}' for why, n in sorted(how.items()))});"
        f" old logmon processes still running: {kept} of {len(before.logmons)}"
    )
    assert set(how) <= {"close", "exit", "recovered"} and sum(how.values()) == GUESTS, note
    return note


def gaps_and_repeats(ticks: list[int]) -> tuple[int, int]:
    """(missing numbers in 1..max, repeated lines)."""
    if not ticks:
        return 0, 0
    seen = set(ticks)
    return len(set(range(1, max(ticks) + 1)) - seen), len(ticks) - len(seen)


def stats_timestamp(nomad: NomadDom0, alloc_id: str, task: str = TASK) -> int:
    try:
        usage = nomad.api(f"/v1/client/allocation/{alloc_id}/stats")
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    return int(((usage or {}).get("Tasks") or {}).get(task, {}).get("Timestamp") or 0)


def stats_rss(nomad: NomadDom0, alloc_id: str, task: str = TASK) -> int:
    try:
        usage = nomad.api(f"/v1/client/allocation/{alloc_id}/stats")
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    task_usage = ((usage or {}).get("Tasks") or {}).get(task, {})
    return int(((task_usage.get("ResourceUsage") or {}).get("MemoryStats") or {}).get("RSS") or 0)


def live_allocs(nomad: NomadDom0, job: str) -> dict[str, dict]:
    try:
        allocs = nomad.allocs(job)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {a["ID"]: a for a in allocs if a["DesiredStatus"] == "run"}


def domain_of(domains: dict[str, int], alloc_id: str, task: str = TASK) -> list[str]:
    prefix = f"nomad-{task}-{alloc_id[:8]}-"
    return [n for n in domains if n.startswith(prefix)]


def events_text(nomad: NomadDom0, alloc: dict, task: str = TASK) -> str:
    return "\n".join(
        f"{e['Type']}: {e.get('DisplayMessage') or ''} {e.get('Details') or ''}" for e in nomad.task_events(alloc, task)
    )


def expected_files(domains) -> set[str]:
    """The driver files a running task owns (what NomadDom0.leftovers() lists)."""
    out = set()
    for name in domains:
        out |= {f"{name}.cfg", name, f"guest-{name}.log", f"libvirt:{name}"}
    return out


def leaks(nomad: NomadDom0, tb, keep: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(domains, files) present that belong to none of the domains in ``keep``."""
    domains = sorted(set(xl_domains(tb)) - set(keep))
    files = sorted(set(nomad.leftovers()) - expected_files(keep))
    return domains, files


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def summary(testbed_report):
    s = Summary()
    yield s
    version = getattr(s, "nomad_version", "")
    s.write(version)
    lines = s.table()
    testbed_report.append(f"recovery ({time.monotonic() - s.started:.0f} s, {RESULTS.relative_to(REPO)}):")
    testbed_report.extend("  " + line for line in lines)
    print("\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def nomad(testbed, testbed_run_dir, unikernel, summary, backend):
    agent = NomadDom0(testbed, testbed_run_dir, unikernel, backend=backend)
    agent.install()
    agent.start()
    summary.backend = backend
    summary.nomad_version = agent.cli("version").stdout.split("\n")[0].strip()
    jobs: list[str] = []
    agent.jobs = jobs  # type: ignore[attr-defined]
    try:
        yield agent
    finally:
        # Leave dom0 as the next module expects it: no jobs of ours, no guests, agent stopped.
        _heal_faults(testbed)
        for job in jobs:
            with contextlib.suppress(Exception):
                agent.stop_job(job, purge=True)
        with contextlib.suppress(Exception):
            agent.wait_until(lambda: not xl_domains(testbed), 180, "all guests of this module to be gone", every=2)
        agent.stop()
        with contextlib.suppress(Exception):
            agent.wait_until(lambda: not plugin_pids(testbed), 60, "the plugin to exit", every=1)


def run_job(nomad: NomadDom0, name: str, text: str) -> None:
    nomad.run_job(nomad.write_job(f"{name}.nomad", text))
    if name not in nomad.jobs:  # type: ignore[attr-defined]
        nomad.jobs.append(name)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def recovery_job(nomad, testbed):
    """The five-guest job, running, with every guest booted and logging."""
    run_job(nomad, "recovery", RECOVERY_JOB)

    def ready():
        allocs = live_allocs(nomad, "recovery")
        if len(allocs) != GUESTS or any(a["ClientStatus"] != "running" for a in allocs.values()):
            return None
        if not all(alloc_ticks(nomad, a) for a in allocs):
            return None
        return allocs

    nomad.wait_until(ready, 420, f"{GUESTS} running allocations whose guests log ticks", every=3)
    return "recovery"


# ---------------------------------------------------------------- recovery scenarios


@dataclass
class Before:
    domains: dict[str, int]
    allocs: list[str]
    ticks: dict[str, int]  # alloc id → highest tick Nomad had
    plugin: list[int]
    logmons: set[int] = field(default_factory=set)  # Nomad's logmon processes (agent restarts)


def snapshot(nomad: NomadDom0, tb, job: str) -> Before:
    allocs = live_allocs(nomad, job)
    assert len(allocs) == GUESTS and all(a["ClientStatus"] == "running" for a in allocs.values()), {
        k: a["ClientStatus"] for k, a in allocs.items()
    }
    domains = xl_domains(tb)
    for alloc_id in allocs:
        assert len(domain_of(domains, alloc_id)) == 1, (alloc_id, domains)
    ticks = {a: max(alloc_ticks(nomad, a) or [0]) for a in allocs}
    return Before(domains=domains, allocs=sorted(allocs), ticks=ticks, plugin=plugin_pids(tb))


def check_recovered(nomad: NomadDom0, tb, before: Before, back_ns: int, row: Row, job: str = "recovery") -> None:
    """Same allocations running, same domains (same domids), console exactly once, stats again."""
    row.guests_before = len(before.domains)

    def all_running():
        allocs = live_allocs(nomad, job)
        return sorted(allocs) == before.allocs and all(a["ClientStatus"] == "running" for a in allocs.values())

    nomad.wait_until(all_running, 240, f"the {GUESTS} allocations to be running again", every=2)

    # Console: what the guests printed (including while the plugin was down) reaches Nomad.
    truth = {a: guest_ticks(tb, domain_of(before.domains, a)[0]) for a in before.allocs}
    for alloc_id in before.allocs:
        assert truth[alloc_id] > before.ticks[alloc_id] + 1, "the guests printed nothing during the disruption?"

    def caught_up():
        return all(max(alloc_ticks(nomad, a) or [0]) >= truth[a] for a in before.allocs)

    try:
        # New lines reaching Nomad also tell that RecoverTask has run for every task.
        nomad.wait_until(caught_up, 300, "the console lines printed meanwhile in `nomad alloc logs`", every=3)
    finally:
        for alloc_id in before.allocs:
            ticks = alloc_ticks(nomad, alloc_id)
            lost, dup = gaps_and_repeats(ticks)
            # Lines the guest printed that Nomad does not have at all count as lost too.
            lost += max(0, truth[alloc_id] - max(ticks or [0]))
            row.lost_lines += lost
            row.duplicated_lines += dup

    after = xl_domains(tb)
    row.guests_after = len(after)
    row.lost_guests = sum(1 for n, d in before.domains.items() if after.get(n) != d)
    row.duplicated_guests = max(0, len(after) - len(before.allocs))
    assert after == before.domains, f"domains changed: before {before.domains}, after {after}"
    assert row.lost_lines == 0 and row.duplicated_lines == 0, (row.lost_lines, row.duplicated_lines)
    pids = plugin_pids(tb)
    assert len(pids) == 1, f"expected exactly one plugin process, found {pids}"

    # Stats resume where an operator looks: every recovered allocation's stats in Nomad's own API
    # carry a sample taken after the disruption, with the guest's memory in it.
    def stats_fresh():
        return all(stats_timestamp(nomad, a) > back_ns and stats_rss(nomad, a) > 0 for a in before.allocs)

    t0 = time.monotonic()
    nomad.wait_until(
        stats_fresh, 180, "fresh task stats of every recovered allocation in /v1/client/allocation/<id>/stats"
    )
    row.note = f"stats fresh in Nomad's API for {len(before.allocs)}/{len(before.allocs)} allocs {time.monotonic() - t0:.0f} s after the consoles caught up"


def test_plugin_crash_recovers_every_guest(nomad, testbed, recovery_job, summary):
    with summary.scenario("plugin SIGKILL") as row:
        before = snapshot(nomad, testbed, recovery_job)
        assert len(before.plugin) == 1, before.plugin
        testbed.run(["kill", "-KILL", str(before.plugin[0])])
        # Nomad notices (fingerprint stream and WaitTask fail), launches a new plugin and
        # calls RecoverTask for each task.
        nomad.wait_until(
            lambda: (p := plugin_pids(testbed)) and p != before.plugin, 120, "a new plugin process", every=1
        )
        back = dom0_now_ns(testbed)
        time.sleep(3)  # let the guests print while recovery runs
        check_recovered(nomad, testbed, before, back, row)
        assert plugin_pids(testbed) != before.plugin


def test_agent_clean_restart_recovers_every_guest(backend, nomad, testbed, recovery_job, summary):
    xl_only(backend, "the backend sees what it sees after a plugin SIGKILL: a new plugin recovering the tasks")
    with summary.scenario("agent stop + start") as row:
        before = snapshot(nomad, testbed, recovery_job)
        before.logmons = logmon_pids(testbed)
        ends = keeper_held(testbed, "hold_ends")
        nomad.stop()  # SIGINT: a clean shutdown; the tasks stay, the plugin is stopped
        nomad.wait_until(lambda: not plugin_pids(testbed), 60, "the plugin to exit with the agent", every=1)
        assert xl_domains(testbed) == before.domains, "stopping the agent touched the guests"
        wait_held(nomad, testbed, before)
        time.sleep(3)  # guests print while nobody streams their console
        nomad.start()
        back = dom0_now_ns(testbed)
        held = holds_end(nomad, testbed, before, ends)
        check_recovered(nomad, testbed, before, back, row)
        assert plugin_pids(testbed) != before.plugin
        row.note = f"{held}; {row.note}"


def test_agent_sigkill_reattaches_to_the_surviving_plugin(backend, nomad, testbed, recovery_job, summary):
    xl_only(backend, "the plugin outlives the agent untouched and is reattached; the toolstack is not asked")
    with summary.scenario("agent SIGKILL + start") as row:
        before = snapshot(nomad, testbed, recovery_job)
        before.logmons = logmon_pids(testbed)
        ends = keeper_held(testbed, "hold_ends")
        nomad.stop(9)
        wait_held(nomad, testbed, before)
        time.sleep(3)
        assert plugin_pids(testbed) == before.plugin, "the plugin must survive the agent's SIGKILL"
        nomad.start()
        back = dom0_now_ns(testbed)
        held = holds_end(nomad, testbed, before, ends)
        check_recovered(nomad, testbed, before, back, row)
        assert plugin_pids(testbed) == before.plugin, "the agent should have reattached to the same plugin"
        row.note = f"{held}; {row.note}"


def test_libvirtd_restart_keeps_every_guest(backend, nomad, testbed, recovery_job, summary):
    """libvirtd is killed and started again while the guests run: the plugin re-opens its
    connection, keeps following the same domains (same domids, console exactly once, stats
    again), and the node's fingerprint says the connection was lost and re-opened."""
    if backend != "libvirt":
        pytest.skip("libvirt backend only")
    with summary.scenario("libvirtd restart") as row:
        before = snapshot(nomad, testbed, recovery_job)
        pid = testbed.ensure_libvirtd()
        testbed.kill(pid, 9, group=False)
        nomad.wait_until(lambda: testbed.poll(pid) is not None, 30, "libvirtd to be gone", every=0.5)
        time.sleep(3)  # guests print while libvirtd is away
        testbed.ensure_libvirtd()
        back = dom0_now_ns(testbed)
        check_recovered(nomad, testbed, before, back, row)
        assert plugin_pids(testbed) == before.plugin, "the plugin must live through a libvirtd restart"

        def says_reconnected() -> str | None:
            xen = (nomad.node().get("Drivers") or {}).get("xen") or {}
            text = xen.get("HealthDescription") or ""
            return text if xen.get("Healthy") and "reconnected at" in text else None

        # (the fingerprint runs every fingerprint_period, 30 s in the example agent config)
        row.note = nomad.wait_until(says_reconnected, 90, "the fingerprint to say libvirt was reconnected", every=2)[
            :160
        ]


def test_guest_destroyed_while_plugin_down_is_reported_and_restarted(backend, nomad, testbed, recovery_job, summary):
    xl_only(backend, "the guest is destroyed with `xl destroy`, behind the toolstack's back")
    with summary.scenario("guest destroyed while down") as row:
        before = snapshot(nomad, testbed, recovery_job)
        row.guests_before = len(before.domains)
        victim_alloc = before.allocs[0]
        victim = domain_of(before.domains, victim_alloc)[0]
        nomad.stop()
        nomad.wait_until(lambda: not plugin_pids(testbed), 60, "the plugin to exit with the agent", every=1)
        testbed.run(["xl", "destroy", victim], timeout=120)
        nomad.start()

        def restarted():
            # The allocation stays "running" through an in-place restart, and the server may
            # get the client's Terminated and Restarting events after dom0 shows the new
            # domain: wait for all three.
            alloc = nomad.alloc(victim_alloc)
            doms = xl_domains(testbed)
            fresh = [n for n in domain_of(doms, victim_alloc) if n != victim]
            seen = {e["Type"] for e in nomad.task_events(alloc, TASK)}
            done = alloc["ClientStatus"] == "running" and fresh and {"Terminated", "Restarting"} <= seen
            return (alloc, doms, fresh[0]) if done else None

        alloc, after, fresh = nomad.wait_until(restarted, 300, "the destroyed guest's task to be restarted", every=3)
        events = events_text(nomad, alloc)
        terminated = [e for e in nomad.task_events(alloc, TASK) if e["Type"] == "Terminated"]
        assert terminated, events
        message = terminated[-1].get("Details", {}).get("exit_message", "") + terminated[-1].get("DisplayMessage", "")
        assert "vanished" in message and victim in message, events
        assert any(e["Type"] == "Restarting" for e in nomad.task_events(alloc, TASK)), events

        # The other four are untouched; the victim has exactly one new domain; nothing stale.
        others = {n: d for n, d in before.domains.items() if n != victim}
        nomad.wait_until(lambda: set(xl_domains(testbed)) == set(others) | {fresh}, 60, "exactly five domains")
        after = xl_domains(testbed)
        row.guests_after = len(after)
        row.lost_guests = sum(1 for n, d in others.items() if after.get(n) != d)
        row.duplicated_guests = max(0, len(after) - GUESTS)
        doms, files = leaks(nomad, testbed, keep=set(after))
        row.leaked_domains, row.leaked_files = len(doms), len(files)
        row.note = f"{victim} reported: {message.strip()[:120]}"
        assert {n: after[n] for n in others} == others
        assert (doms, files) == ([], []), (doms, files)
        assert len(plugin_pids(testbed)) == 1


def test_job_stop_stops_every_recovered_guest(nomad, testbed, recovery_job, summary):
    with summary.scenario("job stop after recoveries") as row:
        row.guests_before = len(xl_domains(testbed))
        nomad.stop_job(recovery_job, purge=False)

        def all_complete():
            allocs = [a for a in nomad.allocs(recovery_job) if a["DesiredStatus"] == "stop"]
            return allocs and all(a["ClientStatus"] in ("complete", "failed") for a in allocs)

        nomad.wait_until(all_complete, 180, "every allocation to be stopped", every=2)
        nomad.wait_until(lambda: not xl_domains(testbed), 120, "no guest left", every=2)
        nomad.wait_until(lambda: nomad.leftovers() == [], 60, "no driver file left", every=1)
        row.guests_after = 0
        statuses = {a["ID"]: a["ClientStatus"] for a in nomad.allocs(recovery_job) if a["DesiredStatus"] == "stop"}
        assert all(s == "complete" for s in statuses.values()), statuses


# ---------------------------------------------------------------- toolstack faults


def _heal_faults(tb) -> None:
    """Undo every fault this module injects (idempotent; also run at module end)."""
    tb.run(
        "pkill -CONT -x xenstored || true;"
        f" if [ -S {XENSTORED_SOCKET}.away ] && [ ! -e {XENSTORED_SOCKET} ]; then mv {XENSTORED_SOCKET}.away {XENSTORED_SOCKET}; fi;"
        f" if [ -d {CONSOLE_DIR}.away ] && [ ! -d {CONSOLE_DIR} ]; then mv {CONSOLE_DIR}.away {CONSOLE_DIR}; fi",
        check=False,
    )


@pytest.fixture(scope="module")
def bystander(backend, nomad, testbed):
    """A guest that runs through every fault and must keep running and logging."""
    xl_only(backend, "the toolstack faults are injected on the xl path")
    run_job(nomad, "bystander", batch_job("bystander", _config("tick=1"), job_type="service"))
    alloc = nomad.wait_alloc("bystander", {"running", "failed"}, timeout=300)
    assert alloc["ClientStatus"] == "running", events_text(nomad, alloc)
    nomad.wait_until(lambda: alloc_ticks(nomad, alloc["ID"]), 60, "the bystander's first ticks")
    (name,) = domain_of(xl_domains(testbed), alloc["ID"])
    return alloc["ID"], name


def _config(cmdline: str, extra: str = "", boot_timeout: str = "90s") -> str:
    return (
        f'        kernel       = "{KERNEL}"\n'
        f'        cmdline      = "{cmdline}"\n'
        "        memory       = 16\n"
        '        boot_marker  = "NDX-GUEST READY"\n'
        f'        boot_timeout = "{boot_timeout}"\n' + extra
    )


def check_fault(nomad: NomadDom0, tb, row: Row, bystander, job: str, expect_status: str) -> tuple[dict, str]:
    """The job reached ``expect_status``; no leaked domain or file; the bystander is unharmed."""
    wait_for = {"running", "failed", "complete"} if expect_status == "running" else {"failed", "complete"}
    alloc = nomad.wait_alloc(job, wait_for, timeout=300)
    events = events_text(nomad, alloc)
    by_alloc, by_name = bystander
    keep = {by_name}
    if alloc["ClientStatus"] == "running":
        keep |= set(domain_of(xl_domains(tb), alloc["ID"]))
    row.guests_before = 1
    with contextlib.suppress(AssertionError):
        nomad.wait_until(lambda: leaks(nomad, tb, keep) == ([], []), 60, "the failed start's leftovers to go", every=2)
    doms, files = leaks(nomad, tb, keep)
    row.leaked_domains, row.leaked_files = len(doms), len(files)
    domains = xl_domains(tb)
    row.guests_after = int(by_name in domains)
    row.lost_guests = 1 - row.guests_after
    ticks = alloc_ticks(nomad, by_alloc)
    row.lost_lines, row.duplicated_lines = gaps_and_repeats(ticks)
    assert alloc["ClientStatus"] == expect_status, events
    assert (doms, files) == ([], []), f"leaked domains {doms}, files {files}"
    assert nomad.alloc(by_alloc)["ClientStatus"] == "running"
    before = max(ticks or [0])
    nomad.wait_until(lambda: max(alloc_ticks(nomad, by_alloc) or [0]) > before, 60, "the bystander to keep logging")
    assert (row.lost_lines, row.duplicated_lines) == (0, 0), ticks
    return alloc, events


def test_fault_vif_hotplug_failure_after_domain_build(nomad, testbed, bystander, summary):
    with summary.scenario("fault: vif bridge missing") as row:
        extra = '        vif {\n          bridge = "nosuchbr0"\n        }\n'
        run_job(nomad, "fault-vif", batch_job("fault-vif", _config("tick=1", extra)))
        alloc, events = check_fault(nomad, testbed, row, bystander, "fault-vif", "failed")
        failure = [e for e in nomad.task_events(alloc, TASK) if e["Type"] == "Driver Failure"]
        assert failure, events
        message = failure[-1].get("DisplayMessage", "")
        row.note = message[:200]
        assert "nosuchbr0" in message and "vif" in message, events


def test_fault_xenstored_stalled_during_start(nomad, testbed, bystander, summary):
    """xenstored stops answering for 15 s while a ClickOS task starts (its config is pushed through
    XenStore): the start waits it out and succeeds; nothing is leaked, the bystander is unharmed."""
    with summary.scenario("fault: xenstored stalled 15 s") as row:
        click = '        click_config = "in :: FromDevice(0); in -> Discard;"\n'
        testbed.run(["pkill", "-STOP", "-x", "xenstored"])
        try:
            run_job(
                nomad,
                "fault-xenstored",
                batch_job("fault-xenstored", _config("clickos tick=1", click), job_type="service"),
            )
            time.sleep(15)
        finally:
            testbed.run(["pkill", "-CONT", "-x", "xenstored"])
        alloc, events = check_fault(nomad, testbed, row, bystander, "fault-xenstored", "running")
        logs = raw_get(
            nomad, f"/v1/client/fs/logs/{alloc['ID']}?task={TASK}&type=stdout&origin=start&offset=0&plain=true"
        )
        assert b"status=Running" in logs, logs[-500:]
        nomad.stop_job("fault-xenstored", purge=False)
        nomad.wait_until(
            lambda: not domain_of(xl_domains(testbed), alloc["ID"]), 120, "the stalled-start guest to stop"
        )
        row.note = "start waited for xenstored and succeeded; ClickOS config pushed"


XENSTORED_SOCKET = "/run/xenstored/socket"


def test_fault_xenstored_refuses_a_restarted_plugin(nomad, testbed, bystander, summary):
    """xenstored's socket refuses connections (hidden) when the plugin crashes and is relaunched:
    the bystander is still recovered (xl reaches xenstored through the kernel's xenbus device),
    a ClickOS start fails with an error that names xenstored, and once the socket is back the same
    plugin pushes Click configurations again."""
    with summary.scenario("fault: xenstored refusing") as row:
        click = '        click_config = "in :: FromDevice(0); in -> Discard;"\n'
        (old_plugin,) = plugin_pids(testbed)
        testbed.run(["mv", XENSTORED_SOCKET, XENSTORED_SOCKET + ".away"])
        try:
            testbed.run(["kill", "-KILL", str(old_plugin)])
            nomad.wait_until(lambda: (p := plugin_pids(testbed)) and p != [old_plugin], 120, "a new plugin", every=1)
            run_job(nomad, "fault-refused", batch_job("fault-refused", _config("clickos tick=1", click)))
            alloc, events = check_fault(nomad, testbed, row, bystander, "fault-refused", "failed")
        finally:
            _heal_faults(testbed)
        failure = [e for e in nomad.task_events(alloc, TASK) if e["Type"] == "Driver Failure"]
        assert failure and "xenstored is not reachable" in failure[-1].get("DisplayMessage", ""), events
        row.note = failure[-1]["DisplayMessage"][:160]
        run_job(
            nomad,
            "fault-refused-after",
            batch_job("fault-refused-after", _config("clickos tick=1 poweroff_after=2", click)),
        )
        alloc, events = check_fault(nomad, testbed, row, bystander, "fault-refused-after", "complete")
        logs = raw_get(
            nomad, f"/v1/client/fs/logs/{alloc['ID']}?task={TASK}&type=stdout&origin=start&offset=0&plain=true"
        )
        assert b"status=Running" in logs, logs[-500:]


def test_fault_console_log_directory_missing(nomad, testbed, bystander, summary):
    with summary.scenario("fault: console log missing") as row:
        testbed.run(["mv", CONSOLE_DIR, f"{CONSOLE_DIR}.away"])
        try:
            run_job(nomad, "fault-console", batch_job("fault-console", _config("tick=1", boot_timeout="10s")))
            nomad.wait_alloc("fault-console", {"running", "failed", "complete"}, timeout=300)
            time.sleep(2)  # a failed start is undone before Nomad marks the allocation failed
        finally:
            _heal_faults(testbed)
        alloc, events = check_fault(nomad, testbed, row, bystander, "fault-console", "failed")
        failure = [e for e in nomad.task_events(alloc, TASK) if e["Type"] == "Driver Failure"]
        assert failure, events
        message = failure[-1].get("DisplayMessage", "")
        row.note = message[:200]
        assert "console log" in message and CONSOLE_DIR in message, events


def test_normal_job_still_starts_after_the_faults(nomad, testbed, bystander, summary):
    with summary.scenario("normal job after faults") as row:
        run_job(nomad, "after-faults", batch_job("after-faults", _config("tick=1 poweroff_after=2")))
        alloc, events = check_fault(nomad, testbed, row, bystander, "after-faults", "complete")
        terminated = [e for e in nomad.task_events(alloc, TASK) if e["Type"] == "Terminated"]
        assert terminated and terminated[-1]["Details"]["exit_code"] == "0", events
        assert len(plugin_pids(testbed)) == 1


# ---------------------------------------------------------------- bad input sweep

SWEEP_CAP = 100  # configs given to `xl create -n` (about 0.25 s each under TCG)
XL_KEYS = {
    "type",
    "name",
    "uuid",
    "kernel",
    "ramdisk",
    "cmdline",
    "memory",
    "maxmem",
    "vcpus",
    "cpus",
    "vif",
    "on_poweroff",
    "on_reboot",
    "on_crash",
}
_LINE = re.compile(r'^([a-z_]+) = (?:"([^"\\\n#]*)"|(\d+)|\[ ("[^"\\\n#]*"(?:, "[^"\\\n#]*")*) \])$')


def _strategies(images: str, scripts: str):
    from hypothesis import strategies as st

    def mostly(good, bad, bad_in_10: int = 2):
        """``good`` most of the time, ``bad`` in ``bad_in_10`` of ten draws (each field of a config
        is one more chance to be refused; without this almost nothing would reach xl)."""
        return st.integers(0, 9).flatmap(lambda i: bad if i < bad_in_10 else good)

    specials = [
        '"',
        "'",
        "\\",
        "\n",
        "\r",
        "#",
        "\x00",
        "\t",
        " ",
        "=",
        ",",
        "[",
        "]",
        ";",
        "é",
        "\u202e",
        "🙂",
        "../",
        "$(id)",
        "`id`",
        "${x}",
        "\x7f",
    ]
    nasty = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(specials)), max_size=6).map("".join)
    hcl_converted = st.one_of(st.integers(-10, 10**6).map(str), st.sampled_from(["true", "false"]))
    strings = st.one_of(nasty, hcl_converted, st.text(max_size=40))
    numbers = st.one_of(
        st.integers(-(2**70), 2**70),
        st.integers(-2, 70),
        st.floats(allow_nan=False),
        st.decimals(allow_nan=False, allow_infinity=False, places=4),
    )
    kernel = mostly(
        st.sampled_from(
            [
                f"{images}/ndx-unikernel",
                "ndx-unikernel",
                "./ndx-unikernel",
                f"{images}//ndx-unikernel",
                f"{images}/../images/ndx-unikernel",
            ]
        ),
        st.one_of(
            st.sampled_from(
                [
                    "/etc/passwd",
                    "../../../../etc/passwd",
                    f"{images}/../../../../etc/passwd",
                    "",
                    f"{images}/ndx-unikernel\nmemory = 4096",
                    f'{images}/ndx-unikernel" memory="4096',
                    f"{images}/ndx-unikernel#x",
                    "/" + "a" * 5000,
                ]
            ),
            nasty.map(lambda s: f"{images}/ndx-unikernel{s}"),
            strings,
        ),
    )
    cmdline = mostly(
        st.one_of(
            st.sampled_from(["tick=1", "clickos", "", "a" * 1023, "console=hvc0 x=1,2 y=[3]"]),
            st.text(
                alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="\"'\\#"),
                max_size=60,
            ),
        ),
        st.one_of(st.sampled_from(['x" on_crash="preserve', "x\nmemory = 4096", "a" * 1024, "# comment"]), strings),
    )
    mac = mostly(
        st.sampled_from(["00:16:3e:00:00:01", "00:16:3E:AB:cd:02"]),
        st.one_of(st.sampled_from(["01:16:3e:00:00:01", "zz:16:3e:00:00:01", "00:16:3e:00:00:01,bridge=br1"]), strings),
    )
    vif = st.fixed_dictionaries(
        {},
        optional={
            "bridge": mostly(
                st.sampled_from(["xenbr0", "br-0.1", "a" * 15]),
                st.one_of(st.sampled_from(["a" * 16, "xenbr0,script=/bin/sh"]), strings),
            ),
            "mac": mac,
            "ip": mostly(
                st.sampled_from(["10.0.0.2", "10.0.0.2 fd00::2"]),
                st.one_of(st.sampled_from(["10.0.0.300", "10.0.0.2,x"]), strings),
            ),
            "script": mostly(
                st.sampled_from(["vif-bridge", f"{scripts}/vif-route", "/etc/xen/scripts/vif-nat"]),
                st.one_of(st.sampled_from(["vif bridge", "vif=x"]), strings),
            ),
        },
    )
    config = st.fixed_dictionaries(
        {"kernel": kernel},
        optional={
            "cmdline": cmdline,
            "memory": mostly(
                st.sampled_from([8, 16, 32, 16.0, "24"]).map(lambda v: Decimal(v) if isinstance(v, str) else v), numbers
            ),
            "vcpus": mostly(st.sampled_from([1, 2, 4, 1.0]), numbers),
            "cpus": mostly(
                st.sampled_from(["all", "0", "0-1", "0-3,^1", "nodes:0"]),
                st.one_of(st.sampled_from(["1-", "0,,1", "all,0"]), strings),
            ),
            "vif": st.lists(vif, max_size=2),
            "on_crash": mostly(
                st.sampled_from(["destroy", "preserve", "coredump-destroy"]),
                st.one_of(st.sampled_from(["restart", "Destroy", "destroy\n"]), strings),
            ),
            "boot_timeout": mostly(
                st.sampled_from(["30s", "1h1m", "1.5m", "500ms"]),
                st.one_of(st.sampled_from(["0", "-1s", "999999h", "5"]), strings),
            ),
            "boot_marker": mostly(st.sampled_from(["NDX-GUEST READY", "ready"]), strings),
            "click_config": mostly(st.text(max_size=200).filter(lambda t: "\x00" not in t and t), strings),
            "click_router_id": mostly(st.integers(0, 2**31 - 1), numbers),
            "ramdisk": mostly(st.just(f"{images}/ndx-unikernel"), strings),
        },
    )
    # What Nomad would never send (its HCL layer converts or refuses first): a few raw type errors.
    raw_wrong = st.fixed_dictionaries(
        {"kernel": st.one_of(st.integers(-(2**63), 2**63 - 1), st.booleans(), st.lists(st.text(), max_size=2))},
        optional={"vcpus": st.one_of(st.text(max_size=5), st.booleans())},
    )
    task_name = mostly(st.just("web"), st.one_of(st.text(min_size=1, max_size=300), st.just("x" * 300 + "/../é")), 3)
    case = st.integers(0, 19).flatmap(
        lambda i: raw_wrong.map(lambda c: (c, True)) if i == 0 else config.map(lambda c: (c, False))
    )
    return st.tuples(case, task_name)


def _as_gocty(raw: dict) -> dict:
    """Numbers the way go-cty puts them into msgpack: an integer beyond int64 travels as its
    decimal string (our encoder, like msgpack, only packs 64-bit integers)."""
    out = dict(raw)
    for key in ("memory", "vcpus", "click_router_id"):
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            out[key] = Decimal(value)
    return out


def _check_rendered(text: str, dspec) -> None:
    """Line by line: only our keys, each once, each with exactly the value we meant."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# Generated by nomad-driver-xen"):
            continue
        m = _LINE.match(line)
        assert m, f"unexpected line in xl.cfg: {line!r}"
        key = m.group(1)
        assert key in XL_KEYS and key not in seen, f"key {key!r} twice or not ours:\n{text}"
        seen[key] = m.group(2) if m.group(2) is not None else (m.group(3) or m.group(4))
    assert seen["name"] == dspec.name and seen["kernel"] == dspec.kernel
    assert seen.get("cmdline", "") == dspec.cmdline
    assert int(seen["memory"]) == dspec.memory_mb and int(seen["vcpus"]) == dspec.vcpus


def sweep_configs(root: Path, max_examples: int = 1200, host_cpus: int | None = None) -> tuple[dict, dict]:
    """The host half of the sweep: generate, decode, validate, render.  Returns the counts and
    up to SWEEP_CAP distinct rendered configs (file name → (DomainSpec, text))."""
    from hypothesis import HealthCheck, given, settings

    from xen_driver.driver.config import PluginConfig, TaskConfig
    from xen_driver.driver.errors import ConfigError
    from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
    from xen_driver.driver.models import TaskSpec
    from xen_driver.nomad import cty
    from xen_driver.nomad.schemas import TASK_SCHEMA
    from xen_driver.xen.spec import SpecError
    from xen_driver.xen.xlcfg import render

    images, alloc = root / "images", root / "alloc"
    (alloc / "web").mkdir(parents=True)
    images.mkdir()
    for where in (images, alloc / "web"):  # decoding never reads the kernel; dom0 gets the real one
        (where / "ndx-unikernel").write_bytes(b"\x7fELF placeholder")
    scripts = root / "scripts"  # the operator's allowed hotplug scripts (the last one is not allowed)
    for script in ("vif-bridge", "vif-route"):
        (scripts / script).parent.mkdir(exist_ok=True)
        (scripts / script).write_text("#!/bin/sh\n")
        (scripts / script).chmod(0o755)
    lifecycle = TaskLifecycle(
        PluginConfig.from_dict(
            {
                "image_dirs": [str(images)],
                "state_dir": str(root / "state"),
                "vif_scripts_dir": str(scripts),
                "vif_scripts": ["vif-bridge", "vif-route"],
                "vif_bridges": ["xenbr0", "br-0.1", "a" * 15],
            }
        ),
        lambda e: None,
    )
    lifecycle.host_cpus = host_cpus  # what StartTask learns from `xl info` on the real host
    lifecycle.bridge_exists = lambda name: True  # the dry run in dom0 does not plug anything
    counts = {"examples": 0, "refused": 0, "type errors": 0, "rendered": 0}
    rendered: dict[str, tuple] = {}
    texts: set[str] = set()

    @settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_strategies(str(images), str(scripts)))
    def sweep(case):
        (raw, wrong_type), task_name = case
        counts["examples"] += 1
        try:
            data = TASK_SCHEMA.decode(cty.encode(_as_gocty(raw), TASK_SCHEMA.cty_type))
        except cty.CtyDecodeError as exc:
            # Only for values Nomad would never send; still our own error, on one line.
            assert wrong_type, f"{raw!r}: {exc}"
            assert "\n" not in str(exc) and str(exc).startswith("expected"), str(exc)
            counts["type errors"] += 1
            return
        task_id = f"0b1c2d3e-0000-4000-8000-000000000000/{task_name}/1a2b3c4d"
        try:
            spec = TaskSpec(
                id=task_id,
                name=task_name,
                alloc_id=task_id.split("/")[0],
                task_group="g",
                job_name="j",
                job_id="j",
                namespace="default",
                node_id="n",
                node_name="n",
                env={},
                memory_mb=16,
                memory_max_mb=0,
                cpu_shares=100,
                alloc_dir=str(alloc),
                stdout_path="/dev/null",
                stderr_path="/dev/null",
                config=TaskConfig.from_dict(data),
            )
            name = domain_name_for(spec)
            dspec = lifecycle.domain_spec(spec, name)
            text = render(dspec)
        except ConfigError as exc:
            assert exc.field and f'"{exc.field}"' in str(exc) and "\n" not in str(exc), str(exc)
            counts["refused"] += 1
            return
        except SpecError as exc:
            assert exc.field and exc.field in str(exc) and "\n" not in str(exc), str(exc)
            counts["refused"] += 1
            return
        assert not wrong_type, f"accepted a wrongly typed config: {raw!r}"
        _check_rendered(text, dspec)
        counts["rendered"] += 1
        shape = re.sub(r"(?m)^uuid = .*$", "", text)  # every render draws a fresh uuid
        if len(rendered) < SWEEP_CAP and shape not in texts:
            texts.add(shape)
            rendered[f"{len(rendered):03d}.cfg"] = (dspec, text)

    sweep()
    return counts, rendered


def test_bad_input_sweep_never_crashes_and_never_injects(backend, testbed, unikernel, tmp_path_factory, summary):
    xl_only(backend, "the valid configs are checked by `xl create -n`")
    """Hypothesis generates task configs (wrong types, huge/negative numbers, unicode, quotes,
    newlines, ``#``, path traversal, long names) and feeds them through the decoding path of
    StartTask: cty-msgpack → TaskConfig → domain spec → xl.cfg.  Each ends in a validation error
    naming a field, or in an xl.cfg that xl itself (``xl create -n``) parses to exactly our values."""
    with summary.scenario("bad input sweep") as row:
        root = tmp_path_factory.mktemp("sweep")
        info = {
            k.strip(): v.strip()
            for k, _, v in (line.partition(":") for line in testbed.run(["xl", "info"]).stdout.splitlines())
        }
        counts, rendered = sweep_configs(root, host_cpus=int(info["nr_cpus"]))
        assert counts["refused"] > 50 and counts["rendered"] > 20, counts

        # One batch of dry runs in dom0 (same paths as on the host): xl's own parser must read
        # back exactly our values.
        sweep_dir = "/var/lib/ndx-tests/sweep"
        images, task_dir = root / "images", root / "alloc" / "web"
        testbed.run(
            f"rm -rf {sweep_dir}; mkdir -p {sweep_dir} {images} {task_dir};"
            f" cp {unikernel} {images}/ndx-unikernel; cp {unikernel} {task_dir}/ndx-unikernel"
        )
        for fname, (_, text) in rendered.items():
            testbed.write_file(f"{sweep_dir}/{fname}", text, mode=0o600)
        script = (
            "import glob, json, os, subprocess, sys\n"
            "out = {}\n"
            "for f in sorted(glob.glob(sys.argv[1] + '/*.cfg')):\n"
            "    p = subprocess.run(['xl', 'create', '-n', f], capture_output=True, text=True)\n"
            "    out[os.path.basename(f)] = [p.returncode, p.stdout, p.stderr[-1500:]]\n"
            "print(json.dumps(out))\n"
        )
        testbed.write_file(f"{sweep_dir}/dryrun.py", script)
        results = json.loads(testbed.run(["python3", f"{sweep_dir}/dryrun.py", sweep_dir], timeout=600).stdout)
        testbed.run(["rm", "-rf", sweep_dir, str(root)], check=False)
        assert set(results) == set(rendered)
        for fname, (rc, out, err) in sorted(results.items()):
            dspec, text = rendered[fname]
            assert rc == 0, f"xl create -n refused {fname}:\n{text}\n{err}"
            check_xl_json(json.loads(out), dspec, text)
        row.note = (
            f"{counts['examples']} configs: {counts['refused']} refused naming the field, "
            f"{counts['type errors']} raw type errors, {counts['rendered']} rendered; "
            f"{len(results)} distinct ones parsed by xl create -n to exactly our values"
        )


def check_xl_json(doc: dict, dspec, text: str) -> None:
    """``xl create -n`` prints libxl's domain config as JSON: it must hold our values, nothing else."""
    cfg = doc.get("config", doc)
    c_info, b_info = cfg["c_info"], cfg["b_info"]
    where = f"\n{text}\n{json.dumps(cfg, indent=1)[:3000]}"
    assert c_info["name"] == dspec.name and c_info["type"] == "pv", where
    assert c_info.get("uuid") == dspec.uuid, where
    assert b_info["max_vcpus"] == dspec.vcpus, where
    assert b_info["target_memkb"] == dspec.memory_mb * 1024, where
    assert b_info.get("kernel") == dspec.kernel, where
    assert (b_info.get("cmdline") or "") == dspec.cmdline, where
    assert (b_info.get("ramdisk") or None) == dspec.ramdisk, where
    nics = cfg.get("nics") or []
    assert len(nics) == len(dspec.vifs), where
    for nic, vif in zip(nics, dspec.vifs, strict=True):
        assert nic.get("bridge") == vif.bridge and nic.get("ip") == vif.ip, where
        assert (nic.get("mac") or "").lower() == (vif.mac or "").lower(), where  # xl prints MACs in lower case
        if vif.script is not None:
            assert nic.get("script") in (vif.script, f"/etc/xen/scripts/{vif.script}"), where
        else:
            assert "script" not in nic, where
    extra = set(cfg) - {
        "c_info",
        "b_info",
        "nics",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "on_watchdog",
        "on_soft_reset",
        "num_nics",
    }
    assert not {"disks", "pcidevs", "p9s", "vfbs", "vkbs", "dtdevs", "channels", "usbctrls"} & extra, where
