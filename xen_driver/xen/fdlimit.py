"""Open files: raise the process's limit at start, and name its exhaustion plainly.

Every guest holds descriptors in the plugin for as long as it runs (its console log, Nomad's log
FIFO) and every ``xl`` call takes a few more for a moment (its pipes).  Under the soft limit of
1024 open files many services start with, the plugin ran out at about 500 guests; from then on
every ``xl`` call, file open and XenStore connection failed with ``EMFILE``, exits went unseen,
and the messages blamed something else (the host probe could not even read
``/sys/hypervisor/type`` and reported "not running under the Xen hypervisor").

So: the plugin raises its soft limit to the hard limit when it starts (:func:`raise_soft_limit`),
a start is refused while fewer than :data:`START_RESERVE` descriptors are free
(:func:`check_spare`), so the guests already running can still be followed and stopped, and
wherever ``EMFILE``/``ENFILE`` turns up the error says what ran out and what to raise
(:func:`describe`).
"""

from __future__ import annotations

import errno
import os
import resource

from xen_driver.xen.backend import BackendUnavailable

#: "Too many open files" in this process, and in the whole system.
EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
#: Descriptors that must stay free for a start to be accepted: room for the new guest's own
#: (console log, log FIFO) and for the toolstack calls that follow every guest (each ``xl``
#: process takes six pipe ends while it runs, several run at once, XenStore, the keeper).
START_RESERVE = 64
#: Where Linux keeps the ceiling for a process's open files (an infinite hard limit means this).
NR_OPEN = "/proc/sys/fs/nr_open"


class OutOfFileDescriptors(BackendUnavailable):
    """A call failed because no file descriptor was left (``EMFILE`` or ``ENFILE``)."""

    def __init__(self, err: int = errno.EMFILE):
        self.errno = err
        super().__init__(describe(err))


def limits() -> tuple[int, int]:
    """The soft and hard ``RLIMIT_NOFILE`` of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard limit; return it ``(before, after)``.

    An infinite hard limit stands for the kernel's ``fs.nr_open``.  Never raises: when the limit
    cannot be changed, ``after`` equals ``before``.
    """
    soft, hard = limits()
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(NR_OPEN, encoding="ascii") as fh:
                target = int(fh.read().strip())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and target <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, limits()[0]


def open_count() -> int | None:
    """How many descriptors this process has open (None when even that cannot be looked at)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    except OSError:
        return None


def describe(err: int = errno.EMFILE) -> str:
    """One sentence naming the exhaustion, the numbers and what to raise."""
    soft, _hard = limits()
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    count = open_count()
    if err == errno.ENFILE:
        held = f"{count} open here" if count is not None else "this plugin's count unknown"
        return (
            f"out of file descriptors: the host's file table is full ({held}, limit {shown} per process): "
            "raise fs.file-max (sysctl) or find what holds so many files"
        )
    # EMFILE with the count unreadable means every descriptor below the limit is taken.
    opened = count if count is not None else shown
    return (
        f"out of file descriptors ({opened} open, limit {shown}): raise LimitNOFILE of the Nomad agent "
        "(e.g. LimitNOFILE=1048576 in its systemd unit; the plugin inherits the agent's hard limit "
        "and raises its own soft limit to it)"
    )


def exhaustion(exc: BaseException | None) -> int | None:
    """``EMFILE``/``ENFILE`` if ``exc`` or an exception it was raised from ran out of descriptors."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OSError, OutOfFileDescriptors)) and exc.errno in EXHAUSTED_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def spare(wanted: int) -> bool:
    """Whether ``wanted`` more descriptors can be opened right now.

    Takes them and gives them back at once: a fixed cost, whatever the number of open files
    (counting ``/proc/self/fd`` costs a millisecond per two thousand).
    """
    taken: list[int] = []
    try:
        taken.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        while len(taken) < wanted:
            taken.append(os.dup(taken[0]))
        return True
    except OSError as exc:
        if exc.errno in EXHAUSTED_ERRNOS:
            return False
        raise
    finally:
        for fd in taken:
            os.close(fd)


def check_spare(wanted: int = START_RESERVE) -> None:
    """Raise :class:`OutOfFileDescriptors` unless ``wanted`` descriptors are free."""
    try:
        if spare(wanted):
            return
    except OSError:
        return  # not a shortage we can name; let the real work report what is wrong
    raise OutOfFileDescriptors(errno.EMFILE)
