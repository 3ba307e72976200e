"""The FIFO keeper: Nomad's log reader must not see end-of-file when the plugin dies."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from xen_driver.xen.fifokeeper import SOCKET_NAME, FifoKeeperClient, Keeper


def _reader(path) -> int:
    """Open the FIFO the way logmon does, but without blocking this test."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def _eof(fd: int) -> bool:
    """True if the FIFO reads end-of-file (no writer left); False if it would block."""
    try:
        return os.read(fd, 4096) == b""
    except BlockingIOError:
        return False


def test_keeper_holds_the_write_end_until_released(tmp_path):
    fifo = tmp_path / "t.stdout.fifo"
    os.mkfifo(fifo)
    rfd = _reader(fifo)
    keeper = Keeper(str(tmp_path / "k.sock"))
    try:
        plugin_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        assert keeper.answer({"op": "hold", "key": "dom-a", "path": str(fifo)}) == {"ok": True}
        os.write(plugin_fd, b"tick 1\n")
        os.close(plugin_fd)  # the plugin dies
        assert os.read(rfd, 100) == b"tick 1\n"
        assert not _eof(rfd)  # logmon would keep reading
        assert keeper.answer({"op": "keys"}) == {"ok": True, "keys": ["dom-a"]}
        assert keeper.answer({"op": "release", "key": "dom-a"}) == {"ok": True}
        assert _eof(rfd)
    finally:
        os.close(rfd)


def test_keeper_refuses_a_fifo_without_reader_and_ignores_plain_files(tmp_path):
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    keeper = Keeper(str(tmp_path / "k.sock"))
    resp = keeper.answer({"op": "hold", "key": "x", "path": str(fifo)})
    assert resp["ok"] is False and "ENXIO" in resp["error"]
    plain = tmp_path / "stdout.log"
    plain.write_bytes(b"")
    assert keeper.answer({"op": "hold", "key": "y", "path": str(plain)}) == {"ok": True}
    assert keeper.answer({"op": "keys"})["keys"] == []
    assert keeper.answer({"op": "bogus"})["ok"] is False


def test_keeper_lets_go_of_fifos_whose_file_was_removed(tmp_path):
    fifo = tmp_path / "gc.fifo"
    os.mkfifo(fifo)
    rfd = _reader(fifo)
    try:
        keeper = Keeper(str(tmp_path / "k.sock"))
        keeper.answer({"op": "hold", "key": "gone", "path": str(fifo)})
        keeper.sweep()
        assert keeper.answer({"op": "keys"})["keys"] == ["gone"]
        os.unlink(fifo)  # Nomad garbage-collected the allocation
        keeper.sweep()
        assert keeper.answer({"op": "keys"})["keys"] == []
    finally:
        os.close(rfd)


def test_client_starts_a_detached_keeper_that_outlives_it(tmp_path):
    asyncio.run(asyncio.wait_for(_client_starts_a_detached_keeper(tmp_path), 30))


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
        for _ in range(100):
            if not (tmp_path / SOCKET_NAME).exists():
                break
            await asyncio.sleep(0.1)
        assert not (tmp_path / SOCKET_NAME).exists()
    finally:
        os.close(rfd)
