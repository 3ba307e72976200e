"""The guest's network as Nomad sees it: advertised vif, port map, MACs (xen_driver/driver/network.py),
and that StartTask, InspectTask and recovery carry it (driver/lifecycle.py, driver/state.py)."""

from __future__ import annotations

import re

import msgpack
import pytest

from tests.unit.driver.test_lifecycle import _lifecycle, host, make_spec  # noqa: F401 (fixture)
from xen_driver.driver import network
from xen_driver.driver.config import TaskConfig, VifConfig
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.lifecycle import domain_name_for
from xen_driver.driver.models import NetworkOverride, PortMapping, RecoveredTask, TaskSpec
from xen_driver.driver.state import STATE_VERSION, DriverState

NO_IP = VifConfig(bridge="xenbr0")
A = VifConfig(bridge="xenbr0", ip="10.0.0.2")
B = VifConfig(bridge="xenbr0", ip="192.168.7.9 fd00::9")
V6 = VifConfig(ip="fd00::5")


# ---- which vif is advertised --------------------------------------------------------------------

# (vifs, advertise_vif, expected index or the error's text)
ADVERTISED = [
    ((), None, None),
    ((NO_IP,), None, None),
    ((A,), None, 0),
    ((NO_IP, A), None, 1),
    ((NO_IP, A, B), None, 1),
    ((A, B), 1, 1),
    ((NO_IP, B), 1, 1),
    ((V6,), 0, 0),
    (
        (A, B),
        2,
        "got 2, must be the index of a vif block with an ip (this task has vif[0] with ip 10.0.0.2, vif[1] with ip 192.168.7.9)",
    ),
    ((NO_IP, A), 0, "vif[0] has no ip (this task has vif[1] with ip 10.0.0.2)"),
    ((), 0, "(this task has no vif blocks)"),
    ((NO_IP, NO_IP), 1, "(none of this task's 2 vif blocks has an ip)"),
]


@pytest.mark.parametrize("vifs, choice, expected", ADVERTISED)
def test_advertised_vif(vifs, choice, expected):
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as err:
            network.advertised_vif(vifs, choice)
        assert str(err.value).startswith('task config "advertise_vif": got ')
        assert expected in str(err.value), str(err.value)
        assert err.value.field == "advertise_vif"
    else:
        assert network.advertised_vif(vifs, choice) == expected


@pytest.mark.parametrize(
    "raw, message",
    [
        (-1, "must be an integer between 0 and 63"),
        (64, "must be an integer between 0 and 63"),
        (1.5, "must be an integer between 0 and 63"),
        ("one", "must be an integer between 0 and 63"),
    ],
)
def test_advertise_vif_must_be_an_index(raw, message):
    with pytest.raises(ConfigError) as err:
        TaskConfig.from_dict({"kernel": "k", "advertise_vif": raw})
    assert str(err.value).startswith('task config "advertise_vif"') and message in str(err.value)


def test_advertise_vif_is_optional():
    assert TaskConfig.from_dict({"kernel": "k"}).advertise_vif is None
    assert TaskConfig.from_dict({"kernel": "k", "advertise_vif": 3}).advertise_vif == 3


# ---- the port map ------------------------------------------------------------------------------

# (ports as (label, host port, to[, "legacy"]), expected map)
PORT_MAPS = [
    ((), {}),
    ((("http", 23456, 80),), {"http": 80}),  # to = the guest's port
    ((("dns", 53, 53),), {"dns": 53}),  # static = 53, to = 53: port 53 of the guest's address
    ((("http", 23456, 80), ("metrics", 23457, 9100)), {"http": 80, "metrics": 9100}),
    ((("http", 23456, 80), ("http", 23999, 8080)), {"http": 80}),  # first wins
    ((("", 23456, 80),), {}),  # no label: nothing a service could name
    ((("http", 23456, 0),), {}),  # no to: nothing the guest is known to serve on (plan refuses it)
    ((("old", 23456, 0, "legacy"),), {"old": 23456}),  # a task-level network's port: its number
    ((("big", 1, 70000), ("ok", 2, 8080)), {"ok": 8080}),  # impossible ports are left out
]


@pytest.mark.parametrize("ports, expected", PORT_MAPS)
def test_port_map(ports, expected):
    assert network.port_map(PortMapping(p[0], p[1], p[2], legacy=len(p) > 3) for p in ports) == expected


@pytest.mark.parametrize(
    "ports",
    [
        (PortMapping("http", 23456, 0),),
        (PortMapping("http", 23456, 80), PortMapping("dns", 53, 0)),  # a static port without to
    ],
)
def test_an_advertised_guest_needs_a_to_for_every_port(ports):
    """Nomad registers a driver-address service at the port's "to" (port 0 without one)."""
    missing = [p for p in ports if p.to == 0][0]
    with pytest.raises(ConfigError) as err:
        network.plan((A,), None, ports)
    assert str(err.value).startswith(
        f'network port "{missing.label}.to": got nothing, must be the port the guest serves on'
    )
    assert "10.0.0.2" in str(err.value) and f"({missing.value})" in str(err.value)
    # Without an address nothing is advertised, so nothing is wrong with the ports either.
    assert network.plan((NO_IP,), None, ports) is None
    # A legacy task network's port has no "to" to give; it maps to its number.
    legacy = tuple(PortMapping(p.label, p.value, p.to, legacy=p.to == 0) for p in ports)
    assert network.plan((A,), None, legacy).port_map == {p.label: p.to or p.value for p in ports}


def test_plan_advertises_the_first_address_with_the_port_map():
    ports = (PortMapping("http", 23456, 80),)
    assert network.plan((NO_IP, B), None, ports) == NetworkOverride(
        addr="192.168.7.9", port_map={"http": 80}, auto_advertise=True
    )
    assert network.plan((V6,), None, ()) == NetworkOverride(addr="fd00::5", port_map={}, auto_advertise=True)
    assert network.plan((NO_IP,), None, ports) is None
    assert network.unreachable_ports(None, ports) == ["http"]
    assert network.unreachable_ports(network.plan((A,), None, ports), ports) == []
    assert network.describe(network.plan((A,), None, ports)) == "10.0.0.2 (http → 80)"


# ---- MACs --------------------------------------------------------------------------------------

TASK_ID = "a1b2c3d4-0000-0000-0000-000000000000/web/5f6e7d8c"
_MAC = re.compile(r"00:16:3e(:[0-9a-f]{2}){3}")


def test_derived_macs_are_stable_unicast_in_xens_oui_and_distinct():
    first = network.derive_mac(TASK_ID, 0)
    assert _MAC.fullmatch(first) and int(first[:2], 16) & 1 == 0
    assert network.derive_mac(TASK_ID, 0) == first  # same task, same vif: same MAC (a restarted plugin too)
    assert network.derive_mac(TASK_ID, 1) != first
    assert network.derive_mac(TASK_ID.replace("5f6e7d8c", "00000001"), 0) != first  # a new task run
    # One that is taken (another guest of this host) is skipped, deterministically.
    other = network.derive_mac(TASK_ID, 0, taken={first.upper()})
    assert _MAC.fullmatch(other) and other != first
    assert network.derive_mac(TASK_ID, 0, taken={first}) == other


def test_every_vif_gets_a_mac_and_the_jobs_own_are_kept():
    given = VifConfig(mac="00:16:3E:AA:BB:CC")
    macs = network.vif_macs(TASK_ID, (NO_IP, given, A))
    assert macs[1] == "00:16:3E:AA:BB:CC"
    assert macs[0] == network.derive_mac(TASK_ID, 0) and macs[2] == network.derive_mac(TASK_ID, 2)
    assert len({m.lower() for m in macs}) == 3
    # A derived MAC never repeats one the job gave another vif.
    clash = network.derive_mac(TASK_ID, 0)
    macs = network.vif_macs(TASK_ID, (NO_IP, VifConfig(mac=clash)))
    assert macs[1] == clash and macs[0] != clash


# ---- through the driver: StartTask, InspectTask, recovery --------------------------------------


def _with_ports(spec: TaskSpec, *ports: PortMapping) -> TaskSpec:
    return TaskSpec(**{**spec.__dict__, "ports": ports})


async def test_start_returns_the_network_and_every_vif_has_a_mac(host):
    tmp_path, config, fake = host
    events = []
    lc = await _lifecycle(config, fake, events)
    lc.bridge_exists = {"xenbr0"}.__contains__
    try:
        spec = _with_ports(
            make_spec(tmp_path, vif=[{"bridge": "xenbr0"}, {"bridge": "xenbr0", "ip": "10.0.0.7"}]),
            PortMapping("http", 23456, 80),
            PortMapping("admin", 23457, 9100),
        )
        handle = await lc.start_task(spec)
        expected = NetworkOverride(addr="10.0.0.7", port_map={"http": 80, "admin": 9100}, auto_advertise=True)
        assert handle.network == expected
        state = DriverState.decode(handle.driver_state)
        assert state.network == expected
        macs = tuple(v.mac for v in fake.specs[domain_name_for(spec)].vifs)
        assert macs == network.vif_macs(spec.id, spec.config.vif) and state.vif_macs == macs
        assert (await lc.inspect_task(spec.id)).network == expected
        assert any("advertised at 10.0.0.7 (admin → 9100, http → 80)" in e.message for e in events), events
    finally:
        await lc.close()


async def test_advertise_vif_picks_the_vif_and_a_bad_one_creates_nothing(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    lc.bridge_exists = {"xenbr0"}.__contains__
    vifs = [{"bridge": "xenbr0", "ip": "10.0.0.7"}, {"bridge": "xenbr0", "ip": "172.16.0.7"}]
    try:
        with pytest.raises(ConfigError) as err:
            await lc.start_task(make_spec(tmp_path, vif=vifs, advertise_vif=2))
        assert '"advertise_vif"' in str(err.value)
        assert fake.calls == [] and not fake.domains
        handle = await lc.start_task(make_spec(tmp_path, vif=vifs, advertise_vif=1))
        assert handle.network is not None and handle.network.addr == "172.16.0.7"
    finally:
        await lc.close()


async def test_a_port_without_to_on_an_advertised_guest_creates_nothing(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    lc.bridge_exists = {"xenbr0"}.__contains__
    try:
        spec = _with_ports(
            make_spec(tmp_path, vif=[{"bridge": "xenbr0", "ip": "10.0.0.7"}]), PortMapping("admin", 23457)
        )
        with pytest.raises(ConfigError) as err:
            await lc.start_task(spec)
        assert str(err.value).startswith('network port "admin.to"'), str(err.value)
        assert fake.calls == [] and not fake.domains
    finally:
        await lc.close()


async def test_no_address_no_network_and_ports_are_said_to_stay_on_the_host(host):
    tmp_path, config, fake = host
    events = []
    lc = await _lifecycle(config, fake, events)
    lc.bridge_exists = {"xenbr0"}.__contains__
    try:
        spec = _with_ports(make_spec(tmp_path, vif=[{"bridge": "xenbr0"}]), PortMapping("http", 23456, 80))
        handle = await lc.start_task(spec)
        assert handle.network is None and DriverState.decode(handle.driver_state).network is None
        assert (await lc.inspect_task(spec.id)).network is None
        assert any("no vif with an ip" in e.message and "(http)" in e.message for e in events), events
        # Every vif still has a MAC.
        assert fake.specs[domain_name_for(spec)].vifs[0].mac == network.derive_mac(spec.id, 0)
    finally:
        await lc.close()


async def test_a_derived_mac_avoids_those_of_running_guests(host, monkeypatch):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        first = make_spec(tmp_path, vif=[{}])
        await lc.start_task(first)
        taken = fake.specs[domain_name_for(first)].vifs[0].mac
        # Make the second task's own derivation land on the first guest's MAC.
        real = network.derive_mac
        monkeypatch.setattr(network, "derive_mac", lambda task_id, i, used=(): real(first.id, i, used))
        second = make_spec(tmp_path, task_id="a1b2c3d4-0000-0000-0000-000000000000/web/00000002", vif=[{}])
        await lc.start_task(second)
        assert fake.specs[domain_name_for(second)].vifs[0].mac not in (None, taken)
    finally:
        await lc.close()


async def test_recovered_task_reports_the_same_network_and_macs(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    lc.bridge_exists = {"xenbr0"}.__contains__
    spec = _with_ports(make_spec(tmp_path, vif=[{"bridge": "xenbr0", "ip": "10.0.0.7"}]), PortMapping("http", 1, 80))
    try:
        handle = await lc.start_task(spec)
    finally:
        await lc.close()  # the plugin goes away; the guest keeps running
    lc2 = await _lifecycle(config, fake)
    try:
        # Nomad hands back the handle; after an agent restart its ports may be gone: the state has them.
        await lc2.recover_task(
            RecoveredTask(
                spec=_with_ports(spec), version=handle.version, state=handle.state, driver_state=handle.driver_state
            )
        )
        status = await lc2.inspect_task(spec.id)
        assert status.network == handle.network == NetworkOverride("10.0.0.7", {"http": 80}, True)
        assert DriverState.decode(handle.driver_state).vif_macs == (fake.specs[domain_name_for(spec)].vifs[0].mac,)
    finally:
        await lc2.close()


# ---- driver state versions ---------------------------------------------------------------------


def _state(**extra) -> DriverState:
    return DriverState(
        task_id="t",
        domain_name="d",
        domid=3,
        uuid="u",
        started_at_ns=1,
        backend="xl",
        config_path="/c",
        task_state_dir="/t",
        console_path="/l",
        console_offset=0,
        **extra,
    )


def test_state_keeps_the_network_and_macs():
    net = NetworkOverride(addr="10.0.0.7", port_map={"http": 80}, auto_advertise=True)
    state = _state(driver_config=b"\x80", vif_macs=("00:16:3e:01:02:03",), network=net)
    back = DriverState.decode(state.encode())
    assert back == state and back.network == net and back.vif_macs == ("00:16:3e:01:02:03",)
    assert msgpack.unpackb(state.encode())["v"] == STATE_VERSION == 3
    assert DriverState.decode(_state().encode()).network is None


def test_version_2_state_still_decodes_without_a_network():
    v2 = {
        "v": 2,
        "task_id": "t",
        "domain_name": "d",
        "domid": 3,
        "uuid": "u",
        "started_at_ns": 1,
        "backend": "xl",
        "config_path": "/c",
        "task_state_dir": "/t",
        "console_path": "/l",
        "console_offset": 0,
        "driver_config": b"x",
    }
    state = DriverState.decode(msgpack.packb(v2, use_bin_type=True))
    assert state.network is None and state.vif_macs == () and state.driver_config == b"x"
