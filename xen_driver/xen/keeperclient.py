"""The plugin's side of the FIFO keeper (:mod:`xen_driver.xen.fifokeeper`).

The plugin asks the keeper to copy each task's console log into its FIFO (:meth:`copy`), to
finish that copy when the guest exited (:meth:`drain`) and to let go (:meth:`release`).  It also
watches over what it asked for: a supervising task checks every ``supervise_s`` that the keeper
still has every copy and sends again those it lacks (a keeper that was killed is started again,
and resumes each console from its ``console.offset``).  And it keeps one idle write descriptor of
its own on each FIFO, so that while a keeper is down Nomad's logmon still sees a writer and does
not stop reading at end-of-file.

When no keeper can be reached, :meth:`copy` raises ``OSError``; the caller then copies the
console itself (the task runs, its console streams, only the crash protection is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import structlog

from xen_driver.xen.fifokeeper import (
    CONNECT_TIMEOUT_S,
    IDLE_EXIT_S,
    RESPAWN_AFTER_S,
    SOCKET_NAME,
    Message,
)

log = structlog.get_logger("xen_driver.xen.fifokeeper")

#: How often the plugin checks that the keeper still copies every console it asked for.
SUPERVISE_S = 5.0


class FifoKeeperClient:
    """Ask the keeper to hold, copy, drain or release a task's FIFO.

    Requests are serialised on one connection (a drain, which may wait, gets a connection of its
    own); the keeper is started on first need.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        python: str = sys.executable,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        idle_exit_s: float = IDLE_EXIT_S,
        supervise_s: float = SUPERVISE_S,
        env: dict[str, str] | None = None,
        announce_agent: bool = False,
    ):
        #: Our parent at start-up, the Nomad agent, which the keeper is told about (see
        #: :meth:`_with_agent`); None when not asked to.
        self.agent = os.getppid() if announce_agent else None
        self.socket_path = str(Path(state_dir) / SOCKET_NAME)
        self.python = python
        self.idle_exit_s = idle_exit_s
        self.connect_timeout_s = connect_timeout_s
        self.supervise_s = supervise_s
        self.extra_env = env or {}
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._spawned_at: float | None = None
        self._lock = asyncio.Lock()
        self._jobs: set[asyncio.Task[None]] = set()
        #: key -> the copy request the keeper accepted (sent again if the keeper lost it)
        self.copies: dict[str, Message] = {}
        #: key -> our own idle write descriptor on the task's FIFO
        self._held: dict[str, int] = {}
        self._supervisor: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ process
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
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        try:
            subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "xen_driver.xen.fifokeeper",
                    "--socket",
                    self.socket_path,
                    "--idle-exit",
                    str(self.idle_exit_s),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outlive the plugin, whatever signal it gets
                close_fds=True,
                cwd="/",
                env=env,
            )
        except OSError as exc:  # requests then find no keeper, and say so
            log.warning("cannot start the fifo keeper", python=self.python, error=str(exc))

    async def _open(self, spawn: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                return await asyncio.open_unix_connection(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError):
                if not spawn:
                    raise
                self._spawn()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _connect(self, spawn: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is not None and not self._conn[1].is_closing():
            return self._conn
        self._conn = await self._open(spawn)
        return self._conn

    @staticmethod
    async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], req: Message) -> Message:
        reader, writer = conn
        writer.write(json.dumps(req).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("the keeper closed the connection")
        answer: Message = json.loads(line)
        return answer

    async def request(self, req: Message, *, spawn: bool = True) -> Message:
        """Send one request; without ``spawn`` a keeper that is not running is not started."""
        async with self._lock:
            for attempt in (1, 2):
                try:
                    return await self._exchange(await self._connect(spawn), req)
                except (OSError, ValueError):
                    self._drop()
                    if attempt == 2:
                        raise
                except BaseException:  # cancelled mid-exchange: its answer must not meet the next request
                    self._drop()
                    raise
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    # ------------------------------------------------------------ hold only (no copy)
    async def _safe(self, req: Message, spawn: bool = True) -> None:
        try:
            resp = await self.request(req, spawn=spawn)
        except (FileNotFoundError, ConnectionRefusedError):
            if not spawn:
                return  # no keeper running: it holds nothing to release
            log.warning("fifo keeper unreachable; logs may stop after a plugin crash", **req)
            return
        except (OSError, ValueError) as exc:
            log.warning("fifo keeper unreachable; logs may stop after a plugin crash", error=str(exc), **req)
            return
        if not resp.get("ok"):
            log.warning("fifo keeper refused", error=resp.get("error"), **req)

    def hold(self, key: str, path: str) -> None:
        """Ask (in the background) for ``path`` to be held open under ``key``: for a console the
        plugin copies itself because no keeper could take the copy."""
        self._background(self._safe({"op": "hold", "key": key, "path": path}))

    def recovered(self, key: str) -> None:
        """Tell the keeper (in the background) that the agent recovered ``key``'s task, which this
        plugin was running already (the agent restarted; see the keeper's ``recovered``)."""
        if key in self.copies:
            self._background(self._safe({"op": "recovered", "key": key}, spawn=False))

    # ------------------------------------------------------------ copy
    async def copy(
        self,
        key: str,
        fifo: str,
        log_path: str,
        *,
        offset: int = 0,
        offset_file: str | None = None,
        rotate: tuple[int, int] | None = None,
    ) -> Message:
        """Have the keeper copy ``log_path`` into ``fifo`` (see the keeper's ``hold`` with ``log``);
        with ``rotate`` (max files, max bytes per file), into Nomad's log files ``<fifo>.<n>``.

        Returns the keeper's answer (``ok`` false with its ``error`` when it refused, e.g. the
        FIFO does not exist; that is logged here).  Raises ``OSError`` when no keeper answers.
        """
        req: Message = {
            "op": "hold",
            "key": key,
            "path": fifo,
            "log": log_path,
            "offset": offset,
            "offset_file": offset_file,
        }
        if rotate is not None:
            req["rotate"] = list(rotate)
        try:
            resp = await self.request(self._with_agent(req))
        except (OSError, ValueError) as exc:
            log.warning(
                "fifo keeper unreachable; the plugin copies the console itself, "
                "and a plugin crash may repeat or stop it",
                error=str(exc),
                key=key,
                path=fifo,
            )
            raise OSError(f"fifo keeper unreachable: {exc}") from exc
        if not resp.get("ok"):
            log.warning("fifo keeper refused", error=resp.get("error"), op="hold", key=key, path=fifo)
            return resp
        self.copies[key] = req
        if rotate is not None:
            self._held[key] = -1  # log files, not a FIFO: no reader to keep from end-of-file
        else:
            self._hold_own(key, fifo)
        self._ensure_supervisor()
        return resp

    def _with_agent(self, req: Message) -> Message:
        """``req`` saying which Nomad agent reads the FIFO (see the keeper's ``agent_gone``): the
        parent we started under, while it is still our parent (once it has exited, whoever
        adopted us is not an agent; the keeper finds the next agent itself).  Copies into log
        files have no logmon to care about."""
        if self.agent is None or self.agent <= 1 or os.getppid() != self.agent or "rotate" in req:
            return req
        return {**req, "agent": self.agent}

    def _hold_own(self, key: str, fifo: str) -> None:
        """Our idle write descriptor on the FIFO (see the module's docstring); retried by the
        supervisor while the FIFO has no reader."""
        if key in self._held:
            return
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)  # a plain file or /dev/null: nothing to keep open
            self._held[key] = -1
            return
        self._held[key] = fd

    def _let_go(self, key: str) -> None:
        fd = self._held.pop(key, -1)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def drain(self, key: str, timeout_s: float) -> bool:
        """Wait until the keeper delivered everything in the console log (False on timeout or
        when no keeper copies it).  On a connection of its own, so other requests never wait."""
        if key not in self.copies:
            return False
        try:
            conn = await self._open(spawn=False)
        except OSError:
            return False
        try:
            async with asyncio.timeout(timeout_s + 5.0):
                resp = await self._exchange(conn, {"op": "drain", "key": key, "timeout": timeout_s})
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("fifo keeper did not drain the console", key=key, error=str(exc))
            return False
        finally:
            conn[1].close()
        if not resp.get("ok"):
            log.warning("fifo keeper refused", error=resp.get("error"), op="drain", key=key)
        return bool(resp.get("caught_up"))

    def release(self, key: str, *, after: Awaitable[object] | None = None) -> None:
        """The task is over: stop its copy, close the FIFO (Nomad's logmon then sees end-of-file).

        ``after``: a copy request for ``key`` still on its way (the caller's task), which the
        release must follow, or the keeper would copy again what was just released."""

        async def release() -> None:
            if after is not None:
                with contextlib.suppress(BaseException):
                    await after
            self.copies.pop(key, None)
            self._let_go(key)
            await self._safe({"op": "release", "key": key}, spawn=False)

        if after is None:  # at once, so no check() in between can send the copy again
            self.copies.pop(key, None)
            self._let_go(key)
        self._background(release())

    # ------------------------------------------------------------ supervision
    def _ensure_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="fifo-keeper-supervisor")

    async def _supervise(self) -> None:
        while self.copies:
            await asyncio.sleep(self.supervise_s)
            with contextlib.suppress(Exception):  # never let supervision die of one bad answer
                await self.check()

    async def check(self) -> list[str]:
        """Send again the copies the keeper lacks (it was restarted); returns their keys."""
        if not self.copies:
            return []
        try:
            resp = await self.request({"op": "keys"})
        except (OSError, ValueError) as exc:
            log.warning("fifo keeper unreachable; console copies wait for it", error=str(exc))
            return []
        have = set(resp.get("keys") or ())
        missing = [k for k in list(self.copies) if k not in have]
        if missing:
            log.warning("fifo keeper lost console copies (restarted?); sending them again", count=len(missing))
        for key in missing:
            req = self.copies.get(key)
            if req is None:
                continue  # released meanwhile
            try:
                again = await self.request(self._with_agent(req))
            except (OSError, ValueError):
                return missing
            if not again.get("ok"):
                log.warning("fifo keeper refused", error=again.get("error"), op="hold", key=key, path=req["path"])
                if key in self.copies and "ENOENT" in str(again.get("error")):
                    self.copies.pop(key, None)  # the FIFO is gone with its allocation
                    self._let_go(key)
        for key, req in list(self.copies.items()):
            if key not in self._held:
                self._hold_own(key, req["path"])
        return missing

    # ------------------------------------------------------------ plumbing
    def _background(self, coro) -> None:  # type: ignore[no-untyped-def]
        job = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def flush(self) -> None:
        """Wait for the requests sent so far (tests, and before the plugin exits)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    async def close(self) -> None:
        """The plugin is exiting: the keeper goes on copying for its successor."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self.flush()
        self._drop()
        for key in list(self._held):
            self._let_go(key)
