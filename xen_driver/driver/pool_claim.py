"""StartTask for a task with ``pool = "<name>"``: a claim of a ready member, or a cold start.

The task's configuration must agree with the profile on everything Xen fixed when the member
was built (a contradiction is refused, naming the field).  The claim itself runs no toolstack
process: take a member, record the claim, follow its exit, attach its console from offset 0,
push the Click configuration through XenStore, unpause, wait for the boot marker.  A miss
falls back to a cold start of the same configuration and says so in a task event.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from xen_driver.driver import network
from xen_driver.driver.config import TASK, VifConfig
from xen_driver.driver.errors import ConfigError
from xen_driver.driver.models import NetworkOverride, TaskHandle, TaskSpec
from xen_driver.driver.poolconfig import PoolProfile
from xen_driver.driver.state import DriverState
from xen_driver.driver.task import domain_name_for
from xen_driver.driver.timing import PhaseTimer
from xen_driver.xen.backend import DomainNotFound, XenBackendError
from xen_driver.xen.console import ConsolePump, ConsoleStream
from xen_driver.xen.xenstore import XenStoreError

if TYPE_CHECKING:  # pragma: no cover
    pass

from xen_driver.driver.pool_members import Member, PoolCore, ProfileState, write_json


class PoolStarts(PoolCore):
    """StartTask for a task with ``pool``: a claim of a ready member, or a cold start that says why."""

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
        if profile.booted and cfg.boot_marker is not None and cfg.boot_marker == profile.boot_marker:
            raise ConfigError(
                TASK,
                "boot_marker",
                cfg.boot_marker,
                f'is what a member of {where} (idle = "booted") prints before any task claims it; use a line'
                " the guest prints after it takes its Click configuration, or leave it out",
            )
        if cfg.vif:
            if len(cfg.vif) != len(profile.vif):
                refuse("vif", f"{len(cfg.vif)} vif blocks", f"must be the {len(profile.vif)} vif(s) of {where}")
            for i, (mine, theirs) in enumerate(zip(cfg.vif, profile.vif, strict=True)):
                if mine.mac is not None:
                    refuse(
                        f"vif[{i}].mac", mine.mac, f"cannot be chosen for a member of {where}: it has its MAC already"
                    )
                if mine.bridge is not None and mine.bridge != (theirs.bridge or "xenbr0"):
                    refuse(
                        f"vif[{i}].bridge", mine.bridge, f"must be the bridge of {where} ({theirs.bridge or 'xenbr0'})"
                    )
                if mine.ip is not None and mine.ip != theirs.ip:
                    refuse(f"vif[{i}].ip", mine.ip, f"must be the address of {where} ({theirs.ip or 'none'})")
                if mine.script is not None and self._script(mine.script) != self._script(theirs.script):
                    refuse(
                        f"vif[{i}].script",
                        mine.script,
                        f"must be the hotplug script of {where} ({theirs.script or 'the default'})",
                    )

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
                # The guest's addresses are the profile's vifs (a task may only repeat them).
                vifs = self._cold_config(spec, prof.profile).config.vif
                net = network.plan(vifs, spec.config.advertise_vif, spec.ports)
                click_text = await lc._click_config_to_push(spec)
                await self.start()
            member = await self._take(prof)
            if member is None:
                why = f'pool "{name}" has no ready member ({prof.building} being built, size {prof.profile.size})'
                if prof.last_error:
                    why += f"; last build failed: {prof.last_error}"
                return await self._cold(spec, prof.profile, why)
            return await self._claim(spec, prof.profile, member, click_text, net, timer)

    async def _cold(self, spec: TaskSpec, profile: PoolProfile | None, why: str) -> TaskHandle:
        self._log.info("pool miss: cold start", task_id=spec.id, reason=why)
        self.lc._event(spec, f"Pool miss, starting cold: {why}", {"start_path": "cold", "pool": spec.config.pool or ""})
        return await self.lc.start_task(self._cold_config(spec, profile))

    async def _take(self, prof: ProfileState) -> Member | None:
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

    async def _claim(
        self,
        spec: TaskSpec,
        profile: PoolProfile,
        member: Member,
        click_text: str | None,
        net: NetworkOverride | None,
        timer: PhaseTimer,
    ) -> TaskHandle:
        lc = self.lc
        assert lc._watcher is not None
        name, domid = member.name, member.domid
        log = self._log.bind(task_id=spec.id, domain=name, pool=profile.name)
        task_dir = lc._task_dir(name)
        console_path = ConsolePump.log_path(self.config.console_log_dir, name)
        stream: ConsoleStream | None = None
        claim = self._claim_path(name)
        offset = 0  # a paused member never ran: every byte of its console is the task's
        try:
            with timer.phase("pool_claim"):
                task_dir.mkdir(parents=True, exist_ok=False)
                write_json(claim, {"domid": domid, "state": "claiming", "task_id": spec.id})
                self._drop_record(name)
                exit_future = lc._watcher.subscribe(name, domid)
                if profile.booted:  # its boot output went to nobody: the task's console starts now
                    with contextlib.suppress(FileNotFoundError):
                        offset = os.stat(console_path).st_size
                stream = lc._attach_console(spec, name, console_path, task_dir, offset)
            await lc._configure_and_boot(
                spec, name, domid, click_text, stream, exit_future, timer, paused=not profile.booted
            )
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
                console_offset=offset,
                driver_config=spec.raw_config,
                network=net,
            )
            write_json(claim, {"domid": domid, "state": "claimed", "task_id": spec.id})
        except BaseException as exc:
            await lc._undo_start(name, True, task_dir, console_path, stream)
            self._drop_record(name)
            lc._fail_start(exc, log, timer, "the pooled Xen domain")
        task = lc.register_started(spec, state, timer, exit_future)
        log.info("task started from the pool", domid=domid, timings=task.timings, summary=timer.summary())
        annotations = {**timer.annotations(), "start_path": "pool", "pool": profile.name}
        shown = ""
        if lc.backend.can_rename:
            shown = domain_name_for(spec)
            annotations["listed_as"] = shown
            self._background(self._rename_claimed(name, shown, spec.id))
        listed = f", listed as {shown} from now on" if shown else ""
        lc._event(
            task,
            f"Guest {name} (domid {domid}) booted from pool {profile.name}{listed}: {timer.summary()}",
            annotations,
        )
        lc._announce_network(task)
        return lc._handle(task)

    async def _rename_claimed(self, name: str, shown: str, task_id: str) -> None:
        """Off the critical path: once no start is in progress, have the toolstack list the
        claimed member under its task's domain name.  The driver keeps calling it ``name``."""
        if self._quiet is not None:
            await self._quiet.wait()
        if task_id not in self.lc._tasks or not self.lc._tasks[task_id].running:
            return  # the task ended first: nothing to rename
        try:
            await self.lc.backend.rename(name, shown)
        except DomainNotFound:
            return  # destroyed meanwhile
        except XenBackendError as exc:
            self._log.warn("could not rename the claimed pool member", domain=name, shown_as=shown, error=str(exc))
            return
        self._log.info("claimed pool member listed under its task's name", domain=name, shown_as=shown)
