#!/usr/bin/env python3
"""Build the release artifacts into dist/ (what `make dist` and the Dockerfile's dist stage run).

    python3 tools/dist.py [--out DIR]

From this checkout and PyPI only:

* ``nomad-driver-xen``: one executable file for a Nomad ``plugin_dir``. A shiv zipapp: the
  package and its runtime dependencies (PyPI wheels for CPython 3.11 on x86_64 Linux, pinned by
  packaging/constraints.txt) inside, started by ``/usr/bin/python3`` (Debian 12's 3.11). It
  unpacks its site-packages once per build (packaging/zipapp_main.py says where) and reuses them.
  libvirt-python is not inside (PyPI has only its sdist): the libvirt backend uses Debian's
  ``python3-libvirt`` from the system site-packages.
* ``nomad_driver_xen-<version>-py3-none-any.whl`` and ``nomad_driver_xen-<version>.tar.gz``.
* ``nomad-driver-xen_<version>_amd64.deb``: that file as /opt/nomad/plugins/nomad-driver-xen,
  with the agent configuration in /usr/share/doc/nomad-driver-xen.
* ``SHA256SUMS``.

The version is xen_driver.__version__; the build's commit (``git rev-parse HEAD``, ``+dirty`` when
the package's files differ from it, or $NDX_COMMIT without git) goes into xen_driver/_build.py of
a staged copy, so ``nomad-driver-xen version`` prints both. The build tools live in a virtualenv
of their own under build/ (pinned below); a rerun reuses it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
TOOLS_VENV = BUILD / "dist-tools"
TOOLS = ["shiv==1.0.8", "build==1.6.1", "setuptools==84.2.1", "wheel==0.45.1"]
NAME = "nomad-driver-xen"
#: The interpreter of the single file: Debian 12's CPython 3.11. -s: no user site-packages,
#: -E: no PYTHON* variables of the agent's environment.
SHEBANG = "/usr/bin/python3 -sE"
#: Wheels for exactly what that interpreter loads.
PIP_PLATFORM = [
    "--only-binary=:all:",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
]
#: What goes into the source distribution's staging copy.
SOURCES = ["pyproject.toml", "README.md", "xen_driver"]


def say(msg: str) -> None:
    print(f"dist: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def version() -> str:
    text = (REPO / "xen_driver" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not m:
        raise SystemExit("dist: no __version__ in xen_driver/__init__.py")
    return m.group(1)


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-c", f"safe.directory={REPO}", "-C", str(REPO), *args], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def commit() -> tuple[str, int | None]:
    """(commit id, commit time) of the checkout; ``+dirty`` when the package differs from it."""
    head = git("rev-parse", "HEAD")
    if head is None:
        return os.environ.get("NDX_COMMIT") or "unknown", None
    dirty = git("status", "--porcelain", "--", *SOURCES)
    when = git("log", "-1", "--format=%ct", "HEAD")
    return head[:12] + ("+dirty" if dirty else ""), int(when) if when else None


def source_files() -> list[str]:
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCES)
    if listed is None:  # not a git checkout (a source tree copied without .git)
        files = []
        for top in SOURCES:
            path = REPO / top
            if path.is_file():
                files.append(top)
            else:
                files += [str(p.relative_to(REPO)) for p in path.rglob("*") if p.is_file()]
        listed = "\0".join(files)
    return sorted(
        f
        for f in listed.split("\0")
        if f and "__pycache__" not in f and not f.endswith(".pyc") and (REPO / f).is_file()
    )


def tools_python() -> Path:
    python = TOOLS_VENV / "bin" / "python"
    stamp = TOOLS_VENV / "tools.txt"
    want = "\n".join([*TOOLS, os.path.realpath(sys.executable)]) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    say(f"build tools ({', '.join(TOOLS)}) -> {TOOLS_VENV.relative_to(REPO)}")
    shutil.rmtree(TOOLS_VENV, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(TOOLS_VENV)])
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *TOOLS])
    stamp.write_text(want)
    return python


def stage(dest: Path, build_commit: str) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    for rel in source_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    (dest / "xen_driver" / "_build.py").write_text(
        f'"""Written by tools/dist.py into the built package (absent in a checkout)."""\n\nCOMMIT = {build_commit!r}\n'
    )


def compile_site_packages(zipapp: Path, work: Path) -> dict[str, bytes]:
    """Bytecode of every bundled module, for CPython 3.11: ``{arcname: pyc}``.

    shiv leaves .pyc out, so each module would be compiled on its first import after unpacking:
    seconds of a small dom0's first start. These are unchecked-hash pycs (PEP 552): valid
    whatever the mtimes of the unpacked files (unpacking does not keep them), so nothing is
    compiled or written at run time.
    """
    python = shutil.which("python3.11") if sys.version_info[:2] != (3, 11) else sys.executable
    if not python:
        say("no CPython 3.11 here: the single file goes without bytecode (compiled on first import instead)")
        return {}
    tree = work / "site-packages"
    with zipfile.ZipFile(zipapp) as z:
        z.extractall(tree.parent, [n for n in z.namelist() if n.startswith("site-packages/") and n.endswith(".py")])
    # ddir: a fixed file name in the code objects (the import system puts in the real one), so the
    # same sources give the same bytes
    run(
        [
            python,
            "-c",
            "import compileall, py_compile, sys; sys.exit(not compileall.compile_dir(sys.argv[1], quiet=1, "
            "ddir='site-packages', invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH))",
            str(tree),
        ]
    )
    return {str(p.relative_to(tree.parent)): p.read_bytes() for p in sorted(tree.rglob("*.pyc"))}


def finish_zipapp(zipapp: Path, main_py: bytes, pycs: dict[str, bytes]) -> None:
    """Swap shiv's __main__.py for ours (with the build id filled in) and add the bytecode (same
    shebang, same entries otherwise)."""
    data = zipapp.read_bytes()
    shebang = data[: data.index(b"\n") + 1]
    out = zipapp.with_suffix(".new")
    with zipfile.ZipFile(zipapp) as src:
        build_id = json.loads(src.read("environment.json"))["build_id"]
    assert main_py.count(b'BUILD_ID = "@BUILD_ID@"') == 1
    main_py = main_py.replace(b'BUILD_ID = "@BUILD_ID@"', f'BUILD_ID = "{build_id}"'.encode())
    with zipfile.ZipFile(zipapp) as src, open(out, "wb") as fd:
        fd.write(shebang)
        with zipfile.ZipFile(fd, "w") as dst:
            infos = src.infolist()
            for info in infos:
                body = main_py if info.filename == "__main__.py" else src.read(info)
                dst.writestr(info, body, compress_type=info.compress_type)
            stamp = next(i for i in infos if i.filename == "__main__.py").date_time
            for name, body in pycs.items():
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.external_attr = 0o100644 << 16
                dst.writestr(info, body, compress_type=zipfile.ZIP_DEFLATED)
    out.chmod(0o755)
    os.replace(out, zipapp)


def deb(out: Path, zipapp: Path, ver: str, build_commit: str, work: Path, env: dict[str, str]) -> Path:
    root = work / "deb"
    shutil.rmtree(root, ignore_errors=True)
    plugin = root / "opt" / "nomad" / "plugins" / NAME
    plugin.parent.mkdir(parents=True)
    shutil.copy2(zipapp, plugin)
    plugin.chmod(0o755)
    doc = root / "usr" / "share" / "doc" / NAME
    (doc / "examples").mkdir(parents=True)
    pkg = REPO / "packaging" / "debian"
    shutil.copy2(pkg / "README.Debian", doc / "README.Debian")
    shutil.copy2(pkg / "copyright", doc / "copyright")
    for example in ("agent.hcl", "server.hcl", "xen-client.hcl"):
        shutil.copy2(REPO / "nomad-jobs" / example, doc / "examples" / example)
    epoch = int(env.get("SOURCE_DATE_EPOCH") or 0) or None
    for path in [p for p in root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path == plugin else 0o644)
        if epoch:
            os.utime(path, (epoch, epoch))
    size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024
    control = (pkg / "control").read_text().format(version=ver, installed_size=size_kib, commit=build_commit)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(control)
    target = out / f"{NAME}_{ver}_amd64.deb"
    run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(target)],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="output directory (default: dist/)")
    args = parser.parse_args()
    out = Path(args.out).resolve()

    ver = version()
    build_commit, commit_time = commit()
    env = dict(os.environ)
    if commit_time is not None and "SOURCE_DATE_EPOCH" not in env:
        env["SOURCE_DATE_EPOCH"] = str(commit_time)  # reproducible archive timestamps
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    say(f"{NAME} {ver} (commit {build_commit})")

    BUILD.mkdir(exist_ok=True)
    # One build at a time in this checkout (test sessions may each ask for one).
    lock = open(BUILD / ".dist.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    python = tools_python()
    # A fixed place (we hold the lock): the wheel's path ends up in the bundle's direct_url.json.
    work = BUILD / "dist-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        src = work / "src"
        stage(src, build_commit)
        built = work / "out"
        say("sdist and wheel")
        run(
            [str(python), "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(built), str(src)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        (wheel,) = built.glob("*.whl")

        say("single file (shiv; PyPI wheels for CPython 3.11 x86_64)")
        zipapp = built / NAME
        run(
            [
                str(python),
                "-m",
                "shiv",
                "--output-file",
                str(zipapp),
                "--entry-point",
                "xen_driver.cli:main",
                "--python",
                SHEBANG,
                "--reproducible",
                str(wheel),
                "--constraint",
                str(REPO / "packaging" / "constraints.txt"),
                *PIP_PLATFORM,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        finish_zipapp(zipapp, (REPO / "packaging" / "zipapp_main.py").read_bytes(), compile_site_packages(zipapp, work))

        say("Debian package")
        deb(built, zipapp, ver, build_commit, work, env)

        sums = []
        for path in sorted(built.iterdir()):
            sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
        (built / "SHA256SUMS").write_text("".join(sums))

        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            if old.is_file() and (
                old.name.startswith(("nomad-driver-xen", "nomad_driver_xen")) or old.name == "SHA256SUMS"
            ):
                old.unlink()
        for path in sorted(built.iterdir()):
            shutil.move(str(path), str(out / path.name))
            say(f"  {out / path.name}  ({(out / path.name).stat().st_size // 1024} KiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
