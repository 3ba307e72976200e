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

The guest's network (the vifs' MACs, derived ones included, and the address and port map
Nomad was told at start) is kept too, so a recovered task reports exactly what the started one
did.

Encoding: msgpack map with a ``v`` key.  Decoding refuses versions it does not know with a clear
error instead of guessing, so a downgrade cannot silently mis-adopt a guest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import msgpack

from xen_driver.driver.models import NetworkOverride

#: Version of the blob's schema; bump it (and keep a reader for the old one) on any change.
#: 2 added ``driver_config``; 3 added ``vif_macs`` and ``network``.
STATE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: Fields older blobs lack, with the value they then take.
_ADDED_IN_2 = {"driver_config": b""}
_ADDED_IN_3: dict[str, Any] = {"vif_macs": (), "network": None}


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
    vif_macs: tuple[str, ...] = ()  # every vif's MAC, in vif order (derived ones included); since v3
    network: NetworkOverride | None = None  # what StartTask advertised to Nomad; since v3

    def encode(self) -> bytes:
        raw = asdict(self)
        raw["vif_macs"] = list(self.vif_macs)
        if self.network is not None:
            raw["network"] = {
                "addr": self.network.addr,
                "port_map": {str(k): int(v) for k, v in self.network.port_map.items()},
                "auto_advertise": bool(self.network.auto_advertise),
            }
        blob: bytes = msgpack.packb({"v": STATE_VERSION, **raw}, use_bin_type=True)  # msgpack is untyped
        return blob

    @classmethod
    def decode(cls, blob: bytes) -> DriverState:
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
        if version in (1, 2):
            raw = {**_ADDED_IN_3, **raw}
        names = {f.name for f in fields(cls)}
        missing = names - raw.keys()
        if missing:
            raise DriverStateError(f"task handle driver_state lacks {', '.join(sorted(missing))}")
        values = {k: raw[k] for k in names}
        values["vif_macs"] = tuple(values["vif_macs"] or ())
        values["network"] = _network(values["network"])
        return cls(**values)


def _network(raw: Any) -> NetworkOverride | None:
    if raw is None:
        return None
    try:
        return NetworkOverride(
            addr=str(raw["addr"]),
            port_map={str(k): int(v) for k, v in (raw.get("port_map") or {}).items()},
            auto_advertise=bool(raw.get("auto_advertise", False)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DriverStateError(f"task handle driver_state has an unreadable network: {exc!r}") from None


def stored_driver_config(blob: bytes) -> bytes:
    """The job config kept in a handle's driver_state (empty if there is none or it is unreadable)."""
    try:
        return DriverState.decode(blob).driver_config or b""
    except DriverStateError:
        return b""
