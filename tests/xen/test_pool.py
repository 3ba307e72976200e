"""The warm pool on real Xen, through a real Nomad agent (issue 12).

The agent runs ``nomad-jobs/agent.hcl`` with one pool profile added (the ClickOS-mode test
unikernel, two members).  A job with ``pool = "clickos"`` takes a pre-built paused member:
the allocation runs, the guest echoes the Click configuration Nomad's template rendered, and
the timing event shows the pool path (``pool_claim``, no ``domain_build``).  A plugin SIGKILL
re-adopts the idle members and recovers the claimed guest: nothing leaked, nothing duplicated.

The two backends' agents also differ in who writes the task log files: on ``xl`` the driver does
(``log_collection = "driver"``: no logmon process per task), on libvirt Nomad's logmon does (the
default), so ``nomad alloc logs`` of a pool guest is proven both ways.
"""

from __future__ import annotations

import re
import zlib

import pytest

from testbed.nomad import (
    BACKENDS,
    CONSOLE_DIR,
    DATA_DIR,
    IMAGE_DIR,
    REPO,
    STATE_DIR,
    NomadDom0,
    plugin_pids,
)
from testbed.nomad import agent_config as example_agent_config
from xen_driver import breakdown as bd

pytestmark = [
    pytest.mark.xen,
    pytest.mark.nomad,
    pytest.mark.parametrize("backend", BACKENDS, scope="module"),
]

POOL_SIZE = 2
POOL_BLOCK = f"""
    fingerprint_period = "5s"

    pool "clickos" {{
      kernel  = "{IMAGE_DIR}/ndx-unikernel"
      cmdline = "clickos tick=5"
      memory  = 16
      vcpus   = 1
      size    = {POOL_SIZE}
      vif {{
        bridge = "xenbr0"
      }}
    }}

    pool "booted" {{
      kernel      = "{IMAGE_DIR}/ndx-unikernel"
      cmdline     = "clickos tick=5"
      memory      = 16
      vcpus       = 1
      size        = 1
      idle        = "booted"
      boot_marker = "NDX-GUEST READY"
      vif {{
        bridge = "xenbr0"
      }}
    }}
"""
#: The xl agent's plugin writes the task log files itself (see the module's docstring).
DRIVER_LOGS = """
    log_collection = "driver"
"""
PREFIX = "ndx-pool-clickos-"
BOOTED_PREFIX = "ndx-pool-booted-"
#: The member the pool job claimed: its driver name, the name `xl list` shows, its domid.
CLAIMED: dict = {}


def agent_config(backend: str) -> str:
    """nomad-jobs/agent.hcl on ``backend`` with the pool profile (and a quicker fingerprint, so
    the node's pool attributes follow the members within seconds)."""
    text = example_agent_config(backend)
    block = POOL_BLOCK + (DRIVER_LOGS if backend == "xl" else "")
    new, n = re.subn(r'\n\s*fingerprint_period\s*=\s*"30s"\n', block, text)
    assert n == 1, "agent.hcl no longer has the fingerprint_period line this test replaces"
    return new


def pool_job(name: str) -> str:
    """nomad-jobs/clickos.nomad under another name, opting into the pool."""
    text = (REPO / "nomad-jobs" / "clickos.nomad").read_text().replace('job "clickos"', f'job "{name}"')
    text, n = re.subn(r'(\n(\s*)cmdline\s*=\s*"clickos tick=5"\n)', r'\1\2pool              = "clickos"\n', text)
    assert n == 1
    if "ephemeral_disk" in text and not re.search(r"\blogs\s*\{", text):
        # Nomad refuses task logs (10 x 10 MB by default) that do not fit a small ephemeral disk.
        text, n = re.subn(
            r"(\n([ \t]*)kill_timeout)",
            r"\n\2logs {\n\2  max_files     = 2\n\2  max_file_size = 2\n\2}\n\1",
            text,
            count=1,
        )
        assert n == 1
    return text


def xl_domains(tb) -> dict[str, tuple[int, str]]:
    """name → (domid, state flags) of every domain but Domain-0."""
    out = tb.run(["xl", "list"], timeout=90).stdout.splitlines()[1:]
    doms = {}
    for line in out:
        parts = line.split()
        if len(parts) >= 6 and parts[0] != "Domain-0":
            doms[parts[0]] = (int(parts[1]), parts[4])
    return doms


def pool_attrs(nomad: NomadDom0, pool: str = "clickos") -> tuple[int, int] | None:
    attrs = nomad.node().get("Attributes") or {}
    ready, size = attrs.get(f"driver.xen.pool.{pool}.ready"), attrs.get(f"driver.xen.pool.{pool}.size")
    return None if ready is None or size is None else (int(ready), int(size))


def booted_ready(tb) -> dict[str, int]:
    """Booted members recorded as ready (running, waiting for a task): name → domid."""
    recorded = set(tb.run(f"ls -1 {STATE_DIR}/pool/members 2>/dev/null || true", check=False).stdout.split())
    return {n: d for n, (d, flags) in xl_domains(tb).items() if n.startswith(BOOTED_PREFIX) and n in recorded}


def idle_members(tb) -> dict[str, int]:
    """Ready pool members: paused (never ran) and recorded by the driver as built (a member whose
    ``xl create`` is still running is paused too, but has no record yet): name → domid."""
    recorded = set(tb.run(f"ls -1 {STATE_DIR}/pool/members 2>/dev/null || true", check=False).stdout.split())
    return {n: d for n, (d, flags) in xl_domains(tb).items() if n.startswith(PREFIX) and "p" in flags and n in recorded}


#: Destroy (and undefine) libvirt's pool members, when libvirtd runs.
LIBVIRT_PURGE_MEMBERS = (
    'pgrep -x libvirtd >/dev/null && python3 -c "import libvirt; libvirt.registerErrorHandler(lambda *a: None, None);'
    " c = libvirt.open('xen:///system');"
    " ds = [d for d in c.listAllDomains(0) if d.name().startswith('ndx-pool-')];"
    ' [d.destroy() for d in ds if d.isActive()]; [d.undefine() for d in ds if d.isPersistent()]" || true'
)


@pytest.fixture(scope="module")
def nomad(testbed, testbed_run_dir, unikernel, backend):
    agent = NomadDom0(testbed, testbed_run_dir, unikernel, backend=backend, config=agent_config(backend))
    agent.install()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        # Idle members outlive the plugin by design (the next one re-adopts them); the testbed is
        # shared with other modules, which expect no domains, so take them away here.
        testbed.run(
            f"{LIBVIRT_PURGE_MEMBERS}; for d in $(xl list | awk '/^ndx-pool-/ {{print $1}}'); do xl destroy $d; done;"
            f" rm -rf {STATE_DIR}/pool {STATE_DIR}/domains/ndx-pool-* {CONSOLE_DIR}/guest-ndx-pool-*",
            check=False,
            timeout=300,
        )


def _events(nomad: NomadDom0, alloc: dict, task: str) -> str:
    return "\n".join(
        f"{e['Type']}: {e.get('DisplayMessage') or ''} {e.get('Details') or ''}" for e in nomad.task_events(alloc, task)
    )


def test_pool_fills_and_the_node_reports_it(nomad, testbed):
    nomad.wait_until(
        lambda: pool_attrs(nomad) == (POOL_SIZE, POOL_SIZE),
        600,
        f"driver.xen.pool.clickos.ready = {POOL_SIZE}",
        every=2,
    )
    members = idle_members(testbed)
    assert len(members) == POOL_SIZE, xl_domains(testbed)


def test_pool_job_claims_a_member_and_the_guest_gets_its_click_config(nomad, testbed, testbed_report):
    nomad.wait_until(lambda: len(idle_members(testbed)) == POOL_SIZE, 600, "a full pool", every=2)
    before = idle_members(testbed)
    nomad.run_job(nomad.write_job("clickos-pool.nomad", pool_job("clickos-pool")))
    alloc = nomad.wait_alloc("clickos-pool", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", _events(nomad, alloc, "firewall")
    alloc_id = alloc["ID"]

    # The task's event names the pool path and its phases; there was no domain build.  (The
    # driver's event may reach the server a moment after the task's Started event.)
    def timing_event():
        return [e for e in nomad.task_events(nomad.alloc(alloc_id), "firewall") if bd.is_timing_event(e)] or None

    timing = nomad.wait_until(timing_event, 60, "the driver's timing event", every=0.5)
    details = timing[0]["Details"]
    assert details.get("start_path") == "pool" and "domain_build_ms" not in details, details
    for phase in ("pool_claim_ms", "clickos_push_ms", "unpause_ms", "boot_ms", "total_ms"):
        assert float(details[phase]) >= 0, details
    assert "booted from pool clickos" in timing[0]["DisplayMessage"], timing[0]
    testbed_report.append("pool start: " + ", ".join(f"{k} {v}" for k, v in details.items()))

    # The guest is one of the members that were ready, now running, and (renamed off the
    # start's path) `xl list` shows it under the task's domain name with the member's domid.
    member = timing[0]["DisplayMessage"].split()[1]
    assert member in before, (member, before)
    shown = details.get("listed_as", member)
    if nomad.backend == "libvirt":  # libvirt cannot rename a running domain: it keeps its name
        assert "listed_as" not in details, details
    else:
        assert shown.startswith("nomad-firewall-"), details

    def listed() -> bool:
        domains = xl_domains(testbed)
        return shown in domains and domains[shown][0] == before[member] and "p" not in domains[shown][1]

    nomad.wait_until(listed, 120, f"xl list to show {member} running as {shown}", every=1)
    assert shown == member or member not in xl_domains(testbed)
    CLAIMED.update(member=member, shown=shown, domid=before[member])

    # The Click configuration Nomad's template rendered reached the guest through XenStore.
    rendered = testbed.read_file(f"{DATA_DIR}/alloc/{alloc_id}/firewall/local/firewall.click")
    echo = f"config_len={len(rendered)} config_crc32={zlib.crc32(rendered):08x}"

    def logs() -> str | None:
        out = nomad.cli("alloc", "logs", alloc_id, "firewall").stdout
        return out if "NDX-GUEST READY" in out and echo in out else None

    out = nomad.wait_until(logs, 60, "the guest's config echo in `nomad alloc logs`")
    assert out.count("NDX-GUEST READY") == 1  # the console from its first byte, once
    # Who wrote it: the driver (no logmon process, no FIFO) on xl, Nomad's logmon on libvirt.
    # (this job's task is the only one running on the node; logmon's command line names no task)
    logmons = testbed.run("pgrep -fc '[n]omad logmon' || true", check=False).stdout.strip()
    files = testbed.run(f"ls -A {DATA_DIR}/alloc/{alloc_id}/alloc/logs", check=False).stdout.split()
    if nomad.backend == "xl":
        assert (logmons, sorted(files)) == ("0", ["firewall.stderr.0", "firewall.stdout.0"]), (logmons, files)
    else:
        assert logmons != "0" and ".firewall.stdout.fifo" in files and "firewall.stdout.0" in files, (logmons, files)

    # Refill: the pool builds a replacement in the background.
    nomad.wait_until(lambda: len(idle_members(testbed)) == POOL_SIZE, 600, "the refill", every=2)


def test_plugin_sigkill_readopts_members_and_recovers_the_claimed_guest(nomad, testbed):
    nomad.wait_until(lambda: len(idle_members(testbed)) == POOL_SIZE, 600, "a full pool", every=2)
    nomad.wait_until(lambda: len(booted_ready(testbed)) == 1, 600, "the booted member", every=2)
    before_domains = xl_domains(testbed)
    idle = idle_members(testbed)
    (old_plugin,) = plugin_pids(testbed)
    agent_log = nomad.run_dir / "nomad-agent.log"  # (shared by every agent of the session: judge only what follows)
    mark = len(agent_log.read_text(errors="replace"))

    def since_kill() -> str:
        return agent_log.read_text(errors="replace")[mark:]

    testbed.run(["kill", "-KILL", str(old_plugin)])
    nomad.wait_until(lambda: (p := plugin_pids(testbed)) and p != [old_plugin], 120, "a new plugin process")
    # The new plugin judged the members it found: all of them re-adopted, none destroyed.
    nomad.wait_until(
        lambda: f"adopted={POOL_SIZE + 1}" in since_kill(), 300, "the new plugin to re-adopt the idle members", every=1
    )
    assert "destroying pool member" not in since_kill(), since_kill()
    alloc = nomad.wait_alloc("clickos-pool", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", _events(nomad, alloc, "firewall")
    # The same domains, with the same ids: nothing destroyed, rebuilt, leaked or duplicated.
    assert xl_domains(testbed).keys() == before_domains.keys()
    assert {n: d for n, (d, _) in xl_domains(testbed).items()} == {n: d for n, (d, _) in before_domains.items()}
    assert idle_members(testbed) == idle


def test_stopping_the_job_destroys_the_claimed_guest_and_keeps_the_pool(nomad, testbed):
    member, shown, domid = CLAIMED["member"], CLAIMED["shown"], CLAIMED["domid"]
    assert xl_domains(testbed).get(shown, (None,))[0] == domid
    nomad.stop_job("clickos-pool", purge=False)
    alloc = nomad.wait_alloc("clickos-pool", {"complete", "failed"}, timeout=120)
    assert alloc["ClientStatus"] == "complete", _events(nomad, alloc, "firewall")
    nomad.wait_until(
        lambda: domid not in {d for d, _ in xl_domains(testbed).values()}, 60, "the claimed guest to go", every=1
    )
    assert len(idle_members(testbed)) == POOL_SIZE
    # Only the idle members' own files remain (none under either name of the claimed guest).
    left = testbed.run(
        f"ls -1 {STATE_DIR}/tasks {STATE_DIR}/domains {CONSOLE_DIR} 2>/dev/null | grep -v ':$' || true", check=False
    ).stdout.split()
    assert [f for f in left if member in f or shown in f] == [], left
    assert not [f for f in left if f.startswith(("nomad-", "guest-nomad-"))], left


def cold_job(name: str) -> str:
    """The pool job without ``pool``: the same guest, started cold."""
    return pool_job(name).replace('        pool              = "clickos"\n', "")


def submit_to_started_ms(nomad: NomadDom0, job_id: str, text: str) -> tuple[float, dict]:
    """``nomad job run`` → task Started, from Nomad's own records (breakdown's ``total``)."""
    nomad.run_job(nomad.write_job(f"{job_id}.nomad", text))

    def started() -> bool:
        for stub in nomad.allocs(job_id):
            events = ((stub.get("TaskStates") or {}).get("firewall") or {}).get("Events") or []
            if stub["ClientStatus"] == "failed":
                raise AssertionError(f"{job_id} failed: {events}")
            if any(e["Type"] == "Started" for e in events) and any(bd.is_timing_event(e) for e in events):
                return True
        return False

    nomad.wait_until(started, 300, f"{job_id} to start", every=0.25)
    row = bd.collect(bd.NomadAPI(nomad.addr, env={}), job_id).rows[-1]
    timing = [e for e in nomad.task_events(nomad.alloc(row.alloc_id), "firewall") if bd.is_timing_event(e)][-1]
    nomad.api(f"/v1/job/{job_id}?purge=true", method="DELETE")
    nomad.wait_until(lambda: not running_guests(nomad.tb), 120, f"the guest of {job_id} to go", every=0.5)
    return float(row.phases["total"]), timing["Details"]


def running_guests(tb) -> list[str]:
    """Task guests: cold ones (nomad-*) and claimed pool members (not paused)."""
    return [
        n
        for n, (_, flags) in xl_domains(tb).items()
        if n.startswith("nomad-") or (n.startswith(PREFIX) and "p" not in flags)
    ]


def test_job_run_to_started_pool_vs_cold(nomad, testbed, testbed_report):
    """Through the whole Nomad path (submit, schedule, dispatch, driver, boot), alternating."""
    if nomad.backend != "xl":
        pytest.skip("timed on xl only: libvirt's start paths are compared in bench/backends.py")
    pool_ms, cold_ms = [], []
    for i in range(3):
        nomad.wait_until(lambda: len(idle_members(testbed)) == POOL_SIZE, 600, "a full, idle pool", every=1)
        total, details = submit_to_started_ms(nomad, f"pool-run-{i}", pool_job(f"pool-run-{i}"))
        assert details.get("start_path") == "pool", details
        pool_ms.append(total)
        nomad.wait_until(lambda: len(idle_members(testbed)) == POOL_SIZE, 600, "the refill", every=1)
        total, details = submit_to_started_ms(nomad, f"cold-run-{i}", cold_job(f"cold-run-{i}"))
        assert "domain_build_ms" in details, details
        cold_ms.append(total)
    pool_med, cold_med = sorted(pool_ms)[1], sorted(cold_ms)[1]
    testbed_report.append(
        f"job run -> task Started (median of 3, alternating): pool {pool_med:.0f} ms {sorted(pool_ms)}, "
        f"cold {cold_med:.0f} ms {sorted(cold_ms)}, ratio {pool_med / cold_med:.3f} (goal <= 0.3)"
    )
    assert pool_med < cold_med


def test_a_booted_member_takes_its_click_config_with_no_unpause_or_boot(nomad, testbed, testbed_report):
    """``idle = "booted"``: the member runs before any task, waiting for its Click configuration;
    the claim pushes it and waits for the line the guest prints once it has taken it."""
    if nomad.backend != "xl":
        pytest.skip(
            "run with xl only: a booted member differs from a paused one in the driver alone (unpaused"
            " after its build); its claim asks the backend nothing the paused claim does not"
        )
    nomad.wait_until(lambda: pool_attrs(nomad, "booted") == (1, 1), 600, "driver.xen.pool.booted.ready = 1", every=2)
    (member, domid), *_ = booted_ready(testbed).items()
    assert "p" not in xl_domains(testbed)[member][1]  # booted, not paused
    text = pool_job("booted-pool").replace('pool              = "clickos"', 'pool              = "booted"')
    text = text.replace('boot_marker       = "NDX-GUEST READY"', 'boot_marker       = "status=Running"')
    assert 'pool              = "booted"' in text and "status=Running" in text
    nomad.run_job(nomad.write_job("booted-pool.nomad", text))
    alloc = nomad.wait_alloc("booted-pool", {"running", "failed"})
    assert alloc["ClientStatus"] == "running", _events(nomad, alloc, "firewall")
    timing = nomad.wait_until(
        lambda: [e for e in nomad.task_events(nomad.alloc(alloc["ID"]), "firewall") if bd.is_timing_event(e)] or None,
        60,
        "the driver's timing event",
        every=0.5,
    )
    details = timing[0]["Details"]
    assert details.get("start_path") == "pool" and details.get("pool") == "booted", details
    assert "unpause_ms" not in details and "domain_build_ms" not in details, details
    assert timing[0]["DisplayMessage"].split()[1] == member
    testbed_report.append("booted pool start: " + ", ".join(f"{k} {v}" for k, v in details.items()))

    rendered = testbed.read_file(f"{DATA_DIR}/alloc/{alloc['ID']}/firewall/local/firewall.click")
    echo = f"config_len={len(rendered)} config_crc32={zlib.crc32(rendered):08x}"

    def logs() -> str | None:
        got = nomad.cli("alloc", "logs", alloc["ID"], "firewall").stdout
        return got if echo in got else None

    out = nomad.wait_until(logs, 60, "the guest's config echo in `nomad alloc logs`")
    assert "NDX-GUEST READY" not in out  # the member's boot went to nobody: the task's log starts at its claim
    assert {d for d, _ in xl_domains(testbed).values()} >= {domid}  # the same domain runs the task
    nomad.stop_job("booted-pool", purge=True)
    nomad.wait_until(
        lambda: domid not in {d for d, _ in xl_domains(testbed).values()}, 120, "the claimed guest to go", every=1
    )
