"""StartTask when the plugin runs out of file descriptors: a plain error, nothing left behind."""

from __future__ import annotations

import errno

import pytest

from tests.unit.driver.test_lifecycle import _leftovers, _lifecycle, host, make_spec  # noqa: F401  (fixture)
from xen_driver.driver.errors import RecoverableError
from xen_driver.driver.models import TaskState
from xen_driver.xen import fdlimit

FD_MESSAGE = r"^out of file descriptors \(\d+ open, limit \d+\): raise LimitNOFILE"


async def test_start_that_runs_out_of_descriptors_says_so(host):
    tmp_path, config, fake = host

    async def create_domain(spec, *, paused=True, background=False, phases=None):
        raise OSError(errno.EMFILE, "Too many open files")

    fake.create_domain = create_domain
    lc = await _lifecycle(config, fake)
    try:
        with pytest.raises(RecoverableError, match=FD_MESSAGE) as err:
            await lc.start_task(make_spec(tmp_path))
        assert err.value.recoverable and "toolstack" not in str(err.value)
        assert _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()


async def test_start_is_refused_before_the_running_guests_would_starve(host, monkeypatch):
    tmp_path, config, fake = host
    lc = await _lifecycle(config, fake)
    try:
        monkeypatch.setattr(fdlimit, "spare", lambda wanted: False)
        with pytest.raises(RecoverableError, match=FD_MESSAGE):
            await lc.start_task(make_spec(tmp_path))
        assert not [c for c in fake.calls if c[0] == "create"] and _leftovers(tmp_path, fake) == []
        monkeypatch.undo()
        spec = make_spec(tmp_path)
        handle = await lc.start_task(spec)  # descriptors free again: it starts
        assert handle.state is TaskState.RUNNING and len(fake.domains) == 1
        await lc.destroy_task(spec.id, True)
        assert _leftovers(tmp_path, fake) == []
    finally:
        await lc.close()
