"""ConsolePump with real files and a real FIFO: offsets, resume, truncation, rotation, markers."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from xen_driver.xen.console import ConsolePump, FifoSink, MemorySink, SinkUnavailable


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


async def until(cond, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_log_path() -> None:
    assert ConsolePump.log_path("/var/log/xen/console", "ndx-a") == "/var/log/xen/console/guest-ndx-a.log"


def test_streams_new_bytes_and_commits_offsets(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"
    commits: list[int] = []

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            sink = MemorySink()
            stream = pump.add("a", log, sink, on_commit=commits.append)
            await asyncio.sleep(0.05)  # file does not exist yet: nothing happens, nothing breaks
            assert stream.offset == 0
            append(log, b"hello\n")
            await until(lambda: bytes(sink.data) == b"hello\n")
            append(log, b"world\n")
            await until(lambda: bytes(sink.data) == b"hello\nworld\n")
            assert stream.offset == 12 and commits[-1] == 12
            assert commits == sorted(commits)

    asyncio.run(main())


def test_resume_from_offset_neither_duplicates_nor_loses(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"
    append(log, b"line1\nline2\n")

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            first = MemorySink()
            s1 = pump.add("a", log, first)
            await until(lambda: s1.offset == 12)
            saved = s1.offset
            await pump.remove("a")
        append(log, b"line3\n")  # written while "the plugin was down"
        async with ConsolePump(tick_s=0.02) as pump:
            second = MemorySink()
            s2 = pump.add("a", log, second, offset=saved)
            await until(lambda: s2.offset == 18)
            assert bytes(first.data) + bytes(second.data) == log.read_bytes()
            assert bytes(second.data) == b"line3\n"

    asyncio.run(main())


def test_truncation_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"
    append(log, b"0123456789")

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            sink = MemorySink()
            stream = pump.add("a", log, sink)
            await until(lambda: stream.offset == 10)
            log.write_bytes(b"new\n")  # truncate + rewrite, shorter than before
            await until(lambda: bytes(sink.data).endswith(b"new\n"))
            assert stream.truncations == 1 and stream.offset == 4
            assert bytes(sink.data) == b"0123456789new\n"

    asyncio.run(main())


def test_stale_offset_after_restart_is_treated_as_truncation(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"
    append(log, b"abc")

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            sink = MemorySink()
            stream = pump.add("a", log, sink, offset=1000)
            await until(lambda: bytes(sink.data) == b"abc")
            assert stream.truncations == 1

    asyncio.run(main())


def test_rotation_drains_old_file_then_follows_new(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"
    append(log, b"old-1\n")

    async def main() -> None:
        pump = ConsolePump(tick_s=10)  # driven by hand for determinism
        sink = MemorySink()
        stream = pump.add("a", log, sink)
        await pump.pump_once()
        assert bytes(sink.data) == b"old-1\n"
        append(log, b"old-2\n")  # written just before the rotation
        os.rename(log, tmp_path / "guest-a.log.1")
        append(log, b"new-1\n")
        for _ in range(3):
            await pump.pump_once()
        assert bytes(sink.data) == b"old-1\nold-2\nnew-1\n"
        assert stream.rotations == 1 and stream.offset == 6
        await pump.stop()

    asyncio.run(main())


def test_wait_for_marker_without_rereading(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            stream = pump.add("a", log, MemorySink())
            append(log, b"ndx-unikernel 0.1 booting domid=3\n")
            await until(lambda: stream.read_offset > 0)
            # Already read before wait_for was called: found in the history.
            end = await stream.wait_for("booting domid=", 1)
            assert end == len(b"ndx-unikernel 0.1 booting domid=")

            async def later() -> None:
                await asyncio.sleep(0.05)
                append(log, b"NDX-GUE")
                await asyncio.sleep(0.08)  # split across two pump reads
                append(log, b"ST READY\n")

            task = asyncio.create_task(later())
            end = await stream.wait_for(b"NDX-GUEST READY", 2, since=stream.read_offset)
            await task
            assert log.read_bytes()[:end].endswith(b"NDX-GUEST READY")
            with pytest.raises(TimeoutError):
                await stream.wait_for("never printed", 0.1)

    asyncio.run(main())


def test_wait_for_since_skips_older_output(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"
    append(log, b"READY (previous boot)\n")

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            stream = pump.add("a", log, MemorySink())
            await until(lambda: stream.read_offset == 22)
            with pytest.raises(TimeoutError):
                await stream.wait_for("READY", 0.1, since=22)
            append(log, b"READY\n")
            assert await stream.wait_for("READY", 1, since=22) == 27

    asyncio.run(main())


class FifoReader(threading.Thread):
    """A real reader on the other end of a FIFO, like Nomad's logmon."""

    def __init__(self, path: Path, stop_after: int | None = None):
        super().__init__(daemon=True)
        self.path = path
        self.stop_after = stop_after
        self.data = bytearray()

    def run(self) -> None:
        with open(self.path, "rb", buffering=0) as fh:
            while True:
                chunk = fh.read(4096)
                if not chunk:
                    return
                self.data += chunk
                if self.stop_after is not None and len(self.data) >= self.stop_after:
                    return


def test_fifo_sink_without_reader_keeps_bytes_and_offset(tmp_path: Path) -> None:
    fifo = tmp_path / "task.stdout.fifo"
    os.mkfifo(fifo)
    log = tmp_path / "guest-a.log"
    append(log, b"early output\n")

    async def main() -> None:
        sink = FifoSink(fifo)
        with pytest.raises(SinkUnavailable):
            await sink.write(b"x")  # no reader: refused without blocking the loop
        async with ConsolePump(tick_s=0.02) as pump:
            stream = pump.add("a", log, FifoSink(fifo))
            await asyncio.sleep(0.15)
            assert stream.offset == 0 and stream.sink_errors >= 1
            reader = FifoReader(fifo, stop_after=13)
            reader.start()
            await until(lambda: stream.offset == 13)
            await asyncio.to_thread(reader.join, 2)
            assert bytes(reader.data) == b"early output\n"

    asyncio.run(main())


def test_fifo_reader_restart_epipe_then_reopen(tmp_path: Path) -> None:
    fifo = tmp_path / "task.stdout.fifo"
    os.mkfifo(fifo)
    log = tmp_path / "guest-a.log"

    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            stream = pump.add("a", log, FifoSink(fifo))
            first = FifoReader(fifo, stop_after=6)
            first.start()
            append(log, b"one-1\n")
            await until(lambda: stream.offset == 6)
            await asyncio.to_thread(first.join, 2)  # logmon "restarts": reader gone
            append(log, b"two-2\n")
            await until(lambda: stream.sink_errors >= 1)
            assert stream.offset == 6  # not committed while undeliverable
            second = FifoReader(fifo, stop_after=6)
            second.start()
            await until(lambda: stream.offset == 12, timeout=8)
            await asyncio.to_thread(second.join, 2)
            assert bytes(first.data) == b"one-1\n" and bytes(second.data) == b"two-2\n"

    asyncio.run(main())


def test_many_streams_share_one_task(tmp_path: Path) -> None:
    async def main() -> None:
        async with ConsolePump(tick_s=0.02) as pump:
            sinks = {}
            for i in range(50):
                sinks[i] = MemorySink()
                pump.add(f"g{i}", tmp_path / f"guest-g{i}.log", sinks[i])
            tasks_before = len(asyncio.all_tasks())
            for i in range(50):
                append(tmp_path / f"guest-g{i}.log", f"guest {i}\n".encode())
            await until(lambda: all(bytes(s.data) == f"guest {i}\n".encode() for i, s in sinks.items()))
            assert len(asyncio.all_tasks()) == tasks_before

    asyncio.run(main())


def test_drain_delivers_everything_before_remove(tmp_path: Path) -> None:
    log = tmp_path / "guest-a.log"

    async def main() -> None:
        pump = ConsolePump(tick_s=10)  # the loop is not running: drain must do the work
        sink = MemorySink()
        pump.add("a", log, sink)
        append(log, b"x" * 100_000)
        removed = await pump.remove("a", drain_timeout_s=2)
        assert removed is not None and removed.offset == 100_000
        assert len(sink.data) == 100_000

    asyncio.run(main())


def test_idle_consoles_are_not_read_and_a_write_reads_only_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump reads a console when inotify says it changed, not every file every tick."""
    from xen_driver.xen import console

    reads: list[str] = []
    real = console.ConsoleStream._read_new

    def counting(self, max_bytes):  # type: ignore[no-untyped-def]
        reads.append(self.name)
        return real(self, max_bytes)

    monkeypatch.setattr(console.ConsoleStream, "_read_new", counting)

    async def main() -> None:
        async with ConsolePump(tick_s=0.01, safety_s=3600) as pump:
            sinks = {}
            for i in range(200):
                append(tmp_path / f"guest-g{i}.log", b"boot\n")
                sinks[i] = MemorySink()
                pump.add(f"g{i}", tmp_path / f"guest-g{i}.log", sinks[i])
            await until(lambda: all(bytes(s.data) == b"boot\n" for s in sinks.values()))
            settled = len(reads)
            await asyncio.sleep(0.3)  # 30 ticks of a polling pump: 6000 reads
            assert len(reads) - settled == 0
            append(tmp_path / "guest-g7.log", b"late\n")
            await until(lambda: bytes(sinks[7].data) == b"boot\nlate\n", timeout=2)
            assert set(reads[settled:]) == {"g7"}

    asyncio.run(main())


def test_rotation_and_a_new_file_are_seen_through_directory_events(tmp_path: Path) -> None:
    log = tmp_path / "guest-r.log"

    async def main() -> None:
        async with ConsolePump(tick_s=3600, safety_s=3600) as pump:  # no polling at all
            sink = MemorySink()
            pump.add("r", log, sink)
            await asyncio.sleep(0.05)
            append(log, b"first\n")  # created after the stream was added
            await until(lambda: bytes(sink.data) == b"first\n")
            os.rename(log, tmp_path / "guest-r.log.1")
            append(log, b"second\n")
            await until(lambda: bytes(sink.data) == b"first\nsecond\n")

    asyncio.run(main())


def test_console_in_a_directory_that_appears_later_is_polled(tmp_path: Path) -> None:
    later = tmp_path / "not-yet"
    log = later / "guest-p.log"

    async def main() -> None:
        async with ConsolePump(tick_s=0.02, safety_s=3600) as pump:
            sink = MemorySink()
            pump.add("p", log, sink)
            later.mkdir()
            append(log, b"hello\n")
            await until(lambda: bytes(sink.data) == b"hello\n")

    asyncio.run(main())


def test_a_stalled_reader_of_one_task_never_delays_another(tmp_path: Path) -> None:
    """One task's logmon stops reading (its FIFO fills up); another task's console still flows.

    The stalled sink may wait an hour for its reader: if its write held up the shared pass, the
    other task's boot marker would never arrive before this test's deadline."""
    stalled_fifo, live_fifo = tmp_path / "stalled.fifo", tmp_path / "live.fifo"
    os.mkfifo(stalled_fifo)
    os.mkfifo(live_fifo)
    stalled_log, live_log = tmp_path / "guest-stalled.log", tmp_path / "guest-live.log"
    append(stalled_log, b"")
    append(live_log, b"")

    async def main() -> None:
        # A reader that opens the stalled FIFO and never reads: writes succeed until the pipe is full.
        holder = os.open(stalled_fifo, os.O_RDONLY | os.O_NONBLOCK)
        live = FifoReader(live_fifo, stop_after=len(b"NDX-GUEST READY\n"))
        live.start()
        try:
            async with ConsolePump(tick_s=0.02) as pump:
                stalled = pump.add("stalled", stalled_log, FifoSink(stalled_fifo, write_timeout_s=3600))
                stream = pump.add("live", live_log, FifoSink(live_fifo))
                append(stalled_log, b"x" * (1 << 20))  # far more than a pipe holds
                await until(lambda: stalled.sink_errors >= 1, timeout=20)  # the pipe is full now
                append(live_log, b"NDX-GUEST READY\n")
                await stream.wait_for(b"NDX-GUEST READY", timeout_s=20)
                await until(lambda: stream.offset == len(b"NDX-GUEST READY\n"), timeout=20)
                await asyncio.to_thread(live.join, 5)
                assert bytes(live.data) == b"NDX-GUEST READY\n"
                assert stalled.offset < (1 << 20)  # still behind, nothing lost: the rest is pending
        finally:
            os.close(holder)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_safety_pass_over_idle_consoles_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass that covers missed events looks at each file's size; it reads none that did not grow."""
    from xen_driver.xen import console

    async def main() -> None:
        pump = ConsolePump(tick_s=3600, safety_s=3600)  # driven by hand
        sinks = []
        for i in range(50):
            append(tmp_path / f"guest-g{i}.log", b"boot\n")
            sinks.append(MemorySink())
            pump.add(f"g{i}", tmp_path / f"guest-g{i}.log", sinks[-1])
        await pump.pump_once()
        assert all(bytes(s.data) == b"boot\n" for s in sinks)
        reads = []
        real = console.os.pread
        monkeypatch.setattr(console.os, "pread", lambda *a: reads.append(a) or real(*a))
        await pump.pump_once()
        assert reads == []
        await pump.stop()

    asyncio.run(main())
