"""``nomad-driver-xen breakdown``: where an instantiation's time went, from job submission to guest boot.

The Superfluidity study split a ClickOS instantiation on Nomad into the server's part, the
scheduler's, the client's, the driver's spawn and the guest's boot, measured with packet captures
and timing files.  Everything needed is already in Nomad's HTTP API: the job's submit time, the
evaluation's and the allocation's create times, the task's events, and the timing event our driver
sends when a guest has booted (its ``Details`` carry ``<phase>_ms``, see
:mod:`xen_driver.driver.timing`).  This module reads them (stdlib ``urllib`` only) and prints one
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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
import statistics
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

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


class NotFound(BreakdownError):
    pass


# ---------------------------------------------------------------------------------------- API


class NomadAPI:
    """The few GETs the breakdown needs.  Honours NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE,
    NOMAD_CACERT and NOMAD_SKIP_VERIFY like the nomad CLI."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        timeout: float = 15.0,
        env: dict[str, str] | None = None,
    ):
        env = os.environ if env is None else env
        self.address = (address or env.get("NOMAD_ADDR") or "http://127.0.0.1:4646").rstrip("/")
        if "://" not in self.address:
            self.address = "http://" + self.address
        self.token = token if token is not None else env.get("NOMAD_TOKEN") or None
        self.namespace = namespace or env.get("NOMAD_NAMESPACE") or "default"
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.address.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=env.get("NOMAD_CACERT") or None)
            if env.get("NOMAD_SKIP_VERIFY", "").lower() in ("1", "true"):
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

    def get(self, path: str, **params: str) -> Any:
        query = {"namespace": self.namespace, **params}
        url = f"{self.address}{path}?{urllib.parse.urlencode(query)}"
        req = urllib.request.Request(url, headers={"X-Nomad-Token": self.token} if self.token else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            text = " ".join(exc.read().decode(errors="replace").split())[:200]
            if exc.code == 404:
                raise NotFound(f"{path}: {text or 'not found'}") from None
            if exc.code == 403:
                raise BreakdownError(
                    f"Nomad at {self.address} refused {path}: {text or 'permission denied'} (is NOMAD_TOKEN set?)"
                ) from None
            raise BreakdownError(f"Nomad at {self.address} answered {exc.code} to {path}: {text}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BreakdownError(f"cannot reach Nomad at {self.address}: {reason}") from None
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise BreakdownError(f"Nomad at {self.address} sent something that is not JSON for {path}") from None


# ------------------------------------------------------------------------------ parsing


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


def _ms(ns: int | float) -> float:
    return round(ns / 1e6, 3)


def _events(task_state: dict) -> list[dict]:
    events = [e for e in (task_state.get("Events") or []) if isinstance(e, dict)]
    return sorted(events, key=lambda e: e.get("Time") or 0)


def is_timing_event(event: dict) -> bool:
    """Our driver's start breakdown: a ``Driver`` event whose details carry ``total_ms``."""
    return event.get("Type") == "Driver" and TOTAL_KEY in (event.get("Details") or {})


def task_drivers(alloc: dict) -> dict[str, str]:
    """Task name → driver, from the job version embedded in a full allocation."""
    job = alloc.get("Job") or {}
    for group in job.get("TaskGroups") or []:
        if group.get("Name") == alloc.get("TaskGroup"):
            return {t.get("Name"): t.get("Driver") for t in group.get("Tasks") or []}
    return {}


def _failure(events: list[dict]) -> str | None:
    for e in events:
        if e.get("FailsTask") or e.get("Type") in ("Driver Failure", "Setup Failure", "Failed Validation"):
            return f"{e.get('Type')}: {e.get('DisplayMessage') or e.get('DriverError') or e.get('SetupError') or ''}".strip()
    return None


def parse_task(
    alloc: dict,
    task: str,
    evaluation: dict | None,
    *,
    same_clock: bool,
    origin: dict | None = None,
) -> TaskBreakdown:
    """The breakdown of one task's first start, from a full allocation (``/v1/allocation/<id>``)
    and the evaluation that placed it (``None`` if Nomad no longer has it).  When that is a blocked
    evaluation (it waited for capacity), ``origin`` is the submission's evaluation it descends
    from (:func:`origin_evaluation`): the server's phases then count from there."""
    state = (alloc.get("TaskStates") or {}).get(task) or {}
    events = _events(state)
    job = alloc.get("Job") or {}
    row = TaskBreakdown(
        alloc_id=alloc.get("ID", ""),
        task=task,
        job_id=alloc.get("JobID") or job.get("ID") or "",
        job_version=job.get("Version"),
        node_id=alloc.get("NodeID", ""),
        client_status=alloc.get("ClientStatus", ""),
        eval_id=alloc.get("EvalID", ""),
        eval_triggered_by=(evaluation or {}).get("TriggeredBy"),
        restarts=int(state.get("Restarts") or 0),
        started=False,
        same_clock=same_clock,
    )
    ph = row.phases
    ts = row.timestamps

    submit = job.get("SubmitTime") or None
    if evaluation is not None and origin is not None and evaluation.get("TriggeredBy") == BLOCKED:
        waited = (evaluation.get("CreateTime") or 0) - (origin.get("CreateTime") or 0)
        row.notes.append(
            f"placed by blocked evaluation {evaluation.get('ID', '')[:8]} (created {_ms(waited):.1f} ms after"
            f" evaluation {origin.get('ID', '')[:8]}, it waited for capacity): scheduling counts from the submission's evaluation"
        )
        ts["placing_evaluation_created"] = evaluation.get("CreateTime")
        evaluation = origin
    eval_create = (evaluation or {}).get("CreateTime") or None
    placed = alloc.get("CreateTime") or None
    ts.update(job_submitted=submit, evaluation_created=eval_create, allocation_placed=placed)

    # ---- server's clock
    if evaluation is None:
        row.notes.append(f"evaluation {row.eval_id[:8]} is gone from Nomad (garbage-collected): no server phases")
    elif placed is not None and eval_create is not None and eval_create > placed:
        row.notes.append("the allocation predates its evaluation (updated in place): no server phases")
        eval_create = None
    if eval_create is not None and placed is not None:
        ph["scheduling"] = _ms(placed - eval_create)
        wait_until = str((evaluation or {}).get("WaitUntil") or "")
        if wait_until and not wait_until.startswith("0001-"):
            row.notes.append(f"the evaluation was delayed until {wait_until} (reschedule policy): scheduling includes the delay")
    begin = eval_create
    if (
        eval_create is not None
        and submit is not None
        and evaluation.get("TriggeredBy") == "job-register"
        and eval_create >= submit
    ):
        ph["server"] = _ms(eval_create - submit)
        begin = submit
    elif eval_create is not None:
        row.notes.append(
            f"placed by an evaluation triggered by {evaluation.get('TriggeredBy') or 'something else'}, not by the job's submission:"
            " no server phase, total from the evaluation"
        )

    # ---- client's clock
    received = next((e["Time"] for e in events if e.get("Type") == "Received"), None)
    timing = next((e for e in events if is_timing_event(e)), None)
    after = timing["Time"] if timing else None
    started = next(
        (e["Time"] for e in events if e.get("Type") == "Started" and (after is None or e["Time"] >= after)), None
    )
    ts.update(received=received, driver_event=after, started=started)
    if received is None and events:
        row.notes.append("the client no longer lists the Received event (it keeps the last 10 events)")
    if row.restarts:
        row.notes.append(f"restarted {row.restarts} time(s): the first start is shown")
    # A start path's own event before the timing event (a pool miss that started cold, say).
    path = next(
        (e for e in events if e.get("Type") == "Driver" and not is_timing_event(e) and (e.get("Details") or {}).get("start_path")),
        None,
    )
    if path is not None and (after is None or path.get("Time", 0) <= after):
        row.notes.append(path.get("DisplayMessage") or f"start path: {path['Details']['start_path']}")

    # ---- driver's monotonic timer
    if timing is not None:
        details = timing.get("Details") or {}
        row.annotations = {k: str(v) for k, v in details.items()}
        row.start_path = str(details.get("start_path") or "") or None
        values: dict[str, float] = {}
        for key, value in details.items():
            if key.endswith("_ms"):
                try:
                    values[key[: -len("_ms")]] = float(value)
                except (TypeError, ValueError):
                    row.notes.append(f"driver annotation {key}={value!r} is not a number")
        total = values.pop("total", None)
        boot = values.pop("boot", None)
        for name, value in values.items():
            ph[name] = value
        if boot is not None:
            ph["boot"] = boot
        if total is not None:
            other = total - sum(values.values()) - (boot or 0.0)
            # The annotations are rounded to 0.1 ms each; don't show rounding as negative time.
            ph["driver_other"] = round(max(other, 0.0) if other > -0.05 * (len(values) + 2) else other, 3)
            driver_began = after - int(round(total * 1e6))
            ts["driver_began"] = driver_began
            if received is not None:
                ph["client"] = _ms(driver_began - received)
        if started is not None:
            ph["started"] = _ms(started - after)
    elif started is not None:
        row.notes.append("no timing event from the driver (is it nomad-driver-xen?): no driver phases")

    row.started = started is not None
    if not row.started:
        why = _failure(events)
        row.notes.append(f"never started ({why})" if why else f"not started (task state {state.get('State') or 'pending'})")

    # ---- spans from the server's clock to the client's
    if same_clock:
        if placed is not None and received is not None:
            ph["dispatch"] = _ms(received - placed)
        if begin is not None and started is not None and timing is not None:
            ph["total"] = _ms(started - begin)
    elif placed is not None and received is not None:
        row.notes.append("server and client clocks are not known to agree: no dispatch, no total (--synced-clocks)")
    return row


def parse_allocation(
    alloc: dict,
    evaluation: dict | None,
    *,
    driver: str = "xen",
    same_clock: bool,
    origin: dict | None = None,
) -> list[TaskBreakdown]:
    """One breakdown per task of ``driver`` in the allocation (none if it has no such task)."""
    tasks = [name for name, drv in task_drivers(alloc).items() if drv == driver]
    return [parse_task(alloc, t, evaluation, same_clock=same_clock, origin=origin) for t in sorted(tasks)]


#: TriggeredBy of a blocked evaluation: the scheduler made it when a placement found no capacity.
BLOCKED = "queued-allocs"


def origin_evaluation(evaluation: dict | None, lookup) -> dict | None:
    """The job-register evaluation a blocked evaluation descends from (through ``PreviousEval``),
    or None.  ``lookup(eval_id)`` returns an evaluation or None."""
    current = evaluation
    for _ in range(16):
        if current is None or current.get("TriggeredBy") != BLOCKED or not current.get("PreviousEval"):
            break
        current = lookup(current["PreviousEval"])
    if current is not evaluation and current is not None and current.get("TriggeredBy") == "job-register":
        return current
    return None


def shares_one_clock(agent_self: dict | None, node_id: str) -> bool:
    """True when the agent we talk to is the cluster's only server and also the allocation's
    client: every time stamp then comes from one host's clock."""
    if not agent_self:
        return False
    stats = agent_self.get("stats") or {}
    nomad = stats.get("nomad") or {}
    raft = stats.get("raft") or {}
    client = stats.get("client") or {}
    return (
        nomad.get("server") == "true"
        and str(raft.get("num_peers", "")) == "0"
        and bool(node_id)
        and client.get("node_id") == node_id
    )


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
        values = [r.phases[p.name] for r in rows if r.started and r.phases.get(p.name) is not None]
        out[p.name] = (
            {"n": len(values), "median": round(statistics.median(values), 3), "p90": round(percentile(values, 90), 3)}
            if values
            else None
        )
    return out


# ------------------------------------------------------------------------------ collecting


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


def collect(
    api: NomadAPI,
    target: str,
    *,
    driver: str = "xen",
    synced_clocks: bool = False,
) -> Report:
    """Read Nomad's API for a job (or, if no job has that id, an allocation id or prefix)."""
    try:
        job = api.get(f"/v1/job/{urllib.parse.quote(target, safe='')}")
    except NotFound:
        job = None
    if job is not None:
        return _collect_job(api, job, target, driver, synced_clocks)
    alloc = _find_allocation(api, target)
    if alloc is None:
        raise BreakdownError(f"no job or allocation {target!r} in namespace {api.namespace} at {api.address}")
    drivers = task_drivers(alloc)
    if driver not in drivers.values():
        others = ", ".join(f'task "{t}" driver "{d}"' for t, d in sorted(drivers.items())) or "no tasks"
        raise BreakdownError(f"allocation {alloc['ID'][:8]} is not a {driver} allocation ({others})")
    evaluation = _evaluation(api, alloc.get("EvalID", ""), {})
    origin = origin_evaluation(evaluation, lambda eid: _evaluation(api, eid, {}))
    same = synced_clocks or shares_one_clock(_agent_self(api), alloc.get("NodeID", ""))
    rows = parse_allocation(alloc, evaluation, driver=driver, same_clock=same, origin=origin)
    return Report(api.address, api.namespace, target, "allocation", alloc.get("JobID", ""), driver, rows, synced_clocks)


def _collect_job(api: NomadAPI, job: dict, target: str, driver: str, synced_clocks: bool) -> Report:
    job_id = job.get("ID") or target
    quoted = urllib.parse.quote(job_id, safe="")
    evaluations = {e["ID"]: e for e in api.get(f"/v1/job/{quoted}/evaluations") or [] if "ID" in e}
    stubs = api.get(f"/v1/job/{quoted}/allocations") or []
    if not stubs:
        raise BreakdownError(f"job {job_id} has no allocations (yet) in namespace {api.namespace} at {api.address}")
    agent_self = None if synced_clocks else _agent_self(api)
    rows: list[TaskBreakdown] = []
    skipped: list[str] = []
    drivers_seen: set[str] = set()
    for stub in sorted(stubs, key=lambda a: (a.get("CreateIndex") or 0, a.get("ID") or "")):
        try:
            alloc = api.get(f"/v1/allocation/{stub['ID']}")
        except NotFound:
            continue  # garbage-collected between the two requests
        drivers = task_drivers(alloc)
        drivers_seen.update(drivers.values())
        if driver not in drivers.values():
            skipped.append(stub["ID"])
            continue
        same = synced_clocks or shares_one_clock(agent_self, alloc.get("NodeID", ""))
        evaluation = _evaluation(api, alloc.get("EvalID", ""), evaluations)
        origin = origin_evaluation(evaluation, lambda eid: _evaluation(api, eid, evaluations))
        rows.extend(parse_allocation(alloc, evaluation, driver=driver, same_clock=same, origin=origin))
    if not rows:
        seen = ", ".join(sorted(d for d in drivers_seen if d)) or "none"
        raise BreakdownError(f"job {job_id} has no allocation with a {driver} task (drivers: {seen})")
    return Report(api.address, api.namespace, target, "job", job_id, driver, rows, synced_clocks, skipped)


def _find_allocation(api: NomadAPI, target: str) -> dict | None:
    if len(target) == 36:  # a whole id (Nomad answers 500, not 404, to anything shorter)
        try:
            return api.get(f"/v1/allocation/{urllib.parse.quote(target, safe='')}")
        except NotFound:
            return None
    if not target or len(target) % 2 or any(c not in "0123456789abcdef-" for c in target.lower()):
        return None  # Nomad only takes even-length hex prefixes
    matches = api.get("/v1/allocations", prefix=target) or []
    if len(matches) > 1:
        raise BreakdownError(f"allocation prefix {target!r} matches {len(matches)} allocations: give more of the id")
    if not matches:
        return None
    try:
        return api.get(f"/v1/allocation/{matches[0]['ID']}")
    except NotFound:
        return None


def _evaluation(api: NomadAPI, eval_id: str, known: dict[str, dict]) -> dict | None:
    if not eval_id:
        return None
    if eval_id in known:
        return known[eval_id]
    try:
        return api.get(f"/v1/evaluation/{eval_id}")
    except NotFound:
        return None


def _agent_self(api: NomadAPI) -> dict | None:
    try:
        return api.get("/v1/agent/self")
    except NotFound:
        return None
    except BreakdownError as exc:
        if str(exc).startswith("cannot reach"):
            raise
        return None  # no agent:read permission: clocks are then simply not known to agree


# ------------------------------------------------------------------------------ output

SHORT = {"domain_build": "build", "clickos_push": "push", "driver_other": "drv_other", "scheduling": "sched"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(report: Report) -> str:
    phases = report.phases
    head = ["alloc", "task", "status"] + [SHORT.get(p.name, p.name) for p in phases]
    body: list[list[str]] = []
    for r in report.rows:
        status = r.client_status + (f" r{r.restarts}" if r.restarts else "")
        body.append([r.alloc_id[:8], r.task, status] + [_fmt(r.phases.get(p.name)) for p in phases])
    started = [r for r in report.rows if r.started]
    if len(started) > 1:
        summary = report.summary()
        for stat in ("median", "p90"):
            body.append(
                [stat, "", f"n={len(started)}"]
                + [_fmt((summary[p.name] or {}).get(stat)) for p in phases]  # type: ignore[arg-type]
            )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    what = f"job {report.job_id}" if report.kind == "job" else f"allocation {report.target} (job {report.job_id})"
    out = [f"{what} at {report.address}, namespace {report.namespace}: {len(report.rows)} {report.driver} task(s), times in ms"]
    out += ["", line(head), *(line(b) for b in body), ""]
    by_clock: dict[str, list[str]] = {}
    for p in phases:
        by_clock.setdefault(p.clock, []).append(p.name)
    out.append("clocks:")
    for clock, names in by_clock.items():
        out.append(f"  {clock:<14} {', '.join(names)}: {CLOCKS[clock]}")
    notes = [f"  {r.alloc_id[:8]} {r.task}: {n}" for r in report.rows for n in r.notes]
    if report.skipped:
        notes.append(f"  skipped {len(report.skipped)} allocation(s) without a {report.driver} task")
    if notes:
        out += ["notes:", *notes]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ figure

PLOT_MISSING = "--png needs matplotlib: pip install 'nomad-driver-xen[plot]'"


def plot_stacked(
    bars: Sequence[tuple[str, dict[str, float | None]]],
    path: str,
    *,
    title: str,
    subtitle: str = "",
    phases: Sequence[Phase] | None = None,
) -> None:
    """A stacked bar per entry of ``bars`` (label, phase → ms), phases bottom-up in order; the
    ``total`` phase is written above each bar instead of stacked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BreakdownError(PLOT_MISSING) from None

    if phases is None:
        names: list[str] = []
        for _, values in bars:
            names.extend(n for n in values if n not in names)
        phases = phase_list(names)
    stacked = [p for p in phases if p.name != "total" and any((v.get(p.name) or 0) > 0 for _, v in bars)]
    peak = max((sum((v.get(p.name) or 0) for p in stacked) for _, v in bars), default=0.0)
    scale, unit = (1000.0, "s") if peak >= 5000 else (1.0, "ms")
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars) + 4.0), 5.5))
    xs = list(range(len(bars)))
    bottoms = [0.0] * len(bars)
    for i, p in enumerate(stacked):
        heights = [(v.get(p.name) or 0.0) / scale for _, v in bars]
        ax.bar(xs, heights, 0.6, bottom=bottoms, label=f"{p.name} ({p.clock})", color=cmap(i % 20), edgecolor="white", linewidth=0.5)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, (_, values), top in zip(xs, bars, bottoms):
        total = values.get("total")
        text = f"{total / scale:.2f} {unit}" if total is not None else f"Σ {top:.2f} {unit}"
        ax.annotate(text, (x, top), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs, [label for label, _ in bars], rotation=30 if len(bars) > 6 else 0, ha="right" if len(bars) > 6 else "center")
    ax.set_ylabel(f"time ({unit})")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="phase (clock)")
    ax.margins(y=0.08)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise BreakdownError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def report_bars(report: Report) -> list[tuple[str, dict[str, float | None]]]:
    """One bar per started task, plus the medians when there are several."""
    bars: list[tuple[str, dict[str, float | None]]] = [
        (r.alloc_id[:8] + (f"/{r.task}" if len({x.task for x in report.rows}) > 1 else ""), dict(r.phases))
        for r in report.rows
        if r.started
    ]
    if len(bars) > 1:
        summary = report.summary()
        bars.append(("median", {n: (s or {}).get("median") for n, s in summary.items()}))  # type: ignore[misc]
    return bars


# ------------------------------------------------------------------------------ command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "breakdown",
        help="where a job's instantiation time went: server, scheduling, client, driver phases, guest boot",
        description=(
            "Reads Nomad's HTTP API and prints, per allocation, the time from the job's submission to the"
            " task's start, phase by phase, and the clock each phase was measured on."
        ),
    )
    p.add_argument("target", help="job id, or allocation id (or an even-length prefix of one)")
    p.add_argument("-address", "--address", default=None, help="Nomad HTTP address (default: $NOMAD_ADDR or http://127.0.0.1:4646)")
    p.add_argument("-namespace", "--namespace", default=None, help="namespace (default: $NOMAD_NAMESPACE or default)")
    p.add_argument("--driver", default="xen", help='the task driver whose tasks to break down (default "xen")')
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--png", metavar="FILE", default=None, help="also draw a stacked-bar figure (needs the [plot] extra)")
    p.add_argument(
        "--synced-clocks",
        action="store_true",
        help="trust that server and client clocks agree (NTP), so dispatch and total are computed across hosts",
    )
    return p


def run(args: argparse.Namespace, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    api = NomadAPI(address=args.address, namespace=args.namespace)
    try:
        report = collect(api, args.target, driver=args.driver, synced_clocks=args.synced_clocks)
        if args.png:
            what = f"job {report.job_id}" if report.kind == "job" else f"allocation {report.target}"
            plot_stacked(
                report_bars(report),
                args.png,
                title=f"Instantiation breakdown of {what} ({report.driver})",
                subtitle=f"{sum(1 for r in report.rows if r.started)} started task(s); Nomad at {report.address}",
                phases=report.phases,
            )
    except BreakdownError as exc:
        err.write(f"nomad-driver-xen breakdown: {exc}\n")
        return 1
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(render_table(report))
    return 0
