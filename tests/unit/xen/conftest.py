"""Fixtures shared by the keeper's tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.unit.xen.test_fifokeeper import keeper_pids
from xen_driver.xen.fifokeeper import SOCKET_NAME


@pytest.fixture
def no_leftover_keepers(tmp_path: Path):  # type: ignore[no-untyped-def]
    """After the test, no keeper serves its ``tmp_path`` (they exit once idle, or were killed)."""
    yield
    deadline = time.monotonic() + 5
    while keeper_pids(str(tmp_path / SOCKET_NAME)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keeper_pids(str(tmp_path / SOCKET_NAME)) == []
