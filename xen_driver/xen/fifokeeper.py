"""Keep every task's log FIFO open for writing while the plugin restarts.

Why this exists: Nomad's logmon copies a task's ``.stdout.fifo`` into the log files until it
reads end-of-file, and a FIFO reads end-of-file as soon as no process holds it open for
writing.  When the plugin is the only writer, a plugin crash therefore ends log collection
for every task it runs: Nomad relaunches the plugin and RecoverTask re-adopts the guests, but
logmon's reader is only restarted when a task starts or the agent restarts, so nothing the
guests print after the crash would ever reach ``nomad alloc logs``.  (The same end-of-file
would also drop what sat in the pipe when the last writer closed.)

The keeper is a small separate process that holds one extra write descriptor on each task's
FIFO and never writes to it.  While a task lives its FIFO always has a writer, logmon never
sees end-of-file, and a restarted plugin simply opens the FIFO again and carries on from its
committed console offset.  One keeper serves every task of the host (one descriptor per task,
no thread or process per task); it lives in its own session, so it survives the plugin, and
exits by itself once it holds nothing and no plugin is connected.

Protocol: a unix stream socket (``<state_dir>/fifo-keeper.sock``), one JSON object per line in
each direction:

* ``{"op": "hold", "key": K, "path": P}``: open ``P`` for writing (non-blocking: it fails with
  ENXIO when the FIFO has no reader) and keep it under ``K`` (the domain name);
* ``{"op": "release", "key": K}``: close it (the task exited or was destroyed);
* ``{"op": "keys"}``: the keys held, for diagnostics and tests.

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  A FIFO whose file was
removed (Nomad garbage-collected the allocation while no plugin ran) is released on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import json
import os
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path

log = None  # the plugin's structlog logger, bound on first use (the keeper process never logs)


def _log():
    global log
    if log is None:
        import structlog

        log = structlog.get_logger(__name__)
    return log

SOCKET_NAME = "fifo-keeper.sock"
#: The keeper exits after holding nothing, with no plugin connected, for this long.
IDLE_EXIT_S = 30.0
#: How often the keeper looks for FIFOs whose file is gone.
SWEEP_S = 10.0
#: How long a request waits for a keeper that is starting (a loaded host may take many seconds
#: to start a Python process), and how long before a keeper that did not appear is started again.
CONNECT_TIMEOUT_S = 120.0
RESPAWN_AFTER_S = 30.0


# ---------------------------------------------------------------------------- the keeper process


class Keeper:
    def __init__(self, socket_path: str, *, idle_exit_s: float = IDLE_EXIT_S, sweep_s: float = SWEEP_S):
        self.socket_path = socket_path
        self.idle_exit_s = idle_exit_s
        self.sweep_s = sweep_s
        self.fds: dict[str, tuple[str, int]] = {}
        self.clients = 0
        self._idle_since = time.monotonic()

    def hold(self, key: str, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            os.close(fd)  # /dev/null or a plain file: nothing to keep open
            return
        old = self.fds.get(key)
        if old is not None:
            try:
                same = (lambda o: (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino))(os.fstat(old[1]))
            except OSError:
                same = False
            if same:
                os.close(fd)  # already held
                return
            os.close(old[1])  # the FIFO was made anew: hold the new one
        self.fds[key] = (path, fd)

    def release(self, key: str) -> None:
        entry = self.fds.pop(key, None)
        if entry is not None:
            os.close(entry[1])

    def sweep(self) -> None:
        for key, (_path, fd) in list(self.fds.items()):
            try:
                gone = os.fstat(fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                self.release(key)

    def answer(self, req: dict) -> dict:
        op = req.get("op")
        try:
            if op == "hold":
                self.hold(str(req["key"]), str(req["path"]))
                return {"ok": True}
            if op == "release":
                self.release(str(req["key"]))
                return {"ok": True}
            if op == "keys":
                return {"ok": True, "keys": sorted(self.fds)}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except OSError as exc:
            return {"ok": False, "error": f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"}
        except (KeyError, TypeError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    resp = self.answer(req if isinstance(req, dict) else {})
                except ValueError:
                    resp = {"ok": False, "error": "not JSON"}
                writer.write(json.dumps(resp).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.clients -= 1
            self._idle_since = time.monotonic()
            writer.close()

    async def serve(self) -> int:
        server = await asyncio.start_unix_server(self._client, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        async with server:
            while True:
                await asyncio.sleep(min(self.sweep_s, self.idle_exit_s))
                self.sweep()
                if self.fds or self.clients:
                    self._idle_since = time.monotonic()
                elif time.monotonic() - self._idle_since >= self.idle_exit_s:
                    break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hold Nomad log FIFOs open across plugin restarts")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # One keeper per socket: the lock is held for the keeper's whole life.
    lock = os.open(args.socket + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another keeper is alive and serves this socket
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)  # stale, from a keeper that died
    return asyncio.run(Keeper(args.socket, idle_exit_s=args.idle_exit).serve())


# ---------------------------------------------------------------------------- the plugin's client


class FifoKeeperClient:
    """The plugin's side: ask the keeper to hold or release a task's FIFO.

    Best effort by design: when the keeper cannot be reached the task still runs and its console
    still streams; only the protection against a plugin crash is missing, which is logged.
    Requests are serialised on one connection; the keeper is started on first need.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        python: str = sys.executable,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        idle_exit_s: float = IDLE_EXIT_S,
    ):
        self.socket_path = str(Path(state_dir) / SOCKET_NAME)
        self.python = python
        self.idle_exit_s = idle_exit_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._spawned_at: float | None = None
        self._lock = asyncio.Lock()
        self._jobs: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start a keeper now unless one answers, without waiting for it (at plugin start-up, so
        it is ready by the time the first task's FIFO is opened)."""
        if not os.path.exists(self.socket_path):
            self._spawn()

    def _spawn(self) -> None:
        now = time.monotonic()
        if self._spawned_at is not None and now - self._spawned_at < RESPAWN_AFTER_S:
            return  # one is starting already
        self._spawned_at = now
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        # Run this very package, wherever it was imported from.
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        subprocess.Popen(
            [self.python, "-m", "xen_driver.xen.fifokeeper", "--socket", self.socket_path,
             "--idle-exit", str(self.idle_exit_s)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlive the plugin, whatever signal it gets
            close_fds=True,
            cwd="/",
            env=env,
        )

    async def _connect(self, spawn: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is not None and not self._conn[1].is_closing():
            return self._conn
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self._conn = await asyncio.open_unix_connection(self.socket_path)
                return self._conn
            except (FileNotFoundError, ConnectionRefusedError):
                if not spawn:
                    raise
                self._spawn()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def request(self, req: dict, *, spawn: bool = True) -> dict:
        """Send one request; without ``spawn`` a keeper that is not running is not started."""
        async with self._lock:
            for attempt in (1, 2):
                try:
                    reader, writer = await self._connect(spawn)
                    writer.write(json.dumps(req).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                    if not line:
                        raise ConnectionResetError("the keeper closed the connection")
                    return json.loads(line)
                except (OSError, ValueError):
                    self._drop()
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def _safe(self, req: dict, spawn: bool = True) -> None:
        try:
            resp = await self.request(req, spawn=spawn)
        except (FileNotFoundError, ConnectionRefusedError):
            if not spawn:
                return  # no keeper running: it holds nothing to release
            _log().warning("fifo keeper unreachable; logs may stop after a plugin crash", **req)
            return
        except (OSError, ValueError) as exc:
            _log().warning("fifo keeper unreachable; logs may stop after a plugin crash", error=str(exc), **req)
            return
        if not resp.get("ok"):
            _log().warning("fifo keeper refused", error=resp.get("error"), **req)

    def hold(self, key: str, path: str) -> None:
        """Ask (in the background) for ``path`` to be held open under ``key``."""
        self._background(self._safe({"op": "hold", "key": key, "path": path}))

    def release(self, key: str) -> None:
        self._background(self._safe({"op": "release", "key": key}, spawn=False))

    def _background(self, coro) -> None:  # type: ignore[no-untyped-def]
        job = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def flush(self) -> None:
        """Wait for the requests sent so far (tests, and before the plugin exits)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        self._drop()


if __name__ == "__main__":
    sys.exit(main())
