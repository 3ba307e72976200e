#!/usr/bin/env python3
"""Command agent of the testbed dom0: lets the host's test process drive dom0.

Started by ndx-init in service mode. It listens on dom0's QEMU user-mode address (10.0.2.15), which
nothing but QEMU's loopback port forward on the host can reach. Standard library only: it runs on
Debian's python3 before anything of ours is installed.

Wire format, both directions: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
One request and one response per message; a connection may carry several in turn. Byte strings
(output, file contents, stdin) travel base64-encoded. A request is ``{"op": <name>, ...}``; a
response is ``{"ok": true, ...}`` or ``{"ok": false, "error": <text>, "kind": <exception name>}``.

Operations (see testbed/vm.py for the client):
  ping                                  -> uptime, pid
  run     argv|shell env cwd timeout stdin -> rc, stdout, stderr, timed_out, duration
  spawn   argv|shell env cwd log        -> pid (own session; stdout+stderr appended to log)
  poll    pid                           -> rc (null while it runs)
  kill    pid signal group              -> (signals the process, or its process group)
  read_file  path                       -> data
  write_file path data mode             -> (atomic: temporary file, then rename)
  poweroff                              -> the agent exits; ndx-init then powers dom0 off
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time

MAX_MESSAGE = 512 * 1024 * 1024
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


class RequestError(Exception):
    """A request the agent cannot carry out as asked (bad fields, unknown pid)."""


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> dict | None:
    header = recv_exact(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_MESSAGE:
        raise RequestError(f"message of {length} bytes is too large")
    body = recv_exact(sock, length)
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))


def send_message(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode("utf-8")
    sock.sendall(struct.pack(">I", len(body)) + body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def command_of(req: dict) -> tuple[list[str] | str, bool]:
    if req.get("argv") is not None:
        argv = req["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RequestError("argv must be a non-empty list of strings")
        return argv, False
    if isinstance(req.get("shell"), str):
        return req["shell"], True
    raise RequestError("give either argv (list) or shell (string)")


def env_of(req: dict) -> dict[str, str]:
    env = dict(BASE_ENV)
    env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
    return env


class Agent:
    def __init__(self) -> None:
        self.children: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # -- operations ----------------------------------------------------------------------------
    def op_ping(self, req: dict) -> dict:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return {"uptime": uptime, "pid": os.getpid()}

    def op_run(self, req: dict) -> dict:
        cmd, shell = command_of(req)
        timeout = req.get("timeout")
        stdin = base64.b64decode(req["stdin"]) if req.get("stdin") is not None else None
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            shell=shell,
            env=env_of(req),
            cwd=req.get("cwd") or "/",
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                # a daemon that left the process group still holds the output pipes
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe:
                        pipe.close()
                proc.wait()
                out, err = b"", b"(output lost: a background process kept the pipes open)\n"
        return {
            "rc": proc.returncode,
            "stdout": b64(out),
            "stderr": b64(err),
            "timed_out": timed_out,
            "duration": time.monotonic() - started,
        }

    def op_spawn(self, req: dict) -> dict:
        cmd, shell = command_of(req)
        log = req.get("log") or "/dev/null"
        if log != "/dev/null":
            os.makedirs(os.path.dirname(log) or "/", exist_ok=True)
        with open(log, "ab", buffering=0) as out:
            proc = subprocess.Popen(
                cmd,
                shell=shell,
                env=env_of(req),
                cwd=req.get("cwd") or "/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self.lock:
            self.children[proc.pid] = proc
        return {"pid": proc.pid}

    def op_poll(self, req: dict) -> dict:
        pid = int(req["pid"])
        with self.lock:
            proc = self.children.get(pid)
        if proc is None:
            raise RequestError(f"pid {pid} was not spawned by this agent")
        return {"rc": proc.poll()}

    def op_kill(self, req: dict) -> dict:
        pid = int(req["pid"])
        sig = int(req.get("signal", signal.SIGTERM))
        try:
            if req.get("group", True):
                kill_group(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        return {}

    def op_read_file(self, req: dict) -> dict:
        with open(req["path"], "rb") as f:
            return {"data": b64(f.read())}

    def op_write_file(self, req: dict) -> dict:
        path = req["path"]
        data = base64.b64decode(req["data"])
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        tmp = f"{path}.ndx-agent-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, int(req.get("mode", 0o644)))
        os.replace(tmp, path)
        return {"size": len(data)}

    def op_poweroff(self, req: dict) -> dict:
        self.stop.set()
        return {}

    # -- plumbing ------------------------------------------------------------------------------
    def handle(self, req: dict) -> dict:
        op = getattr(self, "op_" + str(req.get("op")), None)
        if op is None:
            return {"ok": False, "error": f"unknown op {req.get('op')!r}", "kind": "RequestError"}
        try:
            result = op(req)
        except Exception as exc:  # every failure goes back to the caller, the agent lives on
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        result["ok"] = True
        return result

    def reap(self) -> None:
        """Collect exited spawned children now and then (poll() keeps their exit status)."""
        while not self.stop.wait(1.0):
            with self.lock:
                for proc in self.children.values():
                    proc.poll()


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        os.kill(pid, sig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="10.0.2.15:7100", help="address:port")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    agent = Agent()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    req = recv_message(sock)
                except (RequestError, ValueError) as exc:
                    send_message(sock, {"ok": False, "error": str(exc), "kind": "RequestError"})
                    return
                if req is None:
                    return
                send_message(sock, agent.handle(req))
                if agent.stop.is_set():
                    server.shutdown_later()
                    return

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

        def shutdown_later(self) -> None:
            threading.Thread(target=self.shutdown, daemon=True).start()

    server = Server((host, int(port)), Handler)
    threading.Thread(target=agent.reap, daemon=True).start()
    print(f"ndx-agent: listening on {host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    print("ndx-agent: poweroff requested", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
