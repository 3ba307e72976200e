"""Stream guest consoles (xenconsoled log files) into sinks, resumably, from one loop.

``xenconsoled --log=guest`` appends everything a guest prints to
``<log_dir>/guest-<name>.log``.  The driver must copy that into Nomad's stdout FIFO so it shows
in ``nomad alloc logs``, and must resume after a plugin restart without duplicating or losing
output.  Hence:

* **Offsets are committed only after the sink accepted the bytes.**  ``ConsoleStream.offset``
  (and the ``on_commit`` callback) is the file offset up to which output has been delivered;
  the driver persists it and passes it back to :meth:`ConsolePump.add` after a restart.  Writes
  go in pieces of at most ``PIPE_BUF`` bytes, which a FIFO takes atomically, so a write either
  delivered all of its piece or none of it.
* **One loop for all guests, woken by what changed.**  An inotify watch on each console log
  directory (one descriptor for all, through ctypes) tells the single pump task which files were
  written, created, moved or deleted; only those are read.  An idle guest therefore costs
  nothing, however many there are.  A slow safety pass (every ``safety_s``, 30 s) reads every
  file anyway, in case a change slipped past (a queue overflow re-reads everything at once);
  streams whose directory cannot be watched (no inotify, directory missing) are polled every
  ``tick_s`` (150 ms), as are streams with undelivered bytes.  Reading a regular file from the
  page cache does not block for long, so no task or thread per guest is needed.
* **Files come and go.**  A log that does not exist yet is waited for; a file that shrank was
  truncated (start again at 0); a file whose inode changed was rotated (finish the old one, then
  start the new one at 0).
* **Sinks fail.**  Nomad's logmon may restart, so a FIFO write can hit EPIPE or find no reader;
  the stream keeps its unsent bytes, backs off and retries, and :class:`FifoSink` reopens.
* **Boot markers.**  :meth:`ConsoleStream.wait_for` matches against bytes as the pump reads
  them, plus a bounded history of what was already read, so it never re-reads the file from the
  start and cannot miss a marker printed just before it was called.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

PIPE_BUF = 4096


class SinkUnavailable(Exception):
    """The sink cannot take data right now (no FIFO reader, EPIPE, ...); retry later."""


class ConsoleSink(Protocol):
    """Where console bytes go.  ``write`` delivers all of ``data`` or raises."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class FifoSink:
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
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                # O_NOFOLLOW: the log directory is inside the allocation, whose files a job can
                # write; a symlink there must not turn console output into a write elsewhere.
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    raise SinkUnavailable(f"{self.path}: {exc.strerror}") from None
                if exc.errno == errno.ELOOP:
                    raise SinkUnavailable(f"{self.path}: is a symbolic link; console output is not written through it") from None
                raise
            is_fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
            if not is_fifo:
                os.set_blocking(fd, True)  # regular files and /dev/null never block for long
            self._fd = fd
            if is_fifo and self.on_fifo_open is not None:
                self.on_fifo_open()
        return self._fd

    async def write(self, data: bytes) -> None:
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

    def _reset(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def close(self) -> None:
        self._reset()


class MemorySink:
    """Collects bytes in memory; for tests and for callers that post-process output."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data

    async def close(self) -> None:
        pass


@dataclass
class _Waiter:
    pattern: re.Pattern[bytes]
    future: asyncio.Future[int]
    carry: bytes  # tail of already-scanned bytes, so a marker split across reads is found
    carry_start: int  # file offset of carry[0]


class ConsoleStream:
    """One guest console being copied into one sink (created by :meth:`ConsolePump.add`)."""

    def __init__(
        self,
        name: str,
        path: str,
        sink: ConsoleSink,
        offset: int,
        on_commit: Callable[[int], None] | None,
        history_bytes: int,
    ):
        self.name = name
        self.path = path
        self.sink = sink
        self.offset = offset  # committed: delivered to the sink
        self.read_offset = offset  # read from the file (>= offset)
        self.start_offset = offset
        self.on_commit = on_commit
        self.inode: int | None = None
        self.truncations = 0
        self.rotations = 0
        self.sink_errors = 0
        self._fd: int | None = None
        self._pending = bytearray()  # read from the current file but not yet delivered
        self._orphan = bytearray()  # undelivered bytes of a file that was rotated or truncated
        self._history = bytearray()  # recently read bytes, for wait_for
        self._history_start = offset
        self._history_max = history_bytes
        self._waiters: list[_Waiter] = []
        self._retry_at = 0.0
        self._backoff = 0.1

    # ---------------------------------------------------------------- waiting
    async def wait_for(self, pattern: bytes | str | re.Pattern[bytes], timeout_s: float, *, since: int | None = None) -> int:
        """Wait until ``pattern`` appears in the console at or after file offset ``since``.

        ``since`` defaults to the offset the stream started at.  Returns the file offset just
        past the match.  Raises ``TimeoutError``.
        """
        if isinstance(pattern, str):
            pattern = pattern.encode()
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
        start = self.start_offset if since is None else since
        # First look at what was already read (bounded history, no file re-read).
        hist_from = max(start, self._history_start)
        known = bytes(self._history[hist_from - self._history_start :])
        m = regex.search(known)
        if m:
            return hist_from + m.end()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        carry = known[-PIPE_BUF:]
        waiter = _Waiter(regex, fut, carry, hist_from + len(known) - len(carry))
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"{self.path}: {regex.pattern!r} not seen within {timeout_s:g}s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _feed(self, data: bytes, at: int) -> None:
        self._history += data
        if len(self._history) > self._history_max:
            cut = len(self._history) - self._history_max
            del self._history[:cut]
            self._history_start += cut
        for w in list(self._waiters):
            if w.future.done():
                continue
            buf = w.carry + data
            m = w.pattern.search(buf)
            if m:
                w.future.set_result(w.carry_start + m.end())
            else:
                w.carry = buf[-PIPE_BUF:]
                w.carry_start = at + len(data) - len(w.carry)

    def _restart_file(self, why: str) -> None:
        log.warning("console log restarted", domain=self.name, path=self.path, why=why, old_offset=self.read_offset)
        self._close_fd()
        # Undelivered bytes of the old file are still delivered (first), but they no longer
        # have an offset: the committed offset refers to the new file from now on.
        self._orphan += self._pending
        self._pending.clear()
        self.inode = None
        self._zero_offsets()

    def _zero_offsets(self) -> None:
        self.read_offset = self.offset = self.start_offset = 0
        self._history.clear()
        self._history_start = 0
        for w in self._waiters:
            w.carry, w.carry_start = b"", 0

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------- pumping
    def _read_new(self, max_bytes: int) -> int:
        """Read whatever is new in the file into ``_pending``; returns bytes read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return 0
        if self._fd is not None and st.st_ino == self.inode and st.st_size == self.read_offset:
            return 0  # nothing new (the safety pass finds most files so)
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return 0
            fst = os.fstat(self._fd)
            if self.inode is not None and fst.st_ino != self.inode and self.read_offset:
                # Resumed with the inode of a file that has since been rotated away.
                self.rotations += 1
                self._zero_offsets()
            elif fst.st_size < self.read_offset:
                # Resumed with an offset beyond the end: the file was truncated meanwhile.
                self.truncations += 1
                self._zero_offsets()
            self.inode = fst.st_ino
        elif st.st_ino != self.inode:
            # Rotated: drain the old file through our open descriptor first.
            got = self._read_fd(max_bytes)
            if got:
                return got
            self.rotations += 1
            self._close_fd()
            self._restart_file("rotated")
            return self._read_new(max_bytes)
        elif st.st_size < self.read_offset:
            self.truncations += 1
            self._restart_file("truncated")
            return self._read_new(max_bytes)
        return self._read_fd(max_bytes)

    def _read_fd(self, max_bytes: int) -> int:
        assert self._fd is not None
        room = max_bytes - len(self._pending)
        if room <= 0:
            return 0
        data = os.pread(self._fd, room, self.read_offset)
        if data:
            at = self.read_offset
            self.read_offset += len(data)
            self._pending += data
            self._feed(data, at)
        return len(data)

    async def _deliver(self, now: float) -> int:
        if not (self._pending or self._orphan) or now < self._retry_at:
            return 0
        sent = 0
        while self._orphan or self._pending:
            buf = self._orphan if self._orphan else self._pending
            piece = bytes(buf[:PIPE_BUF])
            try:
                await self.sink.write(piece)
            except (SinkUnavailable, OSError) as exc:
                self.sink_errors += 1
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 5.0)
                log.debug("console sink unavailable", domain=self.name, error=str(exc))
                break
            del buf[: len(piece)]
            sent += len(piece)
            self._backoff = 0.1
            if buf is self._pending:
                self.offset += len(piece)
                if self.on_commit is not None:
                    self.on_commit(self.offset)
        return sent

    @property
    def caught_up(self) -> bool:
        """All bytes currently in the file were delivered."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return not (self._pending or self._orphan)
        return not (self._pending or self._orphan) and self.read_offset >= size

    def close(self) -> None:
        self._close_fd()
        for w in self._waiters:
            if not w.future.done():
                w.future.cancel()


# inotify(7): the events that can mean "this file has new bytes, or is another file now".
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_WATCH_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def _split(path: str) -> tuple[str, str]:
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

    def add(self, directory: str) -> int:
        wd = self._add(self.fd, os.fsencode(directory), _WATCH_MASK)
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


class ConsolePump:
    """Copies many console logs into their sinks from one asyncio task."""

    def __init__(
        self,
        *,
        tick_s: float = 0.15,
        safety_s: float = 30.0,
        max_pending: int = 1 << 20,
        history_bytes: int = 1 << 16,
        use_inotify: bool = True,
    ):
        self.tick_s = tick_s
        self.safety_s = safety_s
        self.max_pending = max_pending
        self.history_bytes = history_bytes
        self.use_inotify = use_inotify
        self._streams: dict[str, ConsoleStream] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._inotify: Inotify | None = None
        self._dir_watch: dict[str, int] = {}  # directory -> inotify watch descriptor
        self._by_path: dict[tuple[str, str], set[str]] = {}  # (directory, file) -> streams reading it
        self._dirty: set[str] = set()  # streams to read at the next wake-up
        self._polled: set[str] = set()  # streams read every tick (unwatched directory, undelivered bytes)
        self._last_full = 0.0
        self.passes = 0  # reads of one stream, for tests and benchmarks

    @staticmethod
    def log_path(log_dir: str | os.PathLike[str], name: str) -> str:
        """xenconsoled's per-guest log file name."""
        return os.path.join(os.fspath(log_dir), f"guest-{name}.log")

    def add(
        self,
        name: str,
        path: str | os.PathLike[str],
        sink: ConsoleSink,
        *,
        offset: int = 0,
        inode: int | None = None,
        on_commit: Callable[[int], None] | None = None,
    ) -> ConsoleStream:
        """Start copying ``path`` from byte ``offset`` into ``sink``; ``name`` keys the stream.

        When resuming after a restart, pass the ``offset`` (and, if it was persisted, the
        ``inode``) the previous stream had committed: a file with another inode, or one shorter
        than ``offset``, is taken as rotated/truncated and read from 0.
        """
        if name in self._streams:
            raise ValueError(f"console stream {name!r} already exists")
        if offset < 0:
            raise ValueError("offset must be >= 0")
        stream = ConsoleStream(name, os.fspath(path), sink, offset, on_commit, self.history_bytes)
        stream.inode = inode
        self._streams[name] = stream
        self._by_path.setdefault(_split(stream.path), set()).add(name)
        if not self._watch_dir(_split(stream.path)[0]):
            self._polled.add(name)
        self._dirty.add(name)
        self._wake.set()
        return stream

    def _watch_dir(self, directory: str) -> bool:
        """Watch ``directory`` with inotify (once for all its streams); False when it cannot be."""
        if directory in self._dir_watch:
            return True
        if not self.use_inotify or self._task is None:
            return False  # not running yet: start() watches the directories of streams added before
        try:
            if self._inotify is None:
                self._inotify = Inotify()
                asyncio.get_running_loop().add_reader(self._inotify.fd, self._on_inotify)
            self._dir_watch[directory] = self._inotify.add(directory)
            return True
        except OSError as exc:
            log.debug("console directory not watched; polling it", directory=directory, error=str(exc))
            return False

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        for directory, name, mask in self._inotify.read():
            if directory is None or mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                # Events were lost, or the directory itself went away: read everything, and poll
                # the streams of a directory no longer watched.
                if directory is not None and mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    wd = self._dir_watch.pop(directory, None)
                    if wd is not None and not mask & IN_IGNORED:
                        self._inotify.remove(wd)
                    self._polled.update(n for n, s in self._streams.items() if _split(s.path)[0] == directory)
                self._dirty.update(self._streams)
                continue
            self._dirty.update(self._by_path.get((directory, name), ()))
        if self._dirty:
            self._wake.set()

    def get(self, name: str) -> ConsoleStream:
        return self._streams[name]

    async def remove(self, name: str, *, drain_timeout_s: float = 0.0) -> ConsoleStream | None:
        """Stop a stream, first delivering what is left for up to ``drain_timeout_s``."""
        stream = self._streams.get(name)
        if stream is None:
            return None
        if drain_timeout_s > 0:
            await self.drain(name, drain_timeout_s)
        self._forget(name, stream)
        stream.close()
        await stream.sink.close()
        return stream

    def _forget(self, name: str, stream: ConsoleStream) -> None:
        self._streams.pop(name, None)
        self._dirty.discard(name)
        self._polled.discard(name)
        key = _split(stream.path)
        names = self._by_path.get(key)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_path[key]

    async def drain(self, name: str, timeout_s: float) -> bool:
        """Wait until everything currently in the file was delivered; False on timeout."""
        stream = self._streams[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.pump_once(only=stream)
            if stream.caught_up:
                return True
            await asyncio.sleep(min(self.tick_s, 0.05))
        return stream.caught_up

    async def pump_once(self, only: ConsoleStream | None = None) -> int:
        """One pass over all streams (or one); returns bytes delivered."""
        return await self._pump(self._streams.values() if only is None else [only])

    async def _pump(self, streams) -> int:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        total = 0
        for stream in list(streams):
            self.passes += 1
            try:
                # Read in rounds so one chatty guest cannot starve the others for long.
                before = len(stream._pending)
                got = stream._read_new(self.max_pending)
                total += await stream._deliver(now)
                if stream._pending or stream._orphan or (got and got >= self.max_pending - before):
                    self._polled.add(stream.name)  # more to deliver or to read: no event will say so
                elif stream.name in self._polled and self._watched(stream):
                    self._polled.discard(stream.name)
            except OSError as exc:
                log.warning("console read failed", domain=stream.name, path=stream.path, error=str(exc))
            except Exception:  # a broken sink must not stop the other guests' consoles
                log.exception("console stream failed", domain=stream.name, path=stream.path)
        return total

    def _watched(self, stream: ConsoleStream) -> bool:
        return _split(stream.path)[0] in self._dir_watch

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if now - self._last_full >= self.safety_s:
                self._last_full = now
                self._dirty.clear()
                for name in list(self._polled):  # a directory that appeared since can be watched now
                    if (stream := self._streams.get(name)) is not None:
                        self._watch_dir(_split(stream.path)[0])
                await self.pump_once()
            else:
                todo = (self._dirty | self._polled) & self._streams.keys()
                self._dirty.clear()
                await self._pump(self._streams[n] for n in todo)
            if self._dirty:
                continue  # changed while we were reading
            self._wake.clear()
            wait = self.tick_s if self._polled else self.safety_s - (time.monotonic() - self._last_full)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._wake.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-pump")
            self._last_full = time.monotonic()
            for name, stream in self._streams.items():  # added before the pump ran
                if self._watch_dir(_split(stream.path)[0]):
                    self._polled.discard(name)
                self._dirty.add(name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._dir_watch.clear()
        for stream in list(self._streams.values()):
            stream.close()
            with contextlib.suppress(Exception):
                await stream.sink.close()
        self._streams.clear()
        self._by_path.clear()
        self._dirty.clear()
        self._polled.clear()

    async def __aenter__(self) -> "ConsolePump":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
