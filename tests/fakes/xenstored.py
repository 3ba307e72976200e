"""A xenstored speaking the real wire format over a unix socket, in-process or as a process.

Written from the protocol description (header of four little-endian u32, NUL-separated
payloads, ERROR replies carrying an errno name, at most 4096 payload bytes, so a long
directory answers E2BIG and must be read with DIRECTORY_PART), so the client is tested against
the framing it will meet, not against its own encoder.

Run as a process (``python -m tests.fakes.xenstored --socket S --domains DIR``) it also stands
in for the hypervisor and the guests, with the domain table the fake ``xl`` keeps
(:mod:`tests.fakes.domains`): a guest asked to power off through ``control/shutdown`` shuts
down (unless its command line says ``ignore-shutdown``), and ``@releaseDomain`` fires for
every domain that shuts down or is destroyed (the fake ``xl`` reports those by writing
``/fake/release``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

HDR = struct.Struct("<IIII")
(DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END) = (1, 2, 3, 4, 5, 6, 7)
(GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR) = (10, 11, 12, 13, 14, 15, 16)
(IS_DOMAIN_INTRODUCED, DIRECTORY_PART) = (17, 22)
PAYLOAD_MAX = 4096
#: Written by the fake xl after a domain shut down or was destroyed: fire @releaseDomain.
RELEASE_HOOK = "/fake/release"
_SHUTDOWN_RE = re.compile(r"^/local/domain/(\d+)/control/shutdown$")


@dataclass
class _Node:
    value: bytes = b""
    perms: list[str] = field(default_factory=lambda: ["n0"])


class FakeXenstored:
    """A small xenstored: a path→node dict, watches, transactions (copy-on-start, EAGAIN on conflict)."""

    def __init__(self, path: str, *, record_requests: bool = True):
        self.path = path
        self.record_requests = record_requests
        #: Called as ``on_write(path, value)`` after every write outside a transaction.
        self.on_write: list[Callable[[str, bytes], None]] = []
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

    async def start(self) -> FakeXenstored:
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

    def _children(self, tree: dict[str, _Node], path: str) -> bytes:
        if path not in tree:
            raise KeyError("ENOENT")
        prefix = path.rstrip("/") + "/"
        kids = sorted({p[len(prefix) :].split("/")[0] for p in tree if p.startswith(prefix) and p != path})
        return b"".join(k.encode() + b"\0" for k in kids)

    def _fire(self, path: str) -> None:
        for writer, wpath, token in list(self.watches):
            if path == wpath or path.startswith(wpath.rstrip("/") + "/") or (wpath.startswith("@") and path == wpath):
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
                if self.record_requests:
                    self.requests.append((mtype, req, tx, payload))
                asyncio.get_running_loop().create_task(self._answer(writer, mtype, req, tx, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.watches = [w for w in self.watches if w[0] is not writer]

    async def _answer(self, writer, mtype, req, tx, payload) -> None:
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

    def _handle(self, writer, mtype, tx, path, parts, payload) -> bytes:
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
                if path == RELEASE_HOOK:
                    self.fire_special()
                else:
                    self._fire(path)
                for hook in self.on_write:
                    hook(path, value)
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
            listing = self._children(tree, path)
            if len(listing) > PAYLOAD_MAX:
                raise KeyError("E2BIG")  # as xenstored: the client must use DIRECTORY_PART
            return listing
        if mtype == DIRECTORY_PART:
            # <path>|<offset>| -> <generation>|<children from offset>|, the last part with an
            # extra empty string; parts end on a child boundary.
            listing = self._children(tree, path)
            offset = int(parts[1].decode() or 0)
            gen = str(self.generation).encode() + b"\0"
            room = PAYLOAD_MAX - len(gen) - 1
            chunk = listing[offset : offset + room]
            if offset + len(chunk) < len(listing):
                chunk = chunk[: chunk.rfind(b"\0") + 1]
                return gen + chunk
            return gen + chunk + b"\0"
        if mtype == IS_DOMAIN_INTRODUCED:
            return b"T\0" if f"/local/domain/{int(path)}" in tree else b"F\0"
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
                changed = {
                    p
                    for p in set(copy) | set(self.nodes)
                    if p not in copy
                    or p not in self.nodes
                    or copy[p].value != self.nodes[p].value
                    or copy[p].perms != self.nodes[p].perms
                }
                self.nodes = copy
                self.generation += 1
                self.commits += 1
                for p in sorted(changed):
                    self._fire(p)
            return b"OK\0"
        raise KeyError("ENOSYS")


# ---------------------------------------------------------------- as a process
def guest_side(server: FakeXenstored, domains_dir: str) -> Callable[[str, bytes], None]:
    """What the guests and the hypervisor do when dom0 writes: a PV guest asked to power off
    (``control/shutdown``) shuts down, and Xen's domain-exception VIRQ makes xenstored fire
    ``@releaseDomain``."""
    from tests.fakes.domains import DomainTable

    table = DomainTable(domains_dir)
    reasons = {"poweroff": 0, "halt": 0, "reboot": 1, "suspend": 2, "crash": 3}

    def on_write(path: str, value: bytes) -> None:
        m = _SHUTDOWN_RE.match(path)
        if not m or value.decode(errors="replace") not in reasons:
            return
        domid, reason = int(m.group(1)), reasons[value.decode()]

        def act() -> None:
            if table.guest_shutdown(domid, reason):
                server.fire_special()

        asyncio.get_running_loop().call_soon(act)

    return on_write


async def _serve(socket_path: str, domains_dir: str | None) -> None:
    server = FakeXenstored(socket_path, record_requests=False)
    for p in ("/local", "/local/domain", "/vm", "/libxl", "/fake"):
        server._ensure(server.nodes, p)
    if domains_dir:
        server.on_write.append(guest_side(server, domains_dir))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)


def main() -> None:
    ap = argparse.ArgumentParser(description="a fake xenstored for tests and benchmarks")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--domains", help="the fake xl's FAKE_XEN_DIR, to play the guests' side")
    args = ap.parse_args()
    asyncio.run(_serve(args.socket, args.domains))


if __name__ == "__main__":
    main()
