"""Issue 10: a plugin SIGKILL between a write into the FIFO and the offset commit duplicated
console lines in ``nomad alloc logs``.  The window is made deterministic with the commit gate
(XEN_DRIVER_TEST_COMMIT_GATE): the copier writes, then waits before its commit; the test kills
a real plugin process right there, starts its successor and lets the copy go on.

* ``self``: the plugin copies the console itself (the design before the fix): the successor
  resumes from the stale committed offset and the FIFO's reader gets a line twice.  Kept as the
  reproduction of the defect.
* ``keeper``: the plugin asks the FIFO keeper to copy: the plugin's death is not in the copier's
  window at all, the successor's re-sent ``hold`` keeps the keeper's progress: exactly once.
* And the keeper itself killed in that window: at least once, the repeat bounded by that one piece.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.xen.test_fifokeeper import _read_all, end_process, gone, keeper_pids, kill_keepers, until
from xen_driver.xen.fifokeeper import COMMIT_GATE_ENV, SOCKET_NAME, read_offset
from xen_driver.xen.keeperclient import FifoKeeperClient

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("no_leftover_keepers")


class Task:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.fifo = tmp_path / "g.stdout.fifo"
        self.log = tmp_path / "guest-g.log"
        self.offset_file = tmp_path / "console.offset"
        self.gate = tmp_path / "gate"
        self.socket = str(tmp_path / SOCKET_NAME)
        os.mkfifo(self.fifo)
        self.rfd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)  # logmon, reading throughout
        self.got = bytearray()
        self.procs: list[subprocess.Popen[bytes]] = []

    def append(self, data: bytes) -> None:
        with open(self.log, "ab") as f:
            f.write(data)

    def read(self) -> bytes:
        self.got += _read_all(self.rfd)
        return bytes(self.got)

    def plugin(self, mode: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(REPO), **{COMMIT_GATE_ENV: str(self.gate)})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.unit.xen.console_plugin",
                "--mode",
                mode,
                "--state-dir",
                str(self.dir),
                "--key",
                "g",
                "--fifo",
                str(self.fifo),
                "--log",
                str(self.log),
                "--offset-file",
                str(self.offset_file),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    async def ready(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == b"ready", line

    def close(self) -> None:
        for proc in self.procs:
            end_process(proc)
        kill_keepers(self.socket)
        os.close(self.rfd)


async def _plugin_killed_in_the_window(tmp_path: Path, mode: str) -> bytes:
    task = Task(tmp_path)
    try:
        task.append(b"line 1\n")
        task.gate.write_bytes(b"")  # the copier stops after its next write, before the commit
        first = task.plugin(mode)
        await task.ready(first)
        await until(lambda: (task.gate.parent / "gate.reached").exists(), timeout=20)
        assert task.read() == b"line 1\n"  # written into the FIFO ...
        assert read_offset(str(task.offset_file)) is None  # ... and not committed
        first.kill()  # the plugin crashes right there
        first.wait()
        second = task.plugin(mode)  # Nomad relaunches it; RecoverTask re-attaches the console
        task.gate.unlink()
        await task.ready(second)
        task.append(b"line 2\n")
        size = task.log.stat().st_size
        await until(lambda: read_offset(str(task.offset_file)) == size, timeout=20)
        await until(lambda: len(task.read()) >= size)
        return task.read()
    finally:
        task.close()


def test_plugin_copying_itself_repeats_what_it_wrote_but_did_not_commit(tmp_path: Path) -> None:
    """The defect, reproduced with the old design: the successor copies ``line 1`` again."""
    got = asyncio.run(_plugin_killed_in_the_window(tmp_path, "self"))
    assert got == b"line 1\nline 1\nline 2\n"


def test_plugin_killed_in_the_window_with_the_keeper_copying_delivers_exactly_once(tmp_path: Path) -> None:
    got = asyncio.run(_plugin_killed_in_the_window(tmp_path, "keeper"))
    assert got == b"line 1\nline 2\n"


def test_keeper_killed_in_the_window_repeats_at_most_that_piece(tmp_path: Path) -> None:
    """The keeper's own SIGKILL between write and commit: at least once, and the repeat is the
    one uncommitted piece (<= PIPE_BUF bytes), nothing before it."""

    async def main() -> bytes:
        task = Task(tmp_path)
        client = FifoKeeperClient(tmp_path, idle_exit_s=2.0, supervise_s=3600, env={COMMIT_GATE_ENV: str(task.gate)})
        try:
            task.append(b"committed\n")
            assert (await client.copy("g", str(task.fifo), str(task.log), offset_file=str(task.offset_file)))["ok"]
            await until(lambda: read_offset(str(task.offset_file)) == 10)
            task.gate.write_bytes(b"")
            task.append(b"in flight\n")
            await until(lambda: (tmp_path / "gate.reached").exists(), timeout=20)
            assert task.read() == b"committed\nin flight\n"
            (pid,) = keeper_pids(task.socket)
            os.kill(pid, 9)
            await until(lambda: gone(pid))
            task.gate.unlink()
            client._spawned_at = None  # the first keeper started a moment ago; a real one died later
            assert await client.check() == ["g"]
            size = task.log.stat().st_size
            await until(lambda: read_offset(str(task.offset_file)) == size, timeout=20)
            await until(lambda: len(task.read()) >= size + len(b"in flight\n"))
            client.release("g")
            await client.flush()
            return task.read()
        finally:
            await client.close()
            task.close()

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got == b"committed\nin flight\nin flight\n"
