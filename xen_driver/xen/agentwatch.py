"""Which processes read a task's FIFO, and when they (or the Nomad agent) exit.

Why the keeper needs this: Nomad's logmon buffers what it reads from a task's ``.stdout.fifo``
and writes it into the log files every 100 ms.  When the agent dies (SIGKILL, or a plain stop),
its logmon processes live on, orphaned.  The agent that comes back either replaces one (Nomad 1.6.3
after a clean stop: the old logmon exits as the new agent connects to it, and whatever it had
read and not yet written is lost) or reattaches to it (after a SIGKILL; logmon may then restart
its reader of the FIFO, closing the old one and opening a new one, and a piece it was writing at
that moment can be lost).  So from the agent's death until a reader it left closes the FIFO or
exits, or the new agent has recovered the task and left the reader as it was, the keeper holds a
task's console bytes back (they stay in the console log) instead of feeding a reader that may
vanish.  See :meth:`xen_driver.xen.fifokeeper.Keeper.agent_gone`.

Everything here reads ``/proc`` (Linux) and waits on process exits with pidfds, so an exit is
seen at once, without polling (the keeper watches the FIFOs' closes with inotify).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

#: A process as the successor of a dead agent would look: (executable, command line).
Identity = tuple[str, bytes]


def _pids(proc: str) -> list[int]:
    try:
        return [int(e) for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return []


def fifo_readers(paths: dict[str, str], *, proc: str = "/proc", exclude: set[int] | None = None) -> dict[str, set[int]]:
    """For each key of ``paths`` (a FIFO's path), the pids holding that FIFO open for reading.

    One pass over every process's descriptors (``/proc/<pid>/fd``), matching the FIFOs by
    device and inode; the access mode comes from ``/proc/<pid>/fdinfo``.  Processes in
    ``exclude`` (by default this one) are skipped, and so is whatever cannot be read (a process
    that exited meanwhile)."""
    inodes: dict[tuple[int, int], str] = {}
    for key, path in paths.items():
        with contextlib.suppress(OSError):
            st = os.stat(path)
            inodes[(st.st_dev, st.st_ino)] = key
    found: dict[str, set[int]] = {key: set() for key in paths}
    if not inodes:
        return found
    skip = {os.getpid()} if exclude is None else exclude
    for pid in _pids(proc):
        if pid in skip:
            continue
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            hit = inodes.get((st.st_dev, st.st_ino))
            if hit is not None and _reads(proc, pid, fd):
                found[hit].add(pid)
    return found


def _reads(proc: str, pid: int, fd: str) -> bool:
    """Whether descriptor ``fd`` of ``pid`` was opened for reading (O_RDONLY or O_RDWR)."""
    try:
        with open(f"{proc}/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_WRONLY
    except (OSError, ValueError, IndexError):
        pass
    return False


def identity(pid: int, *, proc: str = "/proc") -> Identity | None:
    """``pid``'s executable and command line, or None if it cannot be read (gone, a zombie)."""
    try:
        exe = os.readlink(f"{proc}/{pid}/exe")
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    return (exe, cmdline) if cmdline else None


def find_process(ident: Identity, *, proc: str = "/proc", exclude: set[int] | None = None) -> int | None:
    """A live process with executable and command line ``ident`` (the agent started again by
    its supervisor looks like the one that died), or None."""
    for pid in _pids(proc):
        if exclude and pid in exclude:
            continue
        if identity(pid, proc=proc) == ident:
            return pid
    return None


class ExitWatch:
    """Call back once a process exits, from the running event loop (a pidfd per process)."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # pid -> pidfd

    def watch(self, pid: int, on_exit: Callable[[int], None]) -> bool:
        """Call ``on_exit(pid)`` when ``pid`` exits; False (and no call) if it is gone already.
        Watching a pid twice keeps the first callback."""
        if pid in self._fds:
            return True
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already (ESRCH), or a kernel without pidfds (before Linux 5.3)
            return False
        self._fds[pid] = fd

        def fired() -> None:
            self.forget(pid)
            on_exit(pid)

        asyncio.get_running_loop().add_reader(fd, fired)
        return True

    def watching(self, pid: int) -> bool:
        return pid in self._fds

    def forget(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds):
            self.forget(pid)
