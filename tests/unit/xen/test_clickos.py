"""ClickOS configuration push: chunking and the XenStore layout, against the fake xenstored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.xen.xen_fakes import FakeXenstored
from xen_driver.xen.clickos import (
    ClickLayout,
    ClickOSError,
    halt,
    push_config,
    read_config,
    read_status,
    split_chunks,
    wait_status,
)
from xen_driver.xen.xenstore import XenStore


@pytest.mark.parametrize(
    ("size", "chunk", "expected"),
    [
        (0, 992, [0]),
        (1, 992, [1]),
        (992, 992, [992]),
        (993, 992, [992, 1]),
        (2500, 992, [992, 992, 516]),
        (1024, 512, [512, 512]),
        (1025, 512, [512, 512, 1]),
    ],
)
def test_split_chunks(size: int, chunk: int, expected: list[int]) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    parts = split_chunks(data[:size], chunk)
    assert [len(p) for p in parts] == expected
    assert b"".join(parts) == data[:size]


def test_layouts() -> None:
    assert ClickLayout.COSMOS.chunk_size == 992 and ClickLayout.CLICKOS_CTL.chunk_size == 512
    assert ClickLayout.COSMOS.base_path(7, 0) == "/local/domain/7/clickos/0"
    assert ClickLayout.CLICKOS_CTL.base_path(7, 1) == "/local/domain/7/data/clickos/1"
    assert (ClickLayout.COSMOS.halted_status, ClickLayout.CLICKOS_CTL.halted_status) == ("Halted", "Stopped")
    assert ClickLayout("clickos-ctl") is ClickLayout.CLICKOS_CTL


CONFIG = "in :: FromDevice(0);\nout :: ToDevice(0);\n" + "// padding line\n" * 150  # > 2 chunks


def run(tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        server = await FakeXenstored(str(tmp_path / "xs.sock")).start()
        async with XenStore(server.path) as xs:
            await xs.write("/local/domain/7/name", "ndx-click")
            await asyncio.wait_for(body(server, xs), 10)
        await server.stop()

    asyncio.run(main())


def test_cosmos_push_layout_perms_and_one_transaction(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        status_watch = await xs.watch("/local/domain/7/clickos/0/status")
        await status_watch.get()
        commits = server.commits
        res = await push_config(xs, 7, CONFIG, config_name="fw.click")
        assert server.commits == commits + 1
        assert res.bytes_pushed == len(CONFIG) and res.chunks == -(-len(CONFIG) // 992) == 3
        base = "/local/domain/7/clickos/0"
        assert res.base_path == base and res.duration_s >= 0
        assert await xs.directory(f"{base}/config") == ["0", "1", "2"]
        assert len(await xs.read(f"{base}/config/0")) == 992
        assert await read_config(xs, 7) == CONFIG.encode()
        assert await xs.read(f"{base}/config_name") == b"fw.click"
        assert await read_status(xs, 7) == "Running"
        assert await xs.get_perms(base) == ["n0", "r7"]
        assert await xs.get_perms(f"{base}/control") == ["n7"]
        assert await xs.get_perms(f"{base}/elements") == ["n7"]
        # The guest's status watch fires once, when the complete config is already there.
        assert (await status_watch.get()).path == f"{base}/status"

        # A shorter second push leaves no stale chunks behind.
        await push_config(xs, 7, "short")
        assert await xs.directory(f"{base}/config") == ["0"]
        assert await read_config(xs, 7) == b"short"
        await halt(xs, 7)
        assert await read_status(xs, 7) == "Halted"

    run(tmp_path, body)


def test_clickos_ctl_layout(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        res = await push_config(xs, 7, CONFIG, layout=ClickLayout.CLICKOS_CTL, router_id=2, start=False)
        base = "/local/domain/7/data/clickos/2"
        assert res.chunks == -(-len(CONFIG) // 512)
        assert len(await xs.read(f"{base}/config/0")) == 512
        assert await read_config(xs, 7, layout=ClickLayout.CLICKOS_CTL, router_id=2) == CONFIG.encode()
        assert await read_status(xs, 7, layout=ClickLayout.CLICKOS_CTL, router_id=2) is None  # start=False
        await halt(xs, 7, layout=ClickLayout.CLICKOS_CTL, router_id=2)
        assert await xs.read(f"{base}/status") == b"Stopped"

    run(tmp_path, body)


def test_push_to_missing_domain_creates_nothing(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        with pytest.raises(ClickOSError, match="domain 9"):
            await push_config(xs, 9, "x")
        assert await xs.read_or_none("/local/domain/9") is None

    run(tmp_path, body)


def test_wait_status_uses_watch(tmp_path: Path) -> None:
    async def body(server: FakeXenstored, xs: XenStore) -> None:
        await push_config(xs, 7, "cfg", start=False)

        async def guest_reports() -> None:
            await asyncio.sleep(0.05)
            await xs.write("/local/domain/7/clickos/0/status", "Running")

        task = asyncio.create_task(guest_reports())
        assert await wait_status(xs, 7, {"Running", "Error"}, 2) == "Running"
        await task
        with pytest.raises(ClickOSError, match="did not become"):
            await wait_status(xs, 7, {"Halted"}, 0.1)
        assert server.watches == []  # watches are cleaned up

    run(tmp_path, body)
