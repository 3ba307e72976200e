"""StopTask while the guest's own exit is still being torn down (found by the conformance suite).

On the testbed the guest powered off 2 s after the shutdown request, but destroying the shut-down
domain (the watcher's clean-up) took 12 s under emulation; StopTask's timeout (the job's 10 s
kill_timeout) ran out meanwhile, it declared the guest stubborn and ran a second `xl destroy`
against the domain being destroyed, which failed, so Nomad got INTERNAL from StopTask.
"""

from __future__ import annotations

import asyncio
import signal

from tests.unit.driver.test_lifecycle import FakeXen, _lifecycle, host, make_spec  # noqa: F401  (host is a fixture)
from xen_driver.driver.state import DriverState
from xen_driver.xen.xl import XlError


class SlowTeardownXen(FakeXen):
    """Destroying a shut-down domain takes a while; a second destroy meanwhile fails like libxl."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.destroying: set[str] = set()

    async def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        if name in self.destroying:
            raise XlError(["xl", "destroy", name], 1, "libxl: error: unable to get args/env to execute hotplug script")
        self.destroying.add(name)
        try:
            await asyncio.sleep(1.0)
            self.domains.pop(name, None)
        finally:
            self.destroying.discard(name)


async def test_stop_does_not_force_a_guest_whose_exit_is_being_torn_down(host):
    tmp_path, config, plain = host
    fake = SlowTeardownXen(plain.console_dir)
    lc = await _lifecycle(config, fake)
    try:
        spec = make_spec(tmp_path)
        handle = await lc.start_task(spec)
        name = DriverState.decode(handle.driver_state).domain_name
        # The guest powers off at once; the stop timeout ends while its domain is being destroyed.
        await lc.stop_task(spec.id, 0.5, "SIGTERM")
        result = await asyncio.wait_for(lc.wait_task(spec.id), 10)
        assert result.exit_code == 0 and result.signal == signal.SIGTERM
        assert fake.calls.count(("destroy", name)) == 1, fake.calls
        assert name not in fake.domains
    finally:
        await lc.close()
