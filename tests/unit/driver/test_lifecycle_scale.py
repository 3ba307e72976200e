"""What a start costs when many guests already run: nothing that walks every task."""

from __future__ import annotations

from tests.unit.driver.test_lifecycle import _lifecycle, host, make_spec  # noqa: F401 - host is a fixture


async def test_a_start_without_vifs_does_not_walk_every_task(host):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)

    def walk():  # the MACs of every running task: only needed to derive a vif's MAC
        raise AssertionError("a start without vifs walked every task")

    lc._macs_in_use = walk
    try:
        await lc.start_task(make_spec(tmp_path))
    finally:
        await lc.close()
