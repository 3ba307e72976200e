"""The FIFO keeper: Nomad's log reader must not see end-of-file when the plugin dies, and the
keeper's copy of each console into its FIFO survives the plugin: hold with an offset, re-hold,
drain, release, sweep."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xen_driver.xen.console import ConsolePump
from xen_driver.xen.fifokeeper import SOCKET_NAME, Keeper, read_offset
from xen_driver.xen.keeperclient import FifoKeeperClient


def _reader(path) -> int:
    """Open the FIFO the way logmon does, but without blocking this test."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def _eof(fd: int) -> bool:
    """True if the FIFO reads end-of-file (no writer left); False if it would block."""
    try:
        return os.read(fd, 4096) == b""
    except BlockingIOError:
        return False


def _read_all(fd: int) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


async def until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def run(coro) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(coro, 30))


def _keeper(tmp_path: Path) -> Keeper:
    return Keeper(str(tmp_path / "k.sock"), pump=ConsolePump(tick_s=0.02))


# ---------------------------------------------------------------------------- hold only


def test_keeper_holds_the_write_end_until_released(tmp_path):
    async def main() -> None:
        fifo = tmp_path / "t.stdout.fifo"
        os.mkfifo(fifo)
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        try:
            plugin_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            assert await keeper.answer({"op": "hold", "key": "dom-a", "path": str(fifo)}) == {"ok": True}
            os.write(plugin_fd, b"tick 1\n")
            os.close(plugin_fd)  # the plugin dies
            assert os.read(rfd, 100) == b"tick 1\n"
            assert not _eof(rfd)  # logmon would keep reading
            assert await keeper.answer({"op": "keys"}) == {"ok": True, "keys": ["dom-a"]}
            assert await keeper.answer({"op": "release", "key": "dom-a"}) == {"ok": True}
            assert _eof(rfd)
        finally:
            os.close(rfd)

    run(main())


def test_keeper_refuses_a_fifo_without_reader_and_ignores_plain_files(tmp_path):
    async def main() -> None:
        fifo = tmp_path / "nobody.fifo"
        os.mkfifo(fifo)
        keeper = _keeper(tmp_path)
        resp = await keeper.answer({"op": "hold", "key": "x", "path": str(fifo)})
        assert resp["ok"] is False and "ENXIO" in resp["error"]
        plain = tmp_path / "stdout.log"
        plain.write_bytes(b"")
        assert await keeper.answer({"op": "hold", "key": "y", "path": str(plain)}) == {"ok": True}
        assert (await keeper.answer({"op": "keys"}))["keys"] == []
        assert (await keeper.answer({"op": "bogus"}))["ok"] is False

    run(main())


def test_keeper_lets_go_of_fifos_whose_file_was_removed(tmp_path):
    async def main() -> None:
        fifo, copied = tmp_path / "gc.fifo", tmp_path / "gc2.fifo"
        os.mkfifo(fifo)
        os.mkfifo(copied)
        rfds = [_reader(fifo), _reader(copied)]
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            await keeper.answer({"op": "hold", "key": "gone", "path": str(fifo)})
            await keeper.answer(
                {"op": "hold", "key": "gone2", "path": str(copied), "log": str(tmp_path / "guest-gone2.log")}
            )
            await keeper.sweep()
            assert (await keeper.answer({"op": "keys"}))["keys"] == ["gone", "gone2"]
            os.unlink(fifo)  # Nomad garbage-collected the allocation
            os.unlink(copied)
            await keeper.sweep()
            assert (await keeper.answer({"op": "keys"}))["keys"] == []
        finally:
            await keeper.pump.stop()
            for fd in rfds:
                os.close(fd)

    run(main())


def test_keeper_lets_go_of_copies_whose_console_log_was_removed(tmp_path):
    """Copies into a plain file or /dev/null have no FIFO to vanish: a removed (and delivered)
    console log ends them, so a keeper whose plugin never released them still goes idle."""

    async def main() -> None:
        log, plain = tmp_path / "guest-a.log", tmp_path / "stdout.log"
        log.write_bytes(b"x\n")
        plain.write_bytes(b"")
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            await keeper.answer({"op": "hold", "key": "a", "path": str(plain), "log": str(log)})
            await keeper.answer({"op": "hold", "key": "b", "path": os.devnull, "log": str(tmp_path / "guest-b.log")})
            await until(lambda: plain.read_bytes() == b"x\n")
            await keeper.sweep()
            assert keeper.keys() == ["a", "b"]  # b's log does not exist yet: it may still come
            log.unlink()
            await keeper.sweep()
            assert keeper.keys() == ["b"]
        finally:
            await keeper.pump.stop()

    run(main())


def test_unattended_keeper_drops_copies_into_anything_but_a_fifo(tmp_path):
    """No plugin connected for a while: copies into a plain file or /dev/null end (no logmon
    reads them; a returning plugin sends them again), copies into FIFOs go on."""

    async def main() -> None:
        fifo, log = tmp_path / "t.fifo", tmp_path / "guest-a.log"
        os.mkfifo(fifo)
        log.write_bytes(b"")
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            await keeper.answer({"op": "hold", "key": "fifo", "path": str(fifo), "log": str(log)})
            await keeper.answer({"op": "hold", "key": "null", "path": os.devnull, "log": str(log)})
            await keeper.sweep()
            assert keeper.keys() == ["fifo", "null"]
            await keeper.sweep(unattended=True)
            assert keeper.keys() == ["fifo"]
        finally:
            await keeper.pump.stop()
            os.close(rfd)

    run(main())


# ---------------------------------------------------------------------------- copy


def _copy_req(key: str, fifo: Path, log: Path, offset: int = 0, offset_file: Path | None = None) -> dict:
    return {
        "op": "hold",
        "key": key,
        "path": str(fifo),
        "log": str(log),
        "offset": offset,
        "offset_file": str(offset_file) if offset_file else None,
    }


def test_hold_with_a_log_copies_from_the_offset_and_commits_progress(tmp_path):
    async def main() -> None:
        fifo, log, off = tmp_path / "t.fifo", tmp_path / "guest-a.log", tmp_path / "console.offset"
        os.mkfifo(fifo)
        log.write_bytes(b"seen already\nnew 1\n")
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            resp = await keeper.answer(_copy_req("a", fifo, log, offset=13, offset_file=off))
            assert resp == {"ok": True, "offset": 13, "resumed": True, "fifo_open": True}
            await until(lambda: read_offset(str(off)) == log.stat().st_size)
            assert _read_all(rfd) == b"new 1\n"
            with open(log, "ab") as f:
                f.write(b"new 2\n")
            await until(lambda: read_offset(str(off)) == log.stat().st_size)
            assert _read_all(rfd) == b"new 2\n"
        finally:
            await keeper.pump.stop()
            os.close(rfd)

    run(main())


def test_re_hold_of_a_copied_key_is_a_no_op_keeping_the_keepers_progress(tmp_path):
    """A restarted plugin re-sends ``hold`` with whatever offset it read: the keeper's own stands."""

    async def main() -> None:
        fifo, log, off = tmp_path / "t.fifo", tmp_path / "guest-a.log", tmp_path / "console.offset"
        os.mkfifo(fifo)
        log.write_bytes(b"line 1\nline 2\n")
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            await keeper.answer(_copy_req("a", fifo, log, offset_file=off))
            await until(lambda: read_offset(str(off)) == 14)
            again = await keeper.answer(_copy_req("a", fifo, log, offset=0, offset_file=off))
            assert again == {"ok": True, "offset": 14, "resumed": False, "fifo_open": True}
            with open(log, "ab") as f:
                f.write(b"line 3\n")
            await until(lambda: read_offset(str(off)) == 21)
            assert _read_all(rfd) == b"line 1\nline 2\nline 3\n"
            assert keeper.keys() == ["a"]
        finally:
            await keeper.pump.stop()
            os.close(rfd)

    run(main())


def test_re_hold_after_the_fifo_was_made_anew_writes_into_the_new_one(tmp_path):
    """An agent restart gives the task a new FIFO at the same path; RecoverTask's re-sent hold
    moves the copy over to it, still from the keeper's own offset."""

    async def main() -> None:
        fifo, log = tmp_path / "t.fifo", tmp_path / "guest-a.log"
        os.mkfifo(fifo)
        log.write_bytes(b"one\n")
        old = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            await keeper.answer(_copy_req("a", fifo, log))
            got = bytearray()
            await until(lambda: got.extend(_read_all(old)) or bytes(got) == b"one\n")
            os.unlink(fifo)
            os.mkfifo(fifo)
            new = _reader(fifo)
            try:
                assert (await keeper.answer(_copy_req("a", fifo, log)))["resumed"] is False
                with open(log, "ab") as f:
                    f.write(b"two\n")
                got2 = bytearray()
                await until(lambda: got2.extend(_read_all(new)) or bytes(got2) == b"two\n")
            finally:
                os.close(new)
        finally:
            await keeper.pump.stop()
            os.close(old)

    run(main())


def test_a_new_keeper_resumes_from_the_recorded_offset(tmp_path):
    """The offset file, not the plugin's offset, says where a keeper (re)starts."""

    async def main() -> None:
        fifo, log, off = tmp_path / "t.fifo", tmp_path / "guest-a.log", tmp_path / "console.offset"
        os.mkfifo(fifo)
        log.write_bytes(b"old\nnew\n")
        off.write_text("4")
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            resp = await keeper.answer(_copy_req("a", fifo, log, offset=0, offset_file=off))
            assert resp["offset"] == 4
            await until(lambda: read_offset(str(off)) == 8)
            assert _read_all(rfd) == b"new\n"
        finally:
            await keeper.pump.stop()
            os.close(rfd)

    run(main())


def test_copy_refuses_a_missing_fifo_and_waits_for_a_reader(tmp_path):
    async def main() -> None:
        log = tmp_path / "guest-a.log"
        log.write_bytes(b"hello\n")
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            resp = await keeper.answer(_copy_req("a", tmp_path / "missing.fifo", log))
            assert resp["ok"] is False and "ENOENT" in resp["error"]
            assert keeper.keys() == []
            fifo = tmp_path / "later.fifo"
            os.mkfifo(fifo)
            resp = await keeper.answer(_copy_req("b", fifo, log))
            assert resp == {"ok": True, "offset": 0, "resumed": True, "fifo_open": False}  # no reader yet
            rfd = _reader(fifo)  # logmon starts
            try:
                got = bytearray()
                await until(lambda: got.extend(_read_all(rfd)) or bytes(got) == b"hello\n")
            finally:
                os.close(rfd)
        finally:
            await keeper.pump.stop()

    run(main())


def test_drain_answers_when_caught_up_or_at_its_timeout(tmp_path):
    async def main() -> None:
        fifo, log = tmp_path / "t.fifo", tmp_path / "guest-a.log"
        os.mkfifo(fifo)
        log.write_bytes(b"last words\n")
        keeper = Keeper(str(tmp_path / "k.sock"), pump=ConsolePump(tick_s=3600, safety_s=3600))  # drain does the work
        keeper.pump.start()
        try:
            await keeper.answer(_copy_req("a", fifo, log))  # no reader: nothing can be delivered
            resp = await keeper.answer({"op": "drain", "key": "a", "timeout": 0.2})
            assert resp == {"ok": True, "caught_up": False, "offset": 0}
            rfd = _reader(fifo)
            try:
                resp = await keeper.answer({"op": "drain", "key": "a", "timeout": 5})
                assert resp == {"ok": True, "caught_up": True, "offset": 11}
                assert _read_all(rfd) == b"last words\n"
            finally:
                os.close(rfd)
            assert (await keeper.answer({"op": "drain", "key": "nope"}))["ok"] is False
        finally:
            await keeper.pump.stop()

    run(main())


def test_release_stops_the_copy_and_closes_the_fifo(tmp_path):
    async def main() -> None:
        fifo, log = tmp_path / "t.fifo", tmp_path / "guest-a.log"
        os.mkfifo(fifo)
        log.write_bytes(b"x\n")
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            await keeper.answer(_copy_req("a", fifo, log))
            got = bytearray()
            await until(lambda: got.extend(_read_all(rfd)) or bytes(got) == b"x\n")
            assert not _eof(rfd)
            assert await keeper.answer({"op": "release", "key": "a"}) == {"ok": True}
            assert _eof(rfd)  # no writer left: logmon finishes
            assert keeper.keys() == []
            with open(log, "ab") as f:
                f.write(b"after release\n")
            await keeper.pump.pump_once()
            assert _read_all(rfd) == b""
        finally:
            await keeper.pump.stop()
            os.close(rfd)

    run(main())


# ---------------------------------------------------------------------------- the real process


def keeper_pids(socket_path: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"xen_driver.xen.fifokeeper" in argv and socket_path.encode() in argv:
                pids.append(int(entry))
    return pids


def gone(pid: int) -> bool:
    """The process has finished exiting (a zombie or reaped): its descriptors, the keeper's
    listening socket among them, are closed.  (Its command line empties earlier than that.)"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, reap it and close its stdout pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def kill_keepers(socket_path: str) -> None:
    for pid in keeper_pids(socket_path):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_client_starts_a_detached_keeper_that_outlives_it(tmp_path):
    run(_client_starts_a_detached_keeper(tmp_path))


async def _client_starts_a_detached_keeper(tmp_path):
    fifo = tmp_path / "task.stdout.fifo"
    os.mkfifo(fifo)
    rfd = _reader(fifo)
    client = FifoKeeperClient(tmp_path, python=sys.executable, idle_exit_s=1.0)
    try:
        client.hold("dom-b", str(fifo))
        await client.flush()
        assert (tmp_path / SOCKET_NAME).exists()
        await client.close()  # the plugin goes away; the keeper stays
        assert not _eof(rfd)
        again = FifoKeeperClient(tmp_path, idle_exit_s=1.0)  # a restarted plugin reaches the same keeper
        assert (await again.request({"op": "keys"}))["keys"] == ["dom-b"]
        again.release("dom-b")
        await again.flush()
        assert _eof(rfd)
        await again.close()
        # Holding nothing and with nobody connected, the keeper goes away by itself.
        await until(lambda: not (tmp_path / SOCKET_NAME).exists(), timeout=10)
    finally:
        os.close(rfd)
        kill_keepers(str(tmp_path / SOCKET_NAME))


def test_a_killed_keeper_is_restarted_by_the_plugin_and_resumes_from_its_offset(tmp_path):
    """Keeper SIGKILL at a quiet moment: the plugin's supervision starts a new keeper, which
    resumes from console.offset; meanwhile the plugin's own descriptor kept logmon reading."""
    run(_keeper_restart(tmp_path))


async def _keeper_restart(tmp_path):
    fifo, log, off = tmp_path / "t.fifo", tmp_path / "guest-a.log", tmp_path / "console.offset"
    os.mkfifo(fifo)
    log.write_bytes(b"before\n")
    rfd = _reader(fifo)
    sock = str(tmp_path / SOCKET_NAME)
    client = FifoKeeperClient(tmp_path, idle_exit_s=1.0, supervise_s=3600)  # check() by hand
    got = bytearray()
    try:
        resp = await client.copy("a", str(fifo), str(log), offset=0, offset_file=str(off))
        assert resp["ok"] is True
        await until(lambda: read_offset(str(off)) == 7)
        (pid,) = keeper_pids(sock)
        os.kill(pid, 9)
        await until(lambda: gone(pid))
        got += _read_all(rfd)
        assert not _eof(rfd)  # the plugin's own descriptor: logmon does not see end-of-file
        with open(log, "ab") as f:
            f.write(b"while no keeper ran\n")
        client._spawned_at = None  # the first keeper started a moment ago; a real one died later
        assert await client.check() == ["a"]
        await until(lambda: read_offset(str(off)) == log.stat().st_size, timeout=20)
        await until(lambda: got.extend(_read_all(rfd)) or len(got) >= log.stat().st_size)
        assert bytes(got) == b"before\nwhile no keeper ran\n"
        assert await client.drain("a", 5) is True
        client.release("a")
        await client.flush()
        assert _eof(rfd)
    finally:
        await client.close()
        os.close(rfd)
        kill_keepers(sock)


def test_copy_without_a_keeper_raises_for_the_caller_to_copy_itself(tmp_path):
    async def main() -> None:
        client = FifoKeeperClient(tmp_path, python="/nonexistent/python", connect_timeout_s=0.3)
        fifo = tmp_path / "t.fifo"
        os.mkfifo(fifo)
        with pytest.raises(OSError):
            await client.copy("a", str(fifo), str(tmp_path / "guest-a.log"))
        assert client.copies == {}
        assert await client.drain("a", 0.1) is False
        await client.close()

    run(main())


def test_a_release_after_a_copy_still_on_its_way_comes_second(tmp_path):
    """A task that ends while its copy request travels: the keeper must not be left copying."""

    async def main() -> None:
        fifo, log = tmp_path / "t.fifo", tmp_path / "guest-a.log"
        os.mkfifo(fifo)
        rfd = _reader(fifo)
        sock = str(tmp_path / SOCKET_NAME)
        client = FifoKeeperClient(tmp_path, idle_exit_s=1.0, supervise_s=3600)
        try:
            copy = asyncio.ensure_future(client.copy("a", str(fifo), str(log)))
            client.release("a", after=copy)
            await client.flush()
            assert copy.done() and copy.result()["ok"] is True
            assert client.copies == {}
            assert (await client.request({"op": "keys"}))["keys"] == []
            assert _eof(rfd)
        finally:
            await client.close()
            os.close(rfd)
            kill_keepers(sock)

    run(main())


def test_a_request_cancelled_mid_exchange_does_not_confuse_the_next(tmp_path):
    async def main() -> None:
        sock = str(tmp_path / SOCKET_NAME)
        client = FifoKeeperClient(tmp_path, idle_exit_s=1.0)
        try:
            assert (await client.request({"op": "keys"}))["keys"] == []
            slow = asyncio.ensure_future(client.request({"op": "hold", "key": "x", "path": os.devnull}))
            await asyncio.sleep(0)  # sent, answer not read yet
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert await client.request({"op": "keys"}) == {"ok": True, "keys": []}
        finally:
            await client.close()
            kill_keepers(sock)

    run(main())


# ---------------------------------------------------------------------------- Nomad's log files


def test_copy_into_nomads_log_files_rotates_resumes_and_goes_on_unattended(tmp_path):
    """``rotate``: the driver collects the task's logs itself (no logmon): the keeper writes
    ``<task>.stdout.<n>`` in the allocation's log directory, a new keeper resumes from the
    recorded offset into the newest file, and with no plugin connected the copy goes on (Nomad
    reads these files, nobody else does)."""

    async def main() -> None:
        logs, log, off = tmp_path / "alloc" / "logs", tmp_path / "guest-a.log", tmp_path / "console.offset"
        logs.mkdir(parents=True)
        base = logs / "web.stdout"
        log.write_bytes(b"line 1\nline 2\n")
        req = {**_copy_req("a", base, log, offset_file=off), "rotate": [2, 10]}
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            resp = await keeper.answer(req)
            assert resp == {"ok": True, "offset": 0, "resumed": True, "fifo_open": False}
            await until(lambda: read_offset(str(off)) == 14)
            await keeper.sweep(unattended=True)
            assert keeper.keys() == ["a"]
            again = await keeper.answer({**req, "offset": 0})
            assert again["resumed"] is False and again["offset"] == 14
        finally:
            await keeper.pump.stop()
        # A successor keeper (the first one died) resumes at the offset, into the newest file.
        with open(log, "ab") as f:
            f.write(b"line 3\n")
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            assert (await keeper.answer(req))["offset"] == 14
            await until(lambda: read_offset(str(off)) == 21)
        finally:
            await keeper.pump.stop()
        text = b"".join(
            (logs / f"web.stdout.{i}").read_bytes()
            for i in sorted(int(p.name.rsplit(".", 1)[1]) for p in logs.iterdir())
        )
        assert text.endswith(b"line 3\n") and text.count(b"line 3\n") == 1
        assert len(list(logs.iterdir())) <= 2  # at most max_files kept

    run(main())


def test_switching_to_driver_logs_goes_on_in_logmons_files_exactly_once(tmp_path):
    """The operator sets ``log_collection = "driver"`` and restarts the agent: the recovered task's
    copy request names Nomad's log files instead of the FIFO.  The keeper stops writing the FIFO
    and resumes from the recorded offset in the newest file logmon wrote, so the task's log goes
    on in the same file, without a gap or a repeat."""

    async def main() -> None:
        logs, log, off = tmp_path / "alloc" / "logs", tmp_path / "guest-a.log", tmp_path / "console.offset"
        logs.mkdir(parents=True)
        fifo = logs / ".web.stdout.fifo"
        os.mkfifo(fifo)
        log.write_bytes(b"line 1\nline 2\n")
        rfd = _reader(fifo)
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            assert (await keeper.answer(_copy_req("a", fifo, log, offset_file=off)))["ok"]
            await until(lambda: read_offset(str(off)) == 14)
            (logs / "web.stdout.0").write_bytes(_read_all(rfd))  # what logmon wrote
            with open(log, "ab") as f:
                f.write(b"line 3\n")  # printed while the agent restarts
            switched = {**_copy_req("a", logs / "web.stdout", log, offset_file=off), "rotate": [10, 1 << 20]}
            resp = await keeper.answer(switched)
            assert resp["ok"] and resp["offset"] == 14 and resp["resumed"], resp
            await until(lambda: read_offset(str(off)) == 21)
            assert _eof(rfd)  # the FIFO was let go: logmon's copy ends
            assert sorted(p.name for p in logs.iterdir()) == [".web.stdout.fifo", "web.stdout.0"]
            assert (logs / "web.stdout.0").read_bytes() == b"line 1\nline 2\nline 3\n"
        finally:
            await keeper.pump.stop()
            os.close(rfd)

    run(main())


def test_copy_into_log_files_refuses_a_missing_directory_and_ends_when_it_goes(tmp_path):
    async def main() -> None:
        logs, log = tmp_path / "alloc" / "logs", tmp_path / "guest-a.log"
        log.write_bytes(b"x\n")
        keeper = _keeper(tmp_path)
        keeper.pump.start()
        try:
            refused = await keeper.answer({**_copy_req("a", logs / "web.stdout", log), "rotate": [3, 100]})
            assert refused["ok"] is False and "ENOENT" in refused["error"]
            logs.mkdir(parents=True)
            assert (await keeper.answer({**_copy_req("a", logs / "web.stdout", log), "rotate": [3, 100]}))["ok"]
            await until(lambda: (logs / "web.stdout.0").exists() and (logs / "web.stdout.0").read_bytes() == b"x\n")
            for p in logs.iterdir():
                p.unlink()
            logs.rmdir()  # Nomad collected the allocation
            await keeper.sweep()
            assert keeper.keys() == []
        finally:
            await keeper.pump.stop()

    run(main())
