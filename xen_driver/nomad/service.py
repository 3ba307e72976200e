"""Nomad's BasePlugin and Driver gRPC services, fronting a driver core.

The servicers are thin: decode the request into :mod:`xen_driver.driver.models` dataclasses,
await one core method, encode the answer (:mod:`xen_driver.nomad.convert`). Every exception goes
through :func:`xen_driver.nomad.status.status_for`, so the gRPC status of each error type is
decided in one place.

The core comes from a factory called by SetConfig (``core_factory(config, agent)``); before the
first SetConfig (which Nomad always sends first in a fresh process) a core with the default
configuration is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from xen_driver import __version__
from xen_driver._proto.nomad import base_pb2, base_pb2_grpc, driver_pb2, driver_pb2_grpc
from xen_driver.driver.config import PluginConfig
from xen_driver.driver.core import DRIVER_NAME, DriverCore, make_core
from xen_driver.driver.errors import NotSupported
from xen_driver.driver.models import AgentInfo
from xen_driver.logging import get_logger
from xen_driver.nomad import convert
from xen_driver.nomad.schemas import PLUGIN_SCHEMA, TASK_SCHEMA
from xen_driver.nomad.status import status_for

#: The only driver API version Nomad speaks (compared semantically, so no "v" needed).
PLUGIN_API_VERSION = "0.1.0"

#: A process whose configuration was refused, and that never had one accepted, is of no use:
#: Nomad 1.7 and later stop it right away, but Nomad 1.6's plugin loader leaves a plugin whose
#: SetConfig failed running (and the agent then exits, so nobody ever stops it). Such a process
#: stops itself this long after the refusal, unless a configuration is accepted meanwhile.
REFUSED_CONFIG_EXIT_S = 5.0

CoreFactory = Callable[[PluginConfig, AgentInfo | None], DriverCore]

_Item = TypeVar("_Item")

_log = get_logger("nomad")


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    info = status_for(exc, method)
    if info.unexpected:
        _log.error("rpc failed", rpc=method, error=info.message, exc_info=exc)
    else:
        _log.debug("rpc refused", rpc=method, code=info.code.name, error=info.message)
    await context.abort(info.code, info.message, info.trailing_metadata())


def unary(method):
    """Map exceptions of a unary handler to statuses (see status.py)."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, name)

    return wrapper


def server_stream(method):
    """Same for server-streaming handlers written as async generators."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            async for item in method(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, name)

    return wrapper


class PluginState:
    """Configuration and core shared by the two services of one plugin process."""

    def __init__(self, core_factory: CoreFactory = make_core) -> None:
        self._factory = core_factory
        self.config: PluginConfig | None = None
        self.agent: AgentInfo | None = None
        self._core: DriverCore | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        #: Set (and replaced) whenever SetConfig replaces the core, so open streams switch over.
        self._replaced = asyncio.Event()
        #: Set by the plugin server: ends the process gracefully (see REFUSED_CONFIG_EXIT_S).
        self.on_unusable: Callable[[str], None] | None = None
        self.accepted = False
        self._unusable_timer: asyncio.TimerHandle | None = None

    def config_refused(self) -> None:
        """SetConfig failed: without an accepted configuration, stop after a grace period."""
        if self.accepted or self.on_unusable is None or self._unusable_timer is not None:
            return
        _log.debug("no configuration accepted; stopping unless one follows", in_s=REFUSED_CONFIG_EXIT_S)
        self._unusable_timer = asyncio.get_running_loop().call_later(REFUSED_CONFIG_EXIT_S, self._unusable)

    def config_accepted(self) -> None:
        self.accepted = True
        if self._unusable_timer is not None:
            self._unusable_timer.cancel()
            self._unusable_timer = None

    def _unusable(self) -> None:
        self._unusable_timer = None
        if not self.accepted and self.on_unusable is not None:
            _log.info("stopping: the plugin host refused this process's configuration and sent no other")
            self.on_unusable("configuration refused")

    def configure(self, config: PluginConfig, agent: AgentInfo | None) -> None:
        if self._core is not None and config == self.config and (agent is None or agent == self.agent):
            return  # Nomad repeats SetConfig with the same bytes during validation
        old = self._core
        self.config, self.agent = config, agent or self.agent
        self._core = self._factory(config, self.agent)
        self._replaced.set()
        self._replaced = asyncio.Event()
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.shutdown())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @property
    def core(self) -> DriverCore:
        if self._core is None:
            self.configure(PluginConfig(), None)
        assert self._core is not None  # configure() always sets it
        return self._core

    async def shutdown(self) -> None:
        if self._core is not None:
            await self._core.shutdown()

    async def follow(self, source: Callable[[DriverCore], AsyncIterator[_Item]], what: str) -> AsyncIterator[_Item]:
        """Items of ``source(core)`` for the current core, switching to the new core as soon as
        SetConfig replaces it; never ends (Nomad re-opens an ended stream in a tight loop)."""
        while True:
            core, replaced = self.core, self._replaced
            items = source(core).__aiter__()
            while True:
                nxt = asyncio.ensure_future(items.__anext__())
                switch = asyncio.ensure_future(replaced.wait())
                await asyncio.wait({nxt, switch}, return_when=asyncio.FIRST_COMPLETED)
                switch.cancel()
                if not nxt.done():
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    break
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    break
                yield item
            if self.core is not core:
                continue
            _log.error(f"{what} source ended unexpectedly; restarting it")
            await asyncio.sleep(1.0)


class BasePluginService(base_pb2_grpc.BasePluginServicer):
    def __init__(self, state: PluginState) -> None:
        self.state = state

    @unary
    async def PluginInfo(self, request, context):
        return base_pb2.PluginInfoResponse(
            type=base_pb2.DRIVER,
            plugin_api_versions=[PLUGIN_API_VERSION],
            plugin_version=__version__,
            name=DRIVER_NAME,
        )

    @unary
    async def ConfigSchema(self, request, context):
        return base_pb2.ConfigSchemaResponse(spec=PLUGIN_SCHEMA.to_proto())

    @unary
    async def SetConfig(self, request, context):
        try:
            config = PluginConfig.from_dict(PLUGIN_SCHEMA.decode(request.msgpack_config))
            agent = None
            if request.HasField("nomad_config") and request.nomad_config.HasField("driver"):
                drv = request.nomad_config.driver
                agent = AgentInfo(client_min_port=drv.ClientMinPort, client_max_port=drv.ClientMaxPort)
            self.state.configure(config, agent)
        except Exception:
            self.state.config_refused()
            raise
        self.state.config_accepted()
        _log.info(
            "plugin configured",
            backend=config.backend,
            xl_path=config.xl_path,
            fingerprint_period_s=config.fingerprint_period,
            api_version=request.plugin_api_version,
            agent_facts=agent is not None,
        )
        return base_pb2.SetConfigResponse()


class DriverService(driver_pb2_grpc.DriverServicer):
    def __init__(self, state: PluginState) -> None:
        self.state = state

    # ---- schema, capabilities, node-level streams ------------------------------------------------

    @unary
    async def TaskConfigSchema(self, request, context):
        return driver_pb2.TaskConfigSchemaResponse(spec=TASK_SCHEMA.to_proto())

    @unary
    async def Capabilities(self, request, context):
        return driver_pb2.CapabilitiesResponse(capabilities=convert.capabilities(self.state.core.capabilities()))

    @server_stream
    async def Fingerprint(self, request, context) -> AsyncIterator[driver_pb2.FingerprintResponse]:
        # Ending this stream makes Nomad re-open it in a tight loop: never end it ourselves; after a
        # SetConfig it follows the new configuration at once.
        async for fp in self.state.follow(lambda core: core.fingerprints(), "fingerprint"):
            yield convert.fingerprint(fp)

    @server_stream
    async def TaskEvents(self, request, context) -> AsyncIterator[driver_pb2.DriverTaskEvent]:
        async for event in self.state.follow(lambda core: core.task_events(), "task event"):
            yield convert.task_event(event)

    # ---- task lifecycle --------------------------------------------------------------------------

    @unary
    async def StartTask(self, request, context):
        spec = convert.task_spec(request.task)
        handle = await self.state.core.start_task(spec)
        return convert.start_response(handle, request.task)

    @unary
    async def RecoverTask(self, request, context):
        await self.state.core.recover_task(convert.recovered_task(request.handle))
        return driver_pb2.RecoverTaskResponse()

    @unary
    async def WaitTask(self, request, context):
        result = await self.state.core.wait_task(request.task_id)
        return convert.wait_response(result)

    @unary
    async def StopTask(self, request, context):
        await self.state.core.stop_task(request.task_id, convert.duration_seconds(request.timeout), request.signal)
        return driver_pb2.StopTaskResponse()

    @unary
    async def DestroyTask(self, request, context):
        await self.state.core.destroy_task(request.task_id, request.force)
        return driver_pb2.DestroyTaskResponse()

    @unary
    async def InspectTask(self, request, context):
        return convert.inspect_response(await self.state.core.inspect_task(request.task_id))

    @server_stream
    async def TaskStats(self, request, context):
        interval = convert.duration_seconds(request.collection_interval) or 1.0
        async for stats in self.state.core.task_stats(request.task_id, interval):
            yield convert.stats_response(stats)

    @unary
    async def SignalTask(self, request, context):
        await self.state.core.signal_task(request.task_id, request.signal)
        return driver_pb2.SignalTaskResponse()

    @unary
    async def ExecTask(self, request, context):
        timeout = convert.duration_seconds(request.timeout) or None
        stdout, stderr, result = await self.state.core.exec_task(request.task_id, list(request.command), timeout)
        return driver_pb2.ExecTaskResponse(stdout=stdout, stderr=stderr, result=convert.exit_result(result))

    async def ExecTaskStreaming(self, request_iterator, context):
        await _abort(
            context,
            NotSupported("ExecTaskStreaming", "unikernels have no shell to run commands in"),
            "ExecTaskStreaming",
        )

    @unary
    async def CreateNetwork(self, request, context):
        raise NotSupported("CreateNetwork", "the xen driver does not create network namespaces")

    @unary
    async def DestroyNetwork(self, request, context):
        raise NotSupported("DestroyNetwork", "the xen driver does not create network namespaces")

    # ---- Nomad 2.0.4+ hooks ------------------------------------------------------------------------

    @unary
    async def Init(self, request, context):
        return driver_pb2.InitResponse()

    @unary
    async def Shutdown(self, request, context):
        # The process is about to be stopped; guests keep running (recovered on the next start).
        return driver_pb2.ShutdownResponse()
