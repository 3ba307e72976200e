"""Keep every task's log FIFO open, and copy each guest's console into it, across plugin crashes.

Why this exists: Nomad's logmon copies a task's ``.stdout.fifo`` into the log files until it
reads end-of-file, and a FIFO reads end-of-file as soon as no process holds it open for
writing.  When the plugin is the only writer, a plugin crash therefore ends log collection
for every task it runs (logmon's reader is only restarted when a task starts or the agent
restarts).  And when the plugin copies the console log into the FIFO itself, a plugin crash
between a write into the FIFO and the commit of the copied offset makes its successor copy
those bytes again: duplicated lines in ``nomad alloc logs``.

So the copy lives here, in a small separate process that outlives the plugin: one keeper per
host, in its own session, serving every task with one :class:`~xen_driver.xen.console.ConsolePump`
(inotify-driven: an idle guest costs nothing; one stalled FIFO never delays another task).  Its
:class:`~xen_driver.xen.sinks.FifoSink` holds the FIFO open for writing while the task lives,
and it commits the copied offset to the task's ``console.offset`` file after every write.

Guarantees (console bytes in the log, as seen by the FIFO's reader):

* **Plugin crash or restart (SIGKILL at any point): exactly once.**  The plugin never writes
  into a FIFO the keeper copies to.  Its successor re-sends ``copy`` for each recovered task,
  which for a key the keeper holds is a no-op that keeps the keeper's own progress.
* **Keeper crash (SIGKILL): at least once.**  A piece is at most ``PIPE_BUF`` bytes, which a FIFO
  takes whole or not at all, and the offset is committed after each piece; a keeper killed
  between a write and its commit leaves the offset one piece behind, so its successor (started by
  the plugin, which re-sends its copies) repeats at most that one piece (<= 4096 bytes) per task
  that was being written at that instant.  Nothing is lost, provided the FIFO still has a reader:
  the plugin keeps a second (idle) write descriptor on each FIFO so logmon does not see
  end-of-file while the keeper is down.  (Bytes of a file that was rotated away and not yet
  delivered when the keeper died are lost: the offset file knows only the current file.)
* **Both dead at once: as before, logmon sees end-of-file** and log collection stops for the
  task until Nomad restarts it; the console log file itself keeps every byte.
* **Agent restart (stopped or SIGKILLed, then started): exactly once.**  A logmon process of the
  agent that exited loses what it read and had not yet written if the new agent replaces it, so
  from the agent's exit until each FIFO's old reader has closed it or exited (or the new agent
  recovered the task and left that reader as it was), the keeper holds that console back
  (:meth:`Keeper.agent_gone`).

Protocol: a unix stream socket (``<state_dir>/fifo-keeper.sock``), one JSON object per line in
each direction, answered in order on each connection:

* ``{"op": "hold", "key": K, "path": P}``: hold ``P`` open for writing under ``K`` (the domain
  name), nothing more (non-blocking: fails with ENXIO when the FIFO has no reader);
* ``{"op": "hold", "key": K, "path": P, "log": L, "offset": O, "offset_file": F}``: copy the
  console log ``L`` into ``P`` (which may be a FIFO, a plain file or ``/dev/null``), starting at the
  offset recorded in ``F`` or, when ``F`` holds none, at ``O``; commit progress into ``F``.  A FIFO
  that does not exist is refused (ENOENT); one without a reader yet is retried until it has one.
  For a key already copied with the same ``P`` and ``L`` this is a no-op keeping the progress.
  Answer: ``{"ok": true, "offset": <where the copy stands>, "resumed": <False for the no-op>,
  "fifo_open": bool}``;
* the same with ``"rotate": [N, B]``: ``P`` is ``<alloc>/alloc/logs/<task>.stdout`` and the copy
  goes into Nomad's log files ``P.0``, ``P.1``, ... (at most ``B`` bytes each, the newest ``N``
  kept) instead of a FIFO: the driver collects the task's logs itself (``log_collection = "driver"``);
* ``{"op": "drain", "key": K, "timeout": T}``: answer once everything in the log was delivered
  (``{"ok": true, "caught_up": true, "offset": n}``) or ``T`` seconds passed (``caught_up`` false);
* ``{"op": "release", "key": K}``: stop copying and close the FIFO (the task exited or was destroyed);
* ``{"op": "recovered", "key": K}``: the agent recovered K's task in a plugin that was running
  already (see :meth:`Keeper.recovered`; a copy request for a key copied already says the same);
* ``{"op": "keys"}``: the keys held or copied, for diagnostics, tests and the plugin's supervision
  (and, once an agent restart made the keeper hold copies back, ``"held"``: those held now, with
  their undelivered bytes, and ``"hold_ends"``: how the holds ended so far, by reason).

Any request may carry ``"agent": <pid>``, the Nomad agent the plugin runs under (its parent):
the keeper watches it for the exit above.

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  A FIFO whose file was
removed (Nomad garbage-collected the allocation while no plugin ran) is released on its own.
The plugin's side is :mod:`xen_driver.xen.keeperclient`.
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
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xen_driver.xen.agentwatch import ExitWatch, Identity, fifo_readers, find_process, identity
from xen_driver.xen.inotify import IN_CLOSE_NOWRITE, Inotify

if TYPE_CHECKING:
    from xen_driver.xen.console import ConsolePump, ConsoleStream

#: One request or answer of the keeper's protocol (a JSON object).
Message = dict[str, Any]

SOCKET_NAME = "fifo-keeper.sock"
#: The keeper exits after holding nothing, with no plugin connected, for this long.
IDLE_EXIT_S = 30.0
#: How often the keeper looks for FIFOs whose file is gone.
SWEEP_S = 10.0
#: How long a request waits for a keeper that is starting (a loaded host may take many seconds
#: to start a Python process), and how long before a keeper that did not appear is started again.
CONNECT_TIMEOUT_S = 120.0
RESPAWN_AFTER_S = 30.0
#: After the new agent recovered a task (RecoverTask) whose console is held back, how long its
#: old FIFO reader gets to close the FIFO or exit (see :meth:`Keeper.agent_gone`).  Nomad sets up
#: the task's logmon right after recovering it; a reader still there, unchanged, after this was
#: reattached as it was, and gets the bytes again.
REATTACH_GRACE_S = 20.0
#: The longest any hold lasts, whatever happens (a backstop: the agent that never comes back
#: reads no logs either).
HOLD_MAX_S = 600.0
#: Test hook (environment of the keeper): while the file it names exists, every commit waits
#: after its write, and ``<file>.reached`` says one is waiting — the window a crash duplicates.
COMMIT_GATE_ENV = "XEN_DRIVER_TEST_COMMIT_GATE"


# ---------------------------------------------------------------------------- offsets


def read_offset(path: str | None) -> int | None:
    """The offset recorded in ``path`` (``console.offset``), or None if there is none."""
    if not path:
        return None
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def write_offset(path: str, pos: int) -> bool:
    """Record ``pos`` atomically (write a temporary file, rename it over); False if it failed."""
    tmp = path + ".tmp" if not path.endswith(".offset") else path[: -len(".offset")] + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(str(pos))
        os.replace(tmp, path)
        return True
    except OSError:  # the task's state directory is gone: keep copying, lose only resumability
        return False


def commit_gate(gate: str):  # type: ignore[no-untyped-def]
    """A ``before_commit`` hook for tests: see :data:`COMMIT_GATE_ENV`."""

    async def wait(_pos: int) -> None:
        if os.path.exists(gate):
            os.close(os.open(gate + ".reached", os.O_WRONLY | os.O_CREAT, 0o600))
            while os.path.exists(gate):
                await asyncio.sleep(0.01)

    return wait


# ---------------------------------------------------------------------------- the keeper process


def _is_fifo(fd: int | None, path: str) -> bool:
    try:
        st = os.fstat(fd) if fd is not None else os.lstat(path)
    except OSError:
        return False
    return stat.S_ISFIFO(st.st_mode)


@dataclass
class Copy:
    fifo: str
    log: str
    offset_file: str | None
    stream: ConsoleStream


class Keeper:
    def __init__(
        self,
        socket_path: str,
        *,
        idle_exit_s: float = IDLE_EXIT_S,
        sweep_s: float = SWEEP_S,
        pump: ConsolePump | None = None,
        gate: str | None = None,
        hold_max_s: float = HOLD_MAX_S,
        reattach_grace_s: float = REATTACH_GRACE_S,
    ):
        from xen_driver.xen.console import ConsolePump

        self.socket_path = socket_path
        self.idle_exit_s = idle_exit_s
        self.sweep_s = sweep_s
        self.fds: dict[str, tuple[str, int]] = {}  # hold only
        self.copies: dict[str, Copy] = {}  # hold and copy
        self.pump = pump if pump is not None else ConsolePump()
        self.gate = gate
        self.commit_errors = 0
        self.clients = 0
        self._idle_since = time.monotonic()
        self._alone_since = time.monotonic()  # since the last plugin disconnected
        # The Nomad agent whose logmon processes read the FIFOs (announced by the plugin, its
        # child), and the copies held back from the readers a dead agent left: key -> their pids.
        self.hold_max_s = hold_max_s
        self.reattach_grace_s = reattach_grace_s
        self._graced: set[str] = set()  # held keys whose task the new agent recovered
        self.agent_pid: int | None = None
        self.agent_ident: Identity | None = None
        self.agent_deaths = 0
        self.holds: dict[str, set[int]] = {}
        self._exits = ExitWatch()
        self._closes: Inotify | None = None  # reader closes of held FIFOs (IN_CLOSE_NOWRITE)
        #: How the holds ended: "close", "exit", "recovered", "expired", "drain" or "release" -> count.
        self.hold_ends: dict[str, int] = {}

    # ------------------------------------------------------------ hold only
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

    def _release_hold(self, key: str) -> None:
        entry = self.fds.pop(key, None)
        if entry is not None:
            os.close(entry[1])

    # ------------------------------------------------------------ copy
    async def copy(
        self,
        key: str,
        fifo: str,
        log_path: str,
        offset: int,
        offset_file: str | None,
        rotate: tuple[int, int] | None = None,
    ) -> Message:
        from xen_driver.xen.sinks import FifoSink, RotatingFileSink

        cur = self.copies.get(key)
        if cur is not None and cur.fifo == fifo and cur.log == log_path:
            # A restarted plugin re-adopting its task: our own progress stands.  (If Nomad made
            # the FIFO anew meanwhile, e.g. an agent restart, write into the new one from now on.)
            held = cur.stream.sink
            self.recovered(key)  # a plugin the new agent started, recovering the task
            if isinstance(held, FifoSink):
                self._follow_new_fifo(held, fifo)
                return {"ok": True, "offset": cur.stream.offset, "resumed": False, "fifo_open": held.is_open}
            return {"ok": True, "offset": cur.stream.offset, "resumed": False, "fifo_open": False}
        if offset < 0:
            raise ValueError("offset must be >= 0")
        fd: int | None = None
        if rotate is None:
            try:
                fd = FifoSink.open_fd(fifo)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise  # missing FIFO, a symlink, ...: the plugin reports it
                fd = None  # no reader yet: the sink retries until logmon opens it
        elif not os.path.isdir(os.path.dirname(fifo)):
            raise FileNotFoundError(errno.ENOENT, "no such log directory", os.path.dirname(fifo))
        if cur is not None:  # the same key with another FIFO or log: a new task under an old name
            await self._drop_copy(key)
        self._release_hold(key)  # our descriptor replaces a hold-only one
        recorded = read_offset(offset_file)
        start = recorded if recorded is not None else offset
        sink: FifoSink | RotatingFileSink
        if rotate is not None:
            # The driver collects the task's logs itself: Nomad's log files, no FIFO, no logmon.
            sink = RotatingFileSink(fifo, max_files=rotate[0], max_bytes=rotate[1])
        else:
            sink = FifoSink(fifo)
            if fd is not None:
                sink.adopt(fd)

        def commit(pos: int) -> None:
            if offset_file and not write_offset(offset_file, pos):
                self.commit_errors += 1

        stream = self.pump.add(key, log_path, sink, offset=start, on_commit=commit)
        if self.gate:
            stream.before_commit = commit_gate(self.gate)
        self.copies[key] = Copy(fifo, log_path, offset_file, stream)
        return {"ok": True, "offset": start, "resumed": True, "fifo_open": fd is not None}

    @staticmethod
    def _follow_new_fifo(sink, path: str) -> None:  # type: ignore[no-untyped-def]
        if sink.fd is None:
            return  # opened by path at the next write anyway
        try:
            held, now = os.fstat(sink.fd), os.stat(path)
        except OSError:
            return
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            try:
                sink.adopt(sink.open_fd(path))
            except OSError:
                sink._reset()  # no reader on the new one yet: the next write retries by path

    # ------------------------------------------------------------ the agent
    def note_agent(self, pid: int) -> None:
        """Watch ``pid``, the Nomad agent running the plugin that asks, for its exit."""
        if pid <= 1 or pid == self.agent_pid or pid == os.getpid():
            return
        ident = identity(pid)
        if ident is None or not self._exits.watch(pid, self.agent_gone):
            return
        if self.agent_pid is not None:
            self._exits.forget(self.agent_pid)
        self.agent_pid, self.agent_ident = pid, ident

    def agent_gone(self, pid: int) -> None:
        """The agent exited: its logmon processes live on, orphaned, until the agent that comes
        back deals with them: it replaces one (which exits, losing what it read and had not yet
        written) or reattaches to it (which may restart its reader of the FIFO, losing the piece
        it was writing; see :mod:`xen_driver.xen.agentwatch`).  So each FIFO copy is held back from the
        readers it has now until one of them closes the FIFO or exits (whoever reads it next was
        set up by the new agent), or until ``reattach_grace_s`` after the new agent recovered the
        task (:meth:`recovered`: the reader was reattached as it was), and never beyond
        ``hold_max_s``.  The bytes wait in the console log; nothing is skipped."""
        from xen_driver.xen.sinks import FifoSink

        if pid != self.agent_pid:
            return
        self.agent_pid = None
        self.agent_deaths += 1
        fifos = {key: cur.fifo for key, cur in self.copies.items() if isinstance(cur.stream.sink, FifoSink)}
        for key, pids in fifo_readers(fifos).items():
            live = {p for p in pids if self._exits.watch(p, self._reader_gone)}
            sink = self.copies[key].stream.sink
            if live and isinstance(sink, FifoSink):
                self.holds[key] = live
                sink.held = f"held back from the readers the exited Nomad agent left (pids {sorted(live)})"
        if self.holds:
            self._watch_closes()
            asyncio.get_running_loop().call_later(self.hold_max_s, self._hold_expired, self.agent_deaths)

    def _watch_closes(self) -> None:
        """Have a reader's close of a held FIFO end its hold (without inotify, only the readers'
        exit or ``hold_max_s`` end one)."""
        try:
            if self._closes is None:
                self._closes = Inotify()
                asyncio.get_running_loop().add_reader(self._closes.fd, self._on_closes)
            for key in self.holds:
                directory = os.path.dirname(os.path.abspath(self.copies[key].fifo))
                self._closes.add(directory, IN_CLOSE_NOWRITE)
        except OSError:
            pass

    def _on_closes(self) -> None:
        if self._closes is None:
            return
        closed = {os.path.join(d, name) for d, name, _mask in self._closes.read() if d is not None}
        for key in [k for k in self.holds if k in self.copies and os.path.abspath(self.copies[k].fifo) in closed]:
            self.lift(key, "close")

    def _stop_closes(self) -> None:
        if self._closes is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._closes.fd)
            self._closes.close()
            self._closes = None

    def _reader_gone(self, pid: int) -> None:
        for key in [k for k, pids in self.holds.items() if pid in pids]:
            self.holds[key].discard(pid)
            if not self.holds[key]:
                self.lift(key, "exit")

    def recovered(self, key: str) -> None:
        """The new agent recovered ``key``'s task: give its old reader ``reattach_grace_s`` to
        close the FIFO or exit, then end the hold anyway."""
        if key in self.holds and key not in self._graced:
            self._graced.add(key)
            asyncio.get_running_loop().call_later(self.reattach_grace_s, self._grace_over, key, self.agent_deaths)

    def _grace_over(self, key: str, death: int) -> None:
        if death == self.agent_deaths:
            self.lift(key, "recovered")

    def _hold_expired(self, death: int) -> None:
        if death == self.agent_deaths:
            for key in list(self.holds):
                self.lift(key, "expired")

    def lift(self, key: str, why: str) -> None:
        """End ``key``'s hold (``why``: see :attr:`hold_ends`): its bytes go to whatever reads
        the FIFO now."""
        pids = self.holds.pop(key, None)
        self._graced.discard(key)
        if pids is None:
            return
        self.hold_ends[why] = self.hold_ends.get(why, 0) + 1
        still = set().union(*self.holds.values()) if self.holds else set()
        for pid in pids - still:
            self._exits.forget(pid)
        if not self.holds:
            self._stop_closes()
        cur = self.copies.get(key)
        if cur is not None:
            cur.stream.sink.held = None  # type: ignore[attr-defined]
            self.pump.retry_now(key)

    def find_agent(self) -> None:
        """After the agent exited, look for its successor (the same executable and command line,
        as a supervisor starts it again) so that its exit is watched too."""
        if self.agent_pid is None and self.agent_ident is not None and self.copies:
            pid = find_process(self.agent_ident, exclude={os.getpid()})
            if pid is not None:
                self.note_agent(pid)

    async def drain(self, key: str, timeout_s: float) -> Message:
        cur = self.copies.get(key)
        if cur is None:
            return {"ok": False, "error": f"no console copy under {key!r}"}
        self.lift(key, "drain")  # the guest is gone: its last lines go to whatever reads now
        caught_up = await self.pump.drain(key, timeout_s)
        return {"ok": True, "caught_up": caught_up, "offset": cur.stream.offset}

    async def _drop_copy(self, key: str) -> None:
        self.lift(key, "release")
        if self.copies.pop(key, None) is not None:
            await self.pump.remove(key)  # closes the sink: our write end of the FIFO

    async def release(self, key: str) -> None:
        self._release_hold(key)
        await self._drop_copy(key)

    async def sweep(self, *, unattended: bool = False) -> None:
        """Let go of what nobody needs any more: FIFOs whose file was removed, consoles whose log
        was removed and delivered, and (``unattended``: no plugin connected for ``idle_exit_s``)
        copies into anything but a FIFO — no logmon reads those, and a plugin that comes back
        sends them again, resuming from console.offset.  Copies into Nomad's log files (the
        driver collects the logs) go on unattended, until their allocation's directory is gone."""
        from xen_driver.xen.sinks import RotatingFileSink

        for key, (_path, held) in list(self.fds.items()):
            try:
                gone = os.fstat(held).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                self._release_hold(key)
        for key, cur in list(self.copies.items()):
            stream = cur.stream
            fd: int | None = getattr(stream.sink, "fd", None)  # a FifoSink's descriptor (None while closed)
            files = isinstance(stream.sink, RotatingFileSink)  # Nomad's log files, written by us
            try:
                if files:
                    gone = not os.path.isdir(os.path.dirname(cur.fifo))  # the allocation was collected
                else:
                    gone = os.fstat(fd).st_nlink == 0 if fd is not None else not os.path.lexists(cur.fifo)
            except OSError:
                gone = True
            # A console log that existed, was removed (the plugin cleans up a destroyed task's
            # files) and is fully delivered: nothing will ever come, even into /dev/null or a file.
            log_gone = stream.inode is not None and not os.path.exists(cur.log) and stream.caught_up
            if gone or log_gone or (unattended and not files and not _is_fifo(fd, cur.fifo)):
                await self._drop_copy(key)

    def held(self) -> dict[str, int]:
        """The copies held back (see :meth:`agent_gone`): key -> bytes read and not delivered."""
        return {key: self.copies[key].stream.undelivered for key in self.holds if key in self.copies}

    def keys(self) -> list[str]:
        return sorted(set(self.fds) | set(self.copies))

    # ------------------------------------------------------------ protocol
    async def answer(self, req: Message) -> Message:
        op = req.get("op")
        try:
            if req.get("agent") is not None:
                self.note_agent(int(req["agent"]))
            if op == "hold":
                if req.get("log") is not None:
                    rotate = req.get("rotate")
                    return await self.copy(
                        str(req["key"]),
                        str(req["path"]),
                        str(req["log"]),
                        int(req.get("offset") or 0),
                        str(req["offset_file"]) if req.get("offset_file") else None,
                        None if rotate is None else (int(rotate[0]), int(rotate[1])),
                    )
                self.hold(str(req["key"]), str(req["path"]))
                return {"ok": True}
            if op == "drain":
                return await self.drain(str(req["key"]), float(req.get("timeout", 5.0)))
            if op == "release":
                await self.release(str(req["key"]))
                return {"ok": True}
            if op == "recovered":
                self.recovered(str(req["key"]))
                return {"ok": True}
            if op == "keys":
                if not self.holds and not self.hold_ends:
                    return {"ok": True, "keys": self.keys()}
                return {"ok": True, "keys": self.keys(), "held": self.held(), "hold_ends": self.hold_ends}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except OSError as exc:
            return {"ok": False, "error": f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"}
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                except ValueError:
                    resp = {"ok": False, "error": "not JSON"}
                else:
                    resp = await self.answer(req if isinstance(req, dict) else {})
                writer.write(json.dumps(resp).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.clients -= 1
            self._idle_since = self._alone_since = time.monotonic()
            writer.close()

    async def serve(self) -> int:
        self.pump.start()
        server = await asyncio.start_unix_server(self._client, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        try:
            async with server:
                while True:
                    await asyncio.sleep(min(self.sweep_s, self.idle_exit_s))
                    alone = self.clients == 0 and time.monotonic() - self._alone_since >= self.idle_exit_s
                    await self.sweep(unattended=alone)
                    self.find_agent()
                    if self.fds or self.copies or self.clients:
                        self._idle_since = time.monotonic()
                    elif time.monotonic() - self._idle_since >= self.idle_exit_s:
                        break
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            await self.pump.stop()
            self._exits.close()
            self._stop_closes()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="copy guest consoles into Nomad's log FIFOs across plugin restarts")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a FIFO and a log file per task
    # One keeper per socket: the lock is held for the keeper's whole life.
    lock = os.open(args.socket + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another keeper is alive and serves this socket
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)  # stale, from a keeper that died
    keeper = Keeper(args.socket, idle_exit_s=args.idle_exit, gate=os.environ.get(COMMIT_GATE_ENV) or None)
    return asyncio.run(keeper.serve())


if __name__ == "__main__":
    sys.exit(main())
