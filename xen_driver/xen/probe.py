"""Is there a working Xen host under us?  The answer behind the driver's fingerprint.

Three outcomes, each with a sentence a person can act on:

* **undetected**: no ``xl`` binary at all; this node simply has no Xen toolstack.
* **unhealthy**: ``xl`` exists but ``xl info`` fails or hangs: not booted under the Xen
  hypervisor, privcmd/xenfs missing, xenstored not running, not root, ...
* **healthy**: ``xl info`` answered; its facts (version, memory, scheduler) are returned.

Everything runs as an asyncio subprocess with a timeout, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from xen_driver.xen.fdlimit import EXHAUSTED_ERRNOS, OutOfFileDescriptors

DEFAULT_TIMEOUT = 10.0
#: Where to look for `xl` besides PATH: Nomad agents often run with a PATH lacking sbin.
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class ProbeState(enum.Enum):
    UNDETECTED = "undetected"
    UNHEALTHY = "unhealthy"
    HEALTHY = "healthy"


@dataclass(frozen=True)
class XenHostInfo:
    """The parts of ``xl info`` the driver reports or uses."""

    xen_version: str
    xen_scheduler: str
    free_memory_mib: int
    total_memory_mib: int
    nr_cpus: int
    host: str = ""
    xen_caps: str = ""
    raw: Mapping[str, str] = field(default_factory=dict)
    #: Clock of one physical CPU in MHz (``cpu_mhz``); 0 when xl did not say.
    cpu_mhz: float = 0.0


@dataclass(frozen=True)
class HostProbe:
    state: ProbeState
    reason: str
    xl_path: str | None = None
    info: XenHostInfo | None = None


def find_xl(xl_path: str, search_path: str | None = None) -> str | None:
    """Absolute path of the ``xl`` to use, or None.

    A value with a slash is taken as a path; a bare name is searched on PATH and then in the
    usual sbin directories.
    """
    if "/" in xl_path:
        return xl_path if os.path.isfile(xl_path) and os.access(xl_path, os.X_OK) else None
    path = search_path if search_path is not None else os.environ.get("PATH", os.defpath)
    dirs = [d for d in path.split(os.pathsep) if d]
    for extra in SBIN_DIRS:
        if extra not in dirs:
            dirs.append(extra)
    return shutil.which(xl_path, path=os.pathsep.join(dirs))


def host_signature(xl_path: str, xenstored_socket: str, search_path: str | None = None) -> tuple[object, ...]:
    """Cheap facts (a PATH lookup and a few stats) whose change calls for a new probe at once:
    xl installed or removed, xenstored started or stopped, the hypervisor or /proc/xen appearing."""
    return (
        find_xl(xl_path, search_path),
        os.path.exists(xenstored_socket),
        _read("/sys/hypervisor/type"),
        os.path.exists("/proc/xen/capabilities"),
    )


def parse_xl_info(text: str) -> dict[str, str]:
    """``key : value`` lines of ``xl info`` into a dict (continuation lines are appended)."""
    out: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip() and not line[:1].isspace():
            last = key.strip()
            out[last] = value.strip()
        elif last is not None:
            out[last] = (out[last] + " " + line.strip()).strip()
    return out


def _int(raw: Mapping[str, str], key: str) -> int:
    try:
        return int(raw.get(key, "0").split()[0])
    except (ValueError, IndexError):
        return 0


def cpu_mhz(raw: Mapping[str, str]) -> float | None:
    """``cpu_mhz`` of ``xl info`` (e.g. ``2095.076``), or None when missing or not a positive number."""
    try:
        value = float(raw.get("cpu_mhz", "").split()[0])
    except (ValueError, IndexError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def host_info_from(raw: Mapping[str, str]) -> XenHostInfo:
    version = raw.get("xen_version", "")
    if not version and raw.get("xen_major"):
        version = f"{raw.get('xen_major')}.{raw.get('xen_minor', '0')}{raw.get('xen_extra', '')}"
    return XenHostInfo(
        xen_version=version,
        xen_scheduler=raw.get("xen_scheduler", ""),
        free_memory_mib=_int(raw, "free_memory"),
        total_memory_mib=_int(raw, "total_memory"),
        nr_cpus=_int(raw, "nr_cpus"),
        host=raw.get("host", ""),
        xen_caps=raw.get("xen_caps", ""),
        raw=dict(raw),
        cpu_mhz=cpu_mhz(raw) or 0.0,
    )


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def explain_failure(stderr: str, *, xenstored_socket: str, sys_root: str = "/") -> str:
    """A human reason for a failing ``xl``, from what the host looks like and what xl said."""
    hv_type = _read(os.path.join(sys_root, "sys/hypervisor/type"))
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    said = f' (xl said: "{last[:200]}")' if last else ""
    if hv_type != "xen":
        what = f'a "{hv_type}" hypervisor' if hv_type else "no hypervisor"
        return f"this host is not running under the Xen hypervisor: /sys/hypervisor/type reports {what}{said}"
    caps = _read(os.path.join(sys_root, "proc/xen/capabilities"))
    if caps is None:
        return f"Xen is running but /proc/xen is not mounted (mount -t xenfs xenfs /proc/xen){said}"
    if "control_d" not in caps:
        return f"this is a Xen guest, not the control domain (dom0): xl cannot manage domains here{said}"
    if not os.path.exists(os.path.join(sys_root, xenstored_socket.lstrip("/"))):
        return f"xenstored is not running: its socket {xenstored_socket} does not exist{said}"
    if os.geteuid() != 0 and ("ermission" in stderr or "EACCES" in stderr):
        return f"xl needs root privileges{said}"
    return f"xl info failed{said}"


def console_logging_problem(console_log_dir: str, proc_root: str = "/proc") -> str | None:
    """Why guest consoles would not reach Nomad on this dom0, or None.

    The driver streams what ``xenconsoled`` writes into ``<console_log_dir>/guest-<name>.log``;
    xenconsoled writes those files only when started with ``--log=guest`` (or ``all``), and
    into ``--log-dir`` (default /var/log/xen/console).  Without that every start would wait for
    its boot marker until ``boot_timeout``.  Only checked in a control domain (``proc_root``/xen
    says ``control_d``): elsewhere there are no guests to log.
    """
    try:
        with open(os.path.join(proc_root, "xen", "capabilities")) as fh:
            if "control_d" not in fh.read():
                return None
    except OSError:
        return None
    fix = "start it with --log=guest (on Debian: XENCONSOLED_TRACE=guest in /etc/default/xen)"
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, entry, "cmdline"), "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "xenconsoled":
            continue
        opts = _long_options(argv[1:])
        if opts.get("log") not in ("guest", "all"):
            return f"xenconsoled does not log guest consoles (--log={opts.get('log', 'none')}): {fix}"
        log_dir = os.path.normpath(opts.get("log-dir", "/var/log/xen/console"))
        if log_dir != os.path.normpath(console_log_dir):
            return (
                f"xenconsoled writes guest consoles into {log_dir}, but the plugin reads {console_log_dir}: "
                f'set the plugin setting console_log_dir = "{log_dir}"'
            )
        return None
    return f"xenconsoled is not running, so guest consoles are not written: {fix}"


def _long_options(args: Sequence[str]) -> dict[str, str]:
    """``--key=value`` and ``--key value`` options of a command line."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                value = args[i + 1]
                i += 1
            out[key] = value
        i += 1
    return out


async def probe_host(
    xl_path: str = "xl",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    xenstored_socket: str = "/run/xenstored/socket",
    search_path: str | None = None,
    env: Mapping[str, str] | None = None,
) -> HostProbe:
    """Run ``xl info`` and classify the host. Never raises for host problems."""
    xl = find_xl(xl_path, search_path)
    if xl is None:
        where = xl_path if "/" in xl_path else f'"{xl_path}" on PATH or in {", ".join(SBIN_DIRS)}'
        return HostProbe(ProbeState.UNDETECTED, f"Xen toolstack not found: no executable {where}")

    try:
        rc, out, err = await run([xl, "info"], timeout=timeout, env=dict(env) if env is not None else None)
    except OutOfFileDescriptors as exc:  # not a host problem: this process has no descriptor left
        return HostProbe(ProbeState.UNHEALTHY, str(exc), xl_path=xl)
    if rc is None:
        return HostProbe(
            ProbeState.UNHEALTHY,
            f"{xl} info did not answer within {timeout:g}s (is xenstored running and responsive?)",
            xl_path=xl,
        )
    if rc != 0:
        return HostProbe(
            ProbeState.UNHEALTHY,
            explain_failure(err or out, xenstored_socket=xenstored_socket),
            xl_path=xl,
        )
    raw = parse_xl_info(out)
    info = host_info_from(raw)
    if not info.xen_version:
        return HostProbe(
            ProbeState.UNHEALTHY, f"{xl} info answered without a xen_version; is this really xl?", xl_path=xl
        )
    return HostProbe(ProbeState.HEALTHY, f"Xen {info.xen_version} ready ({info.xen_scheduler} scheduler)", xl, info)


async def run(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> tuple[int | None, str, str]:
    """Run a command; ``(None, out, err)`` on timeout (the process is killed), rc 127 if it cannot start.

    Raises :class:`OutOfFileDescriptors` when it cannot start for want of a descriptor (that is
    no fact about the host, and must not be explained as one).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a hung xl must not receive the agent's terminal signals
        )
    except OSError as exc:
        if exc.errno in EXHAUSTED_ERRNOS:
            raise OutOfFileDescriptors(exc.errno) from exc
        return 127, "", f"cannot execute {argv[0]}: {exc.strerror or exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            pass
        return None, "", ""
    except asyncio.CancelledError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        raise
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
