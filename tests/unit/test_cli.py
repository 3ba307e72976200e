"""`nomad-driver-xen install` writes a launcher that runs this installation."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from xen_driver import __version__
from xen_driver.cli import install, launcher_text, main


def test_install_writes_an_executable_launcher(tmp_path):
    path = install(str(tmp_path / "plugins"), "nomad-driver-xen")
    assert path == tmp_path / "plugins" / "nomad-driver-xen"
    assert os.stat(path).st_mode & stat.S_IXUSR
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and f"exec {sys.executable} -m xen_driver" in text
    # Run as a person would: the launcher reaches our code, which refuses without Nomad's cookie.
    env = {k: v for k, v in os.environ.items() if k not in ("NOMAD_PLUGIN_MAGIC_COOKIE", "PYTHONPATH")}
    proc = subprocess.run([str(path)], env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "" and "This binary is a plugin" in proc.stderr


def test_launcher_quotes_paths():
    text = launcher_text("/opt/my python/bin/python3", "/opt/it's here")
    assert "exec '/opt/my python/bin/python3' -m xen_driver \"$@\"" in text
    assert "PYTHONPATH='/opt/it'\"'\"'s here'${PYTHONPATH:+:$PYTHONPATH}" in text


def test_version_and_install_commands(tmp_path, capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"nomad-driver-xen {__version__} (source checkout)"
    assert main(["install", "--plugin-dir", str(tmp_path), "--name", "xen"]) == 0
    assert (tmp_path / "xen").exists()


def test_install_precompiles_into_a_cache_when_given_one(tmp_path):
    cache = tmp_path / "pycache"
    path = install(str(tmp_path / "plugins"), "nomad-driver-xen", pycache_dir=str(cache))
    assert f"PYTHONPYCACHEPREFIX={cache}" in path.read_text()
    compiled = list(cache.rglob("cli.*.pyc"))
    assert compiled, "install did not precompile the package into the cache"
