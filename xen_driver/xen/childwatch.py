"""Waiting for child processes without a thread per child.

On Python 3.11 asyncio waits for each child process in a thread of its own
(``ThreadedChildWatcher``); a driver that runs a toolstack process per call would create and
tear down a thread per call.  Where the kernel has ``pidfd_open`` (Linux 5.3) asyncio can wait
in the event loop instead (Python 3.12 does so by default).
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings


def use_pidfd_child_watcher() -> bool:
    """Have asyncio wait for child processes through pidfds in the event loop instead of one
    thread per child (Python 3.11; later versions do so already).  True when in effect."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return sys.version_info >= (3, 12)
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        current = getattr(policy, "_watcher", None)
        if isinstance(current, asyncio.PidfdChildWatcher) and getattr(current, "_loop", None) is loop:
            return True
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:  # kernel older than 5.3, or pidfds refused (seccomp)
            return False
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)  # one watcher per loop: it waits through the loop's readers
        policy.set_child_watcher(watcher)
    return True
