"""Console lines across a Nomad agent restart, with real processes.

Nomad's logmon buffers what it reads from a task's FIFO and writes it to the log files 100 ms
later.  After the agent is SIGKILLed (or stopped), its logmon processes live on, orphaned, and
exit when the agent that comes back connects to them (Nomad 1.6.3 then starts new ones): what
one of them had read and not yet written is lost.  A testbed run lost a line that way.  The
keeper now holds each console back from the readers a dead agent left until they have exited.

Here the agent is a process whose child is the plugin stand-in (``console_plugin.py``, which
announces its parent to the keeper as the driver does), and logmon is a reader that writes
what it read only when told (SIGUSR1) or, for its successor, at once: a SIGKILL loses its
buffer, the way a logmon killed within 100 ms of a read loses it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.xen.test_fifokeeper import end_process, gone, kill_keepers, until
from xen_driver.xen.agentwatch import ExitWatch, fifo_readers, find_process, identity
from xen_driver.xen.console import ConsolePump
from xen_driver.xen.fifokeeper import SOCKET_NAME, Keeper
from xen_driver.xen.keeperclient import FifoKeeperClient

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("no_leftover_keepers")

#: A FIFO reader like logmon: opens the FIFO (blocking until a writer appears), says "reading",
#: counts what it read in <status>, and writes it into <out> on SIGUSR1 or at once ("now").  On
#: SIGUSR2 it closes the FIFO and opens it again, as logmon does when an agent reattaches to it.
READER = r"""
import os, signal, sys
fifo, out, status, mode = sys.argv[1:5]
buf = bytearray()
class Reopen(Exception):
    pass
def flush(*_):
    with open(out, "ab") as f:
        f.write(buf)
    buf.clear()
def reopen(*_):
    raise Reopen
signal.signal(signal.SIGUSR1, flush)
signal.signal(signal.SIGUSR2, reopen)
total = 0
while True:
    fd = os.open(fifo, os.O_RDONLY)
    print("reading", flush=True)
    try:
        while data := os.read(fd, 65536):
            buf += data
            total += len(data)
            with open(status + ".tmp", "w") as f:
                f.write(str(total))
            os.replace(status + ".tmp", status)
            if mode == "now":
                flush()
        break
    except Reopen:
        os.close(fd)
flush()
"""

#: An agent: starts its argv as its child, prints the child's pid, and waits to be killed.
AGENT = r"""
import subprocess, sys, time
child = subprocess.Popen(sys.argv[1:])
print(child.pid, flush=True)
time.sleep(3600)
"""


class Procs:
    """Every process a test starts, killed at the end."""

    def __init__(self) -> None:
        self.pids: list[int] = []  # started by others (a plugin the agent started)
        self.popens: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO, **kw)
        self.popens.append(proc)
        return proc

    def sleeper(self) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-c", "import time; time.sleep(3600)"])

    def close(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.popens:
            end_process(proc)
        deadline = time.monotonic() + 10
        while not all(gone(p) for p in self.pids) and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.close()


class Reader:
    def __init__(self, procs: Procs, fifo: Path, out: Path, mode: str):
        self.out, self.status = out, out.with_suffix(".status")
        self.proc = procs.start([sys.executable, "-c", READER, str(fifo), str(out), str(self.status), mode])

    async def reading(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        assert line.strip() == b"reading", line

    def received(self) -> int:
        try:
            return int(self.status.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def written(self) -> bytes:
        return self.out.read_bytes() if self.out.exists() else b""


async def test_a_line_read_by_a_dead_agents_logmon_is_not_lost(tmp_path: Path, procs: Procs) -> None:
    """Agent SIGKILL, a line printed, the old logmon killed with its buffer, a new one started:
    every line reaches the log files exactly once."""
    fifo, log = tmp_path / "t.stdout.fifo", tmp_path / "guest-t.log"
    os.mkfifo(fifo)
    log.write_bytes(b"line 1\n")
    keeper = FifoKeeperClient(tmp_path)  # the test's own connection, to ask what the keeper holds

    async def held(what: str = "held") -> dict[str, int]:
        return (await keeper.request({"op": "keys"}, spawn=False)).get(what) or {}

    try:
        old = Reader(procs, fifo, tmp_path / "out.0", "on-signal")  # logmon, before the task starts
        plugin = [sys.executable, "-m", "tests.unit.xen.console_plugin", "--mode", "keeper", "--announce-agent"]
        plugin += ["--state-dir", str(tmp_path), "--key", "t", "--fifo", str(fifo), "--log", str(log)]
        plugin += ["--offset-file", str(tmp_path / "console.offset")]
        agent = procs.start([sys.executable, "-c", AGENT, *plugin], env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert agent.stdout is not None
        procs.pids.append(int(await asyncio.to_thread(agent.stdout.readline)))
        assert (await asyncio.to_thread(agent.stdout.readline)).strip() == b"ready"
        await old.reading()
        await until(lambda: old.received() == 7, timeout=20)
        os.kill(old.proc.pid, signal.SIGUSR1)  # logmon's periodic flush
        await until(lambda: old.written() == b"line 1\n", timeout=20)

        agent.kill()  # the agent dies; its plugin and its logmon live on
        agent.wait()
        with open(log, "ab") as f:
            f.write(b"line 2\n")  # the guest prints meanwhile
        # Taken by the old logmon (and lost with it), or held back by the keeper:
        deadline = time.monotonic() + 20
        while old.received() < 14 and (await held()).get("t", 0) < 7:
            assert time.monotonic() < deadline, "line 2 was neither delivered nor held back"
            await asyncio.sleep(0.02)
        old.proc.kill()  # the new agent connects to the old logmon: it exits, unflushed
        old.proc.wait()
        new = Reader(procs, fifo, tmp_path / "out.1", "now")  # and starts a new one
        await new.reading()
        with open(log, "ab") as f:
            f.write(b"line 3\n")
        want = b"line 1\nline 2\nline 3\n"
        try:
            await until(lambda: len(old.written() + new.written()) >= len(want), timeout=20)
        finally:
            assert old.written() + new.written() == want
        assert await held() == {}  # the hold ended with the old reader: its close or its exit
        assert sum((await held("hold_ends")).values()) == 1 and "expired" not in await held("hold_ends")
    finally:
        await keeper.close()
        kill_keepers(str(tmp_path / SOCKET_NAME))


# ---------------------------------------------------------------------------- the keeper's parts


async def _held_copy(
    tmp_path: Path, procs: Procs, hold_max_s: float, reattach_grace_s: float = 3600
) -> tuple[Keeper, Reader, float]:
    """A keeper copying a console into a FIFO read by another process, whose agent then died
    (when, on the monotonic clock, is returned with them)."""
    fifo, log = tmp_path / "t.stdout.fifo", tmp_path / "guest-t.log"
    os.mkfifo(fifo)
    log.write_bytes(b"line 1\n")
    reader = Reader(procs, fifo, tmp_path / "out", "now")
    keeper = Keeper(
        str(tmp_path / "k.sock"),
        pump=ConsolePump(tick_s=0.02),
        hold_max_s=hold_max_s,
        reattach_grace_s=reattach_grace_s,
    )
    keeper.pump.start()
    agent = procs.sleeper()
    await until(lambda: identity(agent.pid) is not None)  # its command line is set once exec is done
    req = {"op": "hold", "key": "t", "path": str(fifo), "log": str(log), "offset": 0, "agent": agent.pid}
    assert (await keeper.answer(req))["ok"]
    await reader.reading()
    await until(lambda: reader.written() == b"line 1\n")
    assert keeper.agent_pid == agent.pid
    killed = time.monotonic()
    agent.kill()
    await until(lambda: keeper.agent_deaths == 1)
    assert keeper.holds == {"t": {reader.proc.pid}}
    with open(log, "ab") as f:
        f.write(b"line 2\n")
    await until(lambda: keeper.held().get("t") == 7)
    assert reader.written() == b"line 1\n"
    return keeper, reader, killed


async def test_a_recovered_tasks_hold_ends_after_the_grace_when_the_old_reader_stays(
    tmp_path: Path, procs: Procs
) -> None:
    """The new agent recovered the task and reattached to its logmon as it was (no reopen, no
    exit): the hold ends ``reattach_grace_s`` after the recovery, and the reader gets the bytes."""
    keeper, reader, _ = await _held_copy(tmp_path, procs, hold_max_s=3600, reattach_grace_s=0.3)
    assert (await keeper.answer({"op": "recovered", "key": "t"})) == {"ok": True}
    recovered = time.monotonic()
    await until(lambda: reader.written() == b"line 1\nline 2\n")
    assert time.monotonic() - recovered >= 0.3  # not before the grace was over
    assert keeper.holds == {} and keeper.hold_ends == {"recovered": 1}
    await keeper.pump.stop()
    keeper._exits.close()


async def test_a_hold_ends_at_hold_max_whatever_happens(tmp_path: Path, procs: Procs) -> None:
    """The backstop: no recovery, the reader stays: the hold still ends, at ``hold_max_s``."""
    keeper, reader, killed = await _held_copy(tmp_path, procs, hold_max_s=0.5)
    await until(lambda: reader.written() == b"line 1\nline 2\n")
    assert keeper.holds == {} and keeper.hold_ends == {"expired": 1}
    assert time.monotonic() - killed >= 0.5  # not before the hold expired
    await keeper.pump.stop()


async def test_a_hold_ends_when_the_old_reader_reopens_the_fifo(tmp_path: Path, procs: Procs) -> None:
    """An agent that reattached to its logmon (Nomad 1.6.3 after an agent SIGKILL): logmon closes
    its reader of the FIFO and opens a new one, in the same process.  The close ends the hold."""
    keeper, reader, _ = await _held_copy(tmp_path, procs, hold_max_s=3600)
    assert keeper._closes is not None
    os.kill(reader.proc.pid, signal.SIGUSR2)
    await reader.reading()
    await until(lambda: reader.written() == b"line 1\nline 2\n")
    assert keeper.holds == {} and keeper._closes is None and keeper.hold_ends == {"close": 1}
    assert reader.proc.poll() is None  # the same reader, going on
    await keeper.pump.stop()
    keeper._exits.close()


async def test_drain_ends_the_hold_so_an_exited_guests_last_lines_are_delivered(tmp_path: Path, procs: Procs) -> None:
    keeper, reader, _ = await _held_copy(tmp_path, procs, hold_max_s=3600)
    assert (await keeper.answer({"op": "drain", "key": "t", "timeout": 10}))["caught_up"]
    await until(lambda: reader.written() == b"line 1\nline 2\n")
    assert keeper.holds == {} and keeper.hold_ends == {"drain": 1}
    await keeper.pump.stop()


async def test_the_keeper_watches_the_agent_started_again(tmp_path: Path, procs: Procs) -> None:
    """The agent's successor (same executable, same command line) is found and watched, so a
    plugin that outlived the agent (its parent is gone) does not leave the next exit unseen."""
    keeper, reader, _ = await _held_copy(tmp_path, procs, hold_max_s=3600)
    successor = procs.sleeper()
    await until(lambda: identity(successor.pid) is not None)
    keeper.find_agent()
    assert keeper.agent_pid == successor.pid
    reader.proc.kill()  # the old logmon exits: the copy goes on
    await until(lambda: keeper.holds == {})
    assert not keeper._exits.watching(reader.proc.pid)
    await keeper.pump.stop()
    keeper._exits.close()


async def test_fifo_readers_are_the_processes_that_opened_it_for_reading(tmp_path: Path, procs: Procs) -> None:
    fifo, other = tmp_path / "a.fifo", tmp_path / "b.fifo"
    os.mkfifo(fifo)
    os.mkfifo(other)
    reader = Reader(procs, fifo, tmp_path / "out", "now")
    wfd = os.open(fifo, os.O_WRONLY)  # this process writes: not a reader (nor excluded)
    try:
        await reader.reading()
        found = fifo_readers({"a": str(fifo), "b": str(other), "c": str(tmp_path / "none")}, exclude=set())
        assert found == {"a": {reader.proc.pid}, "b": set(), "c": set()}
    finally:
        os.close(wfd)


async def test_exit_watch_fires_once_per_process_and_not_for_the_gone(procs: Procs) -> None:
    proc = procs.sleeper()
    seen: list[int] = []
    watch = ExitWatch()
    assert watch.watch(proc.pid, seen.append)
    proc.kill()
    proc.wait()  # reaped: the pid is gone
    await until(lambda: seen == [proc.pid])
    assert not watch.watching(proc.pid)
    assert not watch.watch(proc.pid, seen.append)  # gone already: no watch, no call
    assert find_process(("/nonexistent", b"x\0")) is None
    watch.close()


def test_the_plugin_names_its_parent_only_while_it_is_still_its_parent(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """After the agent exited, whoever adopted the plugin (init, a subreaper) is not an agent: the
    copy requests stop naming one, and the keeper looks for the agent's successor itself."""
    client = FifoKeeperClient(tmp_path, announce_agent=True)
    req = {"op": "hold", "key": "t", "path": "p", "log": "l"}
    assert client._with_agent(req) == {**req, "agent": os.getppid()}
    assert client._with_agent({**req, "rotate": [1, 1]}) == {**req, "rotate": [1, 1]}  # no logmon there
    monkeypatch.setattr(os, "getppid", lambda: 4242)  # reparented
    assert client._with_agent(req) == req
    assert FifoKeeperClient(tmp_path)._with_agent(req) == req  # not asked to name one
