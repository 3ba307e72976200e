"""The connection to xenstored: :class:`XenStore`.

One object holds one unix-socket connection and multiplexes concurrent requests over it by
``req_id`` (a reader task resolves one future per request), hands watch events to their
:class:`~.watch.Watch`, runs transactions with retries on conflict, and reconnects when xenstored
restarts.  The message format is :mod:`.wire`; the read/write operations are :mod:`.operations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import structlog

from xen_driver.xen.xenstore.operations import Transaction, _Ops
from xen_driver.xen.xenstore.watch import Watch, WatchEvent
from xen_driver.xen.xenstore.wire import (
    HEADER,
    PAYLOAD_MAX,
    Op,
    XenStoreClosed,
    XenStoreError,
    _check_path,
    default_socket_path,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")


class XenStore(_Ops):
    """One multiplexed connection to xenstored.  Use ``async with XenStore() as xs:``."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        reconnect: bool = True,
        reconnect_delay_s: float = 0.5,
        request_timeout_s: float = 30.0,
        watch_queue_size: int = 1024,
    ):
        self.socket_path = socket_path or default_socket_path()
        self.reconnect = reconnect
        self.reconnect_delay_s = reconnect_delay_s
        self.request_timeout_s = request_timeout_s
        self.watch_queue_size = watch_queue_size
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, tuple[asyncio.Future[tuple[int, bytes]], Op]] = {}
        self._watches: dict[str, Watch] = {}
        self._req_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._read_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.reconnects = 0

    # ------------------------------------------------------------ connection
    async def connect(self) -> XenStore:
        await self._open()
        self._read_task = asyncio.create_task(self._read_loop(), name="xenstore-reader")
        return self

    async def _open(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise XenStoreClosed(f"cannot connect to xenstored at {self.socket_path}: {exc}") from None
        self._connected.set()

    async def close(self) -> None:
        self._closing = True
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
            self._read_task = None
        self._drop_connection("client closed")
        for w in self._watches.values():
            w.closed = True
        self._watches.clear()

    async def __aenter__(self) -> XenStore:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _drop_connection(self, reason: str) -> None:
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        pending, self._pending = self._pending, {}
        for fut, _op in pending.values():
            if not fut.done():
                fut.set_exception(XenStoreClosed(reason))

    async def _read_loop(self) -> None:
        while True:
            try:
                assert self._reader is not None
                while True:
                    header = await self._reader.readexactly(HEADER.size)
                    mtype, req_id, _tx, length = HEADER.unpack(header)
                    payload = await self._reader.readexactly(length) if length else b""
                    self._dispatch(mtype, req_id, payload)
            except asyncio.CancelledError:
                raise
            except (asyncio.IncompleteReadError, ConnectionError, OSError, AssertionError) as exc:
                reason = f"connection to xenstored lost: {exc.__class__.__name__}"
            if self._closing:
                return
            log.warning("xenstore connection lost", socket=self.socket_path, reason=reason)
            self._drop_connection(reason)
            if not self.reconnect:
                return
            await self._reconnect_forever()

    async def _reconnect_forever(self) -> None:
        delay = self.reconnect_delay_s
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._open()
            except XenStoreClosed:
                delay = min(delay * 2, 10.0)
                continue
            self.reconnects += 1
            log.info("xenstore reconnected", socket=self.socket_path, reconnects=self.reconnects)
            # The reader must run before we can await replies to the re-registrations.
            asyncio.get_running_loop().create_task(self._rewatch())
            return

    async def _rewatch(self) -> None:
        for watch in list(self._watches.values()):
            try:
                await self._call(Op.WATCH, _check_path(watch.path) + b"\x00" + watch.token.encode() + b"\x00")
            except XenStoreError as exc:
                log.warning("xenstore re-watch failed", path=watch.path, error=str(exc))
            # Anything may have happened while we were away: make the consumer look.
            watch._deliver(WatchEvent(watch.path, watch.token))

    def _dispatch(self, mtype: int, req_id: int, payload: bytes) -> None:
        if mtype == Op.WATCH_EVENT:
            parts = payload.split(b"\x00")
            if len(parts) >= 2:
                path, token = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
                watch = self._watches.get(token)
                if watch is not None:
                    watch._deliver(WatchEvent(path, token))
            return
        entry = self._pending.pop(req_id, None)
        if entry is None:
            log.debug("xenstore reply for unknown request", req_id=req_id, type=mtype)
            return
        fut, _op = entry
        if not fut.done():
            fut.set_result((mtype, payload))

    # ------------------------------------------------------------- requests
    async def _call(self, op: Op, payload: bytes, *, tx_id: int = 0, path: str | None = None) -> bytes:
        if len(payload) > PAYLOAD_MAX:
            # xenstored drops the whole connection on an oversized message; fail just this call.
            raise XenStoreError(op, path, "E2BIG")
        if not self._connected.is_set():
            if self._closing or not self.reconnect or self._read_task is None:
                raise XenStoreClosed("not connected to xenstored")
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    await self._connected.wait()
            except TimeoutError:
                raise XenStoreClosed("timed out waiting to reconnect to xenstored") from None
        req_id = next(self._req_ids) & 0xFFFFFFFF or next(self._req_ids)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (fut, op)
        assert self._writer is not None
        self._writer.write(HEADER.pack(op, req_id, tx_id, len(payload)) + payload)
        try:
            # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives just as the reply does.
            async with asyncio.timeout(self.request_timeout_s):
                await self._writer.drain()
                mtype, reply = await fut
        except TimeoutError:
            raise XenStoreError(op, path, "ETIMEDOUT") from None
        except (ConnectionError, OSError) as exc:
            raise XenStoreClosed(f"write to xenstored failed: {exc}") from None
        finally:
            # On success the reader already removed the entry; on timeout, cancellation or a
            # broken connection nobody else will.
            self._pending.pop(req_id, None)
            if not fut.done():
                fut.cancel()
        if mtype == Op.ERROR:
            raise XenStoreError(op, path, reply.rstrip(b"\x00").decode("ascii", "replace"))
        return reply

    async def _request(self, op: Op, payload: bytes, *, path: str | None = None) -> bytes:
        return await self._call(op, payload, path=path)

    async def get_domain_path(self, domid: int) -> str:
        raw = await self._call(Op.GET_DOMAIN_PATH, str(int(domid)).encode() + b"\x00")
        return raw.rstrip(b"\x00").decode("ascii")

    async def is_domain_introduced(self, domid: int) -> bool:
        raw = await self._call(Op.IS_DOMAIN_INTRODUCED, str(int(domid)).encode() + b"\x00")
        return raw.rstrip(b"\x00") == b"T"

    async def find_domid(self, name: str) -> int | None:
        """The domid of the domain called ``name``, from ``/local/domain/<domid>/name``.

        The toolstack writes that node while it builds the domain, before ``xl create``
        returns, so this answers in a few XenStore round trips where asking ``xl`` again would
        start another toolstack process.  Newest domids are tried first: a domain just created
        usually has the highest one.
        """
        try:
            children = await self.directory("/local/domain")
        except XenStoreError:
            return None
        for domid in sorted(map(int, filter(str.isdigit, children)), reverse=True):
            value = await self.read_or_none(f"/local/domain/{domid}/name")
            if value is not None and value.decode(errors="replace") == name:
                return domid
        return None

    # --------------------------------------------------------------- watches
    async def watch(self, path: str, token: str | None = None) -> Watch:
        """Register a watch on ``path`` (or ``@releaseDomain``); xenstored fires it once at once."""
        token = token or f"ndx-{next(self._tokens)}"
        if token in self._watches:
            raise ValueError(f"watch token {token!r} already in use")
        if "\x00" in token:
            raise ValueError("watch token must not contain NUL")
        watch = Watch(self, path, token, self.watch_queue_size)
        self._watches[token] = watch  # before the request: the first event may beat the reply
        try:
            await self._call(Op.WATCH, _check_path(path) + b"\x00" + token.encode() + b"\x00", path=path)
        except BaseException:
            self._watches.pop(token, None)
            raise
        return watch

    async def unwatch(self, watch: Watch) -> None:
        if self._watches.pop(watch.token, None) is None:
            return
        watch.closed = True
        with contextlib.suppress(XenStoreError):
            await self._call(
                Op.UNWATCH, _check_path(watch.path) + b"\x00" + watch.token.encode() + b"\x00", path=watch.path
            )

    # ---------------------------------------------------------- transactions
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One attempt at a transaction: commits on normal exit, aborts on exception.

        A commit that conflicts raises ``XenStoreError(errno_name="EAGAIN")``; use
        :meth:`run_transaction` to retry automatically.
        """
        raw = await self._call(Op.TRANSACTION_START, b"\x00")
        tx = Transaction(self, int(raw.rstrip(b"\x00")))
        try:
            yield tx
        except BaseException:
            with contextlib.suppress(XenStoreError):
                await self._call(Op.TRANSACTION_END, b"F\x00", tx_id=tx.tx_id)
            raise
        await self._call(Op.TRANSACTION_END, b"T\x00", tx_id=tx.tx_id)

    async def run_transaction(self, body: Callable[[Transaction], Awaitable[T]], *, attempts: int = 8) -> T:
        """Run ``body(tx)`` in a transaction, retrying the whole body when the commit conflicts."""
        delay = 0.005
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction() as tx:
                    result = await body(tx)
                return result
            except XenStoreError as exc:
                if exc.errno_name != "EAGAIN" or attempt == attempts:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
        raise AssertionError("unreachable")
