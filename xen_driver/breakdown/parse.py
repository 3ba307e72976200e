"""Turning Nomad's records into phases: one allocation (with its job version and task events) and
the evaluation that placed it become one :class:`TaskBreakdown` per task of the driver, each phase
taken from the clock it was stamped on.  Pure functions of the API's JSON, no I/O.
"""

from __future__ import annotations

from xen_driver.breakdown.model import TOTAL_KEY, TaskBreakdown


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
            why = e.get("DisplayMessage") or e.get("DriverError") or e.get("SetupError") or ""
            return f"{e.get('Type')}: {why}".strip()
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
            f" evaluation {origin.get('ID', '')[:8]}, it waited for capacity):"
            " scheduling counts from the submission's evaluation"
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
            row.notes.append(
                f"the evaluation was delayed until {wait_until} (reschedule policy): scheduling includes the delay"
            )
    begin = eval_create
    if (
        eval_create is not None
        and submit is not None
        and evaluation is not None
        and evaluation.get("TriggeredBy") == "job-register"
        and eval_create >= submit
    ):
        ph["server"] = _ms(eval_create - submit)
        begin = submit
    elif eval_create is not None:
        row.notes.append(
            f"placed by an evaluation triggered by {(evaluation or {}).get('TriggeredBy') or 'something else'},"
            " not by the job's submission:"
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
        (
            e
            for e in events
            if e.get("Type") == "Driver" and not is_timing_event(e) and (e.get("Details") or {}).get("start_path")
        ),
        None,
    )
    if path is not None and (after is None or path.get("Time", 0) <= after):
        row.notes.append(path.get("DisplayMessage") or f"start path: {path['Details']['start_path']}")

    # ---- driver's monotonic timer
    if timing is not None:
        driver_event: int = timing["Time"]  # `after`, known to be set here
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
            driver_began = driver_event - int(round(total * 1e6))
            ts["driver_began"] = driver_began
            if received is not None:
                ph["client"] = _ms(driver_began - received)
        if started is not None:
            ph["started"] = _ms(started - driver_event)
    elif started is not None:
        row.notes.append("no timing event from the driver (is it nomad-driver-xen?): no driver phases")

    row.started = started is not None
    if not row.started:
        why = _failure(events)
        row.notes.append(
            f"never started ({why})" if why else f"not started (task state {state.get('State') or 'pending'})"
        )

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
