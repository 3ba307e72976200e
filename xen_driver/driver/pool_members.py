"""What the warm pool is made of: its members, their records, and the gate at its core.

A member is a paused domain built from a pool profile, named ``ndx-pool-<profile>-<digest>-
<serial>``; a recorded member (``<state_dir>/pool/members/<name>``) finished building.  The
start gate lets a task's start go first: while one runs, no refill build begins, and a cold
start that finds Xen out of memory makes room by destroying idle members.
(:mod:`xen_driver.driver.pool` describes the whole pool.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xen_driver.driver.poolconfig import PoolProfile
from xen_driver.logging import get_logger
from xen_driver.xen.backend import XenBackendError
from xen_driver.xen.console import ConsolePump

if TYPE_CHECKING:  # pragma: no cover
    from xen_driver.driver.lifecycle import TaskLifecycle


MEMBER_PREFIX = "ndx-pool-"
_MEMBER_RE = re.compile(r"ndx-pool-(?P<profile>[A-Za-z0-9_]{1,24})-(?P<digest>[0-9a-f]{8})-(?P<serial>[0-9a-f]{6})")
#: What libxl and the domain builder say when Xen has not enough free memory for a domain.
_NO_MEMORY_RE = re.compile(
    r"out of memory|cannot allocate memory|can't allocate|failed to free memory|not enough memory"
    r"|insufficient memory|ENOMEM",
    re.IGNORECASE,
)
#: The claim record in a claimed member's task directory.
CLAIM_FILE = "pool.claim"
#: How long a refill waits after a failed build before trying that profile again (doubles, capped).
BACKOFF_S = (2.0, 120.0)
#: Deadline of one member build.
BUILD_TIMEOUT_S = 300.0


def is_out_of_memory(exc: BaseException) -> bool:
    """The toolstack failed because Xen had not enough free memory for the domain."""
    if not isinstance(exc, XenBackendError):
        return False
    # xl's whole stderr: the domain builder's "Out of memory" line is often not among the last ones.
    return bool(_NO_MEMORY_RE.search(f"{getattr(exc, 'stderr', '') or ''}\n{exc}"))


def parse_member_name(name: str) -> tuple[str, str] | None:
    """(profile, digest) of a member's domain name, or None."""
    m = _MEMBER_RE.fullmatch(name)
    return (m.group("profile"), m.group("digest")) if m else None


@dataclass
class Member:
    name: str
    profile: str
    domid: int
    memory_mib: int
    uuid: str = ""


@dataclass
class ProfileState:
    profile: PoolProfile
    digest: str
    ready: deque[Member] = field(default_factory=deque)
    building: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""


class PoolCore:
    """The pool's state (its profiles and their ready members) and what every part of it uses:
    the member records, destroying a member, and the gate that keeps refills out of a start's way."""

    def __init__(self, lifecycle: TaskLifecycle) -> None:
        self.lc = lifecycle
        self.config = lifecycle.config
        self._log = get_logger("pool")
        self._dir = Path(self.config.state_dir) / "pool" / "members"
        self._profiles: dict[str, ProfileState] = {}
        for p in self.config.pools:
            self._profiles[p.name] = ProfileState(p, p.digest(_kernel_stat(p.kernel)))
        self._busy = 0  # starts in progress: refill builds wait for them
        self._quiet: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._bg: set[asyncio.Task[Any]] = set()

    def _wake_refill(self) -> None:
        """Let the refill loop (:class:`xen_driver.driver.pool.WarmPool`) look at the pool again."""
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ status
    @property
    def profiles(self) -> dict[str, PoolProfile]:
        return {n: p.profile for n, p in self._profiles.items()}

    def ready(self, name: str) -> int:
        p = self._profiles.get(name)
        return len(p.ready) if p else 0

    def attributes(self, prefix: str) -> dict[str, int]:
        """Node attributes: ``<prefix>pool.<name>.ready`` and ``.size``."""
        out: dict[str, int] = {}
        for name, p in self._profiles.items():
            out[f"{prefix}pool.{name}.ready"] = len(p.ready)
            out[f"{prefix}pool.{name}.size"] = p.profile.size
        return out

    def member_names(self) -> list[str]:
        return [m.name for p in self._profiles.values() for m in p.ready]

    async def start(self) -> None:
        """Adopt what earlier plugins left and keep the pools filled (:class:`WarmPool`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ records
    def _record_path(self, name: str) -> Path:
        return self._dir / name

    def _write_record(self, member: Member) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        write_json(self._record_path(member.name), {"domid": member.domid, "profile": member.profile, "state": "ready"})

    def _drop_record(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(name).unlink()

    def _claim_path(self, name: str) -> Path:
        return self.lc._task_dir(name) / CLAIM_FILE

    # ------------------------------------------------------------------ adoption
    async def _destroy(self, name: str, why: str, *, task_dir: bool = False) -> None:
        self._log.info("destroying pool member", domain=name, reason=why)
        try:
            await self.lc.backend.destroy(name)
        except XenBackendError as exc:
            self._log.warn("could not destroy pool member", domain=name, error=str(exc))
            return
        self._drop_record(name)
        with contextlib.suppress(OSError, XenBackendError):
            await self.lc.backend.forget(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ConsolePump.log_path(self.config.console_log_dir, name))
        if task_dir:
            shutil.rmtree(self.lc._task_dir(name), ignore_errors=True)

    # ------------------------------------------------------------------ refill
    # ------------------------------------------------------------------ the start gate
    @contextlib.asynccontextmanager
    async def starting(self):  # type: ignore[no-untyped-def]
        """While a start runs, no refill build begins (its toolstack calls and memory go first)."""
        self._busy += 1
        if self._quiet is not None:
            self._quiet.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                if self._quiet is not None:
                    self._quiet.set()
                self._wake_refill()

    async def cold_create(self, create: Callable[[], Awaitable[Any]], name: str, memory_mib: int) -> Any:
        """A cold start's domain build; when Xen is out of memory, idle members make room."""
        async with self.starting():
            while True:
                try:
                    return await create()
                except XenBackendError as exc:
                    if not is_out_of_memory(exc) or not self._idle_count():
                        raise
                    with contextlib.suppress(XenBackendError):
                        await self.lc.backend.destroy(name)  # whatever the failed build left
                    free = await self._free_memory_mib()
                    # Enough for the domain and its overhead (page tables, rings: ~1 MiB) when Xen
                    # says what is free; otherwise one member per attempt, so none goes needlessly.
                    need = 1 if free is None else max(memory_mib + 1 + memory_mib // 64 - free, 1)
                    freed = await self.evict(need)
                    self._log.info(
                        "Xen is out of memory for a cold start: destroyed idle pool members to make room",
                        domain=name,
                        memory_mib=memory_mib,
                        free_mib=free,
                        freed_mib=freed,
                    )

    def _idle_count(self) -> int:
        return sum(len(p.ready) for p in self._profiles.values())

    async def _free_memory_mib(self) -> int | None:
        """Xen's free memory, or None where the backend cannot say."""
        try:
            return (await self.lc.backend.host_facts()).free_memory_mib
        except XenBackendError:
            return None

    async def evict(self, memory_mib: int) -> int:
        """Destroy idle members (from the fullest pool first) until ``memory_mib`` is freed."""
        freed = 0
        while freed < memory_mib:
            pools = [p for p in self._profiles.values() if p.ready]
            if not pools:
                break
            prof = max(pools, key=lambda p: len(p.ready))
            member = prof.ready.pop()  # the newest: the oldest are taken first
            await self._destroy(member.name, "Xen needs its memory for a task")
            freed += member.memory_mib
            # Do not build it again at once: the memory is wanted.
            prof.failures += 1
            prof.retry_at = time.monotonic() + min(BACKOFF_S[0] * 2 ** (prof.failures - 1), BACKOFF_S[1])
        return freed

    # ------------------------------------------------------------------ StartTask with a pool

    def _background(self, coro: Awaitable[Any]) -> None:
        job = asyncio.ensure_future(coro)
        self._bg.add(job)
        job.add_done_callback(self._bg.discard)


def _kernel_stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
