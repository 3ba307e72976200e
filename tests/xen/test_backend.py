"""The xen/ backend layer on real Xen 4.17 (the QEMU testbed), driven from inside dom0.

Each test runs one *scenario* of this same file in dom0 -- ``python3 /src/tests/xen/test_backend.py
<scenario> <json args>`` with the read-only repository as PYTHONPATH -- and asserts on the JSON it
prints.  The scenarios use only the public API of ``xen_driver.xen``: XlBackend, XenStore,
push_config, ConsolePump (into a real FIFO), StatsSampler and DomainWatcher, exactly as the
driver core will.  Every scenario destroys the domains it created, even when it fails, because
the testbed's dom0 is shared by the whole session.

Timings measured on the way (xl create/destroy, ClickOS push, unpause → READY, shutdown → exit
detected) are printed by pytest (-s) and returned in the test report.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import time
import zlib

REMOTE_SELF = "/src/tests/xen/test_backend.py"
CONSOLE_DIR = "/var/log/xen/console"
CFG_DIR = "/var/lib/ndx-tests/backend-cfg"
CLICK_CONFIG = "// nomad-driver-xen backend test: more than one 992-byte XenStore chunk\n" + "".join(
    f"src{i} :: InfiniteSource(LENGTH 64, LIMIT {i + 1}) -> Counter -> Discard;\n" for i in range(30)
)
CLICK_RE = re.compile(rb"CLICKOS router=0 status=Running config_len=(\d+) config_crc32=([0-9a-f]{8})")


# ================================================================ dom0 side (scenarios)
def _console_path(name: str) -> str:
    return os.path.join(CONSOLE_DIR, f"guest-{name}.log")


def _fresh_console(name: str) -> None:
    try:
        os.unlink(_console_path(name))
    except FileNotFoundError:
        pass


async def _cleanup(backend, names) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        try:
            await backend.destroy(name)
        except Exception as exc:  # report, keep cleaning
            print(f"cleanup of {name} failed: {exc}", file=sys.stderr)
        _fresh_console(name)  # the guest's console log goes with it: a test leaves nothing behind


async def scenario_xl_list(args: dict) -> dict:
    from xen_driver.xen.xl import XlBackend

    backend = XlBackend(CFG_DIR)
    raw = (await backend.run("list", "-v")).stdout
    doms = await backend.list_domains()
    return {
        "raw": raw,
        "parsed": [[d.name, d.domid, d.state.value, d.uuid, d.vcpus, d.memory_kib] for d in doms],
        "version": await backend.version(),
    }


async def scenario_dry_run(args: dict) -> dict:
    from xen_driver.xen.spec import DomainSpec, VifSpec
    from xen_driver.xen.xl import XlBackend

    backend = XlBackend(CFG_DIR)
    kernel = args["kernel"]
    specs = {
        "minimal": DomainSpec(name="ndx-be-dry-min", kernel=kernel, memory_mb=16),
        "full": DomainSpec(
            name="ndx-be-dry-full",
            uuid="6f1c5a3e-0b8a-4c43-9a57-2a1e6c0b1f00",
            kernel=kernel,
            cmdline="clickos tick=5 poweroff_after=3",
            memory_mb=16,
            maxmem_mb=32,
            vcpus=2,
            cpus="0",
            vifs=(
                VifSpec(bridge="xenbr0", mac="00:16:3e:0a:0b:0c", ip="10.1.0.2", script="vif-bridge"),
                VifSpec(bridge="xenbr0"),
            ),
            on_crash="restart",
        ),
    }
    out = {}
    for key, spec in specs.items():
        path = backend.write_config(spec)
        t0 = time.monotonic()
        parsed = await backend.dry_run(path)
        out[key] = {"json": parsed, "seconds": time.monotonic() - t0, "cfg": path.read_text()}
        backend.remove_config(spec.name)
    await backend.validate(specs["full"])
    listed = [d.name for d in await backend.list_domains()]
    out["created_anything"] = [n for n in listed if n.startswith("ndx-be-dry")]
    return out


class _FifoReader(threading.Thread):
    """Plays Nomad's logmon: reads the task's stdout FIFO until EOF."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path = path
        self.data = bytearray()

    def run(self) -> None:
        with open(self.path, "rb", buffering=0) as fh:
            while chunk := fh.read(65536):
                self.data += chunk


async def scenario_lifecycle(args: dict) -> dict:
    from xen_driver.xen.backend import DomainNotFound, DomainState
    from xen_driver.xen.clickos import push_config
    from xen_driver.xen.console import ConsolePump, FifoSink
    from xen_driver.xen.spec import DomainSpec, VifSpec
    from xen_driver.xen.stats import StatsSampler
    from xen_driver.xen.watcher import DomainWatcher
    from xen_driver.xen.xenstore import XenStore
    from xen_driver.xen.xl import XlBackend

    name = "ndx-be-life"
    res: dict = {}
    backend = XlBackend(CFG_DIR)
    fifo = f"/tmp/{name}.stdout.fifo"
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    reader.start()
    _fresh_console(name)
    commits: list[int] = []
    spec = DomainSpec(
        name=name, kernel=args["kernel"], memory_mb=16, cmdline="clickos tick=1", vifs=(VifSpec(bridge="xenbr0"),)
    )
    async with XenStore() as xs:
        watcher = DomainWatcher(backend, xenstore=xs, rescan_interval_s=3600)  # events only
        await watcher.start()
        pump = ConsolePump(tick_s=0.1)
        pump.start()
        try:
            await backend.create_domain(spec, paused=True)
            res["xl_create_s"] = next(c.duration_s for c in backend.calls if c.argv[1] == "create")
            info = await backend.domain(name)  # create returns no domid for xl: the driver asks XenStore
            res["created_state"] = info.state.value
            res["domid"] = info.domid
            exit_fut = watcher.subscribe(name, info.domid)
            stream = pump.add(name, _console_path(name), FifoSink(fifo), on_commit=commits.append)

            push = await push_config(xs, info.domid, CLICK_CONFIG, config_name="fw.click")
            res["push"] = {"s": push.duration_s, "bytes": push.bytes_pushed, "chunks": push.chunks}
            t0 = time.monotonic()
            await backend.unpause(name)
            res["xl_unpause_s"] = backend.calls[-1].duration_s
            await stream.wait_for("NDX-GUEST READY", 60)
            res["unpause_to_ready_s"] = time.monotonic() - t0
            await stream.wait_for(CLICK_RE, 30)
            res["unpause_to_clickos_running_s"] = time.monotonic() - t0

            sampler = StatsSampler(backend, interval_s=1.0, window_s=5.0)
            await sampler.sample_once()
            await asyncio.sleep(1.5)
            sample = (await sampler.sample_once())[name]
            res["stats"] = {
                "cpu_percent": sample.cpu_percent,
                "memory_kib": sample.memory_kib,
                "cpu_seconds": sample.cpu_seconds,
                "vcpus": sample.vcpus,
            }

            watcher.expect_exit(name)
            t1 = time.monotonic()
            await backend.shutdown(name)
            exit_ = await asyncio.wait_for(asyncio.shield(exit_fut), 60)
            res["shutdown_to_exit_s"] = time.monotonic() - t1
            res["exit"] = {"reason": exit_.reason.value, "requested": exit_.requested, "domid": exit_.domid}
            res["watcher"] = {"scans": watcher.scans, "events": watcher.events}
            preserved = await backend.domain(name)
            res["after_exit"] = {
                "state": preserved.state.value,
                "reason": preserved.shutdown_reason and preserved.shutdown_reason.value,
            }
            await pump.remove(name, drain_timeout_s=10)
            t2 = time.monotonic()
            await backend.destroy(name)
            res["xl_destroy_s"] = time.monotonic() - t2
            try:
                await backend.domain(name)
                res["gone"] = False
            except DomainNotFound:
                res["gone"] = True
            reader.join(10)
            log_bytes = open(_console_path(name), "rb").read()
            res["console"] = {
                "fifo_equals_log_prefix": log_bytes.startswith(bytes(reader.data)) and len(reader.data) > 0,
                "fifo_bytes": len(reader.data),
                "log_bytes": len(log_bytes),
                "last_commit": commits[-1] if commits else None,
                "commits_monotonic": commits == sorted(commits),
            }
            m = CLICK_RE.search(bytes(reader.data))
            res["clickos_echo"] = m and {"len": int(m.group(1)), "crc32": m.group(2).decode()}
            res["clickos_expected"] = {
                "len": len(CLICK_CONFIG.encode()),
                "crc32": f"{zlib.crc32(CLICK_CONFIG.encode()):08x}",
            }
            res["paused_state_was"] = DomainState.PAUSED.value
        finally:
            await pump.stop()
            await watcher.stop()
            await _cleanup(backend, [name])
            os.unlink(fifo)
            backend.remove_config(name)
    return res


async def scenario_exit_reasons(args: dict) -> dict:
    from xen_driver.xen.spec import DomainSpec
    from xen_driver.xen.watcher import DomainWatcher
    from xen_driver.xen.xenstore import XenStore
    from xen_driver.xen.xl import XlBackend

    guests = {"ndx-be-crash": "crash_after=1", "ndx-be-off": "poweroff_after=1", "ndx-be-gone": "tick=1"}
    backend = XlBackend(CFG_DIR)
    res: dict = {"create_s": {}, "exits": {}, "preserved": {}}
    async with XenStore() as xs:
        watcher = DomainWatcher(backend, xenstore=xs, rescan_interval_s=3600)
        await watcher.start()
        try:
            futs = {}
            for name, cmdline in guests.items():
                _fresh_console(name)
                t0 = time.monotonic()
                await backend.create_domain(
                    DomainSpec(name=name, kernel=args["kernel"], memory_mb=16, cmdline=cmdline), paused=False
                )
                res["create_s"][name] = time.monotonic() - t0
                futs[name] = watcher.subscribe(name, (await backend.domain(name)).domid)
            # Destroyed behind the driver's back: plain xl, not through the backend.
            t0 = time.monotonic()
            proc = await asyncio.create_subprocess_exec("xl", "destroy", "ndx-be-gone")
            await proc.wait()
            res["external_destroy_s"] = time.monotonic() - t0
            for name, fut in futs.items():
                exit_ = await asyncio.wait_for(asyncio.shield(fut), 90)
                res["exits"][name] = {"reason": exit_.reason.value, "requested": exit_.requested}
            for name in ("ndx-be-crash", "ndx-be-off"):
                info = await backend.domain(name)
                res["preserved"][name] = [info.state.value, info.flags]
            res["watcher"] = {"scans": watcher.scans, "events": watcher.events}
            t0 = time.monotonic()
            await backend.destroy("ndx-be-crash")
            res["destroy_shut_down_s"] = time.monotonic() - t0
        finally:
            await watcher.stop()
            await _cleanup(backend, list(guests))
            for name in guests:
                backend.remove_config(name)
    return res


async def scenario_xenstore(args: dict) -> dict:
    from xen_driver.xen.xenstore import XenStore, XenStoreError

    res: dict = {}
    base = "/local/domain/0/ndx-backend-test"
    async with XenStore() as xs:
        res["dom0_path"] = await xs.get_domain_path(0)
        await xs.rm(base)
        watch = await xs.watch(base, token="ndx-test")
        first = await asyncio.wait_for(watch.get(), 5)
        res["initial_event"] = [first.path, first.token]
        t0 = time.monotonic()
        await xs.write(f"{base}/a", "1")
        ev = await asyncio.wait_for(watch.get(), 5)
        res["write_event"] = ev.path
        res["write_roundtrip_s"] = time.monotonic() - t0
        res["read"] = (await xs.read(f"{base}/a")).decode()
        values = await asyncio.gather(*(xs.read(f"{base}/a") for _ in range(200)))
        res["concurrent_reads_ok"] = all(v == b"1" for v in values)

        async def body(tx):  # type: ignore[no-untyped-def]
            await tx.write(f"{base}/t/x", "x")
            await tx.write(f"{base}/t/y", "y")

        await xs.run_transaction(body)
        res["directory"] = sorted(await xs.directory(base))
        res["tx_values"] = [(await xs.read(f"{base}/t/x")).decode(), (await xs.read(f"{base}/t/y")).decode()]
        await xs.set_perms(f"{base}/a", ["n0", "r1"])
        res["perms"] = await xs.get_perms(f"{base}/a")
        try:
            await xs.read(f"{base}/missing")
        except XenStoreError as exc:
            res["missing_errno"] = exc.errno_name
        try:
            await xs.write(f"{base}/big", b"x" * 5000)
        except XenStoreError as exc:
            res["big_errno"] = exc.errno_name
        res["still_connected_after_errors"] = (await xs.read(f"{base}/a")).decode() == "1"
        rel = await xs.watch("@releaseDomain")
        res["release_initial"] = (await asyncio.wait_for(rel.get(), 5)).path
        await rel.close()
        await watch.close()
        await xs.rm(base)
        res["removed"] = await xs.read_or_none(f"{base}/a") is None
    return res


SCENARIOS = {
    "xl_list": scenario_xl_list,
    "dry_run": scenario_dry_run,
    "lifecycle": scenario_lifecycle,
    "exit_reasons": scenario_exit_reasons,
    "xenstore": scenario_xenstore,
}


def _main() -> None:
    import structlog

    # Our stdout carries the JSON result; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    result = asyncio.run(SCENARIOS[scenario](args))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    _main()
else:
    # ============================================================ host side (pytest)
    import pytest

    from xen_driver.xen.backend import DomainState
    from xen_driver.xen.xllist import parse_xl_list

    def run_scenario(testbed, scenario: str, timeout: float = 300, **args: object) -> dict:  # type: ignore[no-untyped-def]
        r = testbed.run(
            ["python3", REMOTE_SELF, scenario, json.dumps(args)],
            env={"PYTHONPATH": "/src"},
            timeout=timeout,
            check=False,
        )
        assert r.rc == 0 and not r.timed_out, f"scenario {scenario} failed (rc={r.rc}):\n{r.stderr[-6000:]}"
        result = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"\n[{scenario}] " + json.dumps({k: v for k, v in result.items() if k != "raw"}, default=str)[:3000])
        return result

    @pytest.fixture(autouse=True)
    def _no_leftover_guests(testbed):  # type: ignore[no-untyped-def]
        yield
        names = [ln.split()[0] for ln in testbed.run(["xl", "list"]).stdout.splitlines()[1:]]
        leftovers = [n for n in names if n.startswith("ndx-be-")]
        for n in leftovers:
            testbed.run(["xl", "destroy", n], check=False)
        assert not leftovers, f"scenario left domains behind: {leftovers}"

    def test_xl_list_real_output_parses(testbed) -> None:  # type: ignore[no-untyped-def]
        res = run_scenario(testbed, "xl_list")
        assert res["raw"].startswith("Name ")
        assert "Reason-Code" in res["raw"].splitlines()[0]
        dom0 = next(d for d in res["parsed"] if d[0] == "Domain-0")
        assert dom0[1] == 0 and dom0[2] in (DomainState.RUNNING.value, DomainState.BLOCKED.value)
        assert re.fullmatch(r"[0-9a-f-]{36}", dom0[3]) and dom0[4] >= 1 and dom0[5] > 0
        assert [d.name for d in parse_xl_list(res["raw"])] == [d[0] for d in res["parsed"]]
        assert res["version"].startswith("4.17")

    def test_xl_dry_run_accepts_rendered_configs(testbed, unikernel) -> None:  # type: ignore[no-untyped-def]
        res = run_scenario(testbed, "dry_run", kernel=unikernel)
        assert res["created_anything"] == []
        full = json.loads(res["full"]["json"])
        text = res["full"]["json"]
        assert full["c_info"]["name"] == "ndx-be-dry-full"
        assert full["c_info"]["uuid"] == "6f1c5a3e-0b8a-4c43-9a57-2a1e6c0b1f00"
        assert full["b_info"]["max_memkb"] == 32 * 1024 and full["b_info"]["target_memkb"] == 16 * 1024
        assert full["b_info"]["max_vcpus"] == 2
        assert "clickos tick=5 poweroff_after=3" in text
        nics = full["nics"]
        assert nics[0]["bridge"] == "xenbr0" and nics[0]["mac"] == "00:16:3e:0a:0b:0c"
        assert nics[0]["ip"] == "10.1.0.2" and nics[0]["script"] == "vif-bridge"
        assert len(nics) == 2
        assert (full["on_poweroff"], full["on_reboot"], full["on_crash"]) == ("preserve", "preserve", "restart")
        minimal = json.loads(res["minimal"]["json"])
        assert minimal["c_info"]["name"] == "ndx-be-dry-min" and minimal["on_poweroff"] == "preserve"

    def test_xenstore_client_against_real_xenstored(testbed) -> None:  # type: ignore[no-untyped-def]
        res = run_scenario(testbed, "xenstore")
        base = "/local/domain/0/ndx-backend-test"
        assert res["dom0_path"] == "/local/domain/0"
        assert res["initial_event"] == [base, "ndx-test"]
        assert res["write_event"] == f"{base}/a" and res["read"] == "1"
        assert res["concurrent_reads_ok"]
        assert res["directory"] == ["a", "t"] and res["tx_values"] == ["x", "y"]
        assert res["perms"] == ["n0", "r1"]
        assert res["missing_errno"] == "ENOENT" and res["big_errno"] == "E2BIG"
        assert res["still_connected_after_errors"]
        assert res["release_initial"] == "@releaseDomain"
        assert res["removed"]

    def test_lifecycle_create_paused_clickos_console_stats_shutdown(testbed, unikernel) -> None:  # type: ignore[no-untyped-def]
        res = run_scenario(testbed, "lifecycle", kernel=unikernel)
        assert res["created_state"] == "paused" and res["domid"] > 0
        assert res["push"]["chunks"] == -(-len(CLICK_CONFIG) // 992) >= 2
        # The guest read exactly what we pushed, through XenStore, and reported it on its console,
        # which reached the FIFO through the pump.
        assert res["clickos_echo"] == res["clickos_expected"]
        assert res["console"]["fifo_equals_log_prefix"]
        assert res["console"]["last_commit"] == res["console"]["fifo_bytes"]
        assert res["console"]["commits_monotonic"]
        stats = res["stats"]
        assert stats["cpu_percent"] is not None and 0 <= stats["cpu_percent"] < 100
        assert 15 * 1024 <= stats["memory_kib"] <= 17 * 1024 and stats["vcpus"] == 1
        assert res["exit"] == {"reason": "poweroff", "requested": True, "domid": res["domid"]}
        assert res["watcher"]["events"] >= 1  # driven by @releaseDomain, not by a poll
        assert res["after_exit"] == {"state": "shutdown", "reason": "poweroff"}  # preserved (-e)
        assert res["gone"]

    def test_exit_reasons_crash_poweroff_and_destroyed_behind_our_back(testbed, unikernel) -> None:  # type: ignore[no-untyped-def]
        res = run_scenario(testbed, "exit_reasons", kernel=unikernel)
        assert res["exits"] == {
            "ndx-be-crash": {"reason": "crash", "requested": False},
            "ndx-be-off": {"reason": "poweroff", "requested": False},
            "ndx-be-gone": {"reason": "destroyed", "requested": False},
        }
        assert res["preserved"]["ndx-be-crash"][0] == "shutdown" and res["preserved"]["ndx-be-crash"][1][3:5] == "sc"
        assert res["preserved"]["ndx-be-off"][0] == "shutdown"
        assert res["watcher"]["events"] >= 3
