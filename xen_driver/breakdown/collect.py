"""Walking Nomad's API for one target: a job (its evaluations and every allocation) or, when no
job has that id, one allocation by id or prefix, into a :class:`Report` of the driver's tasks.
"""

from __future__ import annotations

import urllib.parse

from xen_driver.breakdown.model import BreakdownError, Report, TaskBreakdown
from xen_driver.breakdown.nomad_api import NomadAPI, NotFound
from xen_driver.breakdown.parse import origin_evaluation, parse_allocation, shares_one_clock, task_drivers


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
