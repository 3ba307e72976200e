"""XlBackend: output parsing (xl's real column layout) and command construction via a fake ``xl``."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xen_driver.driver.timing import PhaseTimer
from xen_driver.xen.backend import CreatedDomain, DomainExists, DomainNotFound, DomainState, ExitReason
from xen_driver.xen.spec import DomainSpec, SpecError
from xen_driver.xen.xl import XlBackend, XlError, XlNotFound, XlTimeout
from xen_driver.xen.xllist import parse_state_flags, parse_xl_list

# Laid out exactly as xl 4.17 prints `xl list -v` ("%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f",
# then " <uuid> %8x|%8s %16s"); the State/Time header is tab separated.
XL_LIST_V = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label\n"
    "Domain-0                                     0  1024     2     r-----     123.4 00000000-0000-0000-0000-000000000000        -                -\n"
    "ndx-web-1a2b3c4d                             3    16     1     -b----       0.3 6f1c5a3e-0b8a-4c43-9a57-2a1e6c0b1f00        -                -\n"
    "ndx-paused                                   4    32     1     --p---       0.0 1b4e28ba-2fa1-11d2-883f-0016d3cca427        -                -\n"
    "ndx-off                                      5    16     1     ---s--       1.2 2b4e28ba-2fa1-11d2-883f-0016d3cca427        0                -\n"
    "ndx-crashed                                  6    16     1     ---sc-       0.9 3b4e28ba-2fa1-11d2-883f-0016d3cca427        3                -\n"
    "ndx-wd                                       7    16     1     ---sw-       0.9 4b4e28ba-2fa1-11d2-883f-0016d3cca427        4                -\n"
    "(null)                                       8     0     1     ---s-d       0.1 5b4e28ba-2fa1-11d2-883f-0016d3cca427        0                -\n"
    "a-rather-long-domain-name-that-exceeds-forty-chars     9    16     1     r-----       2.5 6b4e28ba-2fa1-11d2-883f-0016d3cca427        -                -\n"
)

XL_LIST_PLAIN = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0  1024     2     r-----      45.1\n"
    "ndx-crashed                                  6    16     1     ---sc-       0.9\n"
)


def test_parse_xl_list_verbose() -> None:
    doms = {d.name: d for d in parse_xl_list(XL_LIST_V)}
    assert set(doms) == {
        "Domain-0",
        "ndx-web-1a2b3c4d",
        "ndx-paused",
        "ndx-off",
        "ndx-crashed",
        "ndx-wd",
        "(null)",
        "a-rather-long-domain-name-that-exceeds-forty-chars",
    }
    d0 = doms["Domain-0"]
    assert (d0.domid, d0.state, d0.cpu_seconds, d0.memory_kib, d0.vcpus) == (
        0,
        DomainState.RUNNING,
        123.4,
        1024 * 1024,
        2,
    )
    web = doms["ndx-web-1a2b3c4d"]
    assert web.state is DomainState.BLOCKED and web.shutdown_reason is None
    assert web.uuid == "6f1c5a3e-0b8a-4c43-9a57-2a1e6c0b1f00"
    assert doms["ndx-paused"].state is DomainState.PAUSED
    assert (doms["ndx-off"].state, doms["ndx-off"].shutdown_reason) == (DomainState.SHUTDOWN, ExitReason.POWEROFF)
    assert doms["ndx-crashed"].shutdown_reason is ExitReason.CRASH
    assert doms["ndx-wd"].shutdown_reason is ExitReason.WATCHDOG
    assert doms["(null)"].state is DomainState.DYING
    assert doms["a-rather-long-domain-name-that-exceeds-forty-chars"].domid == 9


def test_parse_xl_list_plain_uses_state_letters() -> None:
    doms = {d.name: d for d in parse_xl_list(XL_LIST_PLAIN)}
    assert doms["ndx-crashed"].shutdown_reason is ExitReason.CRASH
    assert doms["ndx-crashed"].uuid is None
    assert doms["Domain-0"].cpu_seconds == 45.1


@pytest.mark.parametrize(
    ("flags", "state", "reason"),
    [
        ("r-----", DomainState.RUNNING, None),
        ("------", DomainState.RUNNING, None),
        ("-b----", DomainState.BLOCKED, None),
        ("--p---", DomainState.PAUSED, None),
        ("---s--", DomainState.SHUTDOWN, ExitReason.POWEROFF),
        ("---sr-", DomainState.SHUTDOWN, ExitReason.REBOOT),
        ("---ss-", DomainState.SHUTDOWN, ExitReason.SUSPEND),
        ("---sc-", DomainState.SHUTDOWN, ExitReason.CRASH),
        ("---sw-", DomainState.SHUTDOWN, ExitReason.WATCHDOG),
        ("---sS-", DomainState.SHUTDOWN, ExitReason.SOFT_RESET),
        ("---s?-", DomainState.SHUTDOWN, ExitReason.UNKNOWN),
        ("-----d", DomainState.DYING, None),
    ],
)
def test_state_flags(flags: str, state: DomainState, reason: ExitReason | None) -> None:
    assert parse_state_flags(flags) == (state, reason)


# ----------------------------------------------------------------- fake xl
FAKE_XL = textwrap.dedent(
    r"""
    #!PYTHON
    import json, os, re, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    args = sys.argv[1:]
    with open(os.path.join(here, "calls.jsonl"), "a") as fh:
        fh.write(json.dumps({"argv": args, "t": time.monotonic(), "pid": os.getpid()}) + "\n")
    time.sleep(float(os.environ.get("FAKE_XL_SLEEP", "0")))
    state_path = os.path.join(here, "domains.json")
    doms = json.load(open(state_path)) if os.path.exists(state_path) else {}
    def save():
        json.dump(doms, open(state_path, "w"))
    def invalid(name):
        sys.stderr.write(f"{name} is an invalid domain identifier (rc=-6)\n")
        sys.exit(1)
    cmd, rest = args[0], args[1:]
    if cmd == "create":
        cfg = rest[-1]
        sys.stderr.write(f"Parsing config from {cfg}\n")
        if "-n" in rest:
            print(json.dumps({"c_info": {"name": "x"}}))
            sys.exit(0)
        name = re.search(r'^name = "([^"]*)"', open(cfg).read(), re.M).group(1)
        if name in doms:
            sys.stderr.write(f'libxl: error: libxl_domain.c:81:libxl__domain_rename: Domain with name "{name}" already exists.\n')
            sys.exit(3)
        domid = max([d["domid"] for d in doms.values()] + [0]) + 1
        doms[name] = {"domid": domid, "flags": "--p---" if "-p" in rest else "r-----"}
        save()
    elif cmd == "list":
        names = [a for a in rest if not a.startswith("-")]
        for n in names:
            if n not in doms:
                invalid(n)
        print("Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label")
        for n, d in doms.items():
            if names and n not in names:
                continue
            print("%-40s %5d %5lu %5d     %s  %8.1f %s %8s %16s" % (n, d["domid"], 16, 1, d["flags"], 0.1, "6f1c5a3e-0b8a-4c43-9a57-2a1e6c0b1f00", "-", "-"))
    elif cmd in ("unpause", "pause", "shutdown", "destroy", "domid"):
        name = rest[-1]
        if name not in doms:
            invalid(name)
        if cmd == "unpause":
            doms[name]["flags"] = "r-----"
        elif cmd == "destroy":
            del doms[name]
        elif cmd == "domid":
            print(doms[name]["domid"])
        save()
    elif cmd == "fail":
        sys.stderr.write("libxl: error: something\nxl: fatal: it broke\n")
        sys.exit(7)
    """
).lstrip()


@pytest.fixture
def fake_xl(tmp_path: Path) -> Path:
    xl = tmp_path / "bin" / "xl"
    xl.parent.mkdir()
    xl.write_text(FAKE_XL.replace("#!PYTHON", f"#!{sys.executable}"))
    xl.chmod(xl.stat().st_mode | stat.S_IXUSR)
    return xl


def calls(xl: Path) -> list[list[str]]:
    path = xl.parent / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()]


SPEC = DomainSpec(name="ndx-t1", kernel="/img/k", memory_mb=16, cmdline="tick=1")


def test_create_runs_xl_create_e_p_with_absolute_cfg(
    fake_xl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        be = XlBackend(tmp_path / "cfg", xl=str(fake_xl))
        timer = PhaseTimer()
        created = await be.create_domain(SPEC, phases=timer)
        cfg = tmp_path / "cfg" / "ndx-t1.cfg"
        # One xl process: the domain id comes from XenStore, not from a second xl call.
        assert created == CreatedDomain(name="ndx-t1", domid=None, config_file=str(cfg))
        assert be.config_file("ndx-t1") == str(cfg)
        assert calls(fake_xl) == [["create", "-e", "-p", str(cfg)]]
        assert {"render", "domain_build"} <= set(timer.as_dict())
        info = await be.domain("ndx-t1")
        assert info.name == "ndx-t1" and info.domid == 1 and info.state is DomainState.PAUSED
        assert 'name = "ndx-t1"' in cfg.read_text()
        assert oct(cfg.stat().st_mode & 0o777) == "0o600"
        assert [c.argv[1] for c in be.calls] == ["create", "list"]
        assert all(c.duration_s > 0 for c in be.calls)

        assert be.unpause_path is None  # not asked yet
        await be.unpause("ndx-t1", domid=1)  # no libxenctrl on this host: falls back to xl
        assert calls(fake_xl)[-1] == ["unpause", "ndx-t1"]
        assert be.unpause_path == "xl unpause"
        assert (await be.domain("ndx-t1")).state is DomainState.RUNNING
        await be.shutdown("ndx-t1", wait=True)
        assert calls(fake_xl)[-1] == ["shutdown", "-w", "ndx-t1"]
        with pytest.raises(DomainExists):
            await be.create_domain(SPEC)
        await be.destroy("ndx-t1")
        await be.destroy("ndx-t1")  # idempotent: "invalid domain identifier" is success
        assert calls(fake_xl)[-2:] == [["destroy", "ndx-t1"], ["destroy", "ndx-t1"]]
        with pytest.raises(DomainNotFound):
            await be.unpause("ndx-t1")
        with pytest.raises(DomainNotFound):
            await be.domain("ndx-t1")

    monkeypatch.chdir(tmp_path)
    asyncio.run(main())


def test_relative_cfg_path_is_made_absolute(fake_xl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel.cfg").write_text('name = "ndx-rel"\n')

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl))
        await be.create("rel.cfg", "ndx-rel", paused=False)
        assert calls(fake_xl)[0] == ["create", "-e", str(tmp_path / "rel.cfg")]
        out = await be.dry_run("rel.cfg")
        assert json.loads(out) == {"c_info": {"name": "x"}}
        assert calls(fake_xl)[-1] == ["create", "-n", str(tmp_path / "rel.cfg")]

    asyncio.run(main())


def test_validate_uses_dry_run_and_leaves_no_file(fake_xl: Path, tmp_path: Path) -> None:
    async def main() -> None:
        be = XlBackend(tmp_path / "cfg", xl=str(fake_xl))
        await be.validate(SPEC)
        argv = calls(fake_xl)[0]
        assert argv[:2] == ["create", "-n"] and argv[2].endswith(".cfg")
        assert list((tmp_path / "cfg").iterdir()) == []
        with pytest.raises(SpecError):
            await be.validate(DomainSpec(name="x", kernel="/k\n", memory_mb=1))
        assert len(calls(fake_xl)) == 1  # refused before xl ran

    asyncio.run(main())


def test_names_are_validated_before_running_xl(fake_xl: Path, tmp_path: Path) -> None:
    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl))
        for bad in ("-h", "1", "a b"):
            with pytest.raises(SpecError):
                await be.destroy(bad)
        assert calls(fake_xl) == []

    asyncio.run(main())


def test_error_message_carries_command_rc_and_stderr(fake_xl: Path, tmp_path: Path) -> None:
    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl))
        with pytest.raises(XlError) as info:
            await be.run("fail")
        assert info.value.rc == 7
        assert "it broke" in info.value.stderr
        assert "exited with status 7" in str(info.value) and "xl: fatal: it broke" in str(info.value)

    asyncio.run(main())


def test_missing_xl_binary(tmp_path: Path) -> None:
    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(tmp_path / "nope" / "xl"))
        with pytest.raises(XlNotFound):
            await be.list_domains()

    asyncio.run(main())


def test_timeout_kills_xl(fake_xl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_XL_SLEEP", "5")

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl), timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(XlTimeout):
            await be.list_domains()
        assert time.monotonic() - t0 < 3

    asyncio.run(main())


def test_concurrency_is_bounded(fake_xl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_XL_SLEEP", "0.3")

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl), max_concurrency=2)
        await asyncio.gather(*(be.list_domains() for _ in range(4)))
        starts = sorted(json.loads(line)["t"] for line in (fake_xl.parent / "calls.jsonl").read_text().splitlines())
        # Two run at once; the third may only start after one of the first two finished.
        assert starts[2] - starts[0] >= 0.25

    asyncio.run(main())


def test_list_domains_via_fake(fake_xl: Path, tmp_path: Path) -> None:
    (fake_xl.parent / "domains.json").write_text(json.dumps({"a1": {"domid": 3, "flags": "---sc-"}}))

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl))
        (dom,) = await be.list_domains()
        assert (dom.name, dom.domid, dom.shutdown_reason) == ("a1", 3, ExitReason.CRASH)
        assert calls(fake_xl) == [["list", "-v"]]
        assert await be.domid("a1") == 3

    asyncio.run(main())


def test_on_call_hook_sees_every_call(fake_xl: Path, tmp_path: Path) -> None:
    seen = []

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl), on_call=seen.append)
        await be.list_domains()
        await be.destroy("gone")

    asyncio.run(main())
    assert [c.argv[1:] for c in seen] == [("list", "-v"), ("destroy", "gone")]
    assert seen[1].rc == 1 and os.path.basename(seen[1].argv[0]) == "xl"


def test_xl_backend_satisfies_the_backend_protocol(tmp_path: Path) -> None:
    from xen_driver.xen.backend import Backend

    assert isinstance(XlBackend(tmp_path), Backend)
    assert XlBackend.kind == "xl"


def test_cancellation_kills_xl(fake_xl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_XL_SLEEP", "30")

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl))
        task = asyncio.create_task(be.list_domains())
        log = fake_xl.parent / "calls.jsonl"
        while not log.exists():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pid = json.loads(log.read_text().splitlines()[0])["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped, not left running

    asyncio.run(main())


def test_xl_calls_start_no_waiter_thread(fake_xl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's asyncio waits for each child in a thread of its own; the backend has it
    wait through pidfds in the event loop, so a thousand guests' xl calls start no threads."""
    import threading

    monkeypatch.setenv("FAKE_XL_SLEEP", "0.3")

    async def main() -> None:
        be = XlBackend(tmp_path, xl=str(fake_xl), max_concurrency=4)
        before = {t.name for t in threading.enumerate()}
        calls_ = [asyncio.create_task(be.list_domains()) for _ in range(4)]
        await asyncio.sleep(0.15)  # all four are running
        during = {t.name for t in threading.enumerate()} - before
        await asyncio.gather(*calls_)
        assert not any("waitpid" in n for n in during), during

    asyncio.run(main())
