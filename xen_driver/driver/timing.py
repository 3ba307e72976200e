"""Phase timings of a task's spawn and boot.

The Superfluidity measurements of ClickOS on Nomad broke a guest's instantiation time into
phases (download, environment set-up, spawn, clean).  We keep that idea and add what their
driver could not see because it only tracked the ``xl create`` process: the boot of the guest
itself, up to the moment its console shows the boot marker.

A :class:`PhaseTimer` is cheap (monotonic clock, a list of tuples) and is filled while a task
starts; its :meth:`PhaseTimer.as_dict` is logged as one structured event, sent to Nomad as a
task event with annotations, and kept for ``InspectTask``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Phases in the order they happen during StartTask.  Phases that did not happen for a task
#: (no ClickOS configuration, say) are simply absent from its breakdown.
PHASE_ORDER = (
    "validate",
    "render",
    "domain_build",
    "pool_claim",
    "clickos_push",
    "unpause",
    "boot",
    "total",
)


@dataclass
class PhaseTimer:
    """Records named, non-overlapping phases measured with the monotonic clock."""

    started_ns: int = field(default_factory=time.monotonic_ns)
    _phases: list[tuple[str, int]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body of a ``with`` block as phase ``name`` (recorded even if it raises)."""
        begin = time.monotonic_ns()
        try:
            yield
        finally:
            self._phases.append((name, time.monotonic_ns() - begin))

    def record(self, name: str, duration_ns: int) -> None:
        """Record a phase measured elsewhere (for example by the backend)."""
        self._phases.append((name, int(duration_ns)))

    def elapsed_ms(self) -> float:
        return (time.monotonic_ns() - self.started_ns) / 1e6

    def as_dict(self) -> dict[str, float]:
        """Phase → milliseconds (rounded to 0.1 ms), plus ``total`` since the timer started."""
        out: dict[str, float] = {}
        for name, ns in self._phases:
            out[name] = round(out.get(name, 0.0) + ns / 1e6, 1)
        out["total"] = round(self.elapsed_ms(), 1)
        return out

    def annotations(self) -> dict[str, str]:
        """The breakdown as Nomad task-event annotations (string → string, ``<phase>_ms``)."""
        return {f"{name}_ms": f"{ms:.1f}" for name, ms in self.as_dict().items()}

    def summary(self) -> str:
        """One human line, in phase order: ``validate 0.4 ms, render 0.2 ms, …``."""
        d = self.as_dict()
        names = [n for n in PHASE_ORDER if n in d] + [n for n in d if n not in PHASE_ORDER]
        return ", ".join(f"{n} {d[n]:.1f} ms" for n in names)
