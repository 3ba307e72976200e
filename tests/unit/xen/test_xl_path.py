"""One way to find ``xl``: the backend runs the xl the fingerprint found, also when the agent's
PATH lacks the sbin directories (the node showed healthy and every start failed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from xen_driver.driver.config import PluginConfig
from xen_driver.driver.core import fingerprint_from_probe
from xen_driver.xen import probe
from xen_driver.xen.xl import XlBackend, XlNotFound


@pytest.fixture
def sbin_only_xl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    xl = sbin / "xl"
    xl.write_text('#!/bin/sh\necho "xen_version            : 4.17.5 args=$*"\n')
    xl.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin-without-xl"))
    monkeypatch.setattr(probe, "SBIN_DIRS", (str(sbin),))
    return xl


def test_backend_runs_the_xl_found_outside_path(sbin_only_xl: Path, tmp_path: Path) -> None:
    backend = XlBackend(tmp_path / "cfg", xl="xl")
    call = asyncio.run(backend.run("info"))
    assert "4.17.5 args=info" in call.stdout
    assert backend.executable() == str(sbin_only_xl) == probe.find_xl("xl")


def test_missing_xl_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(probe, "SBIN_DIRS", ())
    with pytest.raises(XlNotFound, match="'xl' was not found"):
        asyncio.run(XlBackend(tmp_path / "cfg", xl="xl").run("info"))


def test_node_attributes_show_the_xl_in_use(sbin_only_xl: Path) -> None:
    info = probe.host_info_from({"xen_version": "4.17.5", "nr_cpus": "2", "total_memory": "3071"})
    fp = fingerprint_from_probe(
        probe.HostProbe(probe.ProbeState.HEALTHY, "ok", xl_path=str(sbin_only_xl), info=info), PluginConfig()
    )
    assert fp.attributes["driver.xen.xl_path"] == str(sbin_only_xl)
