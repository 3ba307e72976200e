"""The XenStore operations a caller uses (read, write, mkdir, rm, directory, permissions), written
once for both places they run: on the connection itself (transaction 0) and inside a
:class:`Transaction`.  Each turns its arguments into one request payload and its reply into a
Python value; sending the request is the subclass's ``_request``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xen_driver.xen.xenstore.wire import Op, XenStoreError, _check_path

if TYPE_CHECKING:
    from xen_driver.xen.xenstore.client import XenStore


class _Ops:
    """Read/write operations, shared by the client (tx 0) and transactions."""

    async def _request(self, op: Op, payload: bytes, *, path: str | None = None) -> bytes:
        raise NotImplementedError

    async def read(self, path: str) -> bytes:
        return await self._request(Op.READ, _check_path(path) + b"\x00", path=path)

    async def read_str(self, path: str) -> str:
        return (await self.read(path)).decode("utf-8", "replace")

    async def read_or_none(self, path: str) -> bytes | None:
        try:
            return await self.read(path)
        except XenStoreError as exc:
            if exc.errno_name == "ENOENT":
                return None
            raise

    async def exists(self, path: str) -> bool:
        return await self.read_or_none(path) is not None

    async def write(self, path: str, value: bytes | str) -> None:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        await self._request(Op.WRITE, _check_path(path) + b"\x00" + data, path=path)

    async def mkdir(self, path: str) -> None:
        await self._request(Op.MKDIR, _check_path(path) + b"\x00", path=path)

    async def rm(self, path: str, *, missing_ok: bool = True) -> None:
        try:
            await self._request(Op.RM, _check_path(path) + b"\x00", path=path)
        except XenStoreError as exc:
            if not (missing_ok and exc.errno_name == "ENOENT"):
                raise

    async def directory(self, path: str) -> list[str]:
        """The children of ``path``.  A list longer than one message (``/local/domain`` of about
        a thousand guests once domids have five digits) makes xenstored answer E2BIG; it is
        then read in parts, as libxenstore does."""
        try:
            raw = await self._request(Op.DIRECTORY, _check_path(path) + b"\x00", path=path)
        except XenStoreError as exc:
            if exc.errno_name != "E2BIG":
                raise
            raw = await self._directory_in_parts(path)
        return [p for p in raw.decode("ascii", "replace").split("\x00") if p]

    async def _directory_in_parts(self, path: str, *, attempts: int = 8) -> bytes:
        """``DIRECTORY_PART <path> <offset>`` until the part that ends with an empty name; each
        answer starts with the node's generation, and a change between parts starts over."""
        for _ in range(attempts):
            names, generation = bytearray(), None
            while True:
                raw = await self._request(
                    Op.DIRECTORY_PART, _check_path(path) + b"\x00" + str(len(names)).encode() + b"\x00", path=path
                )
                gen, _, part = raw.partition(b"\x00")
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break  # the node changed under us: read it again from the start
                if part in (b"", b"\x00") or part.endswith(b"\x00\x00"):
                    return bytes(names + part[:-1])
                names += part
        raise XenStoreError(Op.DIRECTORY_PART, path, "EAGAIN")

    async def get_perms(self, path: str) -> list[str]:
        raw = await self._request(Op.GET_PERMS, _check_path(path) + b"\x00", path=path)
        return [p.decode("ascii") for p in raw.split(b"\x00") if p]

    async def set_perms(self, path: str, perms: list[str]) -> None:
        """``perms[0]`` is the owner and the default for everyone else (``n0``, ``r5``, ``b5``)."""
        for p in perms:
            if len(p) < 2 or p[0] not in "rwbn" or not p[1:].isdigit():
                raise ValueError(f"invalid xenstore permission {p!r}")
        payload = _check_path(path) + b"\x00" + b"".join(p.encode("ascii") + b"\x00" for p in perms)
        await self._request(Op.SET_PERMS, payload, path=path)


class Transaction(_Ops):
    """Operations inside one XenStore transaction (see :meth:`XenStore.transaction`)."""

    def __init__(self, client: XenStore, tx_id: int):
        self.client = client
        self.tx_id = tx_id

    async def _request(self, op: Op, payload: bytes, *, path: str | None = None) -> bytes:
        return await self.client._call(op, payload, tx_id=self.tx_id, path=path)
