"""The warm pool against an in-memory Xen: claim, refill, misses, refusals, restarts, memory.

The same behaviours through the real agent on real Xen: tests/xen/test_pool.py.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.driver.test_lifecycle import FakeXen
from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.driver.core import ATTR_PREFIX
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.lifecycle import TaskLifecycle, domain_name_for
from xen_driver.driver.models import PortMapping, RecoveredTask, TaskSpec, TaskState
from xen_driver.driver.pool import CLAIM_FILE, MEMBER_PREFIX, parse_member_name
from xen_driver.driver.poolconfig import PoolProfile
from xen_driver.driver.state import DriverState
from xen_driver.nomad import cty
from xen_driver.nomad.schemas import PLUGIN_SCHEMA
from xen_driver.xen.backend import CreatedDomain, DomainState, ExitReason, PhaseRecorder, XenBackendError
from xen_driver.xen.keeperclient import FifoKeeperClient
from xen_driver.xen.spec import DomainSpec

ALLOC = "a1b2c3d4-0000-0000-0000-000000000000"


class PoolXen(FakeXen):
    """FakeXen with a memory budget (libxl's message when it runs out) and holdable builds."""

    def __init__(self, console_dir: Path, *, memory_mib: int = 1 << 20):
        super().__init__(console_dir)
        self.memory_mib = memory_mib
        self.builds_open = asyncio.Event()
        self.builds_open.set()
        self.created: list[str] = []

    def used_mib(self) -> int:
        return sum(d.memory_kib // 1024 for d in self.domains.values())

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        if spec.name.startswith(MEMBER_PREFIX):
            await self.builds_open.wait()
        if self.used_mib() + spec.memory_mb > self.memory_mib:
            raise XenBackendError(
                "libxl: error: libxl_dom.c:592:libxl__build_dom: xc_dom_boot_mem_init failed: Cannot allocate memory"
            )
        self.created.append(spec.name)
        return await super().create_domain(spec, paused=paused, background=background, phases=phases)


@pytest.fixture
def host(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "clickos").write_bytes(b"\x7fELF fake clickos")
    (images / "other").write_bytes(b"\x7fELF another kernel")
    consoles = tmp_path / "console"
    consoles.mkdir()
    (tmp_path / "alloc" / "web").mkdir(parents=True)
    return tmp_path, PoolXen(consoles)


def plugin_config(tmp_path: Path, pools: dict | None = None) -> PluginConfig:
    raw = {
        "image_dirs": [str(tmp_path / "images")],
        "console_log_dir": str(tmp_path / "console"),
        "state_dir": str(tmp_path / "state"),
        "xenstored_socket": str(tmp_path / "no-xenstored"),
    }
    if pools is not None:
        raw["pool"] = pools
    return PluginConfig.from_dict(raw)


def clickos_pool(tmp_path: Path, size: int = 2, **extra) -> dict:
    return {
        "clickos": {
            "kernel": str(tmp_path / "images" / "clickos"),
            "cmdline": "-d standard",
            "memory": 16,
            "vcpus": 1,
            "size": size,
            "vif": [{"bridge": "xenbr0"}],
            **extra,
        }
    }


def make_spec(tmp_path: Path, n: int = 1, memory_mb: int = 16, **cfg) -> TaskSpec:
    task_id = f"{ALLOC}/web/{n:08x}"
    stdout = tmp_path / f"stdout-{n}.log"
    stdout.write_bytes(b"")
    raw = {"kernel": str(tmp_path / "images" / "clickos"), "boot_marker": "NDX-GUEST READY", "boot_timeout": "5s"}
    raw.update(cfg)
    return TaskSpec(
        id=task_id,
        name="web",
        alloc_id=ALLOC,
        task_group="g",
        job_name="j",
        job_id="j",
        namespace="default",
        node_id="n",
        node_name="n",
        env={},
        memory_mb=memory_mb,
        memory_max_mb=0,
        cpu_shares=100,
        alloc_dir=str(tmp_path / "alloc"),
        stdout_path=str(stdout),
        stderr_path=os.devnull,
        config=TaskConfig.from_dict(raw),
    )


def lifecycle(config: PluginConfig, fake: FakeXen, events: list | None = None) -> TaskLifecycle:
    keeper = FifoKeeperClient(config.state_dir, idle_exit_s=1.0)
    lc = TaskLifecycle(
        config,
        events.append if events is not None else (lambda e: None),
        backend=fake,
        rescan_interval_s=0.05,
        fifo_keeper=keeper,
    )
    lc.bridge_exists = {"xenbr0"}.__contains__
    return lc


async def until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait for a condition (polled), failing with its name after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def members(fake: FakeXen) -> list[str]:
    return sorted(n for n in fake.domains if n.startswith(MEMBER_PREFIX))


# ---------------------------------------------------------------------------------------- config


def test_profiles_are_parsed_and_checked_against_the_operator_limits(tmp_path):
    (tmp_path / "images").mkdir()
    cfg = plugin_config(tmp_path, clickos_pool(tmp_path, size=4))
    (p,) = cfg.pools
    assert p == PoolProfile("clickos", str(tmp_path / "images" / "clickos"), "-d standard", 16, 1, p.vif, 4)
    assert p.vif[0].bridge == "xenbr0"
    bad = [
        ({"kernel": "/etc/passwd"}, "pool.clickos.kernel", "image_dirs"),
        ({"vif": [{"bridge": "docker0"}]}, "pool.clickos.vif[0].bridge", "vif_bridges"),
        ({"vif": [{"script": "/tmp/evil"}]}, "pool.clickos.vif[0].script", "vif_scripts"),
        ({"vif": [{"mac": "00:16:3e:00:00:01"}]}, "pool.clickos.vif[0].mac", "MAC of its own"),
        ({"memory": 4}, "pool.clickos.memory", "between 8"),
        ({"size": 65}, "pool.clickos.size", "between 0 and 64"),
    ]
    for change, field, hint in bad:
        with pytest.raises(ConfigError) as err:
            plugin_config(tmp_path, {"clickos": {**clickos_pool(tmp_path)["clickos"], **change}})
        assert f'plugin config "{field}"' in str(err.value) and hint in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match='plugin config "pool"'):
        plugin_config(tmp_path, {"click os": clickos_pool(tmp_path)["clickos"]})
    with pytest.raises(ConfigError, match='task config "pool"'):
        TaskConfig.from_dict({"kernel": "k", "pool": "no such"})


def test_pool_blocks_decode_from_nomads_block_map(tmp_path):
    """Nomad sends ``pool "clickos" { ... }`` as a map from the label to an object."""
    value = {name: None for name, _ in PLUGIN_SCHEMA.cty_type.attributes}
    value["pool"] = {
        "clickos": {
            "kernel": "/k",
            "cmdline": None,
            "memory": 16,
            "vcpus": None,
            "size": 3,
            "vif": [{"bridge": "xenbr0", "mac": None, "ip": None, "script": None}],
        }
    }
    decoded = PLUGIN_SCHEMA.decode(cty.encode(value, PLUGIN_SCHEMA.cty_type))
    assert decoded["pool"]["clickos"]["size"] == 3
    proto = PLUGIN_SCHEMA.to_proto().object.attributes["pool"]
    assert proto.block_map.name == "pool" and list(proto.block_map.labels) == ["name"]
    assert parse_member_name("ndx-pool-clickos-0123abcd-00ff00") == ("clickos", "0123abcd")
    assert parse_member_name("nomad-web-a1b2c3d4-00000001") is None


# ---------------------------------------------------------------------------------------- claim


async def test_claim_takes_a_built_member_and_the_pool_refills(host):
    tmp_path, fake = host
    events: list = []
    lc = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=2)), fake, events)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 2, what="two ready members")
        built = members(fake)
        assert all(fake.domains[n].state is DomainState.PAUSED for n in built)
        assert fake.specs[built[0]].cmdline == "-d standard" and fake.specs[built[0]].memory_mb == 16

        spec = make_spec(tmp_path, pool="clickos")
        handle = await lc.start_task(spec)
        state = DriverState.decode(handle.driver_state)
        assert state.domain_name in built  # the oldest member, not a new domain
        assert fake.domains[state.domain_name].state is DomainState.BLOCKED  # unpaused, running
        # console from byte 0 (the keeper copies it, right after the start)
        await until(lambda: Path(spec.stdout_path).read_bytes().count(b"NDX-GUEST READY") == 1, what="the console")
        timings = (await lc.inspect_task(spec.id)).driver_attributes
        assert {"timing.pool_claim_ms", "timing.unpause_ms", "timing.boot_ms"} <= set(timings)
        assert "timing.domain_build_ms" not in timings
        booted = [e for e in events if "booted from pool clickos" in e.message]
        assert booted and booted[0].annotations["start_path"] == "pool"
        # Off the start's path, the toolstack is asked to list the guest under its task's name.
        assert booted[0].annotations["listed_as"] == domain_name_for(spec)
        await until(lambda: fake.shown.get(state.domain_name) == domain_name_for(spec), what="the rename")

        # Refill: a new member replaces the claimed one, off the start's path.
        await until(lambda: lc.pool.ready("clickos") == 2, what="the refill")
        assert len(members(fake)) == 3 and len(set(members(fake))) == 3
        assert lc.pool.attributes(ATTR_PREFIX) == {
            "driver.xen.pool.clickos.ready": 2,
            "driver.xen.pool.clickos.size": 2,
        }

        # The claimed guest is an ordinary task: stop and destroy remove it and its files.
        await lc.stop_task(spec.id, 1.0, "SIGTERM")
        assert (await asyncio.wait_for(lc.wait_task(spec.id), 5)).exit_code == 0
        await lc.destroy_task(spec.id, True)
        assert state.domain_name not in fake.domains
        assert not Path(state.task_state_dir).exists()
    finally:
        await lc.close()


async def test_empty_pool_falls_back_to_a_cold_start_and_says_so(host):
    tmp_path, fake = host
    events: list = []
    lc = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=1)), fake, events)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 1, what="one ready member")
        fake.builds_open.clear()  # the refill cannot finish while the second task starts
        first = DriverState.decode((await lc.start_task(make_spec(tmp_path, 1, pool="clickos"))).driver_state)
        assert first.domain_name.startswith(MEMBER_PREFIX)

        spec = make_spec(tmp_path, 2, pool="clickos")
        second = DriverState.decode((await lc.start_task(spec)).driver_state)
        assert second.domain_name.startswith("nomad-web-")  # an ordinary cold start
        miss = [e for e in events if e.task_id == spec.id and e.message.startswith("Pool miss")]
        assert miss and 'pool "clickos" has no ready member' in miss[0].message
        assert miss[0].annotations["start_path"] == "cold"
        cold = fake.specs[second.domain_name]  # the profile's values where the task gave none
        assert (cold.cmdline, cold.memory_mb, cold.vifs[0].bridge) == ("-d standard", 16, "xenbr0")
        assert "timing.domain_build_ms" in (await lc.inspect_task(spec.id)).driver_attributes

        # A profile this node does not have: cold too, and the event says why.
        other = make_spec(tmp_path, 3, pool="nosuch")
        await lc.start_task(other)
        assert any(e.task_id == other.id and 'pool "nosuch" is not configured' in e.message for e in events)
        fake.builds_open.set()
        await until(lambda: lc.pool.ready("clickos") == 1, what="the refill after the builds resume")
    finally:
        fake.builds_open.set()
        await lc.close()


MISMATCHES = [
    ({"kernel": "{images}/other"}, {}, "kernel"),
    ({"cmdline": "-d other"}, {}, "cmdline"),
    ({"memory": 32}, {}, "memory"),
    ({}, {"memory_mb": 300}, "resources.memory"),
    ({"vcpus": 2}, {}, "vcpus"),
    ({"vif": [{"bridge": "xenbr0"}, {"bridge": "xenbr0"}]}, {}, "vif"),
    ({"vif": [{"mac": "00:16:3e:00:00:09"}]}, {}, "vif[0].mac"),
    ({"vif": [{"ip": "10.0.0.9"}]}, {}, "vif[0].ip"),
    ({"ramdisk": "{images}/other"}, {}, "ramdisk"),
    ({"cpus": "0"}, {}, "cpus"),
]


@pytest.mark.parametrize("cfg, spec_extra, field", MISMATCHES, ids=[m[2] for m in MISMATCHES])
async def test_a_task_that_contradicts_its_profile_is_refused_naming_the_field(host, cfg, spec_extra, field):
    tmp_path, fake = host
    lc = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=1)), fake)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 1, what="one ready member")
        cfg = {k: (v.format(images=tmp_path / "images") if isinstance(v, str) else v) for k, v in cfg.items()}
        with pytest.raises(ConfigError) as err:
            await lc.start_task(make_spec(tmp_path, pool="clickos", **spec_extra, **cfg))
        assert f'task config "{field}"' in str(err.value) and 'pool "clickos"' in str(err.value), str(err.value)
        assert lc.pool.ready("clickos") == 1 and len(fake.domains) == 1  # nothing claimed, nothing built
        # The same task without the contradiction, or matching it exactly, is accepted.
        ok = await lc.start_task(
            make_spec(tmp_path, 2, pool="clickos", cmdline="-d standard", memory=16, vif=[{"bridge": "xenbr0"}])
        )
        assert DriverState.decode(ok.driver_state).domain_name.startswith(MEMBER_PREFIX)
    finally:
        await lc.close()


# ---------------------------------------------------------------------------------------- restarts


async def test_plugin_restart_readopts_members_none_leaked_none_duplicated(host):
    tmp_path, fake = host
    config = plugin_config(tmp_path, clickos_pool(tmp_path, size=2))
    lc = lifecycle(config, fake)
    spec = make_spec(tmp_path, pool="clickos")
    await lc.pool.start()
    await until(lambda: lc.pool.ready("clickos") == 2, what="two ready members")
    handle = await lc.start_task(spec)
    claimed = DriverState.decode(handle.driver_state).domain_name
    await until(lambda: lc.pool.ready("clickos") == 2, what="the refill")
    idle = set(lc.pool.member_names())
    await lc.close()  # the plugin goes away; the guests stay
    assert set(members(fake)) == idle | {claimed}
    builds = len(fake.created)

    lc2 = lifecycle(config, fake)
    try:
        # RecoverTask and the pool's start-up may come in either order; recover first here.
        await lc2.recover_task(
            RecoveredTask(spec=spec, version=handle.version, state=handle.state, driver_state=handle.driver_state)
        )
        await asyncio.gather(lc2.pool.start(), lc2.pool.start())  # callers at once: one adoption
        assert sorted(lc2.pool.member_names()) == sorted(idle)  # re-adopted once, the claimed one not among them
        assert (await lc2.inspect_task(spec.id)).state is TaskState.RUNNING
        assert len(fake.created) == builds  # nothing built again
        assert set(members(fake)) == idle | {claimed}  # nothing destroyed, nothing leaked

        # The re-adopted members serve claims; the claimed guest still belongs to its task.
        nxt = await lc2.start_task(make_spec(tmp_path, 2, pool="clickos"))
        assert DriverState.decode(nxt.driver_state).domain_name in idle
        fake.power_off(claimed, ExitReason.POWEROFF)
        assert (await asyncio.wait_for(lc2.wait_task(spec.id), 5)).exit_code == 0
    finally:
        await lc2.close()


async def test_restart_destroys_unfinished_builds_and_abandoned_claims(host):
    tmp_path, fake = host
    config = plugin_config(tmp_path, clickos_pool(tmp_path, size=1))
    lc = lifecycle(config, fake)
    await lc.pool.start()
    await until(lambda: lc.pool.ready("clickos") == 1, what="one ready member")
    (member,) = lc.pool.member_names()
    await lc.close()
    # A crash mid-claim: the claim was recorded, StartTask never returned, so Nomad has no handle.
    claim_dir = tmp_path / "state" / "tasks" / member
    claim_dir.mkdir(parents=True)
    (claim_dir / CLAIM_FILE).write_text(f'{{"domid": {fake.domains[member].domid}, "state": "claiming"}}')
    # A crash mid-build: the domain exists, but its build was never recorded as finished.
    half = f"{MEMBER_PREFIX}clickos-{member.split('-')[3]}-abcdef"
    await FakeXen.create_domain(fake, DomainSpec(name=half, kernel="/k", memory_mb=16), paused=True)

    lc2 = lifecycle(config, fake)
    try:
        await lc2.pool.start()
        assert member not in fake.domains and half not in fake.domains
        assert not claim_dir.exists()
        await until(lambda: lc2.pool.ready("clickos") == 1, what="a fresh member")
        assert len(members(fake)) == 1
    finally:
        await lc2.close()


async def test_members_of_a_removed_or_changed_profile_are_destroyed_at_the_next_start(host):
    tmp_path, fake = host
    lc = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=2)), fake)
    await lc.pool.start()
    await until(lambda: lc.pool.ready("clickos") == 2, what="two ready members")
    old = set(members(fake))
    await lc.close()

    # Changed: memory 16 -> 24.  The old members go, new ones of the new profile come.
    lc2 = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=2, memory=24)), fake)
    try:
        await lc2.pool.start()
        assert not old & set(fake.domains)
        await until(lambda: lc2.pool.ready("clickos") == 2, what="members of the changed profile")
        assert all(fake.specs[n].memory_mb == 24 for n in members(fake))
    finally:
        await lc2.close()

    # Removed: no pool block at all.  Every member goes, with its files.
    lc3 = lifecycle(plugin_config(tmp_path), fake)
    try:
        await lc3.pool.start()
        assert members(fake) == []
        assert not any((tmp_path / "console").iterdir())
        assert not any((tmp_path / "state" / "pool" / "members").iterdir())
    finally:
        await lc3.close()


# ---------------------------------------------------------------------------------------- memory


async def test_a_cold_task_starts_under_memory_pressure_because_members_make_room(host):
    tmp_path, fake = host
    fake.memory_mib = 64
    events: list = []
    lc = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=3)), fake, events)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 3, what="three ready members")  # 48 of 64 MiB
        spec = make_spec(tmp_path, 7, memory_mb=40, kernel=str(tmp_path / "images" / "other"))
        handle = await lc.start_task(spec)  # no pool: a plain cold task of 40 MiB
        name = DriverState.decode(handle.driver_state).domain_name
        assert fake.domains[name].state.alive
        assert lc.pool.ready("clickos") == 1 and len(members(fake)) == 1  # two members made room
        assert fake.used_mib() <= 64
    finally:
        await lc.close()


async def test_claim_failure_half_way_leaves_nothing_behind(host):
    tmp_path, fake = host
    lc = lifecycle(plugin_config(tmp_path, clickos_pool(tmp_path, size=1)), fake)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 1, what="one ready member")
        (member,) = lc.pool.member_names()
        fake.builds_open.clear()
        spec = make_spec(tmp_path, pool="clickos", boot_marker="NEVER PRINTED", boot_timeout="200ms")
        with pytest.raises(Exception, match="did not print"):
            await lc.start_task(spec)
        assert member not in fake.domains
        assert not (tmp_path / "state" / "tasks" / member).exists()
        assert not (tmp_path / "console" / f"guest-{member}.log").exists()
        assert not (tmp_path / "state" / "pool" / "members" / member).exists()
    finally:
        fake.builds_open.set()
        await lc.close()


def test_out_of_memory_is_recognised_in_all_of_xls_stderr():
    from xen_driver.driver.pool import is_out_of_memory
    from xen_driver.xen.xl import XlError

    stderr = (
        "xc: error: panic: xc_dom_boot.c:121: xc_dom_boot_mem_init: can't allocate low memory for domain: Out of memory\n"
        "libxl: error: libxl_dom.c:593:libxl__build_dom: xc_dom_boot_mem_init failed: Cannot allocate memory\n"
        "libxl: error: libxl_create.c:1676:domcreate_rebuild_done: Domain 5:cannot (re-)build domain: -3\n"
        "libxl: error: libxl_domain.c:1183:libxl__destroy_domid: Domain 5:Non-existant domain\n"
        "libxl: error: libxl_domain.c:1137:domain_destroy_callback: Domain 5:Unable to destroy guest\n"
        "libxl: error: libxl_domain.c:1064:domain_destroy_cb: Domain 5:Destruction of domain failed\n"
    )
    assert is_out_of_memory(XlError(["xl", "create"], 3, stderr))
    assert is_out_of_memory(XlError(["xl", "create"], 3, "libxl: error: failed to free memory for the domain\n"))
    assert not is_out_of_memory(XlError(["xl", "create"], 3, "libxl: error: Could not find bridge device xenbr9\n"))
    assert not is_out_of_memory(RuntimeError("Out of memory"))


async def test_a_claimed_guest_is_advertised_at_its_profiles_address(host):
    """A pooled task's network comes from the profile's vif (the task may only repeat it), as a
    cold task's comes from its own: the handle advertises it and an event says where."""
    tmp_path, fake = host
    events: list = []
    pools = clickos_pool(tmp_path, size=1, vif=[{"bridge": "xenbr0", "ip": "10.0.0.7"}])
    lc = lifecycle(plugin_config(tmp_path, pools), fake, events)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 1, what="a ready member")
        spec = replace(make_spec(tmp_path, pool="clickos"), ports=(PortMapping("http", 24000, to=80),))
        handle = await lc.start_task(spec)
        assert DriverState.decode(handle.driver_state).domain_name.startswith(MEMBER_PREFIX)  # a claim
        assert handle.network is not None and handle.network.addr == "10.0.0.7"
        assert handle.network.port_map == {"http": 80}
        assert [e.message for e in events if "advertised at 10.0.0.7" in e.message]
    finally:
        await lc.close()


# ---------------------------------------------------------------------------------- idle = booted


def booted_pool(tmp_path: Path, size: int = 1, **extra) -> dict:
    return clickos_pool(tmp_path, size=size, idle="booted", boot_marker="NDX-GUEST READY", **extra)


def test_booted_profiles_need_a_boot_marker_and_a_known_mode(tmp_path):
    (tmp_path / "images").mkdir()
    (p,) = plugin_config(tmp_path, booted_pool(tmp_path)).pools
    assert p.booted and p.boot_marker == "NDX-GUEST READY"
    assert p.digest() != replace(p, idle="paused", boot_marker=None).digest()  # a mode change rebuilds
    bad = [
        ({"idle": "booted", "boot_marker": None}, "pool.clickos.boot_marker", 'required with idle = "booted"'),
        ({"idle": "warm"}, "pool.clickos.idle", '"paused" or "booted"'),
        ({"boot_marker": "READY"}, "pool.clickos.boot_marker", 'only used with idle = "booted"'),
        ({"idle": "booted", "boot_marker": "a\nb"}, "pool.clickos.boot_marker", "single console line"),
    ]
    for change, field, hint in bad:
        with pytest.raises(ConfigError) as err:
            plugin_config(tmp_path, {"clickos": {**clickos_pool(tmp_path)["clickos"], **change}})
        assert f'plugin config "{field}"' in str(err.value) and hint in str(err.value), str(err.value)


async def test_a_booted_member_is_claimed_without_unpause_or_boot_and_its_boot_output_is_nobodys(host):
    tmp_path, fake = host
    events: list = []
    lc = lifecycle(plugin_config(tmp_path, booted_pool(tmp_path)), fake, events)
    try:
        await lc.pool.start()
        await until(lambda: lc.pool.ready("clickos") == 1, what="a booted member")
        (member,) = members(fake)
        assert fake.domains[member].state is DomainState.BLOCKED  # running, waiting for a task
        assert fake.calls.count(("unpause", member)) == 1

        # The task's marker is a line the guest prints once it has its configuration.
        spec = make_spec(tmp_path, pool="clickos", boot_marker="ROUTER UP")
        start = asyncio.ensure_future(lc.start_task(spec))
        claim = tmp_path / "state" / "tasks" / member / CLAIM_FILE
        await until(claim.exists, what="the claim")
        with open(tmp_path / "console" / f"guest-{member}.log", "ab") as fh:
            fh.write(b"config taken\nROUTER UP\n")
        handle = await asyncio.wait_for(start, 5)
        assert DriverState.decode(handle.driver_state).domain_name == member
        assert fake.calls.count(("unpause", member)) == 1  # not again
        timings = (await lc.inspect_task(spec.id)).driver_attributes
        assert "timing.unpause_ms" not in timings and "timing.pool_claim_ms" in timings
        await until(lambda: b"ROUTER UP" in Path(spec.stdout_path).read_bytes(), what="the console")
        assert Path(spec.stdout_path).read_bytes() == b"config taken\nROUTER UP\n"  # not the member's boot

        # The boot marker of the profile was printed before the claim: a task may not wait for it.
        await until(lambda: lc.pool.ready("clickos") == 1, what="the refill")
        with pytest.raises(ConfigError) as err:
            await lc.start_task(make_spec(tmp_path, 2, pool="clickos", boot_marker="NDX-GUEST READY"))
        assert 'task config "boot_marker"' in str(err.value), str(err.value)
    finally:
        await lc.close()


async def test_booted_members_are_readopted_after_a_restart(host):
    tmp_path, fake = host
    config = plugin_config(tmp_path, booted_pool(tmp_path, size=2))
    lc = lifecycle(config, fake)
    await lc.pool.start()
    await until(lambda: lc.pool.ready("clickos") == 2, what="two booted members")
    idle = sorted(lc.pool.member_names())
    await lc.close()
    lc2 = lifecycle(config, fake)
    try:
        await lc2.pool.start()
        assert sorted(lc2.pool.member_names()) == idle  # running members of a booted profile: kept
        assert members(fake) == idle
    finally:
        await lc2.close()
