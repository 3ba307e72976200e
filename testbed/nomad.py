"""A real Nomad agent (server + client) inside the testbed's dom0, with our plugin installed.

This is how an operator runs the product: the pinned Nomad binary, ``dist/nomad-driver-xen`` (the
single file of ``make dist``) in ``plugin_dir``, ``nomad-jobs/agent.hcl``, and the ``nomad`` CLI.
Tests drive it with the CLI inside dom0 (``nomad job run …``) and read state
through the HTTP API forwarded to a loopback port on the host.

The agent is not in ``-dev`` mode: it keeps a data dir, so recovery tests can stop, kill and
restart it with allocations surviving.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.vm import Testbed

REPO = Path(__file__).resolve().parents[1]
NOMAD_DIR = "/opt/nomad"
PLUGIN_DIR = f"{NOMAD_DIR}/plugins"
DATA_DIR = f"{NOMAD_DIR}/data"
IMAGE_DIR = "/var/lib/nomad-driver-xen/images"
STATE_DIR = "/var/lib/nomad-driver-xen"
CONSOLE_DIR = "/var/log/xen/console"
AGENT_LOG = "/host/nomad-agent.log"
NOMAD = "/usr/local/bin/nomad"


def host_nomad_binary() -> Path:
    """The pinned Nomad (tools/nomad/build.sh builds it, or finds it in the cache)."""
    import subprocess

    out = subprocess.run(
        ["bash", str(REPO / "tools" / "nomad" / "build.sh")], check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


#: The plugin's toolstacks; a test module runs over both with
#: ``pytest.mark.parametrize("backend", BACKENDS, scope="module")`` (tests/xen/conftest.py's fixture).
BACKENDS = ("xl", "libvirt")

#: Every domain libvirtd knows, one name a line (python3-libvirt is in dom0).
LIBVIRT_LIST = (
    "import libvirt; libvirt.registerErrorHandler(lambda *a: None, None); c = libvirt.open('xen:///system');"
    " print('\\n'.join(d.name() for d in c.listAllDomains(0)))"
)
#: Destroy and undefine libvirt's nomad-* domains, when libvirtd runs (an earlier module's); a
#: shell snippet for reset's script.
# A libvirtd that does not finish this within a minute is hung (it would hold libxl's domain locks,
# and `xl destroy` would wait for them too): it is killed, and started again when a module needs it.
LIBVIRT_PURGE = """if pgrep -x libvirtd >/dev/null; then
timeout 60 python3 - <<'PY'
import libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open("xen:///system")
for d in conn.listAllDomains(0):
    if d.name().startswith("nomad-"):
        for step in ("destroy", "undefine"):
            try:
                getattr(d, step)()
            except libvirt.libvirtError:
                pass
PY
if [ $? -eq 124 ]; then echo "libvirtd did not answer within 60 s: killed" >&2; pkill -9 -x libvirtd; fi
fi"""


def agent_config(backend: str = "xl") -> str:
    """nomad-jobs/agent.hcl with the plugin's ``backend`` set."""
    text = (REPO / "nomad-jobs" / "agent.hcl").read_text()
    line = 'backend            = "xl"'
    assert line in text, "nomad-jobs/agent.hcl no longer has the backend line the testbed replaces"
    return text.replace(line, f'backend            = "{backend}"')


def plugin_pids(tb) -> list[int]:
    """The long-lived plugin: the single file in plugin_dir run without arguments
    (``/usr/bin/python3 -sE /opt/nomad/plugins/nomad-driver-xen``), or ``python3 -m xen_driver``
    that a launcher of ``nomad-driver-xen install`` execs."""
    r = tb.run(["pgrep", "-f", "--", r"(-m xen_driver|/plugins/nomad-driver-xen)$"], check=False)
    assert r.rc in (0, 1), r.stderr
    return sorted(int(p) for p in r.stdout.split())


class NomadDom0:
    """Install, start, stop and query one Nomad agent in dom0.

    ``backend`` is the plugin's toolstack (``"xl"`` or ``"libvirt"``): the example agent config
    with its ``backend`` line set to it; for libvirt, libvirtd (libxl driver) is started first.
    ``config``, when given, is the agent config to install instead (a module's own settings)."""

    def __init__(self, tb: Testbed, run_dir: Path, unikernel: str, backend: str = "xl", config: str | None = None):
        self.tb = tb
        self.run_dir = run_dir
        self.unikernel = unikernel
        self.backend = backend
        self.config = config
        self.pid: int | None = None
        self.addr = f"http://127.0.0.1:{tb.host_port(4646)}"

    # ---------------------------------------------------------------- set-up
    def install(self) -> None:
        self.reset()
        shutil.copy2(host_nomad_binary(), self.run_dir / "nomad")
        # The operator's install step: the single file of `make dist` into plugin_dir, nothing else
        # (its dependencies are inside it). Built now when dist/ is missing or older than its
        # sources; copied into this run's directory so a rebuild during the run changes nothing.
        plugin = REPO / "dist" / "nomad-driver-xen"
        inputs = [REPO / "tools" / "dist.py", *(REPO / "xen_driver").rglob("*.py"), *(REPO / "packaging").rglob("*")]
        if not plugin.exists() or plugin.stat().st_mtime < max(p.stat().st_mtime for p in inputs if p.is_file()):
            import subprocess
            import sys

            subprocess.run([sys.executable, str(REPO / "tools" / "dist.py")], check=True, stdout=subprocess.DEVNULL)
        shutil.copy2(plugin, self.run_dir / "nomad-driver-xen")
        self.tb.run(
            f"set -e; install -m 0755 /host/nomad {NOMAD}; mkdir -p {PLUGIN_DIR} {DATA_DIR} {IMAGE_DIR};"
            f" install -m 0755 /host/nomad-driver-xen {PLUGIN_DIR}/nomad-driver-xen;"
            f" install -m 0644 {self.unikernel} {IMAGE_DIR}/ndx-unikernel;"
            " mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup || true",
            timeout=120,
        )
        # Agent config: the module's own, or the example with nothing changed but the backend.
        self.tb.write_file(f"{NOMAD_DIR}/agent.hcl", self.config or agent_config(self.backend))
        if self.backend == "libvirt":
            self.tb.ensure_libvirtd()

    def reset(self) -> None:
        """A clean slate for this module's agent, as on a freshly installed host.

        One testbed serves every module of a test session, and an agent's data directory keeps
        jobs, allocations and client state: what an earlier module left there (jobs it did not
        purge, allocations that keep retrying) would be restored by this module's agent and
        compete with its own jobs for disk and memory.  So no agent or plugin of an earlier
        module runs on, its guests are destroyed, and its data and the driver's state are removed.
        """
        # A script file, not `sh -c`: the patterns below would match the shell's own command
        # line (it names the driver's state directory), and pkill would end the reset half-way.
        script = "\n".join(
            [
                "pkill -x nomad; pkill -f 'nomad-driver-xen'; pkill -f 'fifokeeper'",
                "for i in $(seq 1 100); do"
                " pgrep -x nomad >/dev/null || pgrep -f 'nomad-driver-xen' >/dev/null || break; sleep 0.1; done",
                "pkill -9 -x nomad; pkill -9 -f 'nomad-driver-xen'; pkill -9 -f 'fifokeeper'",
                LIBVIRT_PURGE,
                "for d in $(xl list | awk 'NR > 1 && $1 != \"Domain-0\" {print $1}');"
                " do timeout 60 xl destroy $d; done",
                # (Nomad mounts each task's secrets directory: unmounted first, or rm stops there)
                f"grep -o ' {DATA_DIR}/[^ ]*' /proc/mounts | sort -r | xargs -r umount -l",
                f"rm -rf {DATA_DIR} {STATE_DIR}/tasks {STATE_DIR}/domains {STATE_DIR}/pool",
                f"rm -f {CONSOLE_DIR}/guest-*",
                f"if [ -e {DATA_DIR} ]; then echo 'left: {DATA_DIR}'; fi",
                'xl list | awk \'NR > 1 && $1 != "Domain-0" {print "left: domain " $1}\'',
                "exit 0",
            ]
        )
        self.tb.write_file("/run/ndx-reset.sh", script + "\n", mode=0o755)
        r = self.tb.run(["sh", "/run/ndx-reset.sh"], timeout=300, check=False)
        left = [line for line in r.stdout.splitlines() if line.startswith("left: ")]
        if r.rc != 0 or left:
            raise AssertionError(
                f"dom0 could not be reset for this module's agent (rc {r.rc}): {left} {r.stderr[-800:]}"
            )

    def start(self, timeout: float = 240) -> None:
        self.pid = self.tb.spawn(
            f"exec {NOMAD} agent -config {NOMAD_DIR}/agent.hcl >>{AGENT_LOG} 2>&1",
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        try:
            self.wait_until(self._driver_healthy, timeout, "the node to report driver xen healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        """What an agent that does not come up was doing: its process, the plugin's, libvirtd's,
        and the end of the agent log (a failed CI run keeps only its own output)."""
        r = self.tb.run(
            "ps -eo pid,ppid,stat,etimes,wchan:20,args | grep -E '[n]omad|[l]ibvirtd|[f]ifokeeper' | cut -c1-200;"
            f" echo '--- the agent log, last 40 lines:'; tail -n 40 {AGENT_LOG} | cut -c1-400",
            check=False,
            timeout=60,
        )
        return r.stdout + r.stderr

    def stop(self, sig: int = 2) -> None:
        """Stop the agent (SIGINT = graceful leave by default) and wait until it is gone."""
        if self.pid is None:
            return
        self.tb.kill(self.pid, sig, group=False)
        deadline = time.monotonic() + 60
        while self.tb.poll(self.pid) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        self.pid = None

    # ---------------------------------------------------------------- queries
    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.addr + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def cli(self, *args: str, timeout: float = 120, check: bool = True):
        return self.tb.run([NOMAD, *args], timeout=timeout, check=check, env={"NOMAD_ADDR": "http://127.0.0.1:4646"})

    def node(self) -> dict:
        nodes = self.api("/v1/nodes")
        assert len(nodes) == 1, nodes
        return self.api(f"/v1/node/{nodes[0]['ID']}")

    def _driver_healthy(self) -> bool:
        """The node takes xen tasks: the driver is detected and healthy, and the server sees the
        node ready and eligible (a job submitted before that fails its first placement)."""
        try:
            node = self.node()
        except (urllib.error.URLError, ConnectionError, OSError, AssertionError, ValueError):
            return False
        xen = (node.get("Drivers") or {}).get("xen") or {}
        ready = node.get("Status") == "ready" and node.get("SchedulingEligibility") == "eligible"
        return bool(xen.get("Detected") and xen.get("Healthy") and ready)

    def allocs(self, job: str) -> list[dict]:
        return self.api(f"/v1/job/{job}/allocations")

    def alloc(self, alloc_id: str) -> dict:
        return self.api(f"/v1/allocation/{alloc_id}")

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}; agent log: {self.run_dir / 'nomad-agent.log'}"
                )
            time.sleep(every)

    def wait_alloc(self, job: str, statuses: set[str], timeout: float = 180) -> dict:
        """The job's newest allocation, once its client status is in ``statuses``."""

        def check() -> dict | None:
            try:
                allocs = self.allocs(job)
            except urllib.error.HTTPError:
                return None
            if not allocs:
                return None
            newest = max(allocs, key=lambda a: a["CreateIndex"])
            return self.alloc(newest["ID"]) if newest["ClientStatus"] in statuses else None

        return self.wait_until(check, timeout, f"job {job} to have an allocation in state {sorted(statuses)}")

    def run_job(self, path: str, *, detach: bool = True) -> None:
        args = ["job", "run"] + (["-detach"] if detach else []) + [path]
        self.cli(*args, timeout=300)

    def stop_job(self, job: str, purge: bool = True) -> None:
        self.cli("job", "stop", "-detach", *(["-purge"] if purge else []), job, timeout=300)

    def domains(self) -> list[str]:
        """Names of all domains but Domain-0 (``xl list``)."""
        out = self.tb.run(["xl", "list"], timeout=60).stdout.splitlines()[1:]
        return [line.split()[0] for line in out if line.split() and line.split()[0] != "Domain-0"]

    def leftovers(self) -> list[str]:
        """Files a finished task must not leave behind (rendered configs, task state, consoles),
        and with the libvirt backend the persistent definitions libvirt keeps (``libvirt:<name>``)."""
        r = self.tb.run(
            f"ls -1 {STATE_DIR}/domains {STATE_DIR}/tasks 2>/dev/null | grep -v ':$' | grep -v '^$';"
            f" ls -1 {CONSOLE_DIR} | grep '^guest-nomad-' || true",
            check=False,
        )
        found = [line for line in r.stdout.splitlines() if line.strip()]
        if self.backend == "libvirt":
            found += [f"libvirt:{name}" for name in self.libvirt_domains()]
        return found

    def libvirt_domains(self) -> list[str]:
        """Every domain libvirtd knows (running or only defined), but Domain-0."""
        r = self.tb.run(["python3", "-c", LIBVIRT_LIST], timeout=60)
        return [n for n in r.stdout.split() if n != "Domain-0"]

    def task_events(self, alloc: dict, task: str) -> list[dict]:
        return (alloc.get("TaskStates") or {}).get(task, {}).get("Events") or []

    def write_job(self, name: str, text: str) -> str:
        """Put a job file into the shared run dir; returns its dom0 path."""
        (self.run_dir / "jobs").mkdir(exist_ok=True)
        (self.run_dir / "jobs" / name).write_text(text)
        return f"/host/jobs/{name}"
