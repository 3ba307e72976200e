"""Errors Nomad can act on: a domain the toolstack refuses is not retried, a passing failure is.

Driven through the real xl backend with a fake ``xl`` executable that fails ``create`` the way
libxl does, so the classification is tested on the text xl really prints."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.unit.driver.test_lifecycle import _lifecycle, make_spec
from xen_driver.driver.config import PluginConfig
from xen_driver.driver.errors import RecoverableError

# What xl 4.17 prints for a file in image_dirs that is no PV kernel.
NO_LOADER = (
    "xc: error: panic: xc_dom_core.c:702: xc_dom_find_loader: no loader found: Invalid kernel\n"
    "libxl: error: libxl_dom.c:581:libxl__build_dom: xc_dom_parse_image failed\n"
    "libxl: error: libxl_create.c:1869:domcreate_rebuild_done: Domain 7:cannot (re-)build domain: -3\n"
)
# A hotplug script that failed (the bridge went away meanwhile): may pass on a retry.
HOTPLUG = (
    "libxl: error: libxl_exec.c:117:libxl_report_child_exitstatus: /etc/xen/scripts/vif-bridge online"
    " [1234] exited with error status 1\n"
    "libxl: error: libxl_device.c:1286:device_hotplug_child_death_cb: script: Could not find bridge device xenbr0\n"
)


def _fake_xl(tmp_path: Path, create_stderr: str) -> Path:
    (tmp_path / "create.err").write_text(create_stderr)
    xl = tmp_path / "fake-xl"
    xl.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            case "$1" in
              info) printf 'xen_version            : 4.17.5\\nnr_cpus                : 2\\ntotal_memory           : 3071\\n' ;;
              list) printf 'Name                                        ID   Mem VCPUs\\tState\\tTime(s)\\n'
                    printf 'Domain-0                                     0  1024     2     r-----      45.1\\n' ;;
              create) cat {tmp_path}/create.err >&2; exit 1 ;;
              destroy) echo "destroy: unable to find domain info" >&2; exit 1 ;;
              *) exit 0 ;;
            esac
            """
        )
    )
    xl.chmod(0o755)
    return xl


@pytest.mark.parametrize("stderr, recoverable", [(NO_LOADER, False), (HOTPLUG, True)])
async def test_create_failures_are_classified(tmp_path: Path, stderr: str, recoverable: bool):
    images = tmp_path / "images"
    images.mkdir()
    (images / "kernel").write_bytes(b"not an ELF file")
    (tmp_path / "console").mkdir()
    (tmp_path / "alloc" / "web").mkdir(parents=True)
    (tmp_path / "stdout.log").write_bytes(b"")
    config = PluginConfig.from_dict(
        {
            "xl_path": str(_fake_xl(tmp_path, stderr)),
            "image_dirs": [str(images)],
            "console_log_dir": str(tmp_path / "console"),
            "state_dir": str(tmp_path / "state"),
            "xenstored_socket": str(tmp_path / "no-xenstored"),
        }
    )
    lc = await _lifecycle(config, None)
    try:
        with pytest.raises(RecoverableError) as err:
            await lc.start_task(make_spec(tmp_path))
        assert err.value.recoverable is recoverable, str(err.value)
        if not recoverable:
            assert "refused" in str(err.value) and "no loader found" in str(err.value)
        # Nothing left: no rendered config, no task state, no console log.
        assert list((tmp_path / "state" / "domains").glob("*")) == []
        assert list((tmp_path / "state" / "tasks").glob("*")) == []
        assert list((tmp_path / "console").glob("*")) == []
    finally:
        await lc.close()
