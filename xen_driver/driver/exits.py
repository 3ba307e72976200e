"""The end of a guest: its exit, and Nomad's stop and signal requests.

One :class:`~xen_driver.xen.watcher.DomainWatcher` follows every domain.  Domains run without
an ``xl`` monitor and with ``on_* = preserve``, so a guest that shuts down stays until the
driver has read *why* (poweroff → exit 0, crash → failure); then its console is drained into
Nomad, the job's ``on_crash`` policy is applied and the domain is destroyed.  A stop asks the
guest to power off through XenStore and destroys it when ``kill_timeout`` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as signal_mod
from collections.abc import Coroutine

from xen_driver.driver import policy
from xen_driver.driver.consoles import DRAIN_TIMEOUT_S, ConsoleAttachment
from xen_driver.driver.errors import (
    NotSupported,
)
from xen_driver.driver.models import (
    ExitResult,
)
from xen_driver.driver.task import XenTask, utcnow
from xen_driver.xen.backend import (
    ExitReason,
    XenBackendError,
)
from xen_driver.xen.watcher import DomainExit
from xen_driver.xen.xenstore import XenStoreError

#: Signals that mean "shut down gracefully" (ACPI-style power button for a PV guest).
GRACEFUL_SIGNALS = {"", "SIGTERM", "SIGINT", "SIGQUIT", "TERM", "INT", "QUIT"}
#: Signals that mean "pull the plug".
FORCE_SIGNALS = {"SIGKILL", "KILL"}


def _signal_number(name: str) -> int:
    name = name.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(signal_mod, name, signal_mod.SIGTERM))


class ExitHandling(ConsoleAttachment):
    """What happens when a guest stops: on its own, or because Nomad asked."""

    # ------------------------------------------------------------------ exits
    def _on_domain_exit(self, exit_: DomainExit) -> None:
        task = self._by_domain.get(exit_.name)
        if task is None or not task.running:
            return
        self._exit_job(self._finish_exit(task, exit_), f"exit-{exit_.name}")

    def _exit_job(self, work: Coroutine[object, object, None], name: str) -> None:
        """Run ``work`` in the background as one of the jobs a guest's end waits for (DestroyTask
        waits for a task's ``exit-<domain>`` job; closing the plugin cancels them)."""
        job = asyncio.get_running_loop().create_task(work, name=name)
        self._exit_tasks.add(job)
        job.add_done_callback(self._exit_tasks.discard)

    def _exit_result(self, task: XenTask, exit_: DomainExit) -> ExitResult:
        reason = exit_.reason
        if task.stop_signal is not None:
            sig = _signal_number("SIGKILL" if task.killed else task.stop_signal or "SIGTERM")
            return ExitResult(exit_code=0, signal=sig)
        if reason is ExitReason.POWEROFF:
            return ExitResult(exit_code=0)
        if reason is ExitReason.REBOOT:
            return ExitResult(exit_code=0, err="the guest asked to reboot; Nomad's restart policy decides")
        if reason is ExitReason.CRASH:
            return ExitResult(exit_code=1, err="the guest crashed")
        if reason is ExitReason.WATCHDOG:
            return ExitResult(exit_code=2, err="the guest's watchdog fired")
        if reason is ExitReason.DESTROYED:
            return ExitResult(
                exit_code=1,
                signal=int(signal_mod.SIGKILL),
                err=f"domain {task.name} was destroyed outside of Nomad",
            )
        return ExitResult(exit_code=3, err=f"the guest shut down (reason: {reason.value})")

    async def _finish_exit(self, task: XenTask, exit_: DomainExit) -> None:
        result = self._exit_result(task, exit_)
        task.exit_reason = exit_.reason.value
        with contextlib.suppress(Exception):
            await self._drain_console(task.name, DRAIN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self._pump.remove(task.name)
        self._release_console(task.name)
        await self._dispose_exited_domain(task, exit_)
        if self._watcher is not None:
            self._watcher.unsubscribe(task.name)
        task.completed_at = utcnow()
        self._log.info(
            "task exited",
            task_id=task.id,
            domain=task.name,
            reason=exit_.reason.value,
            exit_code=result.exit_code,
            signal=result.signal,
        )
        if not task.exited.done():
            task.exited.set_result(result)
        if result.err and task.stop_signal is None:
            self._event(task, f"Guest {task.name} exited: {result.err}")

    async def _dispose_exited_domain(self, task: XenTask, exit_: DomainExit) -> None:
        """Apply the job's ``on_crash`` policy to a shut-down domain, then free it.

        Domains run without an ``xl`` monitor (see :mod:`xen_driver.xen.xl`), so the policy is
        ours to apply: ``preserve`` keeps a crashed domain for inspection until Nomad destroys
        the task; ``coredump-destroy`` writes the guest's memory image into the task directory
        (where ``nomad alloc fs`` can reach it) before destroying it.
        """
        crashed = exit_.reason is ExitReason.CRASH
        on_crash = task.spec.config.on_crash
        if crashed and on_crash == "preserve":
            self._log.info("keeping crashed domain until the task is destroyed", domain=task.name)
            return
        if crashed and on_crash == "coredump-destroy" and self.backend.can_dump_core and task.spec.task_dir:
            await self._dump_core(task)
        try:
            await self.backend.destroy(task.name)
        except XenBackendError as exc:
            self._log.warn("could not destroy exited domain", domain=task.name, error=str(exc))

    async def _dump_core(self, task: XenTask) -> None:
        """Dump the crashed guest's memory into the task directory, never through a job's symlink.

        The toolstack writes as root and follows links, so it writes into the driver's own state
        directory; the file is then copied into the task directory without following links
        (:func:`~xen_driver.driver.policy.copy_into_task_dir`)."""
        assert task.spec.task_dir
        filename = f"{task.name}.core"
        scratch = os.path.join(task.state.task_state_dir, filename)
        try:
            await self.backend.dump_core(task.name, scratch)
            policy.copy_into_task_dir(scratch, task.spec.task_dir, filename)
            self._event(task, f"Crash dump of {task.name} written to {filename} in the task directory")
        except (XenBackendError, OSError) as exc:
            self._log.warn("crash dump failed", domain=task.name, error=str(exc))
            self._event(task, f"Crash dump of {task.name} failed: {exc}")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(scratch)

    # ------------------------------------------------------------------ WaitTask
    async def wait_task(self, task_id: str) -> ExitResult:
        task = self._get(task_id)
        return await asyncio.shield(task.exited)

    # ------------------------------------------------------------------ StopTask / signals
    async def stop_task(self, task_id: str, timeout: float, signal: str) -> None:
        task = self._get(task_id)
        if not task.running:
            return
        signal = (signal or "SIGTERM").upper()
        assert self._watcher is not None
        task.stop_signal = signal
        self._watcher.expect_exit(task.name)
        if signal not in FORCE_SIGNALS:
            await self._request_shutdown(task)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.0)):
                    await asyncio.shield(task.exited)
            if not task.running or any(j.get_name() == f"exit-{task.name}" for j in self._exit_tasks):
                return  # exited, or its exit was seen and is being torn down (WaitTask will report it)
            self._log.info("guest ignored the shutdown request; destroying", domain=task.name, timeout_s=timeout)
        task.killed = True
        await self.backend.destroy(task.name)
        self._watcher.kick()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task.exited), 10.0)

    async def _request_shutdown(self, task: XenTask) -> None:
        """Ask the guest to power off, without waiting for it to acknowledge.

        For a PV guest the request *is* a XenStore write of ``poweroff`` to its
        ``control/shutdown`` node, which is all ``xl shutdown`` does too, except that libxl then
        blocks until the guest acknowledges (about a minute for a guest that never does).  Our
        caller has its own deadline (Nomad's ``kill_timeout``), so we write the node ourselves and
        fall back to the toolstack, in the background, only when XenStore is unreachable.
        """
        if self._xenstore is not None:
            try:
                await self._xenstore.write(f"/local/domain/{task.state.domid}/control/shutdown", "poweroff")
                return
            except XenStoreError as exc:
                self._log.warn("shutdown request through XenStore failed", domain=task.name, error=str(exc))

        async def via_toolstack() -> None:
            try:
                await self.backend.shutdown(task.name)
            except XenBackendError as exc:
                self._log.warn("shutdown request through the toolstack failed", domain=task.name, error=str(exc))

        self._exit_job(via_toolstack(), f"shutdown-{task.name}")

    async def signal_task(self, task_id: str, signal: str) -> None:
        task = self._get(task_id)
        name = (signal or "").upper()
        if name in GRACEFUL_SIGNALS - {""}:
            if task.running:
                await self._request_shutdown(task)
            return
        raise NotSupported(
            "SignalTask",
            f"signal {signal!r} cannot be delivered to a Xen PV guest; only SIGTERM/SIGINT/SIGQUIT "
            "(a graceful shutdown request) are supported",
        )
