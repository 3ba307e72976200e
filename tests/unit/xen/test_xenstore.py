"""XenStore client against an in-test xenstored speaking the real wire format."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.unit.xen.xen_fakes import FakeXenstored
from xen_driver.xen.xenstore import HEADER, Op, WatchEvent, XenStore, XenStoreClosed, XenStoreError


def run(tmp_path: Path, body: Callable[[FakeXenstored, XenStore], Awaitable[None]], **client_kw: object) -> None:
    async def main() -> None:
        server = await FakeXenstored(str(tmp_path / "xs.sock")).start()
        client = XenStore(server.path, **client_kw)  # type: ignore[arg-type]
        await client.connect()
        try:
            await asyncio.wait_for(body(server, client), 10)
        finally:
            await client.close()
            await server.stop()

    asyncio.run(main())


def test_wire_numbers_match_xs_wire_h() -> None:
    assert (Op.DIRECTORY, Op.READ, Op.WATCH, Op.TRANSACTION_START, Op.TRANSACTION_END) == (1, 2, 4, 6, 7)
    assert (Op.GET_DOMAIN_PATH, Op.WRITE, Op.MKDIR, Op.RM, Op.SET_PERMS) == (10, 11, 12, 13, 14)
    assert (Op.WATCH_EVENT, Op.ERROR, Op.RESET_WATCHES, Op.DIRECTORY_PART) == (15, 16, 21, 22)
    assert HEADER.size == 16 and HEADER.pack(2, 7, 0, 3) == struct.pack("<4I", 2, 7, 0, 3)


def test_read_write_directory_perms_and_framing(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        await xs.write("/local/domain/5/name", "guest")
        await xs.write("/local/domain/5/data/bin", b"a\x00b")
        assert await xs.read("/local/domain/5/name") == b"guest"
        assert await xs.read("/local/domain/5/data/bin") == b"a\x00b"  # values may hold NULs
        assert await xs.directory("/local/domain/5") == ["data", "name"]
        await xs.set_perms("/local/domain/5/name", ["n0", "r5"])
        assert await xs.get_perms("/local/domain/5/name") == ["n0", "r5"]
        assert await xs.get_domain_path(5) == "/local/domain/5"
        # Exact bytes on the wire: WRITE = path NUL value (no trailing NUL), little-endian header.
        mtype, req, tx, payload = server.requests[0]
        assert (mtype, tx, payload) == (Op.WRITE, 0, b"/local/domain/5/name\x00guest")
        assert req != 0
        await xs.rm("/local/domain/5")
        assert await xs.read_or_none("/local/domain/5/name") is None
        await xs.rm("/local/domain/5")  # missing is fine by default
        with pytest.raises(XenStoreError) as info:
            await xs.read("/nope")
        assert info.value.errno_name == "ENOENT" and info.value.path == "/nope"

    run(tmp_path, body)


def test_requests_are_multiplexed_by_req_id(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        await xs.write("/slow", "s")
        await xs.write("/fast", "f")
        server.delay_reads["/slow"] = 0.3
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        slow = asyncio.create_task(xs.read("/slow"))
        await asyncio.sleep(0.01)
        assert await xs.read("/fast") == b"f"  # answered while /slow is still pending
        assert loop.time() - t0 < 0.25
        assert await slow == b"s"
        req_ids = [r[1] for r in server.requests]
        assert len(set(req_ids)) == len(req_ids)

    run(tmp_path, body)


def test_watch_initial_event_and_changes(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        watch = await xs.watch("/local/domain/7/clickos", token="tok")
        assert await watch.get() == WatchEvent("/local/domain/7/clickos", "tok")  # fired once at once
        await xs.write("/local/domain/7/clickos/0/status", "Running")
        assert (await watch.get()).path == "/local/domain/7/clickos/0/status"
        await xs.write("/elsewhere", "x")
        await asyncio.sleep(0.05)
        assert watch.pending() == 0
        await watch.close()
        await xs.write("/local/domain/7/clickos/0/status", "Halted")
        await asyncio.sleep(0.05)
        assert watch.pending() == 0
        assert server.watches == []
        with pytest.raises(ValueError):
            await xs.watch("relative/path")

    run(tmp_path, body)


def test_release_domain_special_watch(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        watch = await xs.watch("@releaseDomain")
        await watch.get()
        server.fire_special("@releaseDomain")
        event = await watch.get()
        assert event.path == "@releaseDomain"

    run(tmp_path, body)


def test_error_reply_and_oversized_payload(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        with pytest.raises(XenStoreError) as info:
            await xs.write("/big", b"x" * 5000)
        assert info.value.errno_name == "E2BIG"
        assert server.requests == []  # never sent: xenstored would drop the connection
        with pytest.raises(XenStoreError) as info2:
            await xs.directory("/missing")
        assert info2.value.errno_name == "ENOENT"
        assert xs.connected

    run(tmp_path, body)


def test_transaction_commit_abort_and_retry(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        async with xs.transaction() as tx:
            await tx.write("/a", "1")
            await tx.write("/b", "2")
            assert await xs.read_or_none("/a") is None  # invisible before commit
        assert await xs.read("/a") == b"1" and server.commits == 1

        with pytest.raises(RuntimeError):
            async with xs.transaction() as tx:
                await tx.write("/c", "3")
                raise RuntimeError("boom")
        assert await xs.read_or_none("/c") is None and server.commits == 1

        attempts = 0

        async def body_fn(tx):  # type: ignore[no-untyped-def]
            nonlocal attempts
            attempts += 1
            await tx.write("/d", str(attempts))
            return attempts

        server.fail_commits = 2
        assert await xs.run_transaction(body_fn) == 3
        assert await xs.read("/d") == b"3"

    run(tmp_path, body)


def test_reconnects_and_rewatches(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        watch = await xs.watch("/w")
        await watch.get()
        server.drop_clients()
        # A request during the outage either fails cleanly or succeeds after the reconnect.
        for _ in range(100):
            try:
                await xs.write("/w/x", "1")
                break
            except XenStoreClosed:
                await asyncio.sleep(0.02)
        assert xs.reconnects == 1
        # The re-registered watch got a synthetic event, then real ones again.
        seen = {(await watch.get()).path for _ in range(2)}
        assert "/w" in seen
        await xs.write("/w/y", "2")
        while (await watch.get()).path != "/w/y":
            pass

    run(tmp_path, body, reconnect_delay_s=0.01)


def test_connect_failure_is_precise(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(XenStoreClosed) as info:
            await XenStore(str(tmp_path / "none.sock")).connect()
        assert "none.sock" in str(info.value)

    asyncio.run(main())


def test_cancelled_request_leaves_no_pending_state(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        await xs.write("/slow", "s")
        server.delay_reads["/slow"] = 0.3
        task = asyncio.create_task(xs.read("/slow"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert xs._pending == {}
        await asyncio.sleep(0.4)  # the late reply is dropped quietly
        assert await xs.read("/slow") == b"s"

    run(tmp_path, body)


def test_find_domid_reads_names_newest_first(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        for domid, name in ((0, "Domain-0"), (3, "old-guest"), (12, "new-guest"), (7, "other")):
            await xs.write(f"/local/domain/{domid}/name", name)
        before = len(server.requests)
        assert await xs.find_domid("new-guest") == 12
        # newest domid first: one DIRECTORY and one READ find a just-created guest
        assert len(server.requests) - before == 2
        assert await xs.find_domid("old-guest") == 3
        assert await xs.find_domid("Domain-0") == 0
        assert await xs.find_domid("missing") is None

    run(tmp_path, body)


def test_directory_longer_than_one_message_is_read_in_parts(tmp_path: Path) -> None:
    """xenstored answers E2BIG when a directory does not fit in 4096 bytes (/local/domain of
    about a thousand guests once domids have five digits); the client then reads it with
    DIRECTORY_PART, and find_domid keeps working."""

    async def body(server: FakeXenstored, xs: XenStore) -> None:
        domids = list(range(10000, 11200))  # 1200 five-digit domids: ~7 KB of names
        for domid in domids:
            server._ensure(server.nodes, f"/local/domain/{domid}/name")
            server.nodes[f"/local/domain/{domid}/name"].value = f"g{domid}".encode()
        children = await xs.directory("/local/domain")
        assert sorted(int(c) for c in children) == domids
        assert any(r[0] == Op.DIRECTORY_PART for r in server.requests)
        assert await xs.find_domid("g11199") == 11199

    run(tmp_path, body)


def test_directory_read_in_parts_restarts_when_the_node_changes(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        for domid in range(10000, 11200):
            server._ensure(server.nodes, f"/local/domain/{domid}")
        real = server._handle
        changed = []

        def handle(writer, mtype, tx, path, parts, payload):  # type: ignore[no-untyped-def]
            reply = real(writer, mtype, tx, path, parts, payload)
            if mtype == Op.DIRECTORY_PART and not changed:  # a domain appears between two parts
                changed.append(1)
                server._ensure(server.nodes, "/local/domain/99999")
                server.generation += 1
            return reply

        server._handle = handle  # type: ignore[method-assign]
        children = await xs.directory("/local/domain")
        assert "99999" in children and len(children) == 1201

    run(tmp_path, body)
