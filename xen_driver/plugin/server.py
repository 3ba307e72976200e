"""Serve gRPC services to a go-plugin host over a private unix socket.

Order matters (docs/PROTOCOL.md §1, §2.3): the socket is bound and the server started *before*
the handshake line is printed, since the host dials as soon as it reads it; after
``GRPCController.Shutdown`` (or SIGTERM) the process must be gone within 2 s, and stopping
must never touch what the plugin manages (our Xen guests keep running).
"""

from __future__ import annotations

import asyncio
import grp
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xen_driver._proto.goplugin import broker_pb2_grpc, controller_pb2_grpc, stdio_pb2_grpc
from xen_driver.logging import get_logger
from xen_driver.plugin.handshake import NOMAD_HANDSHAKE, HandshakeConfig, handshake_line, negotiate_version
from xen_driver.plugin.services import BrokerService, ControllerService, StdioService

#: Room below go-plugin's 2 s grace period for the interpreter to exit.
EXIT_DEADLINE = 1.5
#: Longest socket path a sockaddr_un takes (108 bytes including the terminating NUL).
MAX_SOCKET_PATH = 107
#: Service name go-plugin's health check asks for.
HEALTH_SERVICE = "plugin"

_log = get_logger("plugin")

Register = Callable[[grpc.aio.Server], None]


#: Where the socket goes when neither ``$PLUGIN_UNIX_SOCKET_DIR`` nor ``$TMPDIR`` is usable.
FALLBACK_SOCKET_DIRS: tuple[str, ...] = ("/tmp",)


class SocketDirError(OSError):
    """No directory the plugin's unix socket could be created in; the message says which and the fix."""


def socket_path(environ: Mapping[str, str]) -> str:
    """A fresh socket path in ``$PLUGIN_UNIX_SOCKET_DIR``, ``$TMPDIR`` or /tmp, the first that works.

    A directory named by the environment that is missing, read-only or unwritable is skipped with
    a warning naming it (so a bad ``TMPDIR`` in the agent's environment costs nothing but that
    line); when none works, :class:`SocketDirError` names every directory tried and the fix.
    """
    candidates = [
        ("PLUGIN_UNIX_SOCKET_DIR", environ.get("PLUGIN_UNIX_SOCKET_DIR")),
        ("TMPDIR", environ.get("TMPDIR")),
        *(("fallback", d) for d in FALLBACK_SOCKET_DIRS),
    ]
    skipped: list[str] = []
    for source, directory in candidates:
        if not directory:
            continue
        where = f"{directory} (${source})" if source != "fallback" else directory
        if not os.path.isdir(directory):
            skipped.append(f"{where}: not a directory")
            continue
        try:
            fd, path = tempfile.mkstemp(prefix="plugin", dir=directory)
        except OSError as exc:
            skipped.append(f"{where}: {exc.strerror or exc}")
            continue
        os.close(fd)
        os.unlink(path)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            skipped.append(f"{where}: socket path longer than {MAX_SOCKET_PATH} bytes")
            continue
        if skipped:
            _log.warn("socket directory unusable; using another", skipped="; ".join(skipped), using=directory)
        return path
    raise SocketDirError(
        "no usable directory for the plugin's unix socket ("
        + "; ".join(skipped or ["no candidate"])
        + "); fix: set TMPDIR (or PLUGIN_UNIX_SOCKET_DIR) in the Nomad agent's environment to a writable directory"
    )


def _socket_group(environ: Mapping[str, str]) -> int | None:
    group = environ.get("PLUGIN_UNIX_SOCKET_GROUP")
    if not group:
        return None
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


@dataclass
class PluginServer:
    """One go-plugin server: our services plus go-plugin's own, on one unix socket."""

    register: Register
    handshake: HandshakeConfig = NOMAD_HANDSHAKE
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stdout: TextIO | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    exit_deadline: float = EXIT_DEADLINE

    def __post_init__(self) -> None:
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self.path = ""
        self.sigint_count = 0

    def request_stop(self, reason: str) -> None:
        """Begin stopping; a watchdog makes sure the process is gone within ``exit_deadline``."""
        if self.stopped.is_set():
            return
        self.stop_reason = reason
        self.stopped.set()
        if self.exit_deadline > 0:
            timer = threading.Timer(self.exit_deadline, self._force_exit)
            timer.daemon = True
            timer.start()

    def _force_exit(self) -> None:
        _log.warn("plugin did not stop in time; exiting now", deadline_s=self.exit_deadline)
        try:
            if self.path:
                os.unlink(self.path)
        except OSError:
            pass
        os._exit(0)

    def _on_sigint(self) -> None:
        # We share the agent's process group: a Ctrl-C meant for `nomad agent` must not kill us.
        self.sigint_count += 1
        _log.trace("ignoring SIGINT", count=self.sigint_count)

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass

        app_version = negotiate_version(self.handshake, self.environ)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.max_send_message_length", 2**31 - 1),
            ]
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        controller_pb2_grpc.add_GRPCControllerServicer_to_server(ControllerService(self.request_stop), server)
        stdio_pb2_grpc.add_GRPCStdioServicer_to_server(StdioService(self.stopped), server)
        broker_pb2_grpc.add_GRPCBrokerServicer_to_server(BrokerService(self.stopped), server)
        self.register(server)

        self.path = socket_path(self.environ)
        old_umask = os.umask(0o177)  # the socket is born 0600: only our user may connect
        try:
            port = server.add_insecure_port("unix:" + self.path)
        finally:
            os.umask(old_umask)
        if port == 0 or not os.path.exists(self.path):
            raise OSError(f"could not listen on unix socket {self.path}")
        gid = _socket_group(self.environ)
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)

        await server.start()
        await health_servicer.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

        if self.environ.get("PLUGIN_CLIENT_CERT"):
            _log.warn("the plugin host asked for AutoMTLS, which this plugin does not offer; serving without TLS")
        # go-plugin >= 1.6 hosts that want a multiplexed broker say so; we answer "no" explicitly.
        multiplex = False if self.environ.get("PLUGIN_MULTIPLEX_GRPC") else None
        line = handshake_line(self.handshake, "unix", self.path, app_version, multiplex=multiplex)
        out = self.stdout or sys.stdout
        out.write(line)
        out.flush()
        # From here on stdout is drained and discarded by the host; stray prints go to stderr.
        if self.stdout is None:
            sys.stdout = sys.stderr
        _log.debug("plugin serving", socket=self.path, pid=os.getpid())

        try:
            await self.stopped.wait()
        finally:
            self.stopped.set()
            _log.debug("plugin stopping", reason=self.stop_reason or "cancelled")
            try:
                await health_servicer.enter_graceful_shutdown()
                await server.stop(grace=0.25)
                if self.on_stop is not None:
                    await asyncio.wait_for(self.on_stop(), timeout=0.5)
            except Exception as exc:  # stopping must not fail the exit
                _log.warn("error while stopping", error=f"{type(exc).__name__}: {exc}")
            finally:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        return 0
