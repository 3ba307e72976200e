"""Where a guest's console bytes go: Nomad's stdout FIFO (:class:`FifoSink`), Nomad's log files
(:class:`RotatingFileSink`), memory, nowhere.

A sink's ``write`` delivers all of its bytes or raises; :class:`SinkUnavailable` means "not now,
keep the bytes and retry" (no FIFO reader yet, the reader went away, the reader is not
draining).  The console streams (:mod:`xen_driver.xen.console_stream`) commit an offset only
after ``write`` returned, which is what makes resuming exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Protocol

PIPE_BUF = 4096


class SinkUnavailable(Exception):
    """The sink cannot take data right now (no FIFO reader, EPIPE, ...); retry later."""


class ConsoleSink(Protocol):
    """Where console bytes go.  ``write`` delivers all of ``data`` or raises."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class _DescriptorSink:
    """A sink writing through one descriptor, opened on first use and closed by :meth:`close`."""

    _fd: int | None = None

    @property
    def fd(self) -> int | None:
        return self._fd

    def _reset(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def close(self) -> None:
        self._reset()


class FifoSink(_DescriptorSink):
    """Write to a FIFO (Nomad's ``.stdout.fifo``), a file or ``/dev/null`` without blocking.

    The FIFO is opened ``O_WRONLY|O_NONBLOCK``: with no reader that fails with ENXIO instead of
    blocking the event loop, and we report :class:`SinkUnavailable`.  On EPIPE (the reader went
    away, e.g. logmon restarted) the descriptor is closed and reopened on the next write.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        write_timeout_s: float = 5.0,
        on_fifo_open: Callable[[], None] | None = None,
    ):
        self.path = os.fspath(path)
        self.write_timeout_s = write_timeout_s
        self.on_fifo_open = on_fifo_open  # called each time the FIFO is opened (it has a reader then)
        #: While set, :meth:`write` takes nothing and says why (the keeper holds the bytes back
        #: from a reader that is about to exit: see :mod:`xen_driver.xen.agentwatch`).
        self.held: str | None = None
        self._fd = None

    @staticmethod
    def open_fd(path: str) -> int:
        """Open ``path`` the way the sink does (raises ``OSError``); see :meth:`adopt`."""
        # O_NOFOLLOW: the log directory is inside the allocation, whose files a job can
        # write; a symlink there must not turn console output into a write elsewhere.
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def adopt(self, fd: int) -> None:
        """Use ``fd`` (from :meth:`open_fd`) as the open descriptor, so whoever opened the FIFO
        to check it never has to close it first (a FIFO whose last writer closes reads end-of-file)."""
        self._reset()
        self._take(fd)

    def _open(self) -> int:
        if self._fd is None:
            try:
                fd = self.open_fd(self.path)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    raise SinkUnavailable(f"{self.path}: {exc.strerror}") from None
                if exc.errno == errno.ELOOP:
                    raise SinkUnavailable(
                        f"{self.path}: is a symbolic link; console output is not written through it"
                    ) from None
                raise
            self._take(fd)
        assert self._fd is not None
        return self._fd

    def _take(self, fd: int) -> None:
        is_fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
        if not is_fifo:
            os.set_blocking(fd, True)  # regular files and /dev/null never block for long
        self._fd = fd
        if is_fifo and self.on_fifo_open is not None:
            self.on_fifo_open()

    async def write(self, data: bytes) -> None:
        if self.held is not None:
            raise SinkUnavailable(f"{self.path}: {self.held}")
        fd = self._open()
        deadline = time.monotonic() + self.write_timeout_s
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                if len(view) == len(data):
                    # Nothing written: the reader is behind.  Say so at once, so one task's
                    # stalled reader never holds up the pass that serves every other task; the
                    # caller keeps the bytes and retries this stream on its own back-off.  (The
                    # pump writes at most PIPE_BUF at a time, which a FIFO takes whole or not.)
                    raise SinkUnavailable(f"{self.path}: reader is not draining") from None
                if time.monotonic() > deadline:  # a partial write must finish, or bytes repeat
                    raise SinkUnavailable(f"{self.path}: reader is not draining") from None
                await asyncio.sleep(0.01)
            except BrokenPipeError:
                self._reset()
                raise SinkUnavailable(f"{self.path}: reader closed the FIFO") from None


class RotatingFileSink(_DescriptorSink):
    """Write Nomad's task log files directly, as its logmon would: ``<base>.0``, ``<base>.1``, ...

    ``base`` is ``<alloc>/alloc/logs/<task>.stdout``; ``nomad alloc logs`` reads the files of that
    name in index order.  Writing goes on in the highest index present (a successor resumes
    there); a piece that would take the current file past ``max_bytes`` starts the next one, and
    only the newest ``max_files`` are kept.  Used when the driver collects the logs itself
    (``log_collection = "driver"``), so no logmon process runs per task.  The log directory is
    inside the allocation, whose files a job can write: names are opened ``O_NOFOLLOW``, and a
    symlink or anything but a plain file under a log name is refused, never written through.
    """

    def __init__(self, base: str | os.PathLike[str], *, max_files: int, max_bytes: int):
        if max_files < 1 or max_bytes < 1:
            raise ValueError("max_files and max_bytes must be at least 1")
        self.base = os.fspath(base)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._fd = None
        self._index = 0
        self._size = 0

    @property
    def directory(self) -> str:
        return os.path.dirname(self.base)

    def indexes(self) -> list[int]:
        """The indexes of the log files present, in order."""
        prefix = os.path.basename(self.base) + "."
        found = []
        for entry in os.listdir(self.directory):
            tail = entry[len(prefix) :] if entry.startswith(prefix) else ""
            if tail.isdigit():
                found.append(int(tail))
        return sorted(found)

    def _open_index(self, index: int) -> int:
        path = f"{self.base}.{index}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            raise SinkUnavailable(f"{self.directory}: no such directory (the allocation is gone)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SinkUnavailable(f"{path}: is a symbolic link; console output is not written through it") from None
            if exc.errno == errno.EISDIR:
                raise SinkUnavailable(f"{path}: not a plain file; console output is not written into it") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SinkUnavailable(f"{path}: not a plain file; console output is not written into it")
        self._fd, self._index, self._size = fd, index, st.st_size
        return fd

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            present = self.indexes()
        except FileNotFoundError:
            raise SinkUnavailable(f"{self.directory}: no such directory (the allocation is gone)") from None
        return self._open_index(present[-1] if present else 0)

    def _rotate(self) -> int:
        self._reset()
        fd = self._open_index(self._index + 1)
        for index in self.indexes():
            if index <= self._index - self.max_files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.base}.{index}")
        return fd

    async def write(self, data: bytes) -> None:
        fd = self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            fd = self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)  # a plain file takes it all, short of a full disk
            view = view[n:]
            self._size += n


class MemorySink:
    """Collects bytes in memory; for tests and for callers that post-process output."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data

    async def close(self) -> None:
        pass


class NullSink:
    """Takes every byte and keeps none: a stream read only for its boot marker."""

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


async def end_unused_fifo(path: str, *, timeout_s: float = 30.0, every_s: float = 0.02) -> bool:
    """Open the FIFO ``path`` for writing and close it at once, so its reader reads end-of-file.

    A guest has one console, which goes to the task's stdout; nothing ever writes its stderr.
    Nomad's logmon opens each FIFO for reading in a blocking ``open()`` that returns only once a
    writer appears, and when the task ends it waits 2 s for the copy to finish and 2 s more for
    that ``open()``, then logs "timed out waiting for read-side of process output pipe to close".
    Opening and closing the stderr FIFO once ends its copy at the start.  A FIFO with no reader
    yet (``ENXIO``) is tried again every ``every_s`` for ``timeout_s``.  Anything but a FIFO (a
    plain file, ``/dev/null``) is left alone.  True once the reader was given its end-of-file.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(every_s)  # a poll for logmon's reader, bounded by timeout_s
            continue
        try:
            return stat.S_ISFIFO(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
