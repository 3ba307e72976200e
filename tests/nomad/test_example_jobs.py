"""Every example job in nomad-jobs/ is one the pinned Nomad accepts (`nomad job validate`).

Nomad checks a job's shape itself before any driver sees it (for example that the task's log
storage fits its ephemeral disk); an example that Nomad refuses is a broken first experience."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.nomad.conftest import nomad_binary

pytestmark = pytest.mark.nomad

JOBS = sorted((Path(__file__).resolve().parents[2] / "nomad-jobs").glob("*.nomad"))


def test_there_are_example_jobs():
    assert {p.name for p in JOBS} >= {"clickos.nomad", "minios.nomad"}


@pytest.mark.parametrize("job", JOBS, ids=[p.name for p in JOBS])
def test_example_job_validates(job: Path, tmp_path: Path):
    # No agent: Nomad validates the job locally (the driver's config is checked at run time).
    proc = subprocess.run(
        [nomad_binary(), "job", "validate", str(job)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NOMAD_ADDR": "http://127.0.0.1:1"},
    )
    assert proc.returncode == 0, f"{job.name}:\n{proc.stdout}\n{proc.stderr}"
    assert "Job validation successful" in proc.stdout
