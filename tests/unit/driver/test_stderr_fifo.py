"""Nothing writes a guest's stderr, and Nomad's logmon must not wait for it.

logmon opens each of a task's FIFOs for reading in a blocking ``open()``; when the task ends it
waits 2 s for the copy and 2 s for that ``open()``, then warns "timed out waiting for read-side of
process output pipe to close" (every task stop on the testbed did, before this).  The driver
opens and closes the stderr FIFO once when it hands over the console, so logmon's reader gets
its end-of-file at the start."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path

from tests.unit.driver.test_lifecycle import _lifecycle, host, make_spec  # noqa: F401 (fixture)
from xen_driver.driver.state import DriverState
from xen_driver.xen.backend import ExitReason
from xen_driver.xen.sinks import end_unused_fifo


class BlockingReader(threading.Thread):
    """logmon's side: a blocking open() for reading, then read until end-of-file."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.got: bytes | None = None

    def run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)  # returns only once a writer opened the FIFO
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
        os.close(fd)
        self.got = data


async def test_the_stderr_fifo_reader_gets_end_of_file_when_the_task_starts(host):
    tmp_path, config, fake = host
    stderr = tmp_path / "alloc" / "web" / ".stderr.fifo"
    os.mkfifo(stderr)
    reader = BlockingReader(stderr)
    reader.start()
    lc = await _lifecycle(config, fake)
    try:
        spec = replace(make_spec(tmp_path), stderr_path=str(stderr))
        handle = await lc.start_task(spec)
        await asyncio.to_thread(reader.join, 10)
        assert reader.got == b"", "the stderr reader is still blocked in open() or read()"
        fake.power_off(DriverState.decode(handle.driver_state).domain_name, ExitReason.POWEROFF)
        await asyncio.wait_for(lc.wait_task(spec.id), 5)
        await lc.destroy_task(spec.id, True)
    finally:
        if reader.is_alive():  # do not leave the thread blocked: give it its writer
            os.close(os.open(stderr, os.O_WRONLY | os.O_NONBLOCK))
        await lc.close()


async def test_a_reader_that_comes_later_is_waited_for_and_a_plain_file_is_left_alone(tmp_path):
    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    ending = asyncio.ensure_future(end_unused_fifo(str(fifo), timeout_s=10))
    await asyncio.sleep(0)  # (let it find no reader first)
    reader = BlockingReader(fifo)
    reader.start()
    assert await asyncio.wait_for(ending, 10) is True
    await asyncio.to_thread(reader.join, 10)
    assert reader.got == b""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert await end_unused_fifo(str(plain)) is False and plain.read_bytes() == b"x"
    assert await end_unused_fifo(str(tmp_path / "absent")) is False
