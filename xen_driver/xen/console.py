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
import os
import time
from collections.abc import Callable

import structlog

from xen_driver.xen.console_stream import ConsoleStream
from xen_driver.xen.inotify import (
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_Q_OVERFLOW,
    Inotify,
)
from xen_driver.xen.inotify import (
    split_path as _split,
)
from xen_driver.xen.sinks import (
    PIPE_BUF,
    ConsoleSink,
    FifoSink,
    MemorySink,
    NullSink,
    SinkUnavailable,
)

__all__ = [
    "PIPE_BUF",
    "ConsolePump",
    "ConsoleSink",
    "ConsoleStream",
    "FifoSink",
    "Inotify",
    "MemorySink",
    "NullSink",
    "SinkUnavailable",
]

log = structlog.get_logger(__name__)


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

    def retry_now(self, name: str) -> None:
        """Deliver ``name``'s undelivered bytes at the next pass, not after its sink back-off
        (its sink can take them again, e.g. a hold was lifted)."""
        stream = self._streams.get(name)
        if stream is not None:
            stream._retry_at, stream._backoff = 0.0, 0.1
            self._dirty.add(name)
            self._wake.set()

    def __contains__(self, name: object) -> bool:
        return name in self._streams

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

    def detach(self, name: str) -> ConsoleStream | None:
        """Stop a stream at once, without draining it or closing its sink (the caller's)."""
        stream = self._streams.get(name)
        if stream is not None:
            self._forget(name, stream)
            stream.close()
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

    async def __aenter__(self) -> ConsolePump:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
