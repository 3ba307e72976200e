"""Test doubles for the xen/ layer: an in-process xenstored speaking the real wire format, and a
programmable backend.  The fake xenstored is written from the protocol description (header of
four little-endian u32, NUL-separated payloads, ERROR replies carrying an errno name), so the
client is tested against the framing it will meet, not against its own encoder."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

from xen_driver.xen.backend import DomainInfo, DomainNotFound, DomainState

HDR = struct.Struct("<IIII")
(DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END) = (1, 2, 3, 4, 5, 6, 7)
(GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR) = (10, 11, 12, 13, 14, 15, 16)


@dataclass
class _Node:
    value: bytes = b""
    perms: list[str] = field(default_factory=lambda: ["n0"])


class FakeXenstored:
    """A small xenstored: a path→node dict, watches, transactions (copy-on-start, EAGAIN on conflict)."""

    def __init__(self, path: str):
        self.path = path
        self.nodes: dict[str, _Node] = {"/": _Node()}
        self.watches: list[tuple[asyncio.StreamWriter, str, str]] = []
        self.transactions: dict[int, dict[str, _Node]] = {}
        self.tx_base_gen: dict[int, int] = {}
        self.generation = 0
        self.next_tx = 1
        self.commits = 0
        self.requests: list[tuple[int, int, int, bytes]] = []
        self.delay_reads: dict[str, float] = {}  # path → seconds before answering
        self.fail_commits = 0  # answer EAGAIN to the next N commits
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> "FakeXenstored":
        self.server = await asyncio.start_unix_server(self._client, path=self.path)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.drop_clients()
        await self.server.wait_closed()

    def drop_clients(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()
        self.watches.clear()

    # ----------------------------------------------------------- tree helpers
    def _tree(self, tx: int) -> dict[str, _Node]:
        return self.transactions[tx] if tx else self.nodes

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def _ensure(self, tree: dict[str, _Node], path: str) -> None:
        if path in tree:
            return
        parent = self._parent(path)
        self._ensure(tree, parent)
        tree[path] = _Node(perms=list(tree[parent].perms))

    def _fire(self, path: str) -> None:
        for writer, wpath, token in list(self.watches):
            if path == wpath or path.startswith(wpath.rstrip("/") + "/") or (
                wpath.startswith("@") and path == wpath
            ):
                self._send(writer, WATCH_EVENT, 0, 0, path.encode() + b"\0" + token.encode() + b"\0")

    def fire_special(self, name: str = "@releaseDomain") -> None:
        self._fire(name)

    def _send(self, writer: asyncio.StreamWriter, mtype: int, req: int, tx: int, payload: bytes) -> None:
        if not writer.is_closing():
            writer.write(HDR.pack(mtype, req, tx, len(payload)) + payload)

    # ---------------------------------------------------------------- serving
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                hdr = await reader.readexactly(HDR.size)
                mtype, req, tx, length = HDR.unpack(hdr)
                payload = await reader.readexactly(length)
                self.requests.append((mtype, req, tx, payload))
                asyncio.get_running_loop().create_task(self._answer(writer, mtype, req, tx, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.watches = [w for w in self.watches if w[0] is not writer]

    async def _answer(self, writer, mtype, req, tx, payload) -> None:  # type: ignore[no-untyped-def]
        parts = payload.split(b"\0")
        path = parts[0].decode()
        if mtype == READ and path in self.delay_reads:
            await asyncio.sleep(self.delay_reads[path])
        try:
            reply = self._handle(writer, mtype, tx, path, parts, payload)
        except KeyError as exc:
            self._send(writer, ERROR, req, tx, str(exc.args[0]).encode() + b"\0")
            return
        self._send(writer, mtype, req, tx, reply)

    def _handle(self, writer, mtype, tx, path, parts, payload) -> bytes:  # type: ignore[no-untyped-def]
        if tx and tx not in self.transactions:
            raise KeyError("ENOENT")
        tree = self._tree(tx) if mtype not in (TX_START,) else self.nodes
        if mtype == READ:
            if path not in tree:
                raise KeyError("ENOENT")
            return tree[path].value
        if mtype == WRITE:
            value = payload[len(parts[0]) + 1 :]
            self._ensure(tree, path)
            tree[path].value = value
            if not tx:
                self.generation += 1
                self._fire(path)
            return b"OK\0"
        if mtype == MKDIR:
            self._ensure(tree, path)
            if not tx:
                self.generation += 1
                self._fire(path)
            return b"OK\0"
        if mtype == RM:
            if path not in tree:
                if self._parent(path) not in tree:
                    raise KeyError("ENOENT")
                return b"OK\0"
            for p in [p for p in tree if p == path or p.startswith(path + "/")]:
                del tree[p]
            if not tx:
                self.generation += 1
                self._fire(path)
            return b"OK\0"
        if mtype == DIRECTORY:
            if path not in tree:
                raise KeyError("ENOENT")
            prefix = path.rstrip("/") + "/"
            kids = sorted({p[len(prefix) :].split("/")[0] for p in tree if p.startswith(prefix) and p != path})
            return b"".join(k.encode() + b"\0" for k in kids)
        if mtype == GET_PERMS:
            if path not in tree:
                raise KeyError("ENOENT")
            return b"".join(p.encode() + b"\0" for p in tree[path].perms)
        if mtype == SET_PERMS:
            if path not in tree:
                raise KeyError("ENOENT")
            tree[path].perms = [p.decode() for p in parts[1:] if p]
            return b"OK\0"
        if mtype == GET_DOMAIN_PATH:
            return f"/local/domain/{int(path)}".encode() + b"\0"
        if mtype == WATCH:
            token = parts[1].decode()
            self.watches.append((writer, path, token))
            # xenstored fires a new watch once straight away; send it after the reply.
            asyncio.get_running_loop().call_soon(
                self._send, writer, WATCH_EVENT, 0, 0, path.encode() + b"\0" + token.encode() + b"\0"
            )
            return b"OK\0"
        if mtype == UNWATCH:
            token = parts[1].decode()
            self.watches = [w for w in self.watches if not (w[0] is writer and w[1] == path and w[2] == token)]
            return b"OK\0"
        if mtype == TX_START:
            tid = self.next_tx
            self.next_tx += 1
            self.transactions[tid] = {p: _Node(n.value, list(n.perms)) for p, n in self.nodes.items()}
            self.tx_base_gen[tid] = self.generation
            return str(tid).encode() + b"\0"
        if mtype == TX_END:
            copy = self.transactions.pop(tx)
            base = self.tx_base_gen.pop(tx)
            if path == "T":
                if self.fail_commits:
                    self.fail_commits -= 1
                    raise KeyError("EAGAIN")
                if base != self.generation:
                    raise KeyError("EAGAIN")
                changed = {p for p in set(copy) | set(self.nodes) if p not in copy or p not in self.nodes
                           or copy[p].value != self.nodes[p].value or copy[p].perms != self.nodes[p].perms}
                self.nodes = copy
                self.generation += 1
                self.commits += 1
                for p in sorted(changed):
                    self._fire(p)
            return b"OK\0"
        raise KeyError("ENOSYS")


class FakeBackend:
    """A Backend whose domain table the test edits directly."""

    kind = "fake"

    def __init__(self) -> None:
        self.domains: dict[str, DomainInfo] = {}
        self.list_calls = 0
        self.destroyed: list[str] = []

    def set(self, name: str, domid: int, state: DomainState, **kw: object) -> None:
        self.domains[name] = DomainInfo(name=name, domid=domid, uuid=None, state=state, **kw)  # type: ignore[arg-type]

    async def list_domains(self) -> list[DomainInfo]:
        self.list_calls += 1
        return list(self.domains.values())

    async def domain(self, name: str) -> DomainInfo:
        if name not in self.domains:
            raise DomainNotFound(name)
        return self.domains[name]

    async def destroy(self, name: str) -> None:
        self.destroyed.append(name)
        self.domains.pop(name, None)

    async def validate(self, spec):  # type: ignore[no-untyped-def]
        return None

    async def create_domain(self, spec, *, paused=True):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def unpause(self, name: str) -> None:
        return None

    async def shutdown(self, name: str, *, wait: bool = False) -> None:
        return None
