"""The libvirt backend: the same :class:`~xen_driver.xen.backend.Backend` through libvirt's libxl driver.

For hosts managed by libvirt (``xen:///system``), where domains created behind libvirtd's back
would confuse it.  Unit tests run against libvirt's built-in ``test:///default`` hypervisor; the
testbed runs the task lifecycle and recovery tests through a real Nomad agent on libvirtd's
libxl driver (tests/xen/test_nomad_lifecycle.py, tests/xen/test_recovery.py, both backends).

Design decisions:

* **libvirt-python is optional.**  It needs the C library and headers to build; the module
  imports it lazily and raises :class:`LibvirtNotInstalled` with the install hint when missing.
* **Blocking calls go to a small thread pool.**  libvirt's API is synchronous; every call runs
  in a bounded executor so the event loop never blocks (libvirt connections are thread-safe).
* **Persistent definitions keep the exit reason.**  A transient libvirt domain disappears the
  moment it stops, and with it the reason.  We ``defineXML`` then start it paused, so after the
  guest stops libvirt still reports ``SHUTOFF`` with a reason (shutdown / crashed / destroyed);
  :meth:`LibvirtBackend.destroy` finally undefines it.
* **The ``on_*`` actions are ``preserve``, as on the xl path.**  The driver applies the job's
  ``on_crash`` itself once it has read why the guest stopped.  With ``destroy`` libxl would tear
  the domain down the moment it shuts down: the driver's XenStore watch would see it vanish
  before libvirt was asked why, and report a poweroff as "destroyed".  Preserved, the domain stays
  (libvirt: ``SHUTOFF`` with the reason, still active with its domid) until the driver destroys
  it, and ``virDomainCoreDump`` can still read a crashed guest's memory.
* **The connection is re-opened when libvirtd restarts.**  Every call checks the connection is
  alive and opens a new one if not; a call that failed because the connection broke is tried
  once more on a fresh one.  :meth:`LibvirtBackend.connection_health` (the fingerprint asks it)
  says whether libvirtd answers and when the connection was lost and re-opened.
* **PV direct kernel boot**: ``<os><type>linux</type><kernel/><initrd/><cmdline/></os>``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from xen_driver.xen.backend import (
    UNTIMED,
    BackendUnavailable,
    CreatedDomain,
    DomainExists,
    DomainInfo,
    DomainNotFound,
    DomainRefused,
    HostFacts,
    PhaseRecorder,
    XenBackendError,
)
from xen_driver.xen.libvirtxml import domain_xml, map_state
from xen_driver.xen.spec import DomainSpec
from xen_driver.xen.unanswered import Unanswered

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How long the fingerprint's health check waits for libvirtd to answer: a libvirtd that does not
#: answer makes the node unhealthy, never a fingerprint stream that stops.
HEALTH_TIMEOUT_S = 10.0

_ERR_NO_DOMAIN = 42
_ERR_OPERATION_INVALID = 55
#: virErrorNumber values of a broken connection (libvirtd gone or restarting): VIR_ERR_NO_CONNECT,
#: VIR_ERR_INVALID_CONN, VIR_ERR_SYSTEM_ERROR (socket), VIR_ERR_RPC.
_CONNECTION_ERRORS = frozenset({5, 6, 38, 39})
#: virErrorNumber values of a definition libvirt refuses (the same XML would fail again):
#: VIR_ERR_XML_ERROR, VIR_ERR_XML_DETAIL, VIR_ERR_CONFIG_UNSUPPORTED.
_REFUSED_ERRORS = frozenset({27, 35, 67})


class LibvirtNotInstalled(BackendUnavailable):
    """libvirt-python is not installed."""


class LibvirtError(XenBackendError):
    """A libvirt call failed."""

    def __init__(self, what: str, exc: Exception):
        super().__init__(f"libvirt {what} failed: {exc}")
        self.code = getattr(exc, "get_error_code", lambda: None)()


def _import_libvirt() -> Any:
    try:
        import libvirt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise LibvirtNotInstalled(
            "the libvirt backend needs libvirt's Python binding (libvirt-python), which is not installed: "
            "on Debian, apt install python3-libvirt (the single-file plugin does not bundle it and uses the "
            "system's); in a virtualenv, pip install 'nomad-driver-xen[libvirt]' (builds against the libvirt "
            "development headers, needs pkg-config and a C compiler)"
        ) from None
    return libvirt


class LibvirtBackend:
    """Backend over a libvirt connection (``xen:///system``; tests: ``test:///default``)."""

    kind = "libvirt"
    can_dump_core = True  # virDomainCoreDump (libxl implements it)
    can_rename = False  # libvirt renames only a domain that is not running

    def __init__(self, uri: str = "xen:///system", *, max_workers: int = 4, domain_type: str | None = None):
        self._libvirt = _import_libvirt()
        # libvirt prints every error to stderr by default; our stderr is the plugin's log
        # channel to Nomad, and errors reach the caller as exceptions anyway.
        self._libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.uri = uri
        self.domain_type = domain_type or ("test" if uri.startswith("test:") else "xen")
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="libvirt")
        self._health = Unanswered()
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        #: When the connection was last found broken / re-opened, and why it is down now.
        self.lost_at: dt.datetime | None = None
        self.reconnected_at: dt.datetime | None = None
        self.reconnects = 0
        self.down_error: str | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(self._retrying, functools.partial(fn, *args))
        )

    def _retrying(self, fn: Callable[[], T]) -> T:
        """``fn()``, once more on a fresh connection when it failed because the old one broke
        (libvirtd restarted under us)."""
        try:
            return fn()
        except (self._libvirt.libvirtError, LibvirtError) as exc:
            conn = self._conn
            code = getattr(exc, "code", None) if isinstance(exc, LibvirtError) else exc.get_error_code()
            if code not in _CONNECTION_ERRORS and (conn is None or self._alive(conn)):
                raise
            self._drop(conn, str(exc))
        log.info("retrying a libvirt call on a new connection", uri=self.uri)
        return fn()

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except Exception:  # noqa: BLE001 - a connection that cannot say is not alive
            return False

    def _drop(self, conn: Any, why: str) -> None:
        """Forget a broken connection (once, whichever caller noticed first)."""
        with self._conn_lock:
            if conn is None or self._conn is not conn:
                return
            self._conn = None
            self.lost_at = dt.datetime.now(dt.UTC)
            self.down_error = why
        log.warning("libvirt connection lost", uri=self.uri, error=why)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - it is broken already
            pass

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and not self._alive(conn):
            self._drop(conn, "the connection to libvirtd closed")
        with self._conn_lock:
            if self._conn is None:
                try:
                    self._conn = self._libvirt.open(self.uri)
                except self._libvirt.libvirtError as exc:
                    self.down_error = str(exc)
                    raise BackendUnavailable(f"cannot connect to libvirt at {self.uri}: {exc}") from None
                if self.lost_at is not None:
                    self.reconnected_at = dt.datetime.now(dt.UTC)
                    self.reconnects += 1
                    log.info("libvirt connection re-opened", uri=self.uri, lost_at=self.lost_at.isoformat())
                self.down_error = None
            return self._conn

    async def connection_health(self) -> tuple[bool, str]:
        """Whether libvirtd answers now (one round trip, re-opening the connection if it broke),
        and what happened to the connection: ``(True, "")`` if nothing, ``(True, "libvirt
        connection lost at …, reconnected at …")`` after a libvirtd restart, ``(False, why)``
        while libvirtd does not answer."""
        since = f" since {_hms(self.lost_at)}" if self.lost_at is not None else ""
        if self._health.waiting:
            return False, f"libvirt at {self.uri} has not answered for {HEALTH_TIMEOUT_S:.0f} s or more"
        try:
            await self._health.call(self._call(lambda: self._connection().getLibVersion()), HEALTH_TIMEOUT_S)
        except TimeoutError:
            return False, f"libvirt at {self.uri} did not answer within {HEALTH_TIMEOUT_S:.0f} s"
        except (BackendUnavailable, LibvirtError, self._libvirt.libvirtError) as exc:
            return False, f"libvirt at {self.uri} does not answer{since}: {self.down_error or exc}"
        if self.lost_at is not None and self.reconnected_at is not None:
            return True, (
                f"libvirt connection lost at {_hms(self.lost_at)}, reconnected at {_hms(self.reconnected_at)}"
                + (f" ({self.reconnects} reconnects)" if self.reconnects > 1 else "")
            )
        return True, ""

    def _lookup(self, name: str) -> Any:
        try:
            return self._connection().lookupByName(name)
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == _ERR_NO_DOMAIN:
                raise DomainNotFound(name) from None
            raise LibvirtError(f"lookup of {name!r}", exc) from None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------ operations
    async def validate(self, spec: DomainSpec) -> None:
        """Render the XML (which validates the spec); libvirt itself checks it on define."""
        domain_xml(spec, domain_type=self.domain_type)

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        """Define and start the domain.  ``background`` changes nothing here: the work happens
        in libvirtd, whose priority is not ours to lower."""
        phases = phases or UNTIMED
        with phases.phase("render"):
            xml = domain_xml(spec, domain_type=self.domain_type)
        with phases.phase("domain_build"):
            domid = await self._call(self._create_sync, spec.name, xml, paused)
        log.info("domain created", domain=spec.name, paused=paused, backend="libvirt")
        return CreatedDomain(name=spec.name, domid=domid)

    def _create_sync(self, name: str, xml: str, paused: bool) -> int | None:
        lv = self._libvirt
        conn = self._connection()
        try:
            old = conn.lookupByName(name)
        except lv.libvirtError:
            old = None
        if old is not None:
            if old.isActive():
                raise DomainExists(name)
            old.undefine()  # a stopped leftover of an earlier incarnation
        try:
            dom = conn.defineXML(xml)
        except lv.libvirtError as exc:
            if "already exists" in str(exc):
                raise DomainExists(name) from None
            if exc.get_error_code() in _REFUSED_ERRORS:
                raise DomainRefused(f"libvirt refused the definition of {name!r}: {exc}") from None
            raise LibvirtError(f"define of {name!r}", exc) from None
        try:
            try:
                dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED if paused else 0)
            except lv.libvirtError as exc:
                if not (paused and "unsupported flags" in str(exc)):
                    raise
                # libvirt's test driver cannot start paused; libxl can.  Emulate it there.
                log.warning("libvirt driver cannot start paused; starting and suspending", uri=self.uri)
                dom.create()
                dom.suspend()
        except lv.libvirtError as exc:
            try:
                dom.undefine()
            except lv.libvirtError:
                pass
            raise LibvirtError(f"start of {name!r}", exc) from None
        domid = dom.ID()
        return None if domid < 0 else int(domid)

    async def unpause(self, name: str, *, domid: int | None = None) -> None:
        await self._call(self._op_sync, name, "resume")

    async def rename(self, name: str, shown_as: str) -> None:
        """Not offered: libvirt's rename takes only a domain that is not running."""
        raise XenBackendError(f"libvirt cannot rename the running domain {name}")

    async def forget(self, name: str) -> None:
        """Undefine a stopped domain's persistent definition (destroy() does it for the domains
        the driver destroys; this is for one that went away otherwise, e.g. destroyed while the
        plugin was down).  A running domain is left alone."""
        await self._call(self._forget_sync, name)

    def _forget_sync(self, name: str) -> None:
        try:
            dom = self._lookup(name)
        except DomainNotFound:
            return
        try:
            if not dom.isActive():
                dom.undefine()
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() != _ERR_NO_DOMAIN:
                raise LibvirtError(f"undefine of {name!r}", exc) from None

    def config_file(self, name: str) -> str:
        return ""

    async def dump_core(self, name: str, path: str) -> None:
        def dump() -> None:
            dom = self._lookup(name)
            try:
                dom.coreDump(path, 0)
            except self._libvirt.libvirtError as exc:
                raise LibvirtError(f"core dump of {name!r}", exc) from None

        await self._call(dump)

    async def shutdown(self, name: str, *, wait: bool = False, timeout_s: float = 60.0) -> None:
        await self._call(self._op_sync, name, "shutdown")
        if wait:
            async with asyncio.timeout(timeout_s):
                while (await self.domain(name)).state.alive:
                    await asyncio.sleep(0.1)

    def _op_sync(self, name: str, method: str) -> None:
        dom = self._lookup(name)
        try:
            getattr(dom, method)()
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == _ERR_NO_DOMAIN:
                raise DomainNotFound(name) from None
            raise LibvirtError(f"{method} of {name!r}", exc) from None

    async def destroy(self, name: str) -> None:
        """Destroy if running, then undefine; a missing domain is success."""
        await self._call(self._destroy_sync, name)

    def _destroy_sync(self, name: str) -> None:
        lv = self._libvirt
        try:
            dom = self._lookup(name)
        except DomainNotFound:
            return
        try:
            if dom.isActive():
                dom.destroy()
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (_ERR_NO_DOMAIN, _ERR_OPERATION_INVALID):
                raise LibvirtError(f"destroy of {name!r}", exc) from None
        try:
            dom.undefine()
        except lv.libvirtError as exc:
            if exc.get_error_code() != _ERR_NO_DOMAIN:
                raise LibvirtError(f"undefine of {name!r}", exc) from None

    async def host_facts(self) -> HostFacts:
        """virConnect.getInfo(): [model, memory MiB, cpus, MHz, nodes, sockets, cores, threads]."""
        try:
            info = await self._call(lambda: self._connection().getInfo())
        except self._libvirt.libvirtError as exc:
            raise LibvirtError("node info", exc) from None
        try:
            free = await self._call(lambda: self._connection().getFreeMemory())
        except self._libvirt.libvirtError:
            free = None
        mhz = float(info[3])
        return HostFacts(
            nr_cpus=int(info[2]),
            total_memory_mib=int(info[1]),
            cpu_mhz=mhz if mhz > 0 else None,
            free_memory_mib=None if free is None else int(free) // (1024 * 1024),
        )

    async def list_domains(self) -> list[DomainInfo]:
        return await self._call(self._list_sync)

    def _list_sync(self) -> list[DomainInfo]:
        out = []
        try:
            doms = self._connection().listAllDomains(0)
        except self._libvirt.libvirtError as exc:
            raise LibvirtError("listAllDomains", exc) from None
        for dom in doms:
            try:
                out.append(self._info_sync(dom))
            except self._libvirt.libvirtError:
                continue  # vanished between list and info
        return out

    async def domain(self, name: str) -> DomainInfo:
        return await self._call(lambda: self._info_sync(self._lookup(name)))

    def _info_sync(self, dom: Any) -> DomainInfo:
        state, reason = dom.state()
        _st, max_kib, cur_kib, nvcpu, cpu_ns = dom.info()
        dstate, exit_reason = map_state(state, reason)
        domid = dom.ID()
        return DomainInfo(
            name=dom.name(),
            domid=None if domid < 0 else domid,
            uuid=dom.UUIDString(),
            state=dstate,
            shutdown_reason=exit_reason,
            cpu_seconds=cpu_ns / 1e9,
            memory_kib=int(cur_kib),
            max_memory_kib=int(max_kib),
            vcpus=int(nvcpu),
            flags=f"{state}:{reason}",
        )


def _hms(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
