"""A real Nomad agent (`nomad agent -dev`) with our plugin in its plugin_dir.

The Nomad binary comes from ``$NOMAD_BIN`` or from the cache that ``tools/nomad/build.sh``
fills (the script is run when the cached binary is missing; it is a no-op otherwise). Each agent
gets its own temp dir, loopback-only ports and a config that denylists unrelated drivers and
fingerprinters; it is always stopped, together with its plugin processes, at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "nomad-driver-xen"


def nomad_binary() -> str:
    """The pinned Nomad agent: $NOMAD_BIN, else the build cache (building it when missing)."""
    explicit = os.environ.get("NOMAD_BIN")
    if explicit:
        return explicit
    version = (REPO / "tools" / "nomad" / "VERSION").read_text().strip()
    cache = os.environ.get("NDX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nomad-driver-xen"
    )
    path = Path(cache) / "nomad" / version / "nomad"
    if not os.access(path, os.X_OK):
        out = subprocess.run(
            ["bash", str(REPO / "tools" / "nomad" / "build.sh")], capture_output=True, text=True, timeout=3000
        )
        if out.returncode != 0:
            pytest.fail(f"building Nomad failed:\n{out.stderr[-4000:]}")
        path = Path(out.stdout.strip().splitlines()[-1])
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hcl_string(value: str) -> str:
    return json.dumps(value).replace("${", "$${")


class NomadAgent:
    """One `nomad agent -dev` process and everything it needs, under ``workdir``."""

    def __init__(self, nomad: str, workdir: Path, plugin_config: dict[str, Any] | None) -> None:
        self.nomad = nomad
        self.workdir = workdir
        self.plugin_config = plugin_config
        self.data_dir = workdir / "data"
        self.plugin_dir = workdir / "plugins"
        self.log_path = workdir / "agent.log"
        self.http_port, rpc, serf = free_port(), free_port(), free_port()
        self.ports = (self.http_port, rpc, serf)
        self.proc: subprocess.Popen | None = None

    # -- set-up ---------------------------------------------------------------------------------

    def config_text(self) -> str:
        lines = []
        for key, value in (self.plugin_config or {}).items():
            if isinstance(value, list):
                rendered = "[" + ", ".join(hcl_string(v) for v in value) + "]"
            elif isinstance(value, str):
                rendered = hcl_string(value)
            else:
                rendered = json.dumps(value)
            lines.append(f"      {key} = {rendered}")
        body = "\n".join(lines)
        # plugin_config None: no plugin block at all (Nomad 1.6-1.9 load the plugin anyway).
        block = (
            ""
            if self.plugin_config is None
            else f"""
plugin "{LAUNCHER}" {{
  config {{
{body}
  }}
}}
"""
        )
        http, rpc, serf = self.ports
        return f"""
data_dir   = {hcl_string(str(self.data_dir))}
plugin_dir = {hcl_string(str(self.plugin_dir))}
bind_addr  = "127.0.0.1"
log_level  = "TRACE"
disable_update_check = true

ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}

client {{
  options = {{
    "driver.denylist"      = "docker,exec,java,qemu,raw_exec,mock_driver"
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean,consul,vault"
  }}
}}
{block}"""

    def start(self) -> NomadAgent:
        from xen_driver.cli import install

        self.data_dir.mkdir(parents=True)
        install(str(self.plugin_dir), LAUNCHER)
        config = self.workdir / "agent.hcl"
        config.write_text(self.config_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOMAD_")}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.nomad, "agent", "-dev", "-config", str(config)],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the agent and its plugins, nothing else
        )
        return self

    # -- observation ----------------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, body: Any = None, method: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=data,
            method=method or ("POST" if data is not None else "GET"),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def wait_for(self, what: str, probe, timeout: float = 60.0, interval: float = 0.25):
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(
                    f"nomad agent exited ({self.proc.returncode}) while waiting for {what}:\n{self.log()[-6000:]}"
                )
            try:
                value = probe()
                if value:
                    return value
            except (urllib.error.URLError, ConnectionError, OSError, KeyError, IndexError, TypeError) as exc:
                last_error = exc
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_error}):\n{self.log()[-6000:]}")

    def node(self) -> dict:
        """The (single) dev node, once it has registered and reported our driver."""

        def probe():
            nodes = self.api("/v1/nodes")
            if not nodes:
                return None
            node = self.api(f"/v1/node/{nodes[0]['ID']}")
            return node if "xen" in (node.get("Drivers") or {}) else None

        return self.wait_for("the node to report driver xen", probe)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def group_pids(self) -> list[int]:
        """Processes still in this agent's process group (the agent and the plugins it started)."""
        assert self.proc is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == self.proc.pid:  # state, ppid, pgrp
                pids.append(int(stat.parent.name))
        return pids

    # -- tear-down --------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: the agent stops its plugins itself
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of this agent's group
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def nomad_bin() -> str:
    return nomad_binary()


@pytest.fixture(scope="session")
def nomad_release(nomad_bin) -> tuple[int, int, int]:
    """(major, minor, patch) of the agent under test, from `nomad version`."""
    out = subprocess.run([nomad_bin, "version"], capture_output=True, text=True, timeout=60).stdout
    m = re.match(r"Nomad v(\d+)\.(\d+)\.(\d+)", out)
    assert m, f"`nomad version` said {out!r}"
    return int(m[1]), int(m[2]), int(m[3])


@pytest.fixture
def nomad_agent(nomad_bin, tmp_path):
    """Factory: ``nomad_agent(plugin_config_dict)`` -> started NomadAgent (stopped afterwards)."""
    agents: list[NomadAgent] = []

    def start(plugin_config: dict[str, Any] | None) -> NomadAgent:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        agent = NomadAgent(nomad_bin, workdir, plugin_config)
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.stop()
