"""A guest's console into ``nomad alloc logs``.

xenconsoled writes each guest's console into a log file.  Copying it into the task's stdout
FIFO (which Nomad's logmon reads) is the FIFO keeper's job (:mod:`xen_driver.xen.fifokeeper`):
a process of its own that outlives the plugin, holds the FIFO open, and records in the task's
state directory (``console.offset``) how far it got.  The plugin never writes into a FIFO the
keeper copies to, so a plugin crash at any point neither repeats nor loses console output
(exactly once); a keeper crash repeats at most the one piece (<= 4096 bytes) it had written but
not yet recorded (at least once).

The plugin reads a guest's console itself only while it waits for the boot marker (a stream of
its own without a sink, dropped once the guest booted: :meth:`_console_booted`), asks the keeper
to copy (:meth:`_hand_console`), to finish the copy when the guest exited
(:meth:`_drain_console`) and to let go (:meth:`_release_console`).  When no keeper can be
reached the plugin copies the console itself, as it did before the keeper copied (a plugin
crash may then repeat the piece it had written but not recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from xen_driver.driver.models import TaskSpec
from xen_driver.driver.planning import DomainPlanning
from xen_driver.driver.state import DriverState
from xen_driver.xen.console import ConsoleStream, FifoSink, NullSink
from xen_driver.xen.sinks import RotatingFileSink, end_unused_fifo

#: How long the console of an exited guest may take to drain into Nomad's FIFO.
DRAIN_TIMEOUT_S = 2.0
#: How the empty stderr log file is made when the driver writes the log files (never through a
#: symlink a job planted in its allocation).
_NEW_LOG_FILE = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


def _self_copy(name: str) -> str:
    """The pump key of the plugin's own copy of a console, when no keeper took it."""
    return f"{name}#copy"


class ConsoleAttachment(DomainPlanning):
    """Has each guest's console copied into its task's stdout FIFO, resumably."""

    def _offset_file(self, task_dir: Path) -> Path:
        return task_dir / "console.offset"

    def _read_offset(self, state: DriverState) -> int:
        try:
            return int(self._offset_file(Path(state.task_state_dir)).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return state.console_offset

    def _attach_console(
        self, spec: TaskSpec, name: str, console_path: str, task_dir: Path, offset: int
    ) -> ConsoleStream:
        """Hand the console to the keeper (:meth:`_hand_console`) and return a stream of the
        plugin's own, without a sink, to wait for the boot marker on; :meth:`_console_booted`
        drops it."""
        self._hand_console(spec, name, console_path, task_dir, offset)
        return self._pump.add(name, console_path, NullSink(), offset=offset)

    def _hand_console(self, spec: TaskSpec, name: str, console_path: str, task_dir: Path, offset: int) -> None:
        """Ask the keeper (in the background) to copy the console into the task's FIFO from
        ``offset`` on (or from where its own ``console.offset`` says, for a task it copies or
        copied already).  The stderr FIFO, which nothing writes, gets its end-of-file now
        (:func:`~xen_driver.xen.sinks.end_unused_fifo`)."""
        rotate = self.config.driver_logs
        logs = self._log_dir(spec) if rotate is not None else ""
        if not logs:
            rotate = None  # Nomad's logmon writes the files, or the task's logs are disabled
        if rotate is not None:
            # The driver collects the logs: Nomad's log files beside the FIFOs Nomad named (and,
            # with no logmon, never made); an empty stderr file, since a guest has one console.
            fifo = os.path.join(logs, f"{spec.name}.stdout")
            with contextlib.suppress(OSError):
                os.close(os.open(os.path.join(logs, f"{spec.name}.stderr.0"), _NEW_LOG_FILE, 0o644))
        else:
            if spec.stderr_path and spec.stderr_path != os.devnull:
                ending = asyncio.get_running_loop().create_task(
                    end_unused_fifo(spec.stderr_path), name=f"stderr-{name}"
                )
                self._fifo_jobs.add(ending)
                ending.add_done_callback(self._fifo_jobs.discard)
            fifo = spec.stdout_path or os.devnull
        handoffs = self._console_handoffs
        job = asyncio.get_running_loop().create_task(
            self._hand_to_keeper(spec.id, name, fifo, console_path, offset, self._offset_file(task_dir), rotate),
            name=f"console-{name}",
        )
        handoffs[name] = job
        job.add_done_callback(lambda j: handoffs.pop(name, None) if handoffs.get(name) is j else None)

    @staticmethod
    def _log_dir(spec: TaskSpec) -> str:
        """``<alloc>/alloc/logs``, the directory of the FIFOs Nomad named; "" when the task's logs
        are disabled (``logs { disabled = true }``: Nomad names /dev/null)."""
        fifo = spec.stdout_path or ""
        if fifo == os.devnull:
            return ""
        logs = os.path.dirname(fifo) if os.path.isabs(fifo) else os.path.join(spec.alloc_dir, "alloc", "logs")
        return logs if os.path.isabs(logs) else ""

    async def _hand_to_keeper(
        self,
        task_id: str,
        name: str,
        fifo: str,
        console_path: str,
        offset: int,
        offset_file: Path,
        rotate: tuple[int, int] | None = None,
    ) -> None:
        try:
            await self._keeper.copy(
                name, fifo, console_path, offset=offset, offset_file=str(offset_file), rotate=rotate
            )
            return  # the keeper copies; a refusal (e.g. no such FIFO) was logged by the client
        except OSError:
            pass  # no keeper (logged by the client): copy it ourselves, as before the keeper did

        def commit(pos: int) -> None:
            tmp = offset_file.with_suffix(".tmp")
            try:
                tmp.write_text(str(pos))
                os.replace(tmp, offset_file)
            except OSError as exc:  # the state dir vanished: keep streaming, lose only resumability
                self._log.warn("cannot record console offset", task_id=task_id, error=str(exc))

        if _self_copy(name) not in self._pump:
            sink: FifoSink | RotatingFileSink
            if rotate is not None:
                sink = RotatingFileSink(fifo, max_files=rotate[0], max_bytes=rotate[1])
            else:
                sink = FifoSink(fifo, on_fifo_open=lambda: self._keeper.hold(name, fifo))
            self._pump.add(_self_copy(name), console_path, sink, offset=offset, on_commit=commit)

    def _console_booted(self, name: str) -> None:
        """The guest booted: the plugin stops reading its console (the keeper copies it)."""
        self._pump.detach(name)

    async def _drain_console(self, name: str, timeout_s: float) -> bool:
        """Have everything the guest printed reach its FIFO (bounded by ``timeout_s``): when the
        guest is gone, before :meth:`_release_console`.  False if that did not happen in time."""
        job = self._console_handoffs.get(name)
        if job is not None:
            try:
                await asyncio.wait_for(asyncio.shield(job), timeout_s)
            except Exception:  # noqa: BLE001 - timed out or failed: drain what can be drained
                pass
        if _self_copy(name) in self._pump:
            return bool(await self._pump.drain(_self_copy(name), timeout_s))
        return bool(await self._keeper.drain(name, timeout_s))

    def _release_console(self, name: str) -> None:
        """The task is over: the copy stops and Nomad's logmon sees end-of-file (after a copy
        request still on its way, so the keeper is not left copying)."""
        self._pump.detach(name)
        job = self._console_handoffs.pop(name, None)
        own = self._pump.detach(_self_copy(name))
        if own is not None:
            asyncio.get_running_loop().create_task(own.sink.close())
        self._keeper.release(name, after=job if job is not None and not job.done() else None)
