"""A plugin started in a bad environment: an unusable TMPDIR costs a warning, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from xen_driver.plugin.handshake import NOMAD_HANDSHAKE

REPO = Path(__file__).resolve().parents[3]
#: A directory nobody can create files in, not even root.
UNWRITABLE = "/proc/self"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_"))}
    env.update(
        NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value,
        PLUGIN_PROTOCOL_VERSIONS="2",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def test_unwritable_tmpdir_falls_back_to_tmp_with_one_warning():
    proc = subprocess.Popen(
        [sys.executable, "-m", "xen_driver"],
        env=_env(TMPDIR=UNWRITABLE),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("1|2|unix|/tmp/plugin"), line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    warnings = [ln for ln in err.decode().splitlines() if "socket directory unusable" in ln]
    assert len(warnings) == 1 and UNWRITABLE in warnings[0] and "TMPDIR" in warnings[0], err.decode()
    assert "Traceback" not in err.decode()


def test_no_usable_socket_directory_is_one_line_naming_it_and_the_fix():
    code = (
        "import xen_driver.plugin.server as s; s.FALLBACK_SOCKET_DIRS = ();"
        "from xen_driver import cli; raise SystemExit(cli.main(['serve']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(TMPDIR=UNWRITABLE, PLUGIN_UNIX_SOCKET_DIR="/nonexistent/sockets"),
        capture_output=True,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert proc.stdout == b""  # no handshake line: go-plugin reports the plugin's exit
    # What an operator sees at the agent's default log level: debug/trace records aside, one line.
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(('{"@level":"debug"', '{"@level":"trace"'))]
    assert len(lines) == 1, err
    assert UNWRITABLE in lines[0] and "/nonexistent/sockets" in lines[0]
    assert "fix: set TMPDIR" in lines[0]
