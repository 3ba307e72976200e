"""Push a Click configuration into a ClickOS guest through XenStore.

A ClickOS guest boots without a router configuration and waits for dom0 to write one under its
XenStore directory.  Two layouts exist in the wild and the plugin config chooses one:

``cosmos`` (the original ClickOS tool chain)
    ``/local/domain/<domid>/clickos/<rid>/config/<n>`` holds the script in 992-byte chunks,
    ``config_name`` a label, and writing ``Running`` / ``Halted`` to ``status`` starts / stops
    the router.  ``elements/`` and ``control/`` are for handler access and must be writable by
    the guest.
``clickos-ctl`` (the later control tool)
    ``/local/domain/<domid>/data/clickos/<rid>/`` with 512-byte chunks and the status values
    ``Running`` / ``Stopped`` (the guest may answer ``Error``).

The whole push -- stale chunks removed, new chunks, name, permissions and the final ``status`` --
is one XenStore transaction, so the guest sees either no configuration or a complete one, never
a prefix of it; a conflicting commit is retried as a whole.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

import structlog

from xen_driver.xen.xenstore import Transaction, XenStore, XenStoreError

log = structlog.get_logger(__name__)


class ClickLayout(enum.Enum):
    COSMOS = "cosmos"
    CLICKOS_CTL = "clickos-ctl"

    @property
    def chunk_size(self) -> int:
        return 992 if self is ClickLayout.COSMOS else 512

    @property
    def halted_status(self) -> str:
        return "Halted" if self is ClickLayout.COSMOS else "Stopped"

    def base_path(self, domid: int, router_id: int = 0) -> str:
        if self is ClickLayout.COSMOS:
            return f"/local/domain/{int(domid)}/clickos/{int(router_id)}"
        return f"/local/domain/{int(domid)}/data/clickos/{int(router_id)}"


class ClickOSError(Exception):
    """The configuration could not be pushed (domain gone, XenStore refused, ...)."""


@dataclass(frozen=True)
class PushResult:
    base_path: str
    bytes_pushed: int
    chunks: int
    duration_s: float


def split_chunks(config: bytes, chunk_size: int) -> list[bytes]:
    """Split ``config`` into ``chunk_size``-byte pieces; an empty config is one empty chunk.

    A guest reads ``config/0``, ``config/1``, ... until a key is missing, so an empty config
    still needs ``config/0`` to exist.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not config:
        return [b""]
    return [config[i : i + chunk_size] for i in range(0, len(config), chunk_size)]


async def push_config(
    xs: XenStore,
    domid: int,
    config: str | bytes,
    *,
    layout: ClickLayout = ClickLayout.COSMOS,
    router_id: int = 0,
    config_name: str = "config.click",
    start: bool = True,
) -> PushResult:
    """Write ``config`` for router ``router_id`` of ``domid`` and (by default) start it."""
    data = config.encode("utf-8") if isinstance(config, str) else bytes(config)
    if "\x00" in config_name or "/" in config_name:
        raise ClickOSError(f"config_name {config_name!r} must not contain NUL or '/'")
    base = layout.base_path(domid, router_id)
    chunks = split_chunks(data, layout.chunk_size)
    dom_path = f"/local/domain/{int(domid)}"

    async def body(tx: Transaction) -> None:
        # Writing below a missing /local/domain/<domid> would silently create it: refuse.
        if await tx.read_or_none(dom_path) is None:
            raise ClickOSError(f"domain {domid} has no XenStore directory (is it running?)")
        await tx.rm(base)
        await tx.mkdir(base)
        if layout is ClickLayout.COSMOS:
            await tx.set_perms(base, ["n0", f"r{int(domid)}"])
            for sub in ("elements", "control"):
                await tx.mkdir(f"{base}/{sub}")
                await tx.set_perms(f"{base}/{sub}", [f"n{int(domid)}"])
        else:
            # The guest reports Error itself, so it owns its router directory.
            await tx.set_perms(base, [f"n{int(domid)}"])
        for n, chunk in enumerate(chunks):
            await tx.write(f"{base}/config/{n}", chunk)
        await tx.write(f"{base}/config_name", config_name)
        if start:
            await tx.write(f"{base}/status", "Running")

    t0 = time.monotonic()
    try:
        await xs.run_transaction(body)
    except XenStoreError as exc:
        raise ClickOSError(f"pushing the Click configuration to domain {domid} failed: {exc}") from exc
    result = PushResult(base, len(data), len(chunks), time.monotonic() - t0)
    log.info(
        "click config pushed",
        domid=domid,
        path=base,
        bytes=result.bytes_pushed,
        chunks=result.chunks,
        duration_ms=round(result.duration_s * 1000, 2),
    )
    return result


async def read_config(
    xs: XenStore, domid: int, *, layout: ClickLayout = ClickLayout.COSMOS, router_id: int = 0
) -> bytes:
    """Reassemble the configuration currently stored for a router (for checks and debugging)."""
    base = layout.base_path(domid, router_id)
    parts = []
    n = 0
    while True:
        chunk = await xs.read_or_none(f"{base}/config/{n}")
        if chunk is None:
            break
        parts.append(chunk)
        n += 1
    return b"".join(parts)


async def set_status(
    xs: XenStore, domid: int, status: str, *, layout: ClickLayout = ClickLayout.COSMOS, router_id: int = 0
) -> None:
    """Write the router's ``status`` (``Running``, or the layout's halted value)."""
    await xs.write(f"{layout.base_path(domid, router_id)}/status", status)


async def halt(xs: XenStore, domid: int, *, layout: ClickLayout = ClickLayout.COSMOS, router_id: int = 0) -> None:
    """Stop the router (``Halted`` for cosmos, ``Stopped`` for clickos-ctl); the guest keeps running."""
    await set_status(xs, domid, layout.halted_status, layout=layout, router_id=router_id)


async def read_status(
    xs: XenStore, domid: int, *, layout: ClickLayout = ClickLayout.COSMOS, router_id: int = 0
) -> str | None:
    raw = await xs.read_or_none(f"{layout.base_path(domid, router_id)}/status")
    return None if raw is None else raw.decode("ascii", "replace")


async def wait_status(
    xs: XenStore,
    domid: int,
    wanted: set[str],
    timeout_s: float,
    *,
    layout: ClickLayout = ClickLayout.COSMOS,
    router_id: int = 0,
) -> str:
    """Wait (with a watch, not a poll) until ``status`` is one of ``wanted``; return it."""
    path = f"{layout.base_path(domid, router_id)}/status"
    watch = await xs.watch(path)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = await xs.read_or_none(path)
                if value is not None and value.decode("ascii", "replace") in wanted:
                    return value.decode("ascii")
                await watch.get()
    except TimeoutError:
        raise ClickOSError(f"{path} did not become one of {sorted(wanted)} within {timeout_s:g}s") from None
    finally:
        await watch.close()
