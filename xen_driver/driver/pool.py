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
The task's ``driver_state`` names the domain by its member name like any task's domain, so
recovery, stop and destroy treat it as a normal task.  Off the critical path (once no start is
in progress), a backend that can rename a running domain (``xl``) has the toolstack list it
under the task's domain name, so ``xl list`` says whose guest it is; the backend keeps
translating the member name (``Backend.rename``).  libvirt cannot rename a running
domain: there the guest keeps its member name.  A miss (profile unknown on this node, no ready
member) is a cold start of the same configuration, announced by a task event.

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
import secrets
import time
import uuid as uuidlib
from typing import TYPE_CHECKING

from xen_driver.driver.poolconfig import PoolProfile
from xen_driver.xen.backend import DomainState
from xen_driver.xen.console import ConsolePump, NullSink
from xen_driver.xen.spec import DomainSpec, VifSpec

if TYPE_CHECKING:  # pragma: no cover
    pass

from xen_driver.driver.pool_claim import PoolStarts
from xen_driver.driver.pool_members import (
    BACKOFF_S,
    BUILD_TIMEOUT_S,
    CLAIM_FILE,
    MEMBER_PREFIX,
    Member,
    ProfileState,
    is_out_of_memory,
    parse_member_name,
    read_json,
)

__all__ = ["CLAIM_FILE", "MEMBER_PREFIX", "WarmPool", "is_out_of_memory", "parse_member_name"]


class WarmPool(PoolStarts):
    """The warm pool of one plugin process (owned by its :class:`TaskLifecycle`)."""

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
            claim = read_json(self._claim_path(d.name))
            if claim is not None and claim.get("domid") == d.domid:
                if claim.get("state") == "claimed":
                    self._drop_record(d.name)
                    continue  # a task's guest: its RecoverTask adopts it
                await self._destroy(d.name, "it was being claimed by a start that never returned", task_dir=True)
                destroyed += 1
                continue
            parsed = parse_member_name(d.name)
            record = read_json(self._record_path(d.name))
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
            elif prof.profile.booted and d.state not in (DomainState.RUNNING, DomainState.BLOCKED):
                why = f"it is {d.state.value}, not booted and waiting"
            elif not prof.profile.booted and d.state is not DomainState.PAUSED:
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

    # ------------------------------------------------------------------ refill
    def _next_build(self, now: float) -> tuple[ProfileState | None, float | None]:
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
                self._log.error(
                    "pool build failed unexpectedly", pool=prof.profile.name, error=f"{type(exc).__name__}: {exc}"
                )

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

    async def _console_shows(self, name: str, marker: str) -> None:
        """Until a booted member's console log shows ``marker`` (the caller bounds the wait),
        read by the lifecycle's console pump as a task's boot marker is."""
        key = f"{name}#member-boot"
        stream = self.lc._pump.add(key, ConsolePump.log_path(self.config.console_log_dir, name), NullSink())
        try:
            await stream.wait_for(marker, BUILD_TIMEOUT_S)
        finally:
            self.lc._pump.detach(key)

    async def _build(self, prof: ProfileState) -> None:
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
                if profile.booted:
                    assert profile.boot_marker is not None
                    await self.lc.backend.unpause(name, domid=domid)
                    await self._console_shows(name, profile.boot_marker)
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
        log.info(
            "pool member ready",
            domid=domid,
            ready=len(prof.ready),
            size=profile.size,
            build_ms=round((time.monotonic() - began) * 1000, 1),
        )
