"""Boot the real-Xen testbed (Xen 4.17 + Debian dom0 under QEMU) and drive its dom0 from the host.

Two ways to use it:

* :class:`Testbed` (service mode, for tests): boots once, then runs commands in dom0 through the
  command agent (testbed/agent.py) reached over QEMU's loopback port forward, and always shuts the
  machine down again (stop(), context manager, atexit, SIGTERM/SIGHUP, and QEMU dies with us).
* :func:`run_oneshot` (behind ``testbed/run.sh``): boots, runs one script in dom0, reports its exit
  code and powers off.

Standard library only, so that it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTBED_DIR.parent
AGENT_PORT = 7100  # dom0 side; the host side is a free loopback port
EXIT_MARKER = re.compile(r"NDX-TESTBED EXIT: (-?\d+)")
INIT_MARKER = re.compile(r"ndx-init: (step \S+|toolstack-up|start|FAILED step=\S+ rc=\d+|poweroff)")


class TestbedError(RuntimeError):
    """The testbed could not be built, booted or reached. Says which step and where its log is."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, step: str, detail: str, log_path: str | os.PathLike | None = None):
        self.step = step
        self.detail = detail
        self.log_path = str(log_path) if log_path else None
        where = f"; log: {self.log_path}" if self.log_path else ""
        super().__init__(f"testbed step '{step}' failed: {detail}{where}")


class CommandError(RuntimeError):
    """A command run in dom0 with check=True exited non-zero (or timed out)."""

    def __init__(self, cmd: str | Sequence[str], result: Result):
        self.cmd = cmd
        self.result = result
        what = "timed out" if result.timed_out else f"exited {result.rc}"
        super().__init__(
            f"dom0 command {cmd!r} {what}\n--- stdout:\n{result.stdout[-4000:]}\n--- stderr:\n{result.stderr[-4000:]}"
        )


class AgentError(RuntimeError):
    """The dom0 agent could not carry out a request (bad request, a failing file operation...)."""


_OS_ERRORS = {
    e.__name__: e for e in (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
}


@dataclass(frozen=True)
class Result:
    """What a command run in dom0 gave back."""

    rc: int
    stdout: str
    stderr: str
    duration: float = 0.0  # seconds, measured in dom0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def host_lock_path() -> Path:
    """The host-wide lock that lets one testbed run at a time (in the project's cache directory)."""
    root = os.environ.get("NDX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nomad-driver-xen"
    )
    return Path(root) / "testbed" / "run.lock"


def locate_images(build: bool = True, log_path: str | os.PathLike | None = None) -> Path:
    """The image directory of the current recipe, built first if ``build`` (a no-op when cached)."""
    cmd = ["bash", str(TESTBED_DIR / "build.sh")] + ([] if build else ["--locate"])
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            log.close()
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = f"testbed/build.sh exited {proc.returncode}"
        hint = _failed_build_step(log_path)
        if hint:
            detail += f" ({hint})"
        raise TestbedError("image build", detail, log_path)
    return Path(lines[-1])


IMAGE_FILES = ("xen", "vmlinuz", "initrd.img", "dom0.ext4")


def check_images(image_dir: str | os.PathLike) -> Path:
    """The image directory, if it has every file a boot needs; TestbedError otherwise."""
    image_dir = Path(image_dir)
    missing = [f for f in IMAGE_FILES if not (image_dir / f).is_file()]
    if missing:
        raise TestbedError("images", f"{image_dir} lacks {', '.join(missing)} (testbed/build.sh builds them)")
    return image_dir


def _failed_build_step(log_path) -> str | None:
    if not log_path:
        return None
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    hits = re.findall(r"testbed build FAILED at step '[^']+'.*", text)
    return hits[-1] if hits else None


# --------------------------------------------------------------------------------------------
# the QEMU machine
# --------------------------------------------------------------------------------------------


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _qemu_opt(path: str | os.PathLike) -> str:
    """A path inside a QEMU -option value: commas are doubled."""
    return str(path).replace(",", ",,")


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL when the thread that started us dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class BootProgress:
    """What the host saw on the serial console, with times since QEMU started."""

    started: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # event -> seconds after QEMU start
    last_step: str = "qemu"
    failed: str | None = None
    exit_code: int | None = None
    panic: str | None = None


class Machine:
    """One QEMU process running Xen + dom0, its serial console tailed into a log file."""

    def __init__(
        self,
        image_dir: Path,
        scratch_dir: Path,
        *,
        cmdline: Sequence[str],
        port_forwards: Mapping[int, int],  # host port -> dom0 port
        kvm: bool = False,
        src_dir: Path = REPO_DIR,
        serial_log: Path,
        qemu_log: Path,
        memory: str = "3G",
        dom0_memory: str = "1024M",
        cpus: int = 2,
        echo: Callable[[str], None] | None = None,
    ):
        self.image_dir = Path(image_dir)
        self.scratch_dir = Path(scratch_dir)
        self.cmdline = list(cmdline)
        self.port_forwards = dict(port_forwards)
        self.kvm = kvm
        self.src_dir = Path(src_dir)
        self.serial_log = Path(serial_log)
        self.qemu_log = Path(qemu_log)
        self.memory, self.dom0_memory, self.cpus = memory, dom0_memory, cpus
        self.echo = echo
        self.proc: subprocess.Popen | None = None
        self.progress = BootProgress()
        self._changed = threading.Condition()
        self._tail_thread: threading.Thread | None = None
        self._tail_stop = threading.Event()

    # -- command line ---------------------------------------------------------------------------
    def command(self, qemu: str) -> list[str]:
        img = self.image_dir
        for p in (img / "xen", img / "vmlinuz", img / "initrd.img"):
            if " " in str(p) or "," in str(p):
                raise TestbedError("qemu", f"image path {p} must not contain spaces or commas")
        xen_args = (
            f"console=com1 com1=115200,8n1 dom0_mem={self.dom0_memory},max:{self.dom0_memory} "
            f"dom0_max_vcpus={self.cpus} loglvl=all guest_loglvl=all noreboot bootscrub=0"
        )
        dom0_args = " ".join(
            ["root=/dev/vda", "ro", "rootfstype=ext4", "init=/sbin/ndx-init", "console=hvc0", "earlyprintk=xen"]
            + self.cmdline
        )
        if self.kvm:
            accel = ["-enable-kvm", "-cpu", "host"]
        else:
            accel = ["-accel", "tcg,thread=multi", "-cpu", "qemu64,+svm,+npt"]
        netdev = "user,id=net0,restrict=on" + "".join(
            f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in sorted(self.port_forwards.items())
        )
        return [
            qemu,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            *accel,
            "-m",
            self.memory,
            "-smp",
            str(self.cpus),
            "-chardev",
            f"file,id=serial0,path={_qemu_opt(self.serial_log)}",
            "-serial",
            "chardev:serial0",
            "-kernel",
            str(img / "xen"),
            "-append",
            xen_args,
            "-initrd",
            f"{img / 'vmlinuz'} {dom0_args},{img / 'initrd.img'}",
            "-drive",
            f"file={_qemu_opt(img / 'dom0.ext4')},if=virtio,format=raw,snapshot=on,cache=unsafe",
            "-virtfs",
            f"local,path={_qemu_opt(self.src_dir)},mount_tag=src,security_model=none,readonly=on,id=src",
            "-virtfs",
            f"local,path={_qemu_opt(self.scratch_dir)},mount_tag=host,security_model=none,id=host",
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=net0",
        ]

    # -- lifecycle ------------------------------------------------------------------------------
    def launch(self) -> None:
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise TestbedError("qemu", "qemu-system-x86_64 is not installed (testbed/build.sh installs it)", None)
        if self.kvm and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise TestbedError("qemu", "--kvm asked for, but /dev/kvm is not usable", None)
        cmd = self.command(qemu)
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        with open(self.qemu_log, "wb") as qlog:
            qlog.write(("$ " + shlex.join(cmd) + "\n").encode())
            qlog.flush()
            # QEMU gets SIGKILL when the thread that starts it ends, even by SIGKILL: through
            # setpriv (no Python code between fork and exec), else a preexec_fn.
            preexec = None
            if threading.current_thread() is threading.main_thread():
                setpriv = shutil.which("setpriv")
                if setpriv:
                    cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
                else:
                    preexec = _die_with_parent
            self.progress = BootProgress(started=time.monotonic())
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=qlog,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                cwd=str(self.scratch_dir),
            )
        self._tail_stop.clear()
        self._tail_thread = threading.Thread(target=self._tail, name="testbed-serial", daemon=True)
        self._tail_thread.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, predicate: Callable[[BootProgress], bool], timeout: float) -> bool:
        """Wait until predicate(progress) holds; False on timeout or when QEMU has ended."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if predicate(self.progress):
                    return True
                if not self.running() and not (self._tail_thread and self._tail_thread.is_alive()):
                    return predicate(self.progress)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.2))

    def wait_exit(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._finish_tail()
        return rc

    def kill(self) -> None:
        """Terminate QEMU: SIGTERM, then SIGKILL. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._finish_tail()

    def qemu_messages(self, lines: int = 15) -> str:
        try:
            text = self.qemu_log.read_text(errors="replace").splitlines()[1:]
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    # -- serial console ------------------------------------------------------------------------
    def _finish_tail(self) -> None:
        self._tail_stop.set()
        if self._tail_thread is not None and self._tail_thread is not threading.current_thread():
            self._tail_thread.join(5)

    def _tail(self) -> None:
        pending = b""
        with open(self.serial_log, "rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    if self.echo:
                        self.echo(chunk.decode(errors="replace"))
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._scan(line.decode(errors="replace").rstrip("\r"))
                    continue
                if self._tail_stop.is_set() or (self.proc is not None and self.proc.poll() is not None):
                    # QEMU is gone: one last read, then done
                    rest = f.read()
                    if rest:
                        if self.echo:
                            self.echo(rest.decode(errors="replace"))
                        pending += rest
                        for line in pending.split(b"\n"):
                            self._scan(line.decode(errors="replace").rstrip("\r"))
                    elif pending:
                        self._scan(pending.decode(errors="replace").rstrip("\r"))
                    break
                time.sleep(0.05)
        with self._changed:
            self._changed.notify_all()

    def _scan(self, line: str) -> None:
        p = self.progress
        now = time.monotonic() - p.started

        def mark(event: str) -> None:
            p.marks.setdefault(event, round(now, 3))

        if "Xen version" in line and "xen" not in p.marks:
            mark("xen")
            p.last_step = "xen"
        elif "Linux version" in line and "dom0_kernel" not in p.marks:
            mark("dom0_kernel")
            p.last_step = "dom0-kernel"
        elif p.panic is not None and p.panic.count("|") < 3:
            p.panic += " | " + line.strip()  # what Xen/Linux says after the panic line
        elif "Panic on CPU" in line or "Kernel panic" in line:
            p.panic = line.strip()
        m = INIT_MARKER.search(line)
        if m:
            word = m.group(1)
            if word == "start":
                mark("dom0_init")
                p.last_step = "dom0-init"
            elif word.startswith("step "):
                p.last_step = word[5:]
                mark("step_" + p.last_step)
            elif word == "toolstack-up":
                mark("toolstack")
            elif word.startswith("FAILED"):
                p.failed = word
            elif word == "poweroff":
                mark("poweroff")
        m = EXIT_MARKER.search(line)
        if m:
            p.exit_code = int(m.group(1))
        with self._changed:
            self._changed.notify_all()


# --------------------------------------------------------------------------------------------
# service mode: the API for tests
# --------------------------------------------------------------------------------------------

_LIVE: set[Testbed] = set()
_SIGNALS_INSTALLED = False


def _stop_all_live() -> None:
    for tb in list(_LIVE):
        tb.stop()


def _install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the process through SystemExit, so finalizers and atexit stop QEMU."""
    global _SIGNALS_INSTALLED
    if _SIGNALS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _SIGNALS_INSTALLED = True
    atexit.register(_stop_all_live)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            _stop_all_live()
            if callable(previous):
                previous(signum, frame)
            raise SystemExit(128 + signum)

        if previous in (signal.SIG_DFL, None) or callable(previous):
            signal.signal(sig, handler)


class Testbed:
    """A booted Xen testbed whose dom0 runs commands for the host.

    Testbed(image_dir=None, scratch_dir=None, forwards=(4646,), kvm=False, log_path=None)

    * image_dir: the built images; None builds or finds them (testbed/build.sh, cached).
    * scratch_dir: host directory shared read-write as /host in dom0; the serial console log
      (serial.log), QEMU's own messages (qemu.log) and the image build log (build.log) are kept
      there. None makes a temporary one.
    * forwards: dom0 TCP ports to reach from the host; host_port(p) says where.
    * The repository checkout (src_dir) is shared read-only as /src.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        image_dir: str | os.PathLike | None = None,
        scratch_dir: str | os.PathLike | None = None,
        forwards: Iterable[int] = (),
        kvm: bool = False,
        log_path: str | os.PathLike | None = None,
        *,
        src_dir: str | os.PathLike = REPO_DIR,
        memory: str = "3G",
        dom0_memory: str = "1024M",
        cpus: int = 2,
    ):
        self.image_dir = Path(image_dir) if image_dir else None
        self.scratch_dir = Path(scratch_dir) if scratch_dir else Path(tempfile.mkdtemp(prefix="ndx-testbed-"))
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.scratch_dir = self.scratch_dir.resolve()
        self.forwards = [int(p) for p in forwards]
        self.kvm = kvm
        self.log_path = Path(log_path) if log_path else self.scratch_dir / "serial.log"
        self.qemu_log_path = self.scratch_dir / "qemu.log"
        self.build_log_path = self.scratch_dir / "build.log"
        self.src_dir = Path(src_dir).resolve()
        self.memory, self.dom0_memory, self.cpus = memory, dom0_memory, cpus
        self.boot_timings: dict[str, float] = {}
        self._ports: dict[int, int] = {}  # dom0 port -> host port
        self._machine: Machine | None = None
        self._agent_up = False
        self._libvirtd_pid: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> Testbed:
        """Boot and wait for the dom0 agent. Raises TestbedError naming the step that failed.

        One testbed per host at a time: a host-wide lock is taken here and released by
        :meth:`stop`, so a test session, a benchmark and a demo never boot two emulated Xen
        machines side by side (on a small host they starve each other's timeouts)."""
        if self._machine is not None:
            raise RuntimeError("testbed already started")
        _install_signal_handlers()
        self._take_host_lock()
        if self.image_dir is None:
            self.image_dir = locate_images(build=True, log_path=self.build_log_path)
        check_images(self.image_dir)
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            self._ports = {p: _free_loopback_port() for p in [AGENT_PORT, *self.forwards]}
            self._machine = Machine(
                self.image_dir,
                self.scratch_dir,
                cmdline=["ndx.mode=service", f"ndx.agent_port={AGENT_PORT}"],
                port_forwards={h: g for g, h in self._ports.items()},
                kvm=self.kvm,
                src_dir=self.src_dir,
                serial_log=self.log_path,
                qemu_log=self.qemu_log_path,
                memory=self.memory,
                dom0_memory=self.dom0_memory,
                cpus=self.cpus,
            )
            _LIVE.add(self)
            self._machine.launch()
            try:
                self._wait_booted(deadline)
                return self
            except TestbedError as exc:
                qemu_said = self._machine.qemu_messages()
                self._machine.kill()
                if "host forwarding" in qemu_said and attempt < 2:
                    continue  # a port we picked was taken meanwhile: pick others
                _LIVE.discard(self)
                self._machine = None
                raise exc
        raise AssertionError("unreachable")

    def _wait_booted(self, deadline: float) -> None:
        m = self._machine
        assert m is not None
        p = m.progress

        def boot_error(detail: str) -> TestbedError:
            if p.panic:
                detail += f"; console: {p.panic!r}"
            if not m.running():
                qemu_said = m.qemu_messages(5)
                detail += f"; QEMU exited {m.proc.returncode}" + (f": {qemu_said}" if qemu_said else "")
            return TestbedError(f"boot: {p.last_step}", detail, self.log_path)

        # 1. QEMU, Xen, dom0 kernel, ndx-init up to the toolstack and the agent step
        ok = m.wait_for(
            lambda p: "step_agent" in p.marks or p.failed is not None or p.panic is not None,
            deadline - time.monotonic(),
        )
        if p.failed:
            raise boot_error(f"dom0 init reported {p.failed}")
        if p.panic:
            m.wait_for(lambda p: p.panic.count("|") >= 2, 3)
            raise boot_error("panic on the console")
        if not ok:
            raise boot_error(
                "QEMU ended before dom0 was up"
                if not m.running()
                else f"no progress past '{p.last_step}' within the boot timeout"
            )
        # 2. the agent answers through the port forward
        while True:
            try:
                self._exchange({"op": "ping"}, timeout=5)
                break
            except (OSError, ConnectionError, ValueError) as exc:
                if not m.running():
                    raise boot_error("QEMU ended before the dom0 agent answered") from exc
                if time.monotonic() > deadline:
                    raise boot_error("the dom0 agent did not answer on its port forward") from exc
                time.sleep(0.25)
        self._agent_up = True
        p.marks.setdefault("agent", round(time.monotonic() - p.started, 3))
        self.boot_timings = dict(p.marks)

    def stop(self, timeout: float = 60) -> None:
        """Power dom0 off cleanly; kill QEMU if it is still there after ``timeout``. Idempotent."""
        m = self._machine
        if m is None:
            self._release_host_lock()  # a start that failed before QEMU ran still held it
            return
        try:
            if m.running() and self._agent_up:
                try:
                    self._exchange({"op": "poweroff"}, timeout=10)
                except (OSError, ConnectionError, ValueError):
                    pass
                if m.wait_exit(timeout) is None:
                    m.kill()
            else:
                m.kill()
        finally:
            m.kill()
            self._agent_up = False
            self._libvirtd_pid = None
            self._machine = None
            _LIVE.discard(self)
            self._release_host_lock()

    def _take_host_lock(self) -> None:
        import fcntl

        if getattr(self, "_host_lock", None) is not None:
            return
        path = host_lock_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a+")
        t0 = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        self.lock_wait_s = round(time.monotonic() - t0, 1)
        self._host_lock = lock

    def _release_host_lock(self) -> None:
        lock = getattr(self, "_host_lock", None)
        if lock is not None:
            self._host_lock = None
            lock.close()  # closing the descriptor drops the flock

    def __enter__(self) -> Testbed:
        if self._machine is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._machine is not None and self._machine.running()

    @property
    def qemu_pid(self) -> int | None:
        m = self._machine
        return m.proc.pid if m is not None and m.proc is not None else None

    @property
    def serial_log(self) -> Path:
        return self.log_path

    def host_port(self, guest_port: int) -> int:
        """The 127.0.0.1 port on the host that reaches dom0's ``guest_port``."""
        try:
            return self._ports[int(guest_port)]
        except KeyError:
            raise KeyError(f"dom0 port {guest_port} is not forwarded (forwards={self.forwards})") from None

    # -- commands in dom0 -----------------------------------------------------------------------
    def run(
        self,
        cmd: str | Sequence[str],
        timeout: float = 120,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: bytes | str | None = None,
    ) -> Result:
        """Run ``cmd`` in dom0 (a string goes to /bin/sh -c, a list is an argv) and wait for it."""
        req = {"op": "run", **_cmd_fields(cmd), "env": dict(env or {}), "cwd": cwd, "timeout": timeout}
        if input is not None:
            req["stdin"] = _b64(input.encode() if isinstance(input, str) else input)
        resp = self._request(req, timeout=timeout + 30)
        result = Result(
            rc=resp["rc"],
            stdout=base64.b64decode(resp["stdout"]).decode(errors="replace"),
            stderr=base64.b64decode(resp["stderr"]).decode(errors="replace"),
            duration=resp.get("duration", 0.0),
            timed_out=resp.get("timed_out", False),
        )
        if check and not result.ok:
            raise CommandError(cmd, result)
        return result

    def spawn(
        self,
        cmd: str | Sequence[str],
        log_path: str = "/dev/null",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> int:
        """Start ``cmd`` in the background in dom0 (own session); stdout+stderr go to log_path
        (a dom0 path). Returns its dom0 pid."""
        resp = self._request({"op": "spawn", **_cmd_fields(cmd), "env": dict(env or {}), "cwd": cwd, "log": log_path})
        return resp["pid"]

    def poll(self, pid: int) -> int | None:
        """Exit code of a spawned process, None while it runs."""
        return self._request({"op": "poll", "pid": pid})["rc"]

    def kill(self, pid: int, sig: int = signal.SIGTERM, group: bool = True) -> None:
        """Signal a dom0 process (by default its whole process group)."""
        self._request({"op": "kill", "pid": pid, "signal": int(sig), "group": group})

    def read_file(self, path: str) -> bytes:
        return base64.b64decode(self._request({"op": "read_file", "path": path}, timeout=120)["data"])

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        if isinstance(data, str):
            data = data.encode()
        self._request({"op": "write_file", "path": path, "data": _b64(data), "mode": mode}, timeout=120)

    # -- Xen conveniences -----------------------------------------------------------------------
    def guest_console(self, name: str) -> str:
        """What xenconsoled logged of guest ``name``'s console so far ('' if nothing yet)."""
        r = self.run(["cat", f"/var/log/xen/console/guest-{name}.log"], check=False)
        return r.stdout if r.rc == 0 else ""

    def wait_for_console(self, name: str, text: str, timeout: float = 30) -> float:
        """Wait (polling in dom0) until guest ``name``'s console log contains ``text``; returns the
        seconds waited. Raises TimeoutError with the console so far."""
        script = (
            "import sys, time\n"
            "path, text, timeout = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])\n"
            "t0 = time.monotonic()\n"
            "while time.monotonic() - t0 < timeout:\n"
            "    try:\n"
            "        if text in open(path, 'rb').read():\n"
            "            print(time.monotonic() - t0); sys.exit(0)\n"
            "    except FileNotFoundError:\n"
            "        pass\n"
            "    time.sleep(0.02)\n"
            "sys.exit(1)\n"
        )
        r = self.run(
            ["python3", "-c", script, f"/var/log/xen/console/guest-{name}.log", text, str(timeout)],
            timeout=timeout + 30,
            check=False,
        )
        if r.rc != 0:
            raise TimeoutError(
                f"guest {name!r} did not print {text!r} within {timeout} s; console so far:\n"
                f"{self.guest_console(name)[-3000:]}"
            )
        return float(r.stdout.strip())

    def save_dom0_logs(self, name: str = "dom0-logs") -> Path:
        """Copy dom0's logs (Xen consoles, xl monitors, hotplug, libvirtd) into the scratch dir,
        where they outlive the machine; returns that host directory."""
        script = (
            'rm -rf "$1" && mkdir -p "$1" && cp -a /var/log/xen "$1"/ &&'
            ' { cp /var/log/libvirtd.log "$1"/ 2>/dev/null; dmesg > "$1"/dmesg.txt; true; }'
        )
        self.run(["sh", "-c", script, "sh", f"/host/{name}"], timeout=60)
        return self.scratch_dir / name

    def ensure_libvirtd(self, timeout: float = 90) -> int:
        """Start libvirtd in dom0 unless it runs, and wait until ``xen:///system`` answers (the
        libvirt backend's prerequisite). Returns its dom0 pid; its log is /var/log/libvirtd.log."""
        probe = ["python3", "-c", "import libvirt; libvirt.open('xen:///system').close()"]
        pid = self._libvirtd_pid
        if pid is not None and self.poll(pid) is None and self.run(probe, check=False).rc == 0:
            return pid
        if pid is None or self.poll(pid) is not None:
            pid = self._libvirtd_pid = self.spawn(["libvirtd"], log_path="/var/log/libvirtd.log")
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(probe, check=False)
            if r.rc == 0:
                return pid
            rc = self.poll(pid)
            if rc is not None or time.monotonic() > deadline:
                why = f"exited {rc}" if rc is not None else f"no xen:///system after {timeout} s"
                errors = self.run("grep -E ' (error|warning) : ' /var/log/libvirtd.log | tail -n 5", check=False).stdout
                raise TestbedError(
                    "libvirtd", f"{why}: {r.stderr.strip()[-300:]}\n{errors}", "dom0:/var/log/libvirtd.log"
                )
            time.sleep(0.5)

    # -- transport -------------------------------------------------------------------------------
    def _request(self, req: dict, timeout: float = 60) -> dict:
        """One request to the dom0 agent; a transport failure becomes a TestbedError that says
        whether the machine is still there."""
        if self._machine is None:
            raise RuntimeError("testbed not started")
        try:
            resp = self._exchange(req, timeout)
        except (OSError, ConnectionError, ValueError) as exc:
            m = self._machine
            if m is not None and not m.running():
                raise TestbedError(
                    "dom0 agent",
                    f"the machine is gone (QEMU exited {m.proc.returncode}) during {req.get('op')}",
                    self.log_path,
                ) from exc
            raise TestbedError("dom0 agent", f"{req.get('op')}: {type(exc).__name__}: {exc}", self.log_path) from exc
        if not resp.get("ok"):
            kind, error = resp.get("kind"), resp.get("error")
            if kind in _OS_ERRORS:  # read_file of a missing file raises FileNotFoundError, as locally
                raise _OS_ERRORS[kind](f"dom0: {error}")
            raise AgentError(f"dom0 agent: {req.get('op')} failed: {kind}: {error}")
        return resp

    def _exchange(self, req: dict, timeout: float) -> dict:
        """Send one request, return the agent's response as it is (transport errors propagate)."""
        port = self._ports[AGENT_PORT]
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            body = json.dumps(req).encode()
            sock.sendall(struct.pack(">I", len(body)) + body)
            header = _recv_exact(sock, 4)
            (length,) = struct.unpack(">I", header)
            return json.loads(_recv_exact(sock, length))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError("dom0 agent closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _cmd_fields(cmd: str | Sequence[str]) -> dict:
    if isinstance(cmd, str):
        return {"shell": cmd}
    return {"argv": [str(a) for a in cmd]}


# --------------------------------------------------------------------------------------------
# one-shot mode: testbed/run.sh
# --------------------------------------------------------------------------------------------


def run_oneshot(
    script: str | os.PathLike,
    *,
    forwards: Mapping[int, int] = {},  # host port -> dom0 port
    kvm: bool = False,
    scratch_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    timeout: float = 1800,
    shell: bool = False,
    echo: bool = True,
) -> int:
    """Boot, run ``script`` in dom0 (copied to /host), power off. Returns the script's exit code;
    raises TestbedError when the machine did not get that far."""
    scratch = Path(scratch_dir) if scratch_dir else Path(tempfile.mkdtemp(prefix="ndx-testbed-"))
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()
    serial_log = scratch / "serial.log"
    src = Path(script)
    if not src.is_file():
        raise TestbedError("script", f"{script} is not a file")
    if image_dir is None:
        image_dir = locate_images(build=True, log_path=scratch / "build.log")
    check_images(image_dir)
    name = ".ndx-run-" + re.sub(r"[^A-Za-z0-9._-]", "_", src.name)
    if src.resolve() != (scratch / name).resolve():
        shutil.copyfile(src, scratch / name)
    os.chmod(scratch / name, 0o755)
    words = ["ndx.mode=oneshot", f"ndx.script=/host/{name}"] + (["ndx.shell"] if shell else [])
    machine = Machine(
        Path(image_dir),
        scratch,
        cmdline=words,
        port_forwards=forwards,
        kvm=kvm,
        serial_log=serial_log,
        qemu_log=scratch / "qemu.log",
        echo=(lambda s: (sys.stdout.write(s), sys.stdout.flush())) if echo else None,
    )
    _install_signal_handlers()
    atexit.register(machine.kill)
    machine.launch()
    p = machine.progress
    deadline = time.monotonic() + timeout
    try:
        while (rc := machine.wait_exit(0.5)) is None:
            if p.panic:
                machine.wait_for(lambda p: p.panic.count("|") >= 2, 3)
                raise TestbedError(f"boot: {p.last_step}", f"panic on the console: {p.panic!r}", serial_log)
            if time.monotonic() > deadline:
                raise TestbedError(f"boot: {p.last_step}", f"still running after {timeout} s", serial_log)
    finally:
        machine.kill()
    if p.exit_code is None:
        detail = "the machine stopped before the script reported its exit code"
        if p.failed:
            detail = f"dom0 init reported {p.failed}"
        elif p.panic:
            detail += f"; console: {p.panic!r}"
        if rc:
            detail += f"; QEMU exited {rc}: {machine.qemu_messages(5)}"
        raise TestbedError(f"boot: {p.last_step}", detail, serial_log)
    return p.exit_code
