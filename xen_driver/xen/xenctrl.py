"""A direct line to the hypervisor for the one call a warm-pool claim makes: unpause.

Every ``xl`` call is a process that loads libxl, opens the hypervisor interfaces and tears them
down again; under emulation that is 0.5-2 s, which would dominate a pool claim that otherwise
only writes a few XenStore nodes.  For a PV domain ``xl unpause`` comes down to one hypercall,
``xc_domain_unpause`` in libxenctrl (libxl adds device-model work only for HVM guests), so the
pool calls it through ctypes on a handle opened once.

libxenctrl ships with the toolstack (Debian: ``libxenmisc4.17``, a dependency of
``xen-utils-4.17``).  When it cannot be loaded or opened (no Xen, not root, another version),
:func:`open_xenctrl` returns None and callers use the toolstack as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading

from xen_driver.logging import get_logger

log = get_logger("xenctrl")

#: Where Debian and upstream installs put the library, newest first after the linker's own pick.
_CANDIDATES = (
    "libxenctrl.so",
    "/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.*",
    "/usr/lib/libxenctrl.so.4.*",
    "/usr/lib64/libxenctrl.so.4.*",
)


class XenCtrlError(OSError):
    """A libxenctrl call failed (errno set as the library left it)."""


class XenCtrl:
    """An open ``xc_interface`` handle."""

    def __init__(self, lib: ctypes.CDLL, handle: int, path: str):
        self._lib = lib
        self._handle = ctypes.c_void_p(handle)
        self.path = path
        self._lock = threading.Lock()

    def unpause(self, domid: int) -> None:
        """Let a paused domain run (one hypercall; microseconds)."""
        with self._lock:
            if not self._handle:
                raise XenCtrlError(0, "xenctrl handle is closed")
            rc = self._lib.xc_domain_unpause(self._handle, ctypes.c_uint32(int(domid)))
        if rc != 0:
            err = ctypes.get_errno()
            raise XenCtrlError(err, f"xc_domain_unpause({domid}) failed: {os.strerror(err) if err else 'error'}")

    def close(self) -> None:
        with self._lock:
            if self._handle:
                self._lib.xc_interface_close(self._handle)
                self._handle = ctypes.c_void_p(None)


def _library_paths() -> list[str]:
    out: list[str] = []
    found = ctypes.util.find_library("xenctrl")
    if found:
        out.append(found)
    for pattern in _CANDIDATES[1:]:
        out.extend(sorted(glob.glob(pattern), reverse=True))
    return out


def open_xenctrl() -> XenCtrl | None:
    """Open libxenctrl, or None (and a debug line saying why) when this host cannot."""
    if not os.path.exists("/dev/xen/privcmd") and not os.path.exists("/proc/xen/privcmd"):
        return None
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path, use_errno=True)
            lib.xc_interface_open.restype = ctypes.c_void_p
            lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
            lib.xc_interface_close.argtypes = [ctypes.c_void_p]
            lib.xc_domain_unpause.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
            lib.xc_domain_unpause.restype = ctypes.c_int
            handle = lib.xc_interface_open(None, None, 0)
        except (OSError, AttributeError) as exc:
            log.debug("libxenctrl not usable", path=path, error=str(exc))
            continue
        if not handle:
            log.debug("xc_interface_open failed", path=path, errno=ctypes.get_errno())
            continue
        return XenCtrl(lib, handle, path)
    return None
