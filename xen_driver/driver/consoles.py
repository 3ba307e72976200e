"""A guest's console into ``nomad alloc logs``.

xenconsoled writes each guest's console into a log file; the shared
:class:`~xen_driver.xen.console.ConsolePump` copies new bytes into the task's stdout FIFO,
which Nomad's logmon reads, and records in the task's state directory how far it got, so a
restarted plugin resumes where its predecessor stopped.  The FIFO keeper
(:mod:`xen_driver.xen.fifokeeper`) holds every FIFO open meanwhile, so logmon never sees
end-of-file while the task lives.
"""

from __future__ import annotations

import os
from pathlib import Path

from xen_driver.driver.models import (
    TaskSpec,
)
from xen_driver.driver.state import DriverState
from xen_driver.xen.console import ConsoleStream, FifoSink

from xen_driver.driver.planning import DomainPlanning


#: How long the console of an exited guest may take to drain into Nomad's FIFO.
DRAIN_TIMEOUT_S = 2.0


class ConsoleAttachment(DomainPlanning):
    """Streams each guest's console into its task's stdout FIFO, resumably."""

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
        offset_file = self._offset_file(task_dir)

        def commit(pos: int) -> None:
            tmp = offset_file.with_suffix(".tmp")
            try:
                tmp.write_text(str(pos))
                os.replace(tmp, offset_file)
            except OSError as exc:  # the state dir vanished: keep streaming, lose only resumability
                self._log.warn("cannot record console offset", task_id=spec.id, error=str(exc))

        path = spec.stdout_path or os.devnull
        sink = FifoSink(path, on_fifo_open=lambda: self._keeper.hold(name, path))
        return self._pump.add(name, console_path, sink, offset=offset, on_commit=commit)

    def _release_console(self, name: str) -> None:
        """The task is over: Nomad's logmon may see end-of-file once our own descriptor closes."""
        self._keeper.release(name)

