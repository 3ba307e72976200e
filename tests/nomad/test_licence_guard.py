"""The licence guard (tools/licence_guard.py): no Business Source License in what we build.

The guard fails on a Nomad pin of 1.7.0 or later and on any module of the agent wrapper's or
the conformance suite's build list whose own licence file is a Business Source License. The
failing cases run against fake modules and a fake ``go`` in a temp dir (nothing is fetched);
the last test runs the guard on the project's real modules.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUARD = REPO / "tools" / "licence_guard.py"
sys.path.insert(0, str(GUARD.parent))
import licence_guard  # noqa: E402

# A licence text of our own that names the licence the way a BSL-licensed module's LICENSE does.
BSL_TEXT = """License text copyright (c) 2026 Example, Inc.
Parameters

Licensor:             Example, Inc.
Licensed Work:        example 9.9.9 or later.
Additional Use Grant: none

Business Source License 1.1
Terms: the Licensed Work may be used for non-production purposes ...
"""
MPL_TEXT = "Mozilla Public License, version 2.0\n\n1. Definitions\n..."
MIT_TEXT = "MIT License\n\nPermission is hereby granted, free of charge, ...\n"


def guard(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GUARD), *args],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, **(env or {})},
    )


def fake_module(root: Path, path: str, version: str, files: dict[str, str]) -> Path:
    d = root / "modcache" / f"{path}@{version}"
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def fake_go(tmp: Path, listing: list[dict], downloads: dict[str, dict] | None = None) -> tuple[Path, Path]:
    """A `go` that answers `list -m -json all` with listing and `mod download -json` from
    downloads (keyed path@version), and records every call in calls.log."""
    (tmp / "listing.json").write_text("".join(json.dumps(m, indent=1) + "\n" for m in listing))
    (tmp / "downloads.json").write_text(json.dumps(downloads or {}))
    calls = tmp / "calls.log"
    go = tmp / "go"
    go.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "if args[:4] == ['list', '-m', '-json', 'all']:\n"
        f"    sys.stdout.write(open({str(tmp / 'listing.json')!r}).read()); sys.exit(0)\n"
        "if args[:3] == ['mod', 'download', '-json']:\n"
        f"    known = json.load(open({str(tmp / 'downloads.json')!r}))\n"
        "    for ref in args[3:]:\n"
        "        print(json.dumps(known.get(ref) or {'Path': ref.split('@')[0], 'Version': ref.split('@')[1], 'Error': 'unknown'}))\n"
        "    sys.exit(0)\n"
        "sys.exit('fake go: unexpected ' + ' '.join(args))\n"
    )
    go.chmod(0o755)
    return go, calls


def main_module(tmp: Path, requires: str = "") -> Path:
    mod = tmp / "mod"
    mod.mkdir()
    (mod / "go.mod").write_text(f"module example.invalid/main\n\ngo 1.21\n{requires}")
    return mod


# ---- the pin ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.7.0", "1.11.2", "2.0.5"])
def test_a_nomad_pin_of_1_7_0_or_later_fails(tmp_path, version):
    vf = tmp_path / "VERSION"
    vf.write_text(version + "\n")
    go, calls = fake_go(tmp_path, [])
    proc = guard("--version-file", str(vf), "--module", str(main_module(tmp_path)), "--go", str(go))
    assert proc.returncode == 1, proc
    assert f"pins Nomad {version}" in proc.stderr and "Business Source License" in proc.stderr
    assert not calls.exists(), "the guard asked Go about modules of a BSL pin"


def test_the_repositorys_pin_is_below_1_7_0():
    report = licence_guard.Report()
    licence_guard.check_pin(REPO / "tools" / "nomad" / "VERSION", report)
    assert report.ok, report.findings
    assert licence_guard.release_of((REPO / "tools" / "nomad" / "VERSION").read_text()) < (1, 7, 0)


def test_version_parsing():
    assert licence_guard.release_of("v1.6.3") == (1, 6, 3)
    assert licence_guard.release_of("1.6.3") == (1, 6, 3)
    assert licence_guard.release_of("v1.11.4-0.20260311091027-173ab08a0210") == (1, 11, 4)
    assert licence_guard.release_of("v0.0.0-20231030125810-e0497bff1437") == (0, 0, 0)
    assert licence_guard.release_of("main") is None
    assert licence_guard.is_bsl_nomad("v1.7.0-beta.1") and not licence_guard.is_bsl_nomad("v1.6.10")


# ---- modules ------------------------------------------------------------------------------------


def test_a_module_whose_licence_is_the_bsl_fails_the_guard(tmp_path):
    ok = fake_module(tmp_path, "example.invalid/fine", "v1.0.0", {"LICENSE": MPL_TEXT})
    mit = fake_module(tmp_path, "example.invalid/mit", "v0.2.0", {"LICENSE.md": MIT_TEXT, "main.go": "package x\n"})
    bsl = fake_module(tmp_path, "example.invalid/sourceavail", "v3.1.4", {"LICENSE.txt": BSL_TEXT})
    # Not in the cache yet: the guard must fetch it (fake `go mod download`) and read it too.
    late = fake_module(tmp_path, "example.invalid/late", "v0.9.0", {"COPYING": BSL_TEXT.replace("1.1", "1.0")})
    mod = main_module(tmp_path)
    listing = [
        {"Path": "example.invalid/main", "Main": True, "Dir": str(mod), "GoMod": str(mod / "go.mod")},
        {"Path": "example.invalid/fine", "Version": "v1.0.0", "Dir": str(ok)},
        {"Path": "example.invalid/mit", "Version": "v0.2.0", "Dir": str(mit)},
        {"Path": "example.invalid/sourceavail", "Version": "v3.1.4", "Dir": str(bsl)},
        {"Path": "example.invalid/late", "Version": "v0.9.0"},
    ]
    downloads = {"example.invalid/late@v0.9.0": {"Path": "example.invalid/late", "Version": "v0.9.0", "Dir": str(late)}}
    go, calls = fake_go(tmp_path, listing, downloads)

    proc = guard("--module", str(mod), "--go", str(go))
    assert proc.returncode == 1, proc
    fails = [ln for ln in proc.stderr.splitlines() if "FAIL" in ln]
    assert len(fails) == 2, proc.stderr
    assert "module example.invalid/sourceavail@v3.1.4 is under the Business Source License" in fails[0] + fails[1]
    assert str(bsl / "LICENSE.txt") in proc.stderr
    assert "module example.invalid/late@v0.9.0 is under the Business Source License" in proc.stderr
    assert str(late / "COPYING") in proc.stderr
    assert "example.invalid/fine" not in proc.stderr and "example.invalid/mit" not in proc.stderr
    assert "mod download -json example.invalid/late@v0.9.0" in calls.read_text()
    assert "4 modules in the build list, 4 licence files read" in proc.stdout


def test_a_replacement_is_judged_by_its_own_licence(tmp_path):
    bsl = fake_module(tmp_path, "example.invalid/fork", "v1.0.1", {"LICENSE": BSL_TEXT})
    mod = main_module(tmp_path)
    listing = [
        {"Path": "example.invalid/main", "Main": True, "Dir": str(mod)},
        {
            "Path": "example.invalid/orig",
            "Version": "v1.0.0",
            "Replace": {"Path": "example.invalid/fork", "Version": "v1.0.1", "Dir": str(bsl)},
        },
    ]
    go, _ = fake_go(tmp_path, listing)
    proc = guard("--module", str(mod), "--go", str(go))
    assert proc.returncode == 1
    assert (
        "example.invalid/orig@v1.0.0 (replaced by example.invalid/fork@v1.0.1) is under the Business Source License"
        in proc.stderr
    )


def test_a_go_mod_that_requires_a_bsl_nomad_is_refused_before_go_runs(tmp_path):
    mod = main_module(tmp_path, "\nrequire github.com/hashicorp/nomad v1.11.2\n")
    go, calls = fake_go(tmp_path, [])
    proc = guard("--module", str(mod), "--go", str(go))
    assert proc.returncode == 1
    assert "go.mod names Nomad v1.11.2, under the Business Source License" in proc.stderr
    assert not calls.exists(), "go was run on a module that requires a BSL Nomad"


def test_a_bsl_nomad_in_a_build_list_fails_even_with_an_open_licence_file(tmp_path):
    """The version rule for Nomad itself holds whatever its licence file says (e.g. a fork)."""
    d = fake_module(tmp_path, "github.com/hashicorp/nomad", "v1.8.0", {"LICENSE": MPL_TEXT})
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"Path": "github.com/hashicorp/nomad", "Version": "v1.8.0", "Dir": str(d)}))
    proc = guard("--go-list", str(listing))
    assert proc.returncode == 1
    assert "module github.com/hashicorp/nomad@v1.8.0: Nomad v1.8.0 is under the Business Source License" in proc.stderr


def test_a_missing_module_directory_cannot_be_checked(tmp_path):
    proc = guard("--module", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert "cannot check" in proc.stderr


# ---- the project's own modules ------------------------------------------------------------------


@pytest.mark.slow
def test_the_projects_go_modules_pass():
    """The agent wrapper (built by tools/nomad/build.sh when missing) and the conformance suite:
    every module of both build lists read, none under the Business Source License."""
    version = (REPO / "tools" / "nomad" / "VERSION").read_text().strip()
    wrapper = licence_guard.cache_root() / "nomad" / version / "wrapper"
    if not (wrapper / "go.mod").is_file():
        out = subprocess.run(
            ["bash", str(REPO / "tools" / "nomad" / "build.sh")], capture_output=True, text=True, timeout=3600
        )
        assert out.returncode == 0, out.stderr[-4000:]
    proc = guard()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pin: Nomad {version}" in proc.stdout
    for label in ("agent wrapper", "conformance suite"):
        line = next((ln for ln in proc.stdout.splitlines() if label in ln), "")
        m = re.search(r"(\d+) modules in the build list", line)
        assert m, proc.stdout
        assert int(m[1]) > 50, line  # Nomad's build list, not an empty one


@pytest.mark.parametrize("version", ["1.7.0", "1.11.2", "2.0.5"])
def test_release_py_refuses_a_bsl_pin_before_go_runs(tmp_path, version):
    """tools/nomad/release.py, which build.sh and pin.sh ask first, refuses the pin itself."""
    tools = tmp_path / "nomad"
    tools.mkdir()
    (tools / "release.py").write_text((REPO / "tools" / "nomad" / "release.py").read_text())
    (tools / "VERSION").write_text(version + "\n")
    go, calls = fake_go(tmp_path, [])
    proc = subprocess.run(
        [sys.executable, str(tools / "release.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{go.parent}:{os.environ['PATH']}", "GOPROXY": "off"},
    )
    assert proc.returncode != 0
    assert f"pins Nomad {version}; Nomad is under the Business Source License" in proc.stderr
    assert not calls.exists(), "release.py ran go for a BSL pin"
