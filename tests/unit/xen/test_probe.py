"""Host probing behind the fingerprint: undetected / unhealthy / healthy, with human reasons."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from xen_driver.xen.probe import (
    ProbeState,
    cpu_mhz,
    explain_failure,
    find_xl,
    host_info_from,
    parse_xl_info,
    probe_host,
)

XL_INFO = """host                   : dom0
release                : 6.1.0-28-amd64
version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)
machine                : x86_64
nr_cpus                : 2
max_cpu_id             : 1
nr_nodes               : 1
cores_per_socket       : 2
threads_per_core       : 1
cpu_mhz                : 2294.608
hw_caps                : 0f8bfbff:f6f83203:2c100800:00000121:0000000f:d19f4fab:00000004:00000100
virt_caps              : pv hvm hap shadow
total_memory           : 3071
free_memory            : 1843
sharing_freed_memory   : 0
sharing_used_memory    : 0
outstanding_claims     : 0
free_cpus              : 0
xen_major              : 4
xen_minor              : 17
xen_extra              : .5
xen_version            : 4.17.5
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64
xen_scheduler          : credit2
xen_pagesize           : 4096
platform_params        : virt_start=0xffff800000000000
xen_changeset          :
xen_commandline        : placeholder dom0_mem=1024M,max:1024M loglvl=all
cc_compiler            : x86_64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0
xend_config_format     : 4
"""


def fake_xl(tmp_path: Path, body: str) -> str:
    path = tmp_path / "xl"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def run(coro):
    return asyncio.run(coro)


def test_parse_xl_info():
    raw = parse_xl_info(XL_INFO)
    assert raw["xen_version"] == "4.17.5" and raw["free_memory"] == "1843" and raw["xen_scheduler"] == "credit2"
    assert raw["xen_changeset"] == ""


def test_cpu_mhz_of_xl_info():
    """One host CPU's clock: what TaskStats converts CPU percent into Nomad's MHz with."""
    assert cpu_mhz(parse_xl_info(XL_INFO)) == 2294.608
    assert host_info_from(parse_xl_info(XL_INFO)).cpu_mhz == 2294.608
    for bad in ({}, {"cpu_mhz": ""}, {"cpu_mhz": "0"}, {"cpu_mhz": "-5"}, {"cpu_mhz": "nan"}, {"cpu_mhz": "fast"}):
        assert cpu_mhz(bad) is None, bad
    assert host_info_from({}).cpu_mhz == 0.0


def test_no_xl_is_undetected(tmp_path):
    probe = run(probe_host("xl", search_path=str(tmp_path)))
    if find_xl("xl", str(tmp_path)) is not None:
        pytest.skip("this host has xl in an sbin directory")
    assert probe.state is ProbeState.UNDETECTED
    assert 'no executable "xl" on PATH' in probe.reason
    probe = run(probe_host(str(tmp_path / "missing" / "xl")))
    assert probe.state is ProbeState.UNDETECTED and str(tmp_path / "missing" / "xl") in probe.reason


def test_working_xl_is_healthy(tmp_path):
    xl = fake_xl(tmp_path, f'[ "$1" = info ] || exit 2\ncat <<"EOF"\n{XL_INFO}EOF\n')
    probe = run(probe_host(xl))
    assert probe.state is ProbeState.HEALTHY, probe.reason
    assert probe.info.xen_version == "4.17.5" and probe.info.free_memory_mib == 1843
    assert probe.info.total_memory_mib == 3071 and probe.info.nr_cpus == 2 and probe.info.xen_scheduler == "credit2"
    assert probe.reason == "Xen 4.17.5 ready (credit2 scheduler)"


def test_xl_found_by_name_in_search_path(tmp_path):
    fake_xl(tmp_path, f'cat <<"EOF"\n{XL_INFO}EOF\n')
    assert find_xl("xl", str(tmp_path)) == str(tmp_path / "xl")
    assert run(probe_host("xl", search_path=str(tmp_path))).state is ProbeState.HEALTHY


def test_failing_xl_is_unhealthy_with_a_reason(tmp_path):
    xl = fake_xl(
        tmp_path,
        'echo "xc: error: Could not obtain handle on privileged command interface: No such file or directory" >&2\n'
        'echo "cannot init xl context" >&2\nexit 1\n',
    )
    probe = run(probe_host(xl))
    assert probe.state is ProbeState.UNHEALTHY
    if not os.path.exists("/sys/hypervisor/type"):
        assert probe.reason.startswith("this host is not running under the Xen hypervisor")
    assert 'xl said: "cannot init xl context"' in probe.reason


def test_hanging_xl_is_unhealthy_after_the_timeout(tmp_path):
    xl = fake_xl(tmp_path, "exec sleep 30\n")
    probe = run(probe_host(xl, timeout=0.5))
    assert probe.state is ProbeState.UNHEALTHY
    assert "did not answer within 0.5s" in probe.reason


def test_xl_without_version_is_unhealthy(tmp_path):
    xl = fake_xl(tmp_path, "echo hello\n")
    assert run(probe_host(xl)).state is ProbeState.UNHEALTHY


def _root(tmp_path: Path, hv: str | None = "xen", caps: str | None = "control_d", socket: bool = True) -> Path:
    root = tmp_path / "root"
    if hv is not None:
        (root / "sys/hypervisor").mkdir(parents=True)
        (root / "sys/hypervisor/type").write_text(hv + "\n")
    if caps is not None:
        (root / "proc/xen").mkdir(parents=True)
        (root / "proc/xen/capabilities").write_text(caps + "\n")
    if socket:
        (root / "run/xenstored").mkdir(parents=True)
        (root / "run/xenstored/socket").write_text("")
    return root


@pytest.mark.parametrize(
    "layout,expected",
    [
        (
            dict(hv=None, caps=None, socket=False),
            "not running under the Xen hypervisor: /sys/hypervisor/type reports no hypervisor",
        ),
        (dict(hv="kvm", caps=None), 'reports a "kvm" hypervisor'),
        (dict(caps=None), "/proc/xen is not mounted"),
        (dict(caps=""), "this is a Xen guest, not the control domain"),
        (dict(socket=False), "xenstored is not running: its socket /run/xenstored/socket does not exist"),
        (dict(), "xl info failed"),
    ],
)
def test_explain_failure(tmp_path, layout, expected):
    root = _root(tmp_path, **layout)
    reason = explain_failure("libxl: error: oops", xenstored_socket="/run/xenstored/socket", sys_root=str(root))
    assert expected in reason
    assert 'xl said: "libxl: error: oops"' in reason


# ---- guest console logging (xenconsoled --log=guest) -------------------------------------------


def _proc(tmp_path, caps: str | None, *cmdlines: list[str]):
    from pathlib import Path

    root = Path(tmp_path) / "proc"
    (root / "xen").mkdir(parents=True)
    if caps is not None:
        (root / "xen" / "capabilities").write_text(caps)
    (root / "self").mkdir()
    for pid, argv in enumerate(cmdlines, start=100):
        (root / str(pid)).mkdir()
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return str(root)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["/usr/sbin/xenconsoled", "--pid-file=/run/xenconsoled.pid", "--log=guest"], None),
        (["xenconsoled", "--log", "all", "--log-dir=/var/log/xen/console/"], None),
        (["/usr/sbin/xenconsoled", "--pid-file=/run/xenconsoled.pid"], "--log=none"),
        (["/usr/sbin/xenconsoled", "--log=hv"], "--log=hv"),
        (["/usr/sbin/xenconsoled", "--log=guest", "--log-dir=/srv/consoles"], 'console_log_dir = "/srv/consoles"'),
    ],
)
def test_console_logging_is_checked_in_dom0(tmp_path, argv, problem):
    from xen_driver.xen.probe import console_logging_problem

    root = _proc(tmp_path, "control_d\n", ["/sbin/init"], argv)
    got = console_logging_problem("/var/log/xen/console", proc_root=root)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got, got


def test_console_logging_without_xenconsoled_or_outside_dom0(tmp_path):
    from xen_driver.xen.probe import console_logging_problem

    assert "xenconsoled is not running" in console_logging_problem(
        "/var/log/xen/console", proc_root=_proc(tmp_path / "a", "control_d\n", ["/sbin/init"])
    )
    assert console_logging_problem("/var/log/xen/console", proc_root=_proc(tmp_path / "b", "", ["/sbin/init"])) is None
    assert console_logging_problem("/var/log/xen/console", proc_root=_proc(tmp_path / "c", None)) is None
