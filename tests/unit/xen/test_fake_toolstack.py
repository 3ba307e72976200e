"""The xen/ layer against the shared fake toolstack of tests/fakes (the one bench/scale.py runs the
plugin on): xl create writes the domain's XenStore nodes and console, the watcher sees the guest
power off when asked through control/shutdown, xl destroy leaves nothing behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fakes.domains import DomainTable
from tests.fakes.xenstored import FakeXenstored, guest_side
from xen_driver.xen.backend import DomainState, ExitReason
from xen_driver.xen.console import ConsolePump, MemorySink
from xen_driver.xen.spec import DomainSpec
from xen_driver.xen.watcher import DomainWatcher
from xen_driver.xen.xenstore import XenStore
from xen_driver.xen.xl import XlBackend

FAKE_XL = Path(__file__).resolve().parents[2] / "fakes" / "xl"


def test_create_boot_poweroff_destroy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xen, consoles = tmp_path / "xen", tmp_path / "console"
    consoles.mkdir()
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")
    sock = str(tmp_path / "xs.sock")
    monkeypatch.setenv("FAKE_XEN_DIR", str(xen))
    monkeypatch.setenv("FAKE_XEN_CONSOLE_DIR", str(consoles))
    monkeypatch.setenv("XENSTORED_PATH", sock)

    async def main() -> None:
        server = FakeXenstored(sock)
        server.on_write.append(guest_side(server, str(xen)))
        await server.start()
        try:
            async with XenStore(sock) as xs, ConsolePump(safety_s=3600) as pump:
                be = XlBackend(tmp_path / "cfg", xl=str(FAKE_XL))
                async with DomainWatcher(be, xenstore=xs, min_list_interval_s=0.1) as w:
                    spec = DomainSpec(name="g1", kernel=str(kernel), memory_mb=16)
                    await be.create(be.write_config(spec), "g1", paused=False, describe=False)
                    domid = await xs.find_domid("g1")
                    assert domid == 1
                    exited = w.subscribe("g1", domid)
                    sink = MemorySink()
                    stream = pump.add("g1", ConsolePump.log_path(consoles, "g1"), sink)
                    await stream.wait_for(b"booted", 10)
                    assert (await be.domain("g1")).state is DomainState.BLOCKED

                    w.expect_exit("g1")
                    await xs.write(f"/local/domain/{domid}/control/shutdown", "poweroff")
                    exit_ = await asyncio.wait_for(exited, 10)
                    assert (exit_.reason, exit_.requested) == (ExitReason.POWEROFF, True)

                    await be.destroy("g1")
                    assert DomainTable(str(xen)).snapshot() == {}
                    assert await xs.directory("/local/domain") == []
        finally:
            await server.stop()

    asyncio.run(main())
