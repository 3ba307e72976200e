"""One guest console being read from its xenconsoled log into one sink (see :mod:`.console`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from xen_driver.xen.sinks import PIPE_BUF, ConsoleSink, SinkUnavailable

log = structlog.get_logger("xen_driver.xen.console")


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
        #: Awaited with the new offset after a piece was written and before it is committed: a
        #: test hook that holds a copier in exactly the window a crash would duplicate.
        self.before_commit: Callable[[int], Awaitable[None]] | None = None

    # ---------------------------------------------------------------- waiting
    async def wait_for(
        self, pattern: bytes | str | re.Pattern[bytes], timeout_s: float, *, since: int | None = None
    ) -> int:
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
                if self.before_commit is not None:
                    await self.before_commit(self.offset + len(piece))
                self.offset += len(piece)
                if self.on_commit is not None:
                    self.on_commit(self.offset)
        return sent

    @property
    def undelivered(self) -> int:
        """Bytes read from the console log and not yet delivered to the sink."""
        return len(self._pending) + len(self._orphan)

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
