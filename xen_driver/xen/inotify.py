"""A minimal inotify(7) binding (ctypes): one non-blocking descriptor watching directories."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

# inotify(7): the events that can mean "this file has new bytes, or is another file now".
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x2, 0x4, 0x8, 0x10
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def split_path(path: str) -> tuple[str, str]:
    """(directory, file name) of ``path``, the directory spelled as inotify will report it."""
    directory, name = os.path.split(os.path.abspath(path))
    return directory, name


class Inotify:
    """A non-blocking inotify descriptor watching directories; :meth:`read` returns
    ``(directory, name, mask)`` for each event (``name`` empty for the directory itself)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self._dirs: dict[int, str] = {}

    def add(self, directory: str, mask: int = _WATCH_MASK) -> int:
        """Watch ``directory`` for ``mask`` (by default: a file in it has new bytes, or is
        another file now)."""
        wd = int(self._add(self.fd, os.fsencode(directory), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self._dirs[wd] = directory
        return wd

    def remove(self, wd: int) -> None:
        if self._dirs.pop(wd, None) is not None:
            self._rm(self.fd, wd)

    def read(self) -> list[tuple[str | None, str, int]]:
        """Pending events; ``(None, "", IN_Q_OVERFLOW)`` when the kernel dropped some."""
        out: list[tuple[str | None, str, int]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                directory = self._dirs.get(wd)
                if mask & IN_IGNORED:
                    self._dirs.pop(wd, None)
                if directory is not None or mask & IN_Q_OVERFLOW:
                    out.append((directory, os.fsdecode(name), mask))

    def close(self) -> None:
        os.close(self.fd)
