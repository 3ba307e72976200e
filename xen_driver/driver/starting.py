"""Starting a task: the domain is built, configured, attached and booted, or nothing is left.

The domain is created *paused* when it has a ClickOS configuration to take, which is pushed
through XenStore while nothing runs; the console stream into Nomad's stdout FIFO is attached
before the guest runs, so not one console byte is lost.  Start returns once the console shows
the boot marker (bounded by ``boot_timeout``).  Each phase is timed
(:mod:`xen_driver.driver.timing`).  Whatever a failed start made (domain, rendered config,
task state directory, console log, XenStore nodes) is undone before the error is returned.
A warm-pool claim (:mod:`xen_driver.driver.pool`) shares these steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import NoReturn

from xen_driver.driver import network
from xen_driver.driver.errors import (
    DriverError,
    RecoverableError,
    TaskAlreadyExists,
)
from xen_driver.driver.exits import ExitHandling
from xen_driver.driver.models import (
    TaskHandle,
    TaskSpec,
)
from xen_driver.driver.state import DriverState
from xen_driver.driver.task import XenTask, domain_name_for, utcnow
from xen_driver.driver.timing import PhaseTimer
from xen_driver.logging import XenBoundLogger
from xen_driver.xen import clickos, fdlimit
from xen_driver.xen.backend import (
    DomainRefused,
    XenBackendError,
)
from xen_driver.xen.console import ConsolePump, ConsoleStream
from xen_driver.xen.watcher import DomainExit
from xen_driver.xen.xenstore import XenStoreError


class StartSteps(ExitHandling):
    """StartTask for a cold start, and the steps a warm-pool claim shares with it."""

    # ------------------------------------------------------------------ start steps (cold and pool)
    async def _click_config_to_push(self, spec: TaskSpec) -> str | None:
        """The task's Click configuration (checked against the plugin's limits), with xenstored
        reachable to take it; None for a task without one."""
        click_text = self._click_config(spec)
        if click_text is not None and self._xenstore is None:
            await self._reconnect_xenstore()
        if click_text is not None and self._xenstore is None:
            raise RecoverableError(
                f"cannot push the Click configuration: xenstored is not reachable at {self.config.xenstored_socket}"
            )
        return click_text

    async def _push_click(self, spec: TaskSpec, domid: int, click_text: str) -> None:
        assert self._xenstore is not None
        await clickos.push_config(
            self._xenstore,
            domid,
            click_text,
            layout=clickos.ClickLayout(self.config.clickos_layout),
            router_id=spec.config.click_router_id,
            config_name=os.path.basename(spec.config.click_config_file or "config.click"),
        )

    def start_error(self, exc: BaseException, what: str) -> BaseException:
        """What StartTask raises for a start that failed half-way (after its undo): ``exc`` itself,
        or the driver error Nomad can act on."""
        if (err := fdlimit.exhaustion(exc)) is not None:  # say what ran out, not what it broke
            return RecoverableError(fdlimit.describe(err))
        if isinstance(exc, DriverError):
            return exc
        if isinstance(exc, DomainRefused):  # the same config would fail again: no restart loop
            return RecoverableError(f"the toolstack refused the domain: {exc}", recoverable=False)
        if isinstance(exc, (XenBackendError, clickos.ClickOSError, XenStoreError, OSError)):
            return RecoverableError(f"starting {what} failed: {exc}")
        return exc

    def _fail_start(self, exc: BaseException, log: XenBoundLogger, timer: PhaseTimer, what: str) -> NoReturn:
        """Raise what StartTask reports for a start that failed half-way (after its undo)."""
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        log.error("task start failed", what=what, error=str(exc), timings=timer.as_dict())
        err = self.start_error(exc, what)
        if err is exc:
            raise exc
        raise err from exc

    async def _configure_and_boot(
        self,
        spec: TaskSpec,
        name: str,
        domid: int,
        click_text: str | None,
        stream: ConsoleStream,
        exit_future: asyncio.Future[DomainExit],
        timer: PhaseTimer,
        *,
        paused: bool,
    ) -> None:
        """The steps of every start path once the domain exists and is followed: its Click
        configuration through XenStore, unpause (when it was built paused), the boot marker."""
        if click_text is not None:
            with timer.phase("clickos_push"):
                await self._push_click(spec, domid, click_text)
        if paused:
            with timer.phase("unpause"):
                await self.backend.unpause(name, domid=domid)
        with timer.phase("boot"):
            await self._wait_boot(spec, stream, exit_future)

    def register_started(
        self, spec: TaskSpec, state: DriverState, timer: PhaseTimer, exit_future: asyncio.Future[DomainExit]
    ) -> XenTask:
        """A guest that booted becomes a task the driver runs."""
        task = XenTask(spec=spec, state=state, started_at=utcnow(), timings=timer.as_dict())
        self._tasks[spec.id] = task
        self._by_domain[state.domain_name] = task
        self._console_booted(state.domain_name)  # from here on only the keeper reads its console
        if exit_future.done():  # it booted and died already: report it through WaitTask
            self._on_domain_exit(exit_future.result())
        return task

    # ------------------------------------------------------------------ StartTask
    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        if spec.id in self._tasks:
            raise TaskAlreadyExists(spec.id)
        await self._ensure_started()
        try:
            fdlimit.check_spare()  # refuse while the guests already followed would starve of descriptors
        except fdlimit.OutOfFileDescriptors as exc:
            raise RecoverableError(str(exc)) from None
        if spec.config.pool is not None:  # a pre-built domain, or a cold start that says why
            return await self.pool.start_task(spec)
        assert self._watcher is not None
        timer = PhaseTimer()
        name = domain_name_for(spec)
        log = self._log.bind(task_id=spec.id, domain=name)

        with timer.phase("validate"):
            await self._learn_host_facts()
            dspec = self.domain_spec(spec, name)
            net = network.plan(spec.config.vif, spec.config.advertise_vif, spec.ports)
            click_text = await self._click_config_to_push(spec)

        task_dir = self._task_dir(name)
        console_path = ConsolePump.log_path(self.config.console_log_dir, name)
        # Only a guest with a Click configuration must wait, paused, for it; any other guest is
        # created running (one toolstack call less) since its console log keeps every byte anyway.
        paused = click_text is not None
        attempted = False  # once a create was tried the domain may exist, even if create failed
        stream: ConsoleStream | None = None
        try:
            task_dir.mkdir(parents=True, exist_ok=False)
            attempted = True
            created = await self.pool.cold_create(  # idle pool members make room when Xen is out of memory
                lambda: self.backend.create_domain(dspec, paused=paused, phases=timer), name, dspec.memory_mb
            )
            with timer.phase("domain_build"):
                domid = created.domid if created.domid is not None else await self._domid(name)
            exit_future = self._watcher.subscribe(name, domid)
            stream = self._attach_console(spec, name, console_path, task_dir, 0)
            await self._configure_and_boot(spec, name, domid, click_text, stream, exit_future, timer, paused=paused)
            state = DriverState(
                task_id=spec.id,
                domain_name=name,
                domid=domid,
                uuid=dspec.uuid or "",
                started_at_ns=time.time_ns(),
                backend=self.backend.kind,
                config_path=created.config_file,
                task_state_dir=str(task_dir),
                console_path=console_path,
                console_offset=0,
                driver_config=spec.raw_config,
                vif_macs=tuple(v.mac or "" for v in dspec.vifs),
                network=net,
            )
        except BaseException as exc:
            await self._undo_start(name, attempted, task_dir, console_path, stream)
            self._fail_start(exc, log, timer, "the Xen domain")

        task = self.register_started(spec, state, timer, exit_future)
        log.info(
            "task started",
            domid=state.domid,
            timings=task.timings,
            summary=timer.summary(),
            network=network.describe(net),
        )
        self._event(task, f"Guest {name} (domid {state.domid}) booted: {timer.summary()}", timer.annotations())
        self._announce_network(task)
        return self._handle(task)

    def _announce_network(self, task: XenTask) -> None:
        """Tell the job's author, in a task event, where the guest is advertised, or that its
        allocation's ports reach nothing (every start path)."""
        net, name = task.state.network, task.name
        if net is not None:
            self._event(task, f"Guest {name} advertised at {network.describe(net)}")
        elif unreachable := network.unreachable_ports(net, task.spec.ports):
            self._event(
                task,
                f"Guest {name} has no vif with an ip, so nothing is advertised: the allocation's ports "
                f"({', '.join(unreachable)}) stay on the host, which does not forward them into the guest",
            )

    async def _domid(self, name: str) -> int:
        """The new domain's id: from XenStore when we can (milliseconds), else from the toolstack."""
        if self._xenstore is not None:
            domid = await self._xenstore.find_domid(name)
            if domid is not None:
                return domid
        info = await self.backend.domain(name)
        if info.domid is None:
            raise RecoverableError(f"domain {name} was created but has no domain id (is it running?)")
        return info.domid

    async def _wait_boot(self, spec: TaskSpec, stream: ConsoleStream, exit_future: asyncio.Future[DomainExit]) -> None:
        marker = spec.config.boot_marker
        pattern: bytes | re.Pattern[bytes] = marker.encode() if marker else re.compile(rb"\S")
        booted: asyncio.Future[int] = asyncio.ensure_future(stream.wait_for(pattern, spec.config.boot_timeout))
        died: asyncio.Future[DomainExit] = asyncio.ensure_future(asyncio.shield(exit_future))
        either: set[asyncio.Future[int] | asyncio.Future[DomainExit]] = {booted, died}
        try:
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if booted in done:
                try:
                    booted.result()
                    return
                except TimeoutError:
                    what = f"boot marker {marker!r}" if marker else "any console output"
                    if not os.path.exists(stream.path):
                        raise RecoverableError(
                            f"no console log of the guest appeared at {stream.path} within "
                            f"{spec.config.boot_timeout:g}s (boot_timeout), so its {what} could not be seen: "
                            f"is xenconsoled running with --log=guest, and does {os.path.dirname(stream.path)} "
                            "exist and accept files?"
                        ) from None
                    raise RecoverableError(
                        f"the guest did not print {what} within {spec.config.boot_timeout:g}s "
                        f"(boot_timeout); see its console log {stream.path}"
                    ) from None
            exit_ = died.result()
            raise RecoverableError(f"the guest stopped while booting (reason: {exit_.reason.value})")
        finally:
            for fut in (booted, died):
                fut.cancel()

    async def _undo_start(
        self, name: str, created: bool, task_dir: Path, console_path: str, stream: ConsoleStream | None
    ) -> None:
        """Remove everything a failed start made: domain, stream, config, state and console log."""
        if self._watcher is not None:
            self._watcher.expect_exit(name)
            self._watcher.unsubscribe(name)
        if stream is not None:
            with contextlib.suppress(Exception):
                await self._pump.remove(name)
            self._release_console(name)
        if created:
            try:
                await self.backend.destroy(name)
            except XenBackendError as exc:
                self._log.error("could not destroy half-started domain", domain=name, error=str(exc))
        await self._remove_files(name, task_dir, console_path)

    async def _remove_files(self, name: str, task_dir: Path, console_path: str) -> None:
        with contextlib.suppress(OSError, XenBackendError):
            await self.backend.forget(name)
        shutil.rmtree(task_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(console_path)
