"""What a breakdown is made of: the phases and the clock each is measured on, the one error the
command reports, one task's row (:class:`TaskBreakdown`), the median/p90 summary, and the
:class:`Report` of a job or allocation that the table, the figure and ``--json`` print.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Driver phases in the order StartTask runs them (mirrors xen_driver.driver.timing.PHASE_ORDER,
#: kept here so the command does not import the driver).  Phases a task did not go through are
#: absent from its event; phases this list does not know (a new start path's) come after these.
DRIVER_PHASES = ("validate", "render", "domain_build", "clickos_push", "unpause")

SERVER = "server"
CLIENT = "client"
DRIVER = "driver"
SERVER_TO_CLIENT = "server→client"

CLOCKS = {
    SERVER: "the Nomad server's wall clock (job SubmitTime, evaluation CreateTime, allocation CreateTime)",
    CLIENT: "the client node's wall clock (task events; the driver's event is stamped on the same host)",
    DRIVER: "the plugin's monotonic timer (the <phase>_ms annotations of the driver's timing event)",
    SERVER_TO_CLIENT: (
        "starts on the server's clock and ends on the client's: measured only when one agent is the only"
        " server and the allocation's client (one clock), or with --synced-clocks"
    ),
}


@dataclass(frozen=True)
class Phase:
    name: str
    span: str  # what it measures, "from → to"
    clock: str


FIXED_BEFORE = (
    Phase("server", "job submitted → evaluation created", SERVER),
    Phase("scheduling", "evaluation created → allocation placed", SERVER),
    Phase("dispatch", "allocation placed → received by the client", SERVER_TO_CLIENT),
    Phase("client", "received by the client → driver's StartTask timer starts", CLIENT),
)
DRIVER_OTHER = Phase("driver_other", "driver steps between its timed phases (exit watch, console attach)", DRIVER)
BOOT = Phase("boot", "guest boot: running → boot marker on its console", DRIVER)
STARTED = Phase("started", "driver's timing event → task Started event", CLIENT)
TOTAL = Phase("total", "job submitted (or evaluation created) → task Started", SERVER_TO_CLIENT)

#: The annotation holding the driver's whole span; an event with it is our timing event.
TOTAL_KEY = "total_ms"


def phase_list(driver_phase_names: Iterable[str] = ()) -> list[Phase]:
    """All phases in order, with any driver phases beyond the known ones placed before ``boot``."""
    known = list(DRIVER_PHASES)
    fixed = {p.name for p in (*FIXED_BEFORE, DRIVER_OTHER, BOOT, STARTED, TOTAL)}
    extra = [n for n in driver_phase_names if n not in known and n not in fixed]
    driver = [Phase(n, f"driver phase {n}", DRIVER) for n in known + sorted(set(extra), key=extra.index)]
    return [*FIXED_BEFORE, *driver, DRIVER_OTHER, BOOT, STARTED, TOTAL]


class BreakdownError(Exception):
    """A one-line reason the breakdown cannot be made (printed as is, exit status 1)."""


@dataclass
class TaskBreakdown:
    """One task of one allocation: its phases in milliseconds (None: not measured)."""

    alloc_id: str
    task: str
    job_id: str
    job_version: int | None
    node_id: str
    client_status: str
    eval_id: str
    eval_triggered_by: str | None
    restarts: int
    started: bool
    same_clock: bool
    start_path: str | None = None  # the timing event's start_path annotation (e.g. "pool"), if any
    phases: dict[str, float | None] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    timestamps: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self, phases: Sequence[Phase]) -> dict[str, Any]:
        return {
            "alloc_id": self.alloc_id,
            "task": self.task,
            "job_id": self.job_id,
            "job_version": self.job_version,
            "node_id": self.node_id,
            "client_status": self.client_status,
            "eval_id": self.eval_id,
            "eval_triggered_by": self.eval_triggered_by,
            "restarts": self.restarts,
            "started": self.started,
            "start_path": self.start_path,
            "same_clock": self.same_clock,
            "phases_ms": {p.name: self.phases.get(p.name) for p in phases},
            "driver_annotations": dict(self.annotations),
            "timestamps_ns": dict(self.timestamps),
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear interpolation between closest ranks (q in 0..100)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(rows: Sequence[TaskBreakdown], phases: Sequence[Phase]) -> dict[str, dict[str, float | int] | None]:
    """Median and p90 per phase over the tasks that started (phases they lack are skipped)."""
    out: dict[str, dict[str, float | int] | None] = {}
    for p in phases:
        values = [v for r in rows if r.started and (v := r.phases.get(p.name)) is not None]
        out[p.name] = (
            {"n": len(values), "median": round(statistics.median(values), 3), "p90": round(percentile(values, 90), 3)}
            if values
            else None
        )
    return out


@dataclass
class Report:
    address: str
    namespace: str
    target: str
    kind: str  # "job" or "allocation"
    job_id: str
    driver: str
    rows: list[TaskBreakdown]
    synced_clocks: bool = False
    skipped: list[str] = field(default_factory=list)  # allocations of other drivers (job target)

    @property
    def phases(self) -> list[Phase]:
        names: list[str] = []
        for r in self.rows:
            names.extend(n for n in r.phases if n not in names)
        return phase_list(names)

    def summary(self) -> dict[str, dict[str, float | int] | None]:
        return summarize(self.rows, self.phases)

    def to_json(self) -> dict[str, Any]:
        phases = self.phases
        return {
            "address": self.address,
            "namespace": self.namespace,
            "target": self.target,
            "kind": self.kind,
            "job_id": self.job_id,
            "driver": self.driver,
            "unit": "ms",
            "clocks": dict(CLOCKS),
            "synced_clocks_assumed": self.synced_clocks,
            "phases": [{"name": p.name, "span": p.span, "clock": p.clock} for p in phases],
            "allocations": [r.to_json(phases) for r in self.rows],
            "summary": {
                "started": sum(1 for r in self.rows if r.started),
                "of": len(self.rows),
                "percentile_method": "linear interpolation between closest ranks",
                "phases_ms": self.summary(),
            },
            "skipped_allocations": list(self.skipped),
        }
