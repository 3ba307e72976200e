"""The versioned ``driver_state`` blob Nomad stores for each task.

Nomad persists the task handle returned by StartTask in its client state database and hands it
back, unchanged, to RecoverTask after a plugin crash or an agent restart.  Everything recovery
needs to find the guest again and to resume its console stream must therefore be inside this
blob; nothing else of ours survives a restart except the files under ``state_dir``.

That includes the job's own ``config {}``: the handle Nomad gives back also echoes the
StartTask request, but after a *client restart* its driver config is empty (Nomad keeps those
bytes only in memory, in an unexported field of its TaskConfig, which its state database does
not persist), so a RecoverTask that decoded the job config from the handle would refuse every
task after an agent restart and Nomad would start duplicates next to the running guests.

Encoding: msgpack map with a ``v`` key.  Decoding refuses versions it does not know with a clear
error instead of guessing, so a downgrade cannot silently mis-adopt a guest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import msgpack

#: Version of the blob's schema; bump it (and keep a reader for the old one) on any change.
#: 2 added ``driver_config``.
STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: Fields a version-1 blob lacks, with the value they then take.
_ADDED_IN_2 = {"driver_config": b""}


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
    driver_config: bytes = b""  # the job's config {} as Nomad sent it (cty-msgpack); since v2

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
        if version not in READABLE_VERSIONS:
            raise DriverStateError(
                f"task handle driver_state has version {version!r}; this driver reads versions "
                + ", ".join(map(str, READABLE_VERSIONS))
            )
        if version == 1:
            raw = {**_ADDED_IN_2, **raw}
        names = {f.name for f in fields(cls)}
        missing = names - raw.keys()
        if missing:
            raise DriverStateError(f"task handle driver_state lacks {', '.join(sorted(missing))}")
        return cls(**{k: raw[k] for k in names})


def stored_driver_config(blob: bytes) -> bytes:
    """The job config kept in a handle's driver_state (empty if there is none or it is unreadable)."""
    try:
        return DriverState.decode(blob).driver_config or b""
    except DriverStateError:
        return b""
