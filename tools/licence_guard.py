"""Licence guard: nothing the project builds may be under the Business Source License.

    python3 tools/licence_guard.py                  # the project's Go modules (see below)
    python3 tools/licence_guard.py --module DIR     # any Go module directory (repeatable)
    python3 tools/licence_guard.py --go-list FILE   # a saved `go list -m -json all` output

Nomad is under the Business Source License (BUSL-1.1) from v1.7.0 on; the project builds, runs
and links only open-source releases. This guard checks, from the facts themselves rather than
from a list of versions someone keeps up to date:

* the pin: ``tools/nomad/VERSION`` must be a release below 1.7.0;
* every module of the full build list (``go list -m -json all``) of each Go module the project
  builds: the wrapper module ``tools/nomad/build.sh`` generates to build the agent
  (``$NDX_CACHE_DIR/nomad/<version>/wrapper``) and the conformance suite (``tests/conformance``).
  Each module's own licence files (``LICENSE``, ``LICENCE``, ``COPYING`` and their variants at
  the top of the module) are read from the module cache; a text naming the Business Source
  License fails the guard with the module, its version and the file. Modules of the build list
  that are not in the cache yet are fetched first (``go mod download``), so none goes unread.

Before Go is asked anything about a module, its ``go.mod`` is read as text: one that requires
Nomad 1.7.0 or later is refused on the spot, so the guard never makes Go fetch such a release.

Exit status: 0 when everything passed, 1 when a rule is broken (one line per finding on
stderr), 2 when the check could not be made (no Go, no wrapper module, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOMAD = "github.com/hashicorp/nomad"
#: The first Nomad release under the Business Source License.
FIRST_BSL_NOMAD = (1, 7, 0)
#: How a licence file names the Business Source License (its title, its SPDX identifier).
BSL_PATTERN = re.compile(r"business\s+source\s+license|\bBUSL-1\.1\b", re.IGNORECASE)
#: Top-level files of a module that carry its licence.
LICENCE_NAME = re.compile(r"^(LICEN[CS]E|COPYING|COPYRIGHT)([-._].*)?$", re.IGNORECASE)


class GuardError(Exception):
    """The check could not be made (exit status 2)."""


@dataclass
class Report:
    findings: list[str] = field(default_factory=list)  # broken rules
    notes: list[str] = field(default_factory=list)  # what was checked

    @property
    def ok(self) -> bool:
        return not self.findings


# ---- versions -----------------------------------------------------------------------------------

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def release_of(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a release, tag or pseudo-version; None when unparsable.

    A pseudo-version ``vX.Y.(Z+1)-0.<time>-<hash>`` names a commit after ``vX.Y.Z``; its base
    (X, Y, Z+1) is still on the right side of any threshold below it.
    """
    m = _VERSION.match(version.strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def is_bsl_nomad(version: str) -> bool:
    rel = release_of(version)
    return rel is not None and rel >= FIRST_BSL_NOMAD


def check_pin(version_file: Path, report: Report) -> None:
    version = version_file.read_text().strip()
    rel = release_of(version)
    if rel is None:
        report.findings.append(f"{version_file}: {version!r} is not a Nomad release number")
    elif rel >= FIRST_BSL_NOMAD:
        report.findings.append(
            f"{version_file}: pins Nomad {version}; Nomad is under the Business Source License from "
            f"{'.'.join(map(str, FIRST_BSL_NOMAD))} on, pin an open-source (MPL-2.0) release such as 1.6.3"
        )
    else:
        report.notes.append(f"pin: Nomad {version} (below {'.'.join(map(str, FIRST_BSL_NOMAD))})")


# ---- licence texts ------------------------------------------------------------------------------


def licence_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and LICENCE_NAME.match(p.name)]


def names_bsl(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return BSL_PATTERN.search(text) is not None


# ---- go -----------------------------------------------------------------------------------------


def go_env(go: str) -> dict[str, str]:
    env = dict(os.environ)
    # Never let Go edit a go.mod while we look (build.sh/pin.sh maintain them), nor switch toolchains.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly").strip()
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def run_go(go: str, args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run([go, *args], cwd=cwd, env=go_env(go), capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise GuardError(f"a Go toolchain is needed ({go!r} not found)") from None
    if proc.returncode != 0:
        raise GuardError(f"`go {' '.join(args)}` in {cwd} failed:\n{proc.stderr.strip()[-3000:]}")
    return proc.stdout


def json_stream(text: str) -> list[dict]:
    """The concatenated JSON objects `go list -json` and `go mod download -json` print."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)


_REQUIRE_NOMAD = re.compile(r"^\s*(?:require\s+)?" + re.escape(NOMAD) + r"\s+(v\S+)", re.M)
_REPLACE_NOMAD = re.compile(r"^\s*(?:replace\s+)?" + re.escape(NOMAD) + r"(?:\s+v\S+)?\s*=>\s*\S+\s+(v\S+)", re.M)


def nomad_in_gomod(gomod: Path) -> list[str]:
    """Nomad versions a go.mod requires or replaces Nomad with, read as text (no Go involved)."""
    text = gomod.read_text()
    return _REQUIRE_NOMAD.findall(text) + _REPLACE_NOMAD.findall(text)


def module_list(module_dir: Path, go: str) -> list[dict]:
    """The full build list of the module in module_dir, every module present in the cache."""
    mods = json_stream(run_go(go, ["list", "-m", "-json", "all"], module_dir))
    missing = [m for m in mods if not m.get("Main") and not _effective(m).get("Dir")]
    if missing:
        # Not needed to build, so never fetched: fetch them now so that their licences are read too.
        # (The Nomad version was checked before; nothing in this list is a BSL Nomad release.)
        wanted = sorted({_fetch_ref(m) for m in missing if _fetch_ref(m)})
        fetched: dict[str, str] = {}
        for i in range(0, len(wanted), 100):
            for info in json_stream(run_go(go, ["mod", "download", "-json", *wanted[i : i + 100]], module_dir)):
                if info.get("Error"):
                    raise GuardError(f"go mod download {info.get('Path')}@{info.get('Version')}: {info['Error']}")
                fetched[f"{info['Path']}@{info['Version']}"] = info.get("Dir", "")
        for m in missing:
            eff = _effective(m)
            eff["Dir"] = fetched.get(_fetch_ref(m) or "", "")
    return mods


def _effective(mod: dict) -> dict:
    """The module whose files are used: the replacement, if there is one."""
    return mod.get("Replace") or mod


def _fetch_ref(mod: dict) -> str | None:
    eff = _effective(mod)
    if not eff.get("Version"):
        return None  # a local directory replacement: nothing to fetch
    return f"{eff['Path']}@{eff['Version']}"


# ---- the checks ---------------------------------------------------------------------------------


def check_build_list(label: str, mods: list[dict], report: Report) -> None:
    checked = read = 0
    unlicensed: list[str] = []
    for mod in mods:
        if mod.get("Main"):
            continue
        eff = _effective(mod)
        name = mod["Path"] + (f"@{mod['Version']}" if mod.get("Version") else "")
        if eff is not mod:
            name += f" (replaced by {eff['Path']}" + (f"@{eff['Version']}" if eff.get("Version") else "") + ")"
        checked += 1
        for path_, version in ((mod["Path"], mod.get("Version", "")), (eff["Path"], eff.get("Version", ""))):
            if path_ == NOMAD and is_bsl_nomad(version):
                report.findings.append(
                    f"{label}: module {name}: Nomad {version} is under the Business Source License (1.7.0 and later)"
                )
        directory = eff.get("Dir")
        if not directory:
            report.findings.append(f"{label}: module {name}: not in the module cache, its licence cannot be read")
            continue
        files = licence_files(Path(directory))
        if not files:
            unlicensed.append(name)
        for f in files:
            read += 1
            if names_bsl(f):
                report.findings.append(f"{label}: module {name} is under the Business Source License: {f} says so")
    without = f"{len(unlicensed)} without a top-level licence file"
    if 0 < len(unlicensed) <= 10:
        without += " (" + ", ".join(unlicensed) + ")"
    report.notes.append(f"{label}: {checked} modules in the build list, {read} licence files read, {without}")


def check_module_dir(module_dir: Path, go: str, report: Report, label: str | None = None) -> None:
    label = label or str(module_dir)
    gomod = module_dir / "go.mod"
    if not gomod.is_file():
        raise GuardError(f"{label}: no go.mod in {module_dir}")
    bad = [v for v in nomad_in_gomod(gomod) if is_bsl_nomad(v)]
    if bad:
        # Refused before Go runs: listing the module would fetch that release.
        report.findings.append(
            f"{label}: go.mod names Nomad {', '.join(bad)}, under the Business Source License "
            f"(1.7.0 and later); not listed, so nothing of it is fetched"
        )
        return
    check_build_list(label, module_list(module_dir, go), report)


def cache_root() -> Path:
    explicit = os.environ.get("NDX_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nomad-driver-xen"


def project_modules(version_file: Path) -> list[tuple[str, Path]]:
    version = version_file.read_text().strip()
    return [
        ("agent wrapper (tools/nomad/build.sh)", cache_root() / "nomad" / version / "wrapper"),
        ("conformance suite (tests/conformance)", REPO / "tests" / "conformance"),
    ]


def run(
    modules: list[tuple[str, Path]] | None = None,
    go_lists: list[Path] | None = None,
    version_file: Path = REPO / "tools" / "nomad" / "VERSION",
    go: str = "go",
) -> Report:
    report = Report()
    check_pin(version_file, report)
    if not report.ok:
        return report  # the module lists of a BSL pin are not even looked at
    if modules is None and not go_lists:
        modules = project_modules(version_file)
    for label, directory in modules or []:
        if not (directory / "go.mod").is_file():
            raise GuardError(f"{label}: no Go module at {directory} (tools/nomad/build.sh generates the agent's)")
        check_module_dir(directory, go, report, label)
    for listing in go_lists or []:
        check_build_list(str(listing), json_stream(listing.read_text()), report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", type=Path, default=[], help="a Go module directory to check")
    ap.add_argument("--go-list", action="append", type=Path, default=[], help="a saved `go list -m -json all` output")
    ap.add_argument("--version-file", type=Path, default=REPO / "tools" / "nomad" / "VERSION")
    ap.add_argument("--go", default=os.environ.get("GO", "go"), help="the go command (default: go, or $GO)")
    args = ap.parse_args(argv)
    modules = [(str(d), d) for d in args.module] or None
    try:
        report = run(modules, args.go_list, args.version_file, args.go)
    except GuardError as exc:
        print(f"licence guard: cannot check: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"licence guard: {note}")
    for finding in report.findings:
        print(f"licence guard: FAIL: {finding}", file=sys.stderr)
    if report.ok:
        print("licence guard: no Business Source License in what the project builds")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
