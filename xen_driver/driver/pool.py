"""A warm pool of pre-built domains: a ClickOS task starts in a fraction of ``xl create``.

Almost all of a cold ClickOS start is the toolstack building the domain.  ClickOS boots and then
takes its Click configuration from XenStore, so a domain can be built ahead of time and given
its job later.  The plugin's ``pool "<name>" { ... }`` profiles (:mod:`.poolconfig`) say what
to build and how many; a task opts in with ``pool = "<name>"``.

**Members.**  A member is built *paused* (``xl create -e -p`` of the profile's configuration),
so it has not run one instruction when a task takes it.  It is named
``ndx-pool-<profile>-<digest>-<serial>``: ``xl list`` shows what it is, and the digest of the
profile (kernel, its size and mtime, command line, memory, vCPUs, vifs) says which profile it was
built from.  A member the driver finished building is recorded in
``<state_dir>/pool/members/<name>``; a domain with the prefix but no record is a build that
never finished and is destroyed.

**Claim** (the critical path, no toolstack process on it): take a ready member (its XenStore
``name`` must still be the member's), record the claim in the task's own state directory,
follow its exit and attach its console from offset 0 (it has never run, so every byte is the
task's), push the Click configuration through XenStore, unpause it with one hypercall
(:mod:`xen_driver.xen.xenctrl`, or ``xl unpause`` where libxenctrl cannot be used) and wait for
the boot marker.  Phases: ``validate``, ``pool_claim``, ``clickos_push``, ``unpause``, ``boot``.
The domain keeps its member name; the task's ``driver_state`` names it like any task's domain,
so recovery, stop and destroy treat it as a normal task.  A miss (profile unknown on this node,
no ready member) is a cold start of the same configuration, announced by a task event.

**Refill** runs in the background, one build at a time, at lower CPU priority, and only while
no start is in progress (a start's toolstack calls and its memory go first).  A cold start that
fails because Xen is out of memory destroys idle members and tries again.

**Restarts.**  At start-up (the first fingerprint) every ``ndx-pool-`` domain is judged once:
a recorded, paused member of an unchanged profile is re-adopted; one claimed by a task is left
to that task's RecoverTask; one claimed by a start that never returned, one whose profile
changed or was removed, and an unfinished build are destroyed.  Stopping the plugin leaves idle
members running; the next plugin re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from xen_driver.driver.config import TASK, VifConfig
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.models import TaskHandle, TaskSpec
from xen_driver.driver.poolconfig import PoolProfile
from xen_driver.driver.state import DriverState
from xen_driver.driver.timing import PhaseTimer
from xen_driver.logging import get_logger
from xen_driver.xen.backend import DomainState, XenBackendError
from xen_driver.xen.console import ConsolePump, ConsoleStream
from xen_driver.xen.spec import DomainSpec, VifSpec
from xen_driver.xen.xenstore import XenStoreError

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
class _Profile:
    profile: PoolProfile
    digest: str
    ready: deque[Member] = field(default_factory=deque)
    building: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""


class WarmPool:
    """The warm pool of one plugin process (owned by its :class:`TaskLifecycle`)."""

    def __init__(self, lifecycle: "TaskLifecycle") -> None:
        self.lc = lifecycle
        self.config = lifecycle.config
        self._log = get_logger("pool")
        self._dir = Path(self.config.state_dir) / "pool" / "members"
        self._profiles: dict[str, _Profile] = {}
        for p in self.config.pools:
            self._profiles[p.name] = _Profile(p, p.digest(_kernel_stat(p.kernel)))
        self._busy = 0  # starts in progress: refill builds wait for them
        self._quiet: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._bg: set[asyncio.Task[Any]] = set()

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

    # ------------------------------------------------------------------ start / stop
    def kick(self) -> None:
        """Start the pool in the background (called from the fingerprint, the first RPC of the
        plugin process that really serves Nomad; the validating runs never get this far)."""
        if self._started or self._closing or self._starting is not None:
            return
        self._starting = asyncio.get_running_loop().create_task(self._start(), name="pool-start")

    async def start(self) -> None:
        """Adopt or destroy what earlier plugin processes left, then keep the pools filled
        (once, however many callers ask at the same time)."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start(), name="pool-start")
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await self.lc._ensure_started()
        self._quiet = asyncio.Event()
        if self._busy == 0:
            self._quiet.set()
        self._wake = asyncio.Event()
        try:
            await self._adopt()
        except Exception as exc:  # noqa: BLE001 - a host that cannot list domains: refill decides later
            self._log.warn("could not look for pool members left by an earlier plugin", error=str(exc))
        self._started = True
        if self._profiles and not self._closing:
            self._runner = asyncio.get_running_loop().create_task(self._refill_loop(), name="pool-refill")

    async def close(self) -> None:
        """The plugin is exiting: stop building; idle members stay for the next plugin."""
        self._closing = True
        for job in (self._starting, self._runner, *self._bg):
            if job is not None:
                job.cancel()
        for job in (self._starting, self._runner, *self._bg):
            if job is not None:
                with contextlib.suppress(BaseException):
                    await job

    # ------------------------------------------------------------------ records
    def _record_path(self, name: str) -> Path:
        return self._dir / name

    def _write_record(self, member: Member) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        _write_json(self._record_path(member.name), {"domid": member.domid, "profile": member.profile, "state": "ready"})

    def _drop_record(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(name).unlink()

    def _claim_path(self, name: str) -> Path:
        return self.lc._task_dir(name) / CLAIM_FILE

    # ------------------------------------------------------------------ adoption
    async def _adopt(self) -> None:
        domains = await self.lc.backend.list_domains()
        live = {d.name: d for d in domains}
        # Records of domains that are gone (a destroyed member, a host reboot) mean nothing now.
        if self._dir.is_dir():
            for rec in self._dir.iterdir():
                if rec.name not in live:
                    with contextlib.suppress(FileNotFoundError):
                        rec.unlink()
        adopted = destroyed = 0
        for d in domains:
            if not d.name.startswith(MEMBER_PREFIX):
                continue
            claim = _read_json(self._claim_path(d.name))
            if claim is not None and claim.get("domid") == d.domid:
                if claim.get("state") == "claimed":
                    self._drop_record(d.name)
                    continue  # a task's guest: its RecoverTask adopts it
                await self._destroy(d.name, "it was being claimed by a start that never returned", task_dir=True)
                destroyed += 1
                continue
            parsed = parse_member_name(d.name)
            record = _read_json(self._record_path(d.name))
            prof = self._profiles.get(parsed[0]) if parsed else None
            why = ""
            if parsed is None:
                why = "its name is not a pool member's"
            elif record is None or record.get("domid") != d.domid:
                why = "its build never finished"
            elif prof is None:
                why = f"pool {parsed[0]!r} is no longer configured"
            elif parsed[1] != prof.digest:
                why = f"pool {parsed[0]!r} changed since it was built"
            elif d.state is not DomainState.PAUSED:
                why = f"it is {d.state.value}, not paused and untouched"
            if why:
                await self._destroy(d.name, why)
                destroyed += 1
                continue
            assert prof is not None and d.domid is not None
            prof.ready.append(Member(d.name, prof.profile.name, d.domid, prof.profile.memory, d.uuid or ""))
            adopted += 1
        if adopted or destroyed:
            self._log.info("pool members from an earlier plugin", adopted=adopted, destroyed=destroyed)

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
    def _wake_refill(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _next_build(self, now: float) -> tuple[_Profile | None, float | None]:
        """The profile to build a member for now, or when to look again."""
        soonest: float | None = None
        for p in self._profiles.values():
            if len(p.ready) + p.building >= p.profile.size:
                continue
            if p.retry_at > now:
                soonest = p.retry_at if soonest is None else min(soonest, p.retry_at)
                continue
            return p, None
        return None, soonest

    async def _refill_loop(self) -> None:
        assert self._wake is not None and self._quiet is not None
        while not self._closing:
            prof, retry_at = self._next_build(time.monotonic())
            if prof is None:
                self._wake.clear()
                timeout = None if retry_at is None else max(retry_at - time.monotonic(), 0.05)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                continue
            await self._quiet.wait()  # a start in progress goes first
            if self._closing:
                return
            try:
                await self._build(prof)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything a build does
                self._log.error("pool build failed unexpectedly", pool=prof.profile.name, error=f"{type(exc).__name__}: {exc}")

    def _member_spec(self, profile: PoolProfile, name: str) -> DomainSpec:
        """The profile as a domain description, checked by the same policy as a job's values."""
        from xen_driver.driver import policy

        kernel = policy.resolve_image(profile.kernel, field="kernel", task_dir=None, image_dirs=self.config.image_dirs)
        vifs = []
        for i, v in enumerate(profile.vif):
            if v.bridge is not None:
                policy.check_bridge(i, v.bridge, self.config, self.lc.bridge_exists)
            script = policy.resolve_vif_script(i, v.script, self.config) if v.script is not None else None
            vifs.append(VifSpec(bridge=v.bridge, ip=v.ip, script=script))
        dspec = DomainSpec(
            name=name,
            uuid=str(uuidlib.uuid4()),
            kernel=kernel,
            cmdline=profile.cmdline,
            memory_mb=profile.memory,
            vcpus=profile.vcpus,
            vifs=tuple(vifs),
            on_crash="preserve",
        )
        dspec.validate()
        return dspec

    async def _build(self, prof: _Profile) -> None:
        profile = prof.profile
        name = f"{MEMBER_PREFIX}{profile.name}-{prof.digest}-{secrets.token_hex(3)}"
        log = self._log.bind(pool=profile.name, domain=name)
        prof.building += 1
        attempted = False
        began = time.monotonic()
        try:
            dspec = self._member_spec(profile, name)
            attempted = True
            async with asyncio.timeout(BUILD_TIMEOUT_S):
                created = await self.lc.backend.create_domain(dspec, paused=True, background=True)
            domid = created.domid if created.domid is not None else await self.lc._domid(name)
            member = Member(name, profile.name, domid, profile.memory, dspec.uuid or "")
            if self._closing or self._profiles.get(profile.name) is not prof:
                raise asyncio.CancelledError()
            self._write_record(member)
        except BaseException as exc:
            if attempted:
                # Whatever the toolstack left of it goes, in the background if we are cancelled.
                job = asyncio.ensure_future(self._destroy(name, "its build failed or was cancelled"))
                if not isinstance(exc, asyncio.CancelledError):
                    with contextlib.suppress(Exception):
                        await job
            if isinstance(exc, asyncio.CancelledError):
                raise
            prof.failures += 1
            delay = min(BACKOFF_S[0] * 2 ** (prof.failures - 1), BACKOFF_S[1])
            prof.retry_at = time.monotonic() + delay
            prof.last_error = str(exc)
            (log.info if is_out_of_memory(exc) else log.warn)(
                "pool member not built; retrying later",
                error=str(exc),
                out_of_memory=is_out_of_memory(exc),
                retry_in_s=delay,
            )
            return
        finally:
            prof.building -= 1
        prof.failures = 0
        prof.last_error = ""
        prof.ready.append(member)
        log.info("pool member ready", domid=domid, ready=len(prof.ready), size=profile.size,
                 build_ms=round((time.monotonic() - began) * 1000, 1))

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
                        domain=name, memory_mib=memory_mib, free_mib=free, freed_mib=freed,
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
    def check_task(self, spec: TaskSpec, profile: PoolProfile) -> None:
        """A task field that contradicts its pool's profile is refused, naming the field."""
        cfg = spec.config
        where = f'pool "{profile.name}"'

        def refuse(fld: str, given: Any, why: str) -> None:
            raise ConfigError(TASK, fld, given, f'{why}; leave it out, make it match, or drop "pool"')

        kernel = self.lc.resolve_image(spec, "kernel", cfg.kernel)
        if kernel != os.path.realpath(profile.kernel):
            refuse("kernel", cfg.kernel, f"must be the kernel of {where} ({profile.kernel})")
        if cfg.ramdisk is not None:
            refuse("ramdisk", cfg.ramdisk, f"cannot be given to a member of {where}: members boot without a ramdisk")
        if cfg.cpus is not None:
            refuse("cpus", cfg.cpus, f"cannot be applied to a member of {where}: members are not pinned")
        if cfg.cmdline is not None and cfg.cmdline != profile.cmdline:
            refuse("cmdline", cfg.cmdline, f"must be the command line of {where} ({profile.cmdline!r})")
        if cfg.memory is not None:
            if cfg.memory != profile.memory:
                refuse("memory", cfg.memory, f"must be the memory of {where} ({profile.memory} MiB)")
        elif spec.memory_mb != profile.memory:
            refuse(
                "resources.memory",
                spec.memory_mb,
                f"must be the memory of {where} ({profile.memory} MiB), or set config memory = {profile.memory}",
            )
        if cfg.vcpus != profile.vcpus:
            refuse("vcpus", cfg.vcpus, f"must be the vCPUs of {where} ({profile.vcpus})")
        if cfg.vif:
            if len(cfg.vif) != len(profile.vif):
                refuse("vif", f"{len(cfg.vif)} vif blocks", f"must be the {len(profile.vif)} vif(s) of {where}")
            for i, (mine, theirs) in enumerate(zip(cfg.vif, profile.vif)):
                if mine.mac is not None:
                    refuse(f"vif[{i}].mac", mine.mac, f"cannot be chosen for a member of {where}: it has its MAC already")
                if mine.bridge is not None and mine.bridge != (theirs.bridge or "xenbr0"):
                    refuse(f"vif[{i}].bridge", mine.bridge, f"must be the bridge of {where} ({theirs.bridge or 'xenbr0'})")
                if mine.ip is not None and mine.ip != theirs.ip:
                    refuse(f"vif[{i}].ip", mine.ip, f"must be the address of {where} ({theirs.ip or 'none'})")
                if mine.script is not None and self._script(mine.script) != self._script(theirs.script):
                    refuse(f"vif[{i}].script", mine.script, f"must be the hotplug script of {where} ({theirs.script or 'the default'})")

    def _script(self, value: str | None) -> str | None:
        if value is None:
            return None
        return os.path.realpath(value if value.startswith("/") else os.path.join(self.config.vif_scripts_dir, value))

    def _cold_config(self, spec: TaskSpec, profile: PoolProfile | None) -> TaskSpec:
        """The task as a cold start sees it: no pool, the profile's values where the task has none."""
        cfg = replace(spec.config, pool=None)
        if profile is not None:
            cfg = replace(
                cfg,
                cmdline=cfg.cmdline if cfg.cmdline is not None else profile.cmdline,
                memory=profile.memory,
                vif=cfg.vif or tuple(VifConfig(bridge=v.bridge, ip=v.ip, script=v.script) for v in profile.vif),
            )
        return replace(spec, config=cfg)

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        """StartTask of a task with ``pool``: a claim, or a cold start when the pool has nothing."""
        lc = self.lc
        timer = PhaseTimer()
        name = spec.config.pool or ""
        prof = self._profiles.get(name)
        if prof is None:
            why = f'pool "{name}" is not configured on this node'
            return await self._cold(spec, None, why)
        async with self.starting():  # (the lifecycle checked the descriptor budget)
            with timer.phase("validate"):
                self.check_task(spec, prof.profile)
                click_text = await lc._click_config_to_push(spec)
                await self.start()
            member = await self._take(prof)
            if member is None:
                why = f'pool "{name}" has no ready member ({prof.building} being built, size {prof.profile.size})'
                if prof.last_error:
                    why += f"; last build failed: {prof.last_error}"
                return await self._cold(spec, prof.profile, why)
            return await self._claim(spec, prof.profile, member, click_text, timer)

    async def _cold(self, spec: TaskSpec, profile: PoolProfile | None, why: str) -> TaskHandle:
        self._log.info("pool miss: cold start", task_id=spec.id, reason=why)
        self.lc._event(spec, f"Pool miss, starting cold: {why}", {"start_path": "cold", "pool": spec.config.pool or ""})
        return await self.lc.start_task(self._cold_config(spec, profile))

    async def _take(self, prof: _Profile) -> Member | None:
        """The oldest ready member that is still the domain it was (one XenStore read)."""
        xs = self.lc._xenstore
        while prof.ready:
            member = prof.ready.popleft()
            if xs is None:
                return member
            try:
                current = await xs.read_or_none(f"/local/domain/{member.domid}/name")
            except XenStoreError:
                return member  # cannot tell: the claim fails cleanly if it is gone
            if current is not None and current.decode("utf-8", "replace") == member.name:
                return member
            self._log.warn("pool member vanished; skipping it", domain=member.name, domid=member.domid)
            self._drop_record(member.name)
            self._background(self._destroy(member.name, "it vanished or was replaced"))
        return None

    def _background(self, coro: Awaitable[Any]) -> None:
        job = asyncio.ensure_future(coro)
        self._bg.add(job)
        job.add_done_callback(self._bg.discard)

    async def _claim(
        self, spec: TaskSpec, profile: PoolProfile, member: Member, click_text: str | None, timer: PhaseTimer
    ) -> TaskHandle:
        lc = self.lc
        assert lc._watcher is not None
        name, domid = member.name, member.domid
        log = self._log.bind(task_id=spec.id, domain=name, pool=profile.name)
        task_dir = lc._task_dir(name)
        console_path = ConsolePump.log_path(self.config.console_log_dir, name)
        stream: ConsoleStream | None = None
        claim = self._claim_path(name)
        try:
            with timer.phase("pool_claim"):
                task_dir.mkdir(parents=True, exist_ok=False)
                _write_json(claim, {"domid": domid, "state": "claiming", "task_id": spec.id})
                self._drop_record(name)
                exit_future = lc._watcher.subscribe(name, domid)
                stream = lc._attach_console(spec, name, console_path, task_dir, 0)
            if click_text is not None:
                with timer.phase("clickos_push"):
                    await lc._push_click(spec, domid, click_text)
            with timer.phase("unpause"):
                await lc.backend.unpause(name, domid=domid)
            with timer.phase("boot"):
                await lc._wait_boot(spec, stream, exit_future)
            state = DriverState(
                task_id=spec.id,
                domain_name=name,
                domid=domid,
                uuid=member.uuid,
                started_at_ns=time.time_ns(),
                backend=lc.backend.kind,
                config_path=lc.backend.config_file(name),
                task_state_dir=str(task_dir),
                console_path=console_path,
                console_offset=0,
                driver_config=spec.raw_config,
            )
            _write_json(claim, {"domid": domid, "state": "claimed", "task_id": spec.id})
        except BaseException as exc:
            await lc._undo_start(name, True, task_dir, console_path, stream)
            self._drop_record(name)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.error("pool claim failed", error=str(exc), timings=timer.as_dict())
            err = lc.start_error(exc, "the pooled Xen domain")
            if err is exc:
                raise
            raise err from exc
        task = lc.register_started(spec, state, timer, exit_future)
        log.info("task started from the pool", domid=domid, timings=task.timings, summary=timer.summary())
        annotations = {**timer.annotations(), "start_path": "pool", "pool": profile.name}
        lc._event(task, f"Guest {name} (domid {domid}) booted from pool {profile.name}: {timer.summary()}", annotations)
        return lc._handle(task)



def _kernel_stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
