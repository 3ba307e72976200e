"""An asyncio XenStore client that speaks xenstored's socket protocol directly.

Why not the ``xenstore-*`` tools or libxenstore through ctypes: a process per read would cost
milliseconds per ClickOS push and per watch, and libxenstore's watch API wants a thread.  The
wire protocol is small and stable (Xen's public header ``xs_wire.h`` and its XenStore notes):

* every message is a 16-byte header of four little-endian u32 -- ``type``, ``req_id``,
  ``tx_id``, ``len`` -- followed by ``len`` (at most 4096) bytes of payload;
* replies carry the request's ``req_id``; failures come back as type ERROR with an errno
  *name* ("ENOENT") as payload;
* watch events arrive unsolicited as WATCH_EVENT (``req_id`` 0) with ``path NUL token NUL``.

One :class:`XenStore` object holds one connection and multiplexes any number of concurrent
requests by ``req_id`` (a reader task resolves one future per request), delivers watch events to
per-watch queues, and reconnects after xenstored restarts: pending requests fail with
:class:`XenStoreClosed`, watches are re-registered and get one synthetic event so their
consumers re-check state they may have missed.

The package: :mod:`.wire` (message types, header, errors), :mod:`.operations` (read, write,
directory, permissions; :class:`Transaction`), :mod:`.watch` (watch events and their queues) and
:mod:`.client` (:class:`XenStore`, the connection).
"""

from xen_driver.xen.xenstore.client import XenStore
from xen_driver.xen.xenstore.operations import Transaction
from xen_driver.xen.xenstore.watch import Watch, WatchEvent
from xen_driver.xen.xenstore.wire import (
    DEFAULT_SOCKET,
    HEADER,
    PAYLOAD_MAX,
    Op,
    XenStoreClosed,
    XenStoreError,
    default_socket_path,
)

__all__ = [
    "DEFAULT_SOCKET",
    "HEADER",
    "PAYLOAD_MAX",
    "Op",
    "Transaction",
    "Watch",
    "WatchEvent",
    "XenStore",
    "XenStoreClosed",
    "XenStoreError",
    "default_socket_path",
]
