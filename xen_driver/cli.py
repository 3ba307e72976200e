"""Command line: serve the plugin (how Nomad runs us), install a launcher, print the version.

nomad-driver-xen                              # serve (only when started by Nomad)
nomad-driver-xen install --plugin-dir DIR     # write DIR/nomad-driver-xen, a launcher for Nomad
nomad-driver-xen version
nomad-driver-xen breakdown JOB|ALLOC          # instantiation time per phase (xen_driver/breakdown/)
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
from pathlib import Path

from xen_driver import __version__

DEFAULT_LAUNCHER_NAME = "nomad-driver-xen"


def serve() -> int:
    """Run as a Nomad plugin. Refuses (exit 1, nothing on stdout) unless Nomad started us."""
    from xen_driver.plugin.handshake import NOMAD_HANDSHAKE, HandshakeError, check_cookie

    try:
        check_cookie(NOMAD_HANDSHAKE, os.environ)
    except HandshakeError as exc:
        sys.stderr.write(str(exc))
        sys.stderr.flush()
        return 1

    # We share the agent's process group: a Ctrl-C aimed at the agent must not kill us, not even
    # while we are still importing (the server installs its own counting handler later).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    import asyncio

    from xen_driver import logging as xlog

    xlog.configure()
    log = xlog.get_logger("plugin")

    # Each guest holds descriptors here; the common soft limit of 1024 runs out at ~500 guests.
    from xen_driver.xen import fdlimit

    before, soft = fdlimit.raise_soft_limit()
    hard = fdlimit.limits()[1]
    if soft < LOW_NOFILE:
        log.warn(
            "open-file limit is low: a few hundred guests at most",
            soft=soft,
            hard=hard,
            fix="raise LimitNOFILE of the Nomad agent",
        )
    else:
        log.debug("open-file limit", soft_before=before, soft=soft, hard=hard)

    from xen_driver._proto.nomad import base_pb2_grpc, driver_pb2_grpc
    from xen_driver.nomad.service import BasePluginService, DriverService, PluginState
    from xen_driver.plugin.server import PluginServer

    state = PluginState()

    def register(server) -> None:
        base_pb2_grpc.add_BasePluginServicer_to_server(BasePluginService(state), server)
        driver_pb2_grpc.add_DriverServicer_to_server(DriverService(state), server)

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(xlog.asyncio_exception_handler)
        server = PluginServer(register=register, on_stop=state.shutdown)
        state.on_unusable = server.request_stop
        return await server.serve()

    from xen_driver.plugin.server import SocketDirError

    try:
        code = asyncio.run(main())
    except HandshakeError as exc:
        log.error("handshake failed", error=str(exc).strip())
        return 1
    except SocketDirError as exc:
        sys.stderr.write(f"nomad-driver-xen: {exc}\n")
        sys.stderr.flush()
        return 1
    log.debug("plugin exited", code=code)
    # Everything is flushed and the socket removed; skip interpreter teardown (gRPC's core can
    # take a while to wind down under load, and the host SIGKILLs us 2 s after Shutdown).
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


#: Below this many open files the plugin warns at start (each guest holds about two).
LOW_NOFILE = 4096

#: Where bytecode goes when the installation itself is read-only (a shared checkout, say).
DEFAULT_PYCACHE_DIR = "/var/cache/nomad-driver-xen/pycache"


def launcher_text(python: str, pythonpath: str | None, pycache: str | None = None) -> str:
    lines = [
        "#!/bin/sh",
        f"# Nomad task driver plugin launcher for nomad-driver-xen {__version__}.",
        "# Written by `nomad-driver-xen install`; put it into the agent's plugin_dir.",
    ]
    if pythonpath:
        lines.append(f"PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}")
        lines.append("export PYTHONPATH")
    if pycache:
        lines.append(f"PYTHONPYCACHEPREFIX={shlex.quote(pycache)}")
        lines.append("export PYTHONPYCACHEPREFIX")
    lines.append(f'exec {shlex.quote(python)} -m xen_driver "$@"')
    return "\n".join(lines) + "\n"


def _needs_pythonpath(python: str, package_parent: str) -> bool:
    """True unless ``python`` imports this very xen_driver without help."""
    import subprocess  # only the install command needs it; keep the plugin's start-up lean

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        out = subprocess.run(
            [
                python,
                "-c",
                "import os, xen_driver; print(os.path.dirname(os.path.dirname(os.path.realpath(xen_driver.__file__))))",
            ],
            cwd="/",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    return out.returncode != 0 or out.stdout.strip() != os.path.realpath(package_parent)


def _precompile(python: str, package_dir: str, pycache: str | None) -> None:
    """Compile the package to bytecode now, so no plugin start pays for it.

    Nomad gives a plugin 60 s to print its handshake line, and it starts the plugin three times
    when the agent starts; compiling every module on each start (which happens when the
    installation is read-only and no bytecode can be written next to it) costs seconds on a
    small dom0.
    """
    import subprocess

    env = dict(os.environ)
    if pycache:
        env["PYTHONPYCACHEPREFIX"] = pycache
    subprocess.run([python, "-m", "compileall", "-q", package_dir], env=env, capture_output=True, timeout=600)


def install(
    plugin_dir: str, name: str = DEFAULT_LAUNCHER_NAME, python: str | None = None, pycache_dir: str | None = None
) -> Path:
    """Write an executable launcher ``plugin_dir/name`` that runs this installation."""
    python = python or sys.executable
    package_dir = str(Path(__file__).resolve().parent)
    package_parent = str(Path(package_dir).parent)
    pythonpath = package_parent if _needs_pythonpath(python, package_parent) else None
    pycache = None
    if pycache_dir is not None or not os.access(package_dir, os.W_OK):
        pycache = pycache_dir or DEFAULT_PYCACHE_DIR
        Path(pycache).mkdir(parents=True, exist_ok=True)
    _precompile(python, package_dir, pycache)
    directory = Path(plugin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    tmp = directory / f".{name}.tmp"
    tmp.write_text(launcher_text(python, pythonpath, pycache))
    tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, target)
    return target


def build_commit() -> str:
    """``commit <id>`` of a built artifact (tools/dist.py writes xen_driver/_build.py), else ``source checkout``."""
    try:
        from xen_driver._build import COMMIT  # type: ignore[import-not-found]
    except ImportError:
        return "source checkout"
    return f"commit {COMMIT}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] == "serve":
        return serve()
    parser = argparse.ArgumentParser(prog="nomad-driver-xen", description="Nomad task driver for Xen PV unikernels")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve the plugin (what Nomad runs; refuses without Nomad's cookie)")
    p_install = sub.add_parser("install", help="write a launcher for this installation into a Nomad plugin_dir")
    p_install.add_argument("--plugin-dir", required=True, help="the agent's plugin_dir")
    p_install.add_argument(
        "--name",
        default=DEFAULT_LAUNCHER_NAME,
        help="file name of the launcher, also the label of the agent's plugin block"
        f' (default "{DEFAULT_LAUNCHER_NAME}")',
    )
    p_install.add_argument(
        "--pycache-dir",
        default=None,
        help=f"keep bytecode here (default: next to the code, or {DEFAULT_PYCACHE_DIR} when that is read-only)",
    )
    sub.add_parser("version", help="print the version")
    from xen_driver import breakdown

    breakdown.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "breakdown":
        return breakdown.run(args)
    if args.command == "version":
        print(f"nomad-driver-xen {__version__} ({build_commit()})")
        return 0
    if args.command == "install":
        if "/" in args.name or args.name in ("", ".", ".."):
            parser.error("--name must be a plain file name")
        path = install(args.plugin_dir, args.name, pycache_dir=args.pycache_dir)
        print(path)
        print(
            f'Add to the agent configuration:\n\n  plugin "{args.name}" {{\n'
            '    config {\n      backend = "xl"\n    }\n  }',
            file=sys.stderr,
        )
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
