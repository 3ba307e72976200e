"""Reading ``xl list -v``: the domain table as :class:`~xen_driver.xen.backend.DomainInfo` values.

``xl list -v`` prints one line per domain: name, id, memory, vCPUs, six state letters
(``r b p s <shutdown reason> d``), CPU seconds, UUID and the shutdown reason code.  The
watcher reads the whole table in one call, so parsing is kept cheap for a thousand lines.
"""

from __future__ import annotations

import functools
import re

from xen_driver.xen.backend import DomainInfo, DomainState, ExitReason

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@functools.lru_cache(maxsize=256)  # a handful of distinct strings, a thousand lines per listing
def parse_state_flags(flags: str) -> tuple[DomainState, ExitReason | None]:
    """Decode xl's six state letters ``r b p s <reason> d``.

    The fifth letter is the shutdown reason (``-`` poweroff, ``r`` reboot, ``s`` suspend, ``c``
    crash, ``w`` watchdog, ``S`` soft reset) and only means something when ``s`` is set: a live
    domain shows ``-`` there too.
    """
    flags = flags.ljust(6, "-")
    running, blocked, paused, shut, _reason_set, dying = (flags[i] != "-" for i in range(6))
    shut_reason: ExitReason | None = None
    if shut:
        shut_reason = {
            "-": ExitReason.POWEROFF,
            "r": ExitReason.REBOOT,
            "s": ExitReason.SUSPEND,
            "c": ExitReason.CRASH,
            "w": ExitReason.WATCHDOG,
            "S": ExitReason.SOFT_RESET,
        }.get(flags[4], ExitReason.UNKNOWN)
    if dying:
        state = DomainState.DYING
    elif shut:
        state = DomainState.SHUTDOWN
    elif paused:
        state = DomainState.PAUSED
    elif blocked and not running:
        state = DomainState.BLOCKED
    else:
        state = DomainState.RUNNING  # 'r', or runnable and waiting for a CPU ("------")
    return state, shut_reason


def parse_xl_list(text: str) -> list[DomainInfo]:
    """Parse ``xl list`` or ``xl list -v`` output.

    Columns are taken from the right because the name is printed first and padded, and a name
    of another tool's domain could contain spaces.  Plain: ``Name ID Mem VCPUs State Time(s)``;
    verbose adds ``UUID Reason-Code Security-Label``; the reason code (hex) is ``-`` unless the
    domain is shut down.
    """
    out: list[DomainInfo] = []
    lines = text.splitlines()
    if not lines:
        return out
    verbose = "UUID" in lines[0]
    ncols = 8 if verbose else 5
    for line in lines[1:] if lines[0].startswith("Name") else lines:
        tokens = line.split()
        if len(tokens) < ncols + 1:
            continue
        name = " ".join(tokens[: len(tokens) - ncols])
        cols = tokens[len(tokens) - ncols :]
        try:
            domid = int(cols[0])
            mem_mib = int(cols[1])
            vcpus = int(cols[2])
            cpu = float(cols[4])
        except ValueError:
            continue
        state, reason = parse_state_flags(cols[3])
        uuid = None
        if verbose:
            uuid = cols[5] if _UUID_RE.fullmatch(cols[5]) else None
            code = cols[6]
            if state in (DomainState.SHUTDOWN, DomainState.DYING) and code != "-":
                try:
                    reason = ExitReason.from_code(int(code, 16))
                except ValueError:
                    pass
        out.append(
            DomainInfo(
                name=name,
                domid=domid,
                uuid=uuid,
                state=state,
                shutdown_reason=reason,
                cpu_seconds=cpu,
                memory_kib=mem_mib * 1024,
                vcpus=vcpus,
                flags=cols[3],
            )
        )
    return out


#: libxl's report of its own clean-up after a failed create ("Non-existant domain", "Unable to
#: destroy guest", ...): true, but it buries the line that says what went wrong.
