"""`nomad-driver-xen breakdown`: parsing Nomad 1.6.3 API responses (tests/unit/fixtures/breakdown/,
shaped like /v1/job/<id>, /v1/job/<id>/evaluations, /v1/job/<id>/allocations, /v1/allocation/<id>,
/v1/agent/self) and the command against a small HTTP server on 127.0.0.1 serving them.

The fixture job "clickos" has four allocations placed on one single-agent node:
  401d3bb6  started once                              (job-register evaluation)
  5a2e4c18  crashed and was restarted in place        (two timing events, two Started)
  9c7f1e25  failed: the driver could not create the domain (no Started)
  b3e81f07  the replacement of 9c7f1e25               (alloc-failure evaluation, 30 s reschedule delay)
and job "web" runs one allocation with the docker driver.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from xen_driver import breakdown as bd
from xen_driver.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "breakdown"
A1 = "401d3bb6-0b6e-6c55-2f1a-9e8d7c6b5a41"
A2 = "5a2e4c18-7d3f-2b91-4e6a-8c7b6a5d4e32"
A3 = "9c7f1e25-3a4b-4d5c-8e9f-0a1b2c3d4e53"
A4 = "b3e81f07-6c5d-4e3f-a2b1-c0d9e8f7a664"
AW = "c0ffee12-3456-4789-8abc-def012345678"
E1 = "7c1a9e40-2b3d-4f5e-8a6b-1c2d3e4f5a60"
E2 = "0e8d7c6b-5a49-4382-9170-a1b2c3d4e5f6"


def load(name: str):
    return json.loads((FIXTURES / f"{name}.json").read_text())


# ---------------------------------------------------------------------------------- parsing


def test_a_started_allocation_has_every_phase_on_its_clock():
    [row] = bd.parse_allocation(load(f"allocation_{A1}"), load(f"evaluation_{E1}"), same_clock=True)
    assert (row.alloc_id, row.task, row.started, row.restarts) == (A1, "firewall", True, 0)
    assert row.phases == {
        "server": 0.0,  # Nomad 1.6.3 stamps SubmitTime and the register evaluation with one reading
        "scheduling": 35.2,
        "dispatch": 3.1,
        "client": 120.3,
        "validate": 10.3,
        "render": 41.4,
        "domain_build": 18733.7,
        "clickos_push": 267.4,
        "unpause": 2161.8,
        "boot": 58.7,
        "driver_other": 31.0,  # total_ms minus the timed phases
        "started": 4.2,
        "total": 21467.1,
    }
    # The driver phases are the event's annotations, unchanged.
    event = [e for e in load(f"allocation_{A1}")["TaskStates"]["firewall"]["Events"] if e["Type"] == "Driver"][0]
    assert row.annotations == event["Details"]
    for key, value in event["Details"].items():
        name = key[: -len("_ms")]
        if name != "total":
            assert row.phases[name] == float(value)
    # Everything from the submission to Started is accounted for, once.
    parts = sum(v for k, v in row.phases.items() if k != "total")
    assert parts == pytest.approx(row.phases["total"], abs=0.01)
    assert row.notes == []


def test_phases_name_their_clock():
    by_name = {p.name: p.clock for p in bd.phase_list()}
    assert by_name["server"] == by_name["scheduling"] == "server"
    assert by_name["client"] == by_name["started"] == "client"
    for name in ("validate", "render", "domain_build", "clickos_push", "unpause", "driver_other", "boot"):
        assert by_name[name] == "driver"
    assert by_name["dispatch"] == by_name["total"] == "server→client"
    assert set(by_name.values()) == set(bd.CLOCKS)


def test_unknown_driver_phases_of_a_new_start_path_are_kept_before_boot():
    alloc = load(f"allocation_{A1}")
    event = [e for e in alloc["TaskStates"]["firewall"]["Events"] if e["Type"] == "Driver"][0]
    event["Details"] = {"validate_ms": "1.0", "pool_take_ms": "2.5", "boot_ms": "3.0", "total_ms": "7.0"}
    [row] = bd.parse_allocation(alloc, load(f"evaluation_{E1}"), same_clock=True)
    assert row.phases["pool_take"] == 2.5 and row.phases["driver_other"] == 0.5
    names = [p.name for p in bd.phase_list(row.phases)]
    assert names.index("unpause") < names.index("pool_take") < names.index("boot")


def test_a_restarted_allocation_shows_its_first_start():
    [row] = bd.parse_allocation(load(f"allocation_{A2}"), load(f"evaluation_{E1}"), same_clock=True)
    assert row.started and row.restarts == 1
    assert row.annotations["total_ms"] == "20000.0"  # the first timing event, not the restart's 19330.0
    assert (row.phases["client"], row.phases["started"], row.phases["driver_other"]) == (150.0, 4.1, 31.0)
    assert row.phases["total"] == 20193.0
    assert any("restarted 1 time" in n for n in row.notes)


def test_a_pool_miss_is_noted():
    alloc = load(f"allocation_{A1}")
    events = alloc["TaskStates"]["firewall"]["Events"]
    miss = dict(
        events[1],
        Type="Driver",
        Time=events[1]["Time"] + 1000,
        Details={"start_path": "cold", "pool": "clickos"},
        DisplayMessage='Pool miss, starting cold: pool "clickos" has no ready member (1 being built, size 1)',
    )
    events.insert(2, miss)
    [row] = bd.parse_allocation(alloc, load(f"evaluation_{E1}"), same_clock=True)
    assert row.phases["boot"] == 58.7  # the miss event is not the timing event
    assert any(n.startswith("Pool miss, starting cold") for n in row.notes) and row.start_path is None


def test_a_pool_hit_has_its_claim_phase_and_start_path():
    alloc = load(f"allocation_{A1}")
    timing = [e for e in alloc["TaskStates"]["firewall"]["Events"] if e["Type"] == "Driver"][0]
    timing["Details"] = {
        "validate_ms": "8.7",
        "pool_claim_ms": "9.6",
        "clickos_push_ms": "74.5",
        "unpause_ms": "133.2",
        "boot_ms": "30.4",
        "total_ms": "284.1",
        "start_path": "pool",
        "pool": "clickos",
    }
    [row] = bd.parse_allocation(alloc, load(f"evaluation_{E1}"), same_clock=True)
    assert row.start_path == "pool" and row.notes == []
    assert (row.phases["pool_claim"], row.phases["driver_other"]) == (9.6, 27.7)
    assert "domain_build" not in row.phases and "render" not in row.phases


def test_a_failed_allocation_has_no_driver_phases_and_says_why():
    [row] = bd.parse_allocation(load(f"allocation_{A3}"), load(f"evaluation_{E1}"), same_clock=True)
    assert not row.started and row.client_status == "failed"
    assert row.phases == {"server": 0.0, "scheduling": 35.2, "dispatch": 4.3}
    assert any("Driver Failure" in n and "cannot (re-)build domain" in n for n in row.notes), row.notes


def test_a_rescheduled_allocation_starts_at_its_evaluation():
    [row] = bd.parse_allocation(load(f"allocation_{A4}"), load(f"evaluation_{E2}"), same_clock=True)
    assert row.eval_triggered_by == "alloc-failure"
    assert "server" not in row.phases  # the job's submission is not where this one began
    assert row.phases["scheduling"] == 30030.5  # includes the reschedule policy's 30 s delay
    assert row.phases["total"] == 50704.7
    assert sum(v for k, v in row.phases.items() if k != "total") == pytest.approx(row.phases["total"], abs=0.01)
    assert any("delayed until 2026-11-28T00:20:49.05Z" in n for n in row.notes)


def _blocked(created_after_ms: float) -> dict:
    """A blocked evaluation (no capacity at first) made from the job's register evaluation E1."""
    e1 = load(f"evaluation_{E1}")
    return dict(
        e1,
        ID="d4c3b2a1-0000-4000-8000-00000000b10c",
        TriggeredBy="queued-allocs",
        Status="complete",
        PreviousEval=E1,
        CreateTime=e1["CreateTime"] + int(created_after_ms * 1e6),
    )


def test_a_blocked_evaluation_counts_from_the_submission():
    blocked = _blocked(20.0)
    origin = bd.origin_evaluation(blocked, {E1: load(f"evaluation_{E1}")}.get)
    assert origin["ID"] == E1
    [row] = bd.parse_allocation(load(f"allocation_{A1}"), blocked, same_clock=True, origin=origin)
    assert (row.phases["server"], row.phases["scheduling"], row.phases["total"]) == (0.0, 35.2, 21467.1)
    assert row.eval_triggered_by == "queued-allocs"
    assert any("blocked evaluation d4c3b2a1 (created 20.0 ms after evaluation 7c1a9e40" in n for n in row.notes)
    # Without the chain (the register evaluation is gone), it counts from the blocked one, and says so.
    assert bd.origin_evaluation(blocked, {}.get) is None
    [row] = bd.parse_allocation(load(f"allocation_{A1}"), blocked, same_clock=True)
    assert "server" not in row.phases and row.phases["scheduling"] == 15.2 and row.phases["total"] == 21447.1
    assert any("triggered by queued-allocs" in n for n in row.notes)


def test_a_garbage_collected_evaluation_leaves_only_client_and_driver_phases():
    [row] = bd.parse_allocation(load(f"allocation_{A1}"), None, same_clock=True)
    assert {"server", "scheduling", "total"}.isdisjoint(row.phases)
    assert row.phases["dispatch"] == 3.1 and row.phases["boot"] == 58.7
    assert any("garbage-collected" in n for n in row.notes)


def test_across_hosts_no_span_mixes_the_server_and_client_clocks():
    [row] = bd.parse_allocation(load(f"allocation_{A1}"), load(f"evaluation_{E1}"), same_clock=False)
    assert "dispatch" not in row.phases and "total" not in row.phases
    assert row.phases["scheduling"] == 35.2 and row.phases["client"] == 120.3
    assert any("--synced-clocks" in n for n in row.notes)


def test_one_clock_only_when_the_only_server_is_the_allocations_client():
    me = load("agent_self")
    node = me["stats"]["client"]["node_id"]
    assert bd.shares_one_clock(me, node)
    assert not bd.shares_one_clock(me, "another-node")
    two_servers = json.loads(json.dumps(me))
    two_servers["stats"]["raft"]["num_peers"] = "2"
    assert not bd.shares_one_clock(two_servers, node)
    client_only = json.loads(json.dumps(me))
    del client_only["stats"]["nomad"], client_only["stats"]["raft"]
    assert not bd.shares_one_clock(client_only, node)
    assert not bd.shares_one_clock(None, node)


def test_an_allocation_of_another_driver_has_no_xen_rows():
    assert bd.parse_allocation(load(f"allocation_{AW}"), None, same_clock=True) == []
    assert bd.task_drivers(load(f"allocation_{AW}")) == {"nginx": "docker"}


def test_median_and_p90_over_started_tasks():
    rows = [
        row
        for a, e in ((A1, E1), (A2, E1), (A3, E1), (A4, E2))
        for row in bd.parse_allocation(load(f"allocation_{a}"), load(f"evaluation_{e}"), same_clock=True)
    ]
    summary = bd.summarize(rows, bd.phase_list())
    assert summary["boot"] == {"n": 3, "median": 61.9, "p90": 68.38}  # 58.7, 61.9, 70.0
    assert summary["server"] == {"n": 2, "median": 0.0, "p90": 0.0}  # the rescheduled one has none
    assert summary["dispatch"]["n"] == 3  # the failed allocation is not counted
    assert bd.percentile([1.0], 90) == 1.0
    assert bd.percentile([10.0, 20.0], 90) == 19.0


# ---------------------------------------------------------------------- the command, over HTTP


class FakeNomad:
    """Serves the fixtures at Nomad's paths; records the requests (path, query, token)."""

    def __init__(self, *, fail_self: int | None = None, overrides: dict | None = None):
        self.overrides = overrides or {}  # fixture name -> response body
        self.requests: list[tuple[str, dict, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append((url.path, query, self.headers.get("X-Nomad-Token")))
                status, body = fake.route(url.path, query)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.fail_self = fail_self
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, path: str, query: dict):
        if query.get("namespace", "default") != "default":
            return 404, b"job not found"
        parts = path.strip("/").split("/")
        name = None
        if parts[:2] == ["v1", "job"] and len(parts) == 3:
            name = f"job_{parts[2]}"
        elif parts[:2] == ["v1", "job"] and len(parts) == 4:
            name = f"job_{parts[2]}_{parts[3]}"
        elif parts[:2] == ["v1", "allocation"] and len(parts) == 3:
            if len(parts[2]) != 36:  # what Nomad 1.6.3 answers to a short id
                return 500, b"alloc lookup failed: index error: UUID must be 36 characters"
            name = f"allocation_{parts[2]}"
        elif parts[:2] == ["v1", "evaluation"] and len(parts) == 3:
            name = f"evaluation_{parts[2]}"
        elif path == "/v1/agent/self":
            if self.fail_self:
                return self.fail_self, b"Permission denied"
            name = "agent_self"
        elif path == "/v1/allocations":
            prefix = query.get("prefix", "")
            allocs = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("allocation_*.json"))]
            return 200, [{"ID": a["ID"], "JobID": a["JobID"]} for a in allocs if a["ID"].startswith(prefix)]
        if name in self.overrides:
            return 200, self.overrides[name]
        if name and (FIXTURES / f"{name}.json").is_file():
            return 200, (FIXTURES / f"{name}.json").read_bytes()
        what = "alloc" if "allocation" in path else "eval" if "evaluation" in path else "job"
        return 404, f"{what} not found".encode()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def nomad(monkeypatch):
    for var in ("NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_NAMESPACE", "NOMAD_CACERT"):
        monkeypatch.delenv(var, raising=False)
    with FakeNomad() as fake:
        yield fake
    assert not fake.thread.is_alive()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["breakdown", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_for_a_job(nomad, capsys):
    code, out, err = run_cli(capsys, "-address", nomad.addr, "clickos")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"job clickos at {nomad.addr}, namespace default: 4 xen task(s), times in ms")
    header = lines[2].split()
    assert header[:5] == ["alloc", "task", "status", "server", "sched"]
    assert header[-2:] == ["started", "total"]
    rows = {line.split()[0]: line for line in lines[3:9]}
    assert set(rows) == {A1[:8], A2[:8], A3[:8], A4[:8], "median", "p90"}
    cells = rows[A1[:8]].split()
    assert cells[:3] == [A1[:8], "firewall", "running"]
    assert dict(zip(header[3:], cells[3:], strict=True)) == {
        "server": "0.0",
        "sched": "35.2",
        "dispatch": "3.1",
        "client": "120.3",
        "validate": "10.3",
        "render": "41.4",
        "build": "18733.7",
        "push": "267.4",
        "unpause": "2161.8",
        "drv_other": "31.0",
        "boot": "58.7",
        "started": "4.2",
        "total": "21467.1",
    }
    assert rows[A2[:8]].split()[2:4] == ["running", "r1"]  # restarted once
    failed = rows[A3[:8]].split()
    assert failed[2] == "failed" and failed[6:] == ["-"] * 10  # no client or driver phases, no total
    assert rows["median"].split()[1] == "n=3"
    assert "clocks:" in out and "server→client" in out and "monotonic" in out
    assert "Driver Failure" in out  # the failed allocation's note
    # It asked for exactly what it needed, in the default namespace, without a token.
    paths = [p for p, _, _ in nomad.requests]
    assert paths[:3] == ["/v1/job/clickos", "/v1/job/clickos/evaluations", "/v1/job/clickos/allocations"]
    assert "/v1/agent/self" in paths and all(q.get("namespace") == "default" for _, q, _ in nomad.requests)
    assert all(t is None for _, _, t in nomad.requests)


def test_json_for_a_job_names_every_phase_and_its_clock(nomad, capsys, monkeypatch):
    monkeypatch.setenv("NOMAD_ADDR", nomad.addr)
    monkeypatch.setenv("NOMAD_TOKEN", "s3cr3t-token")
    code, out, err = run_cli(capsys, "clickos", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["address"] == nomad.addr and doc["kind"] == "job" and doc["unit"] == "ms"
    assert {p["name"]: p["clock"] for p in doc["phases"]}["domain_build"] == "driver"
    assert set(doc["clocks"]) == {"server", "client", "driver", "server→client"}
    allocs = {a["alloc_id"]: a for a in doc["allocations"]}
    assert list(allocs) == [A1, A2, A3, A4]  # in the order Nomad created them
    a1 = allocs[A1]
    assert a1["phases_ms"]["total"] == 21467.1 and a1["same_clock"] is True
    assert a1["driver_annotations"]["domain_build_ms"] == "18733.7"
    assert a1["timestamps_ns"]["allocation_placed"] == load(f"allocation_{A1}")["CreateTime"]
    assert allocs[A3]["started"] is False and allocs[A3]["phases_ms"]["boot"] is None
    summary = doc["summary"]
    assert (summary["started"], summary["of"]) == (3, 4)
    assert summary["phases_ms"]["boot"] == {"n": 3, "median": 61.9, "p90": 68.38}
    assert {t for _, _, t in nomad.requests} == {"s3cr3t-token"}  # NOMAD_TOKEN sent on every request


def test_address_flag_beats_nomad_addr(nomad, capsys, monkeypatch):
    monkeypatch.setenv("NOMAD_ADDR", "http://127.0.0.1:9")  # nothing listens on the discard port
    code, out, _ = run_cli(capsys, "--address", nomad.addr, "clickos", "--json")
    assert code == 0 and json.loads(out)["address"] == nomad.addr


def test_an_allocation_by_id_or_prefix(nomad, capsys):
    code, out, err = run_cli(capsys, "-address", nomad.addr, A4, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "allocation" and [a["alloc_id"] for a in doc["allocations"]] == [A4]
    assert doc["allocations"][0]["eval_triggered_by"] == "alloc-failure"
    code, out, err = run_cli(capsys, "-address", nomad.addr, A4[:8])
    assert code == 0, err
    assert f"allocation {A4[:8]} (job clickos)" in out and out.count("\n" + A4[:8]) == 1


def test_agent_self_refused_means_clocks_not_known_to_agree(capsys, monkeypatch):
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    with FakeNomad(fail_self=403) as fake:
        code, out, err = run_cli(capsys, "-address", fake.addr, "clickos", "--json")
        assert code == 0, err
        a1 = json.loads(out)["allocations"][0]
        assert a1["same_clock"] is False and a1["phases_ms"]["dispatch"] is None and a1["phases_ms"]["total"] is None
        code, out, err = run_cli(capsys, "-address", fake.addr, "clickos", "--json", "--synced-clocks")
        assert code == 0 and json.loads(out)["allocations"][0]["phases_ms"]["total"] == 21467.1


def test_a_blocked_evaluation_is_followed_to_the_submission_over_http(capsys, monkeypatch):
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    blocked = _blocked(20.0)
    a1 = dict(load(f"allocation_{A1}"), EvalID=blocked["ID"])
    overrides = {f"allocation_{A1}": a1, f"evaluation_{blocked['ID']}": blocked}
    with FakeNomad(overrides=overrides) as fake:  # the job's evaluation list lacks it: fetched by id
        code, out, err = run_cli(capsys, "-address", fake.addr, "clickos", "--json")
        assert code == 0, err
        row = json.loads(out)["allocations"][0]
        assert row["alloc_id"] == A1 and row["eval_triggered_by"] == "queued-allocs"
        assert (row["phases_ms"]["server"], row["phases_ms"]["scheduling"]) == (0.0, 35.2)
        code, out, err = run_cli(capsys, "-address", fake.addr, A1, "--json")
        assert code == 0 and json.loads(out)["allocations"][0]["phases_ms"]["scheduling"] == 35.2
    assert ("/v1/evaluation/" + blocked["ID"]) in [p for p, _, _ in fake.requests]


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("nomad-driver-xen breakdown: "), err
    return err


def test_unreachable_agent(capsys, monkeypatch):
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    with socket.socket() as s:  # a port that was free a moment ago, now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _one_line_error(*run_cli(capsys, "-address", f"http://127.0.0.1:{port}", "clickos"))
    assert f"cannot reach Nomad at http://127.0.0.1:{port}" in err and "refused" in err.lower()


def test_unknown_job(nomad, capsys):
    err = _one_line_error(*run_cli(capsys, "-address", nomad.addr, "no-such-job"))
    assert "no job or allocation 'no-such-job' in namespace default" in err
    err = _one_line_error(*run_cli(capsys, "-address", nomad.addr, "-namespace", "prod", "clickos"))
    assert "in namespace prod" in err


def test_allocation_and_job_of_another_driver(nomad, capsys):
    err = _one_line_error(*run_cli(capsys, "-address", nomad.addr, AW))
    assert 'allocation c0ffee12 is not a xen allocation (task "nginx" driver "docker")' in err
    err = _one_line_error(*run_cli(capsys, "-address", nomad.addr, "web"))
    assert "job web has no allocation with a xen task (drivers: docker)" in err
    code, out, _ = run_cli(capsys, "-address", nomad.addr, "web", "--driver", "docker", "--json")
    row = json.loads(out)["allocations"][0]  # no timing event from docker: client spans only
    assert code == 0 and row["phases_ms"]["validate"] is None and row["phases_ms"]["total"] is None
    assert any("no timing event" in n for n in row["notes"])


def test_png_without_matplotlib_is_one_clear_line(nomad, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    err = _one_line_error(*run_cli(capsys, "-address", nomad.addr, "clickos", "--png", str(tmp_path / "f.png")))
    assert "--png needs matplotlib: pip install 'nomad-driver-xen[plot]'" in err
    assert not (tmp_path / "f.png").exists()


def test_png_draws_the_stacked_bars(nomad, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="the [plot] extra is not installed")
    png = tmp_path / "breakdown.png"
    code, out, err = run_cli(capsys, "-address", nomad.addr, "clickos", "--png", str(png))
    assert code == 0, err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    bars = bd.report_bars(bd.collect(bd.NomadAPI(nomad.addr), "clickos"))
    assert [label for label, _ in bars] == [A1[:8], A2[:8], A4[:8], "median"]


def test_the_plugin_and_the_command_do_not_import_matplotlib():
    code = (
        "import sys, xen_driver.cli, xen_driver.breakdown, xen_driver.nomad.service;"
        "sys.exit(1 if 'matplotlib' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_help_lists_the_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "breakdown" in capsys.readouterr().out
