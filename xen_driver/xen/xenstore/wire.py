"""xenstored's wire protocol: message types, the 16-byte header, path checks and its errors.

Everything here is fixed by Xen's public header ``xs_wire.h``: a message is a header of four
little-endian u32 (``type``, ``req_id``, ``tx_id``, ``len``) and at most 4096 bytes of payload;
a refusal comes back as an ERROR message naming an errno ("ENOENT"), which
:class:`XenStoreError` carries.  The connection that speaks it is :mod:`.client`.
"""

from __future__ import annotations

import enum
import os
import struct

#: Where cxenstored/oxenstored listen in dom0; ``XENSTORED_PATH`` overrides, as for libxenstore.
DEFAULT_SOCKET = "/run/xenstored/socket"
PAYLOAD_MAX = 4096
HEADER = struct.Struct("<IIII")


class Op(enum.IntEnum):
    """Message types, numbered as in ``xs_wire.h``."""

    DEBUG = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


class XenStoreError(Exception):
    """xenstored refused a request; ``errno_name`` is its answer ("ENOENT", "EAGAIN", ...)."""

    def __init__(self, op: Op | str, path: str | None, errno_name: str):
        self.op = op
        self.path = path
        self.errno_name = errno_name
        where = f" {path}" if path else ""
        opname = op.name if isinstance(op, Op) else op
        super().__init__(f"xenstore {opname}{where}: {errno_name}")


class XenStoreClosed(XenStoreError):
    """The connection to xenstored is gone (or was never made)."""

    def __init__(self, reason: str):
        super().__init__("CONNECT", None, reason)


def default_socket_path() -> str:
    return os.environ.get("XENSTORED_PATH", DEFAULT_SOCKET)


def _check_path(path: str) -> bytes:
    """Paths are ASCII; refuse NULs (they would split the payload) and relative paths."""
    if not path or "\x00" in path:
        raise ValueError(f"invalid xenstore path {path!r}")
    if not (path.startswith("/") or path.startswith("@")):
        raise ValueError(f"xenstore path must be absolute (dom0 sockets have no base), got {path!r}")
    return path.encode("ascii")
