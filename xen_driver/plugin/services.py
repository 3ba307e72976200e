"""go-plugin's own services: controller (Shutdown), stdio and broker.

Nomad drops whatever arrives on stdio and never uses the broker, so both are served idle: the
host opens them and we keep them open until it goes away, which is what go-plugin expects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from xen_driver._proto.goplugin import (
    broker_pb2_grpc,
    controller_pb2,
    controller_pb2_grpc,
    stdio_pb2_grpc,
)
from xen_driver.logging import get_logger

_log = get_logger("plugin")


class ControllerService(controller_pb2_grpc.GRPCControllerServicer):
    """``Shutdown`` answers, then asks the process to stop (the host kills us after 2 s)."""

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self._request_stop = request_stop

    async def Shutdown(self, request, context):
        _log.debug("shutdown requested by the plugin host")
        self._request_stop("GRPCController.Shutdown")
        return controller_pb2.Empty()


class StdioService(stdio_pb2_grpc.GRPCStdioServicer):
    def __init__(self, stopped: asyncio.Event) -> None:
        self._stopped = stopped

    async def StreamStdio(self, request, context):
        # Never send: our output goes to stderr as JSON log lines, which the host reads directly.
        await self._stopped.wait()


class BrokerService(broker_pb2_grpc.GRPCBrokerServicer):
    def __init__(self, stopped: asyncio.Event) -> None:
        self._stopped = stopped

    async def StartStream(self, request_iterator, context):
        # Accept the stream and read (and ignore) what the host sends until either side stops.
        reader = asyncio.ensure_future(self._drain(request_iterator))
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (reader, stopper):
                fut.cancel()

    @staticmethod
    async def _drain(request_iterator) -> None:
        async for _ in request_iterator:
            pass
