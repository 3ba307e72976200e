"""`xl destroy` racing another destroy of the same domain (found by the conformance suite).

In the testbed, StopTask's forced destroy ran while the watcher's destroy of the already
powered-off guest was still tearing it down; the second `xl destroy` then failed with libxl's
"unable to find domain info" (below, verbatim). The domain is gone, so for an idempotent
destroy that is success, not an error that reaches Nomad as INTERNAL.
"""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest

from xen_driver.xen.backend import DomainNotFound
from xen_driver.xen.xl import XlBackend, XlError

RACE_STDERR = (
    "libxl: error: libxl_linux.c:119:libxl__hotplug_nic: Domain 1:unable to read script from "
    "/local/domain/0/backend/vif/1/0: No such file or directory\n"
    "libxl: error: libxl_device.c:1261:device_hotplug: Domain 1:unable to get args/env to execute "
    "hotplug script for device /local/domain/0/backend/vif/1/0\n"
    "libxl: error: libxl_dom.c:1216:libxl__userdata_path: unable to find domain info for domain 1: "
    "No such file or directory\n"
)


def _fake_xl(tmp_path: Path, stderr: str) -> Path:
    xl = tmp_path / "xl"
    xl.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write({stderr!r})\nsys.exit(1)\n")
    xl.chmod(xl.stat().st_mode | stat.S_IXUSR)
    return xl


def test_destroy_of_a_domain_vanishing_under_a_concurrent_destroy_is_success(tmp_path: Path) -> None:
    be = XlBackend(tmp_path / "cfg", xl=str(_fake_xl(tmp_path, RACE_STDERR)))
    asyncio.run(be.destroy("nomad-firewall-40731a90-dd2cd3f5"))  # no exception
    with pytest.raises(DomainNotFound):
        asyncio.run(be.unpause("nomad-firewall-40731a90-dd2cd3f5"))


def test_other_destroy_failures_still_raise(tmp_path: Path) -> None:
    be = XlBackend(
        tmp_path / "cfg",
        xl=str(_fake_xl(tmp_path, "libxl: error: libxl_domain.c:1500: destroy failed: Device or resource busy\n")),
    )
    with pytest.raises(XlError):
        asyncio.run(be.destroy("ndx-busy"))
