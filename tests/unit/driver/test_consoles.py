"""The driver's console side (driver/consoles.py): the keeper copies, the plugin reads a console
only until its guest booted, and copies it itself only when no keeper can be reached."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.unit.driver.test_lifecycle import _lifecycle, _logmon, host, make_spec  # noqa: F401 - fixture
from tests.unit.xen.test_fifokeeper import kill_keepers, until
from xen_driver.driver.lifecycle import TaskLifecycle
from xen_driver.driver.models import TaskSpec
from xen_driver.driver.state import DriverState
from xen_driver.xen.backend import ExitReason
from xen_driver.xen.fifokeeper import SOCKET_NAME
from xen_driver.xen.keeperclient import FifoKeeperClient


async def test_after_boot_only_the_keeper_reads_the_console(host):  # noqa: F811
    tmp_path, config, fake = host
    fifo = tmp_path / ".web.stdout.fifo"
    os.mkfifo(fifo)
    rfd, got, drain = _logmon(fifo)
    lc = await _lifecycle(config, fake)
    try:
        spec = TaskSpec(**{**make_spec(tmp_path).__dict__, "stdout_path": str(fifo)})
        handle = await lc.start_task(spec)
        name = DriverState.decode(handle.driver_state).domain_name
        assert name not in lc._pump  # the plugin's boot-marker stream is gone
        await until(lambda: name in lc._keeper.copies)
        assert (await lc._keeper.request({"op": "keys"}))["keys"] == [name]
        with open(tmp_path / "console" / f"guest-{name}.log", "ab") as fh:
            fh.write(b"tick 1\n")
        await until(lambda: drain() is False and got.endswith(b"tick 1\n"))
        assert got == b"fake guest booting\nNDX-GUEST READY\ntick 1\n"
        offset_file = Path(DriverState.decode(handle.driver_state).task_state_dir) / "console.offset"
        await until(lambda: offset_file.exists() and int(offset_file.read_text()) == len(got))  # the keeper's

        with open(tmp_path / "console" / f"guest-{name}.log", "ab") as fh:
            fh.write(b"last words\n")
        fake.power_off(name, ExitReason.POWEROFF)  # the exit drains through the keeper, then releases
        assert (await asyncio.wait_for(lc.wait_task(spec.id), 5)).exit_code == 0
        await lc._keeper.flush()
        assert drain() is True and got.endswith(b"tick 1\nlast words\n")
        assert (await lc._keeper.request({"op": "keys"}))["keys"] == []
    finally:
        await lc.close()
        os.close(rfd)
        kill_keepers(str(Path(config.state_dir) / SOCKET_NAME))


async def test_without_a_keeper_the_plugin_copies_the_console_itself(host):  # noqa: F811
    tmp_path, config, fake = host
    keeper = FifoKeeperClient(config.state_dir, python="/nonexistent/python", connect_timeout_s=0.2)
    lc = TaskLifecycle(config, lambda e: None, backend=fake, rescan_interval_s=0.05, fifo_keeper=keeper)
    try:
        spec = make_spec(tmp_path)
        handle = await lc.start_task(spec)
        name = DriverState.decode(handle.driver_state).domain_name
        stdout = Path(spec.stdout_path)
        await until(lambda: stdout.read_bytes() == b"fake guest booting\nNDX-GUEST READY\n")
        assert f"{name}#copy" in lc._pump and name not in lc._pump
        with open(tmp_path / "console" / f"guest-{name}.log", "ab") as fh:
            fh.write(b"bye\n")
        fake.power_off(name, ExitReason.POWEROFF)
        assert (await asyncio.wait_for(lc.wait_task(spec.id), 5)).exit_code == 0
        assert stdout.read_bytes().endswith(b"READY\nbye\n")
        await lc.destroy_task(spec.id, True)
        assert f"{name}#copy" not in lc._pump
    finally:
        await lc.close()
