"""The versioned ``driver_state`` blob Nomad stores for each task.

Nomad persists the task handle returned by StartTask in its client state database and hands it
back, unchanged, to RecoverTask after a plugin crash or an agent restart.  Everything recovery
needs to find the guest again and to resume its console stream must therefore be inside this
blob; nothing else of ours survives a restart except the files under ``state_dir``.

Encoding: msgpack map with a ``v`` key.  Decoding refuses versions it does not know with a clear
error instead of guessing, so a downgrade cannot silently mis-adopt a guest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import msgpack

#: Version of the blob's schema; bump it (and keep a reader for the old one) on any change.
STATE_VERSION = 1


class DriverStateError(ValueError):
    """The stored handle cannot be decoded into a :class:`DriverState`."""


@dataclass(frozen=True)
class DriverState:
    """What RecoverTask needs to re-adopt a running guest."""

    task_id: str
    domain_name: str
    domid: int
    uuid: str
    started_at_ns: int  # wall clock, for TaskStatus.started_at
    backend: str  # "xl" or "libvirt"
    config_path: str  # rendered xl.cfg (or domain XML) on the host
    task_state_dir: str  # our per-task directory under the plugin's state_dir
    console_path: str  # the guest console log we stream into Nomad's stdout FIFO
    console_offset: int  # byte offset already streamed when the handle was made

    def encode(self) -> bytes:
        return msgpack.packb({"v": STATE_VERSION, **asdict(self)}, use_bin_type=True)

    @classmethod
    def decode(cls, blob: bytes) -> "DriverState":
        if not blob:
            raise DriverStateError("task handle has no driver_state; it was not made by this driver")
        try:
            raw = msgpack.unpackb(blob, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise DriverStateError(f"task handle driver_state is not valid msgpack: {exc}") from exc
        if not isinstance(raw, dict):
            raise DriverStateError("task handle driver_state is not a map")
        version = raw.pop("v", None)
        if version != STATE_VERSION:
            raise DriverStateError(
                f"task handle driver_state has version {version!r}; this driver reads version {STATE_VERSION}"
            )
        names = {f.name for f in fields(cls)}
        missing = names - raw.keys()
        if missing:
            raise DriverStateError(f"task handle driver_state lacks {', '.join(sorted(missing))}")
        return cls(**{k: raw[k] for k in names})
