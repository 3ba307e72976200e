"""``nomad-driver-xen breakdown``: where an instantiation's time went, from job submission to guest boot.

The Superfluidity study split a ClickOS instantiation on Nomad into the server's part, the
scheduler's, the client's, the driver's spawn and the guest's boot, measured with packet captures
and timing files.  Everything needed is already in Nomad's HTTP API: the job's submit time, the
evaluation's and the allocation's create times, the task's events, and the timing event our driver
sends when a guest has booted (its ``Details`` carry ``<phase>_ms``, see
:mod:`xen_driver.driver.timing`).  This package reads them (stdlib ``urllib`` only) and prints one
row per allocation.

Phases are measured where they happen; each belongs to one clock:

* ``server`` — the Nomad server's wall clock: job submitted, evaluation created, allocation placed.
* ``client`` — the client node's wall clock: task events (``Received``, ``Started``) and the time
  stamp of the driver's event, which the plugin takes on the same host.
* ``driver`` — the plugin's monotonic timer: the driver phases, guest boot included.
* ``server→client`` — a span that starts on the server and ends on the client (``dispatch``,
  ``total``).  It is computed only when one agent is both the only server and the allocation's
  client (one host, one clock) or when the caller vouches for synchronised clocks
  (``--synced-clocks``); otherwise it is left out, never guessed.

The driver's span is placed on the client's clock by its event: the event is stamped when the
monotonic timer stops, so the driver began ``total_ms`` before it.

Nothing here imports matplotlib unless a figure is asked for (``--png``, the ``[plot]`` extra).

The package: :mod:`.model` (phases, clocks, the per-task row, the summary, the report),
:mod:`.nomad_api` (the HTTP GETs), :mod:`.parse` (Nomad's records into phases), :mod:`.collect`
(one job or allocation into a report), :mod:`.render` (table and figure) and :mod:`.command`
(the subcommand's arguments and run).
"""

from xen_driver.breakdown.collect import collect
from xen_driver.breakdown.command import add_parser, run
from xen_driver.breakdown.model import (
    CLOCKS,
    DRIVER_PHASES,
    TOTAL_KEY,
    BreakdownError,
    Phase,
    Report,
    TaskBreakdown,
    percentile,
    phase_list,
    summarize,
)
from xen_driver.breakdown.nomad_api import NomadAPI, NotFound
from xen_driver.breakdown.parse import (
    is_timing_event,
    origin_evaluation,
    parse_allocation,
    parse_task,
    shares_one_clock,
    task_drivers,
)
from xen_driver.breakdown.render import PLOT_MISSING, plot_stacked, render_table, report_bars

__all__ = [
    "CLOCKS",
    "DRIVER_PHASES",
    "PLOT_MISSING",
    "TOTAL_KEY",
    "BreakdownError",
    "NomadAPI",
    "NotFound",
    "Phase",
    "Report",
    "TaskBreakdown",
    "add_parser",
    "collect",
    "is_timing_event",
    "origin_evaluation",
    "parse_allocation",
    "parse_task",
    "percentile",
    "phase_list",
    "plot_stacked",
    "render_table",
    "report_bars",
    "run",
    "shares_one_clock",
    "summarize",
    "task_drivers",
]
