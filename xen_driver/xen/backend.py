"""The seam between the driver core and a Xen toolstack.

The driver core talks to a :class:`Backend` and nothing else: ``XlBackend`` (the ``xl`` CLI)
and ``LibvirtBackend`` (libvirt's libxl driver) both satisfy it, and unit tests of the driver
may use a fake.  The shared data model lives here so that neither backend module has to import
the other, and so the watcher and the stats sampler can work on any backend.

Everything a backend reports about a domain is a :class:`DomainInfo` snapshot: a value, never a
live handle, because the domain may change or vanish the moment after it was read.
"""

from __future__ import annotations

import contextlib
import enum
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from xen_driver.xen.spec import DomainSpec


class DomainState(enum.Enum):
    """Coarse life-cycle state of a domain, the same for every backend."""

    RUNNING = "running"  # on a CPU or runnable
    BLOCKED = "blocked"  # alive, waiting for an event (idle unikernels sit here)
    PAUSED = "paused"  # created with -p / suspended by the toolstack, not yet unpaused
    SHUTDOWN = "shutdown"  # the guest has shut down (any reason) but the domain still exists
    DYING = "dying"  # being torn down by the hypervisor
    UNKNOWN = "unknown"

    @property
    def alive(self) -> bool:
        """True while the guest can still execute (it has not shut down or started dying)."""
        return self in (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED)


class ExitReason(enum.Enum):
    """Why a guest stopped.

    The first six mirror Xen's ``SHUTDOWN_*`` codes (``sched.h``: poweroff 0, reboot 1,
    suspend 2, crash 3, watchdog 4, soft_reset 5), which a guest passes to
    ``SCHEDOP_shutdown`` and which the hypervisor keeps for as long as the domain exists.
    ``DESTROYED`` means the domain vanished without us ever seeing it shut down (``xl destroy``
    by us or by someone else, or the host toolstack reaping it); ``UNKNOWN`` is a shutdown with
    a code we do not know.
    """

    POWEROFF = "poweroff"
    REBOOT = "reboot"
    SUSPEND = "suspend"
    CRASH = "crash"
    WATCHDOG = "watchdog"
    SOFT_RESET = "soft_reset"
    DESTROYED = "destroyed"
    UNKNOWN = "unknown"

    @classmethod
    def from_code(cls, code: int) -> ExitReason:
        """Map a Xen shutdown reason code to an :class:`ExitReason`."""
        return _CODE_TO_REASON.get(code, cls.UNKNOWN)


_CODE_TO_REASON = {
    0: ExitReason.POWEROFF,
    1: ExitReason.REBOOT,
    2: ExitReason.SUSPEND,
    3: ExitReason.CRASH,
    4: ExitReason.WATCHDOG,
    5: ExitReason.SOFT_RESET,
}


@dataclass(frozen=True)
class DomainInfo:
    """One domain as a backend saw it at one moment.

    ``shutdown_reason`` is set only when ``state`` is SHUTDOWN (or DYING after a shutdown we
    could read).  ``domid`` is ``None`` for a libvirt domain that is defined but not running.
    ``cpu_seconds`` is cumulative CPU time of all vCPUs since the domain was created; its
    resolution depends on the backend (``xl list`` prints tenths of a second).
    """

    name: str
    domid: int | None
    uuid: str | None
    state: DomainState
    shutdown_reason: ExitReason | None = None
    cpu_seconds: float = 0.0
    memory_kib: int = 0
    max_memory_kib: int = 0
    vcpus: int = 0
    flags: str = ""  # backend-native state text (xl's "r-----"), for logs


@dataclass(frozen=True)
class HostFacts:
    """What the host has, as a toolstack tells it (``None``: it did not say)."""

    nr_cpus: int | None = None
    total_memory_mib: int | None = None
    cpu_mhz: float | None = None
    #: Memory Xen has not given to any domain yet (what a new domain can still get).
    free_memory_mib: int | None = None


@dataclass(frozen=True)
class CreatedDomain:
    """What creating a domain tells the driver.

    ``domid`` is ``None`` when the backend did not learn it in the same call (``xl create``
    prints nothing useful); the driver then reads it from XenStore, which is faster than a
    second toolstack call.  ``config_file`` is a file the backend rendered for the domain
    (``""`` when it keeps none); :meth:`Backend.forget` removes it.
    """

    name: str
    domid: int | None
    config_file: str = ""


class XenBackendError(Exception):
    """Base class of every error a backend raises."""


class DomainNotFound(XenBackendError):
    """The named domain does not exist (any more)."""

    def __init__(self, name: str):
        super().__init__(f"domain {name!r} does not exist")
        self.name = name


class DomainExists(XenBackendError):
    """A domain with this name already exists, so it cannot be created again."""

    def __init__(self, name: str):
        super().__init__(f"a domain named {name!r} already exists")
        self.name = name


class DomainRefused(XenBackendError):
    """The toolstack refused the domain's configuration (a kernel it cannot load, a setting it
    rejects): trying again would fail the same way, so a task must not be restarted for it."""


class BackendUnavailable(XenBackendError):
    """The toolstack itself is missing (no ``xl`` binary, libvirt not installed/reachable)."""


class PhaseRecorder(Protocol):
    """Times named steps (the driver's :class:`~xen_driver.driver.timing.PhaseTimer` is one)."""

    def phase(self, name: str) -> AbstractContextManager[None]: ...


class _Untimed:
    def phase(self, name: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


#: The recorder of a caller that does not time a create.
UNTIMED: PhaseRecorder = _Untimed()


@runtime_checkable
class Backend(Protocol):
    """What the driver core needs from a toolstack, and all it may ask of one.

    All methods but :meth:`config_file` are coroutines and never block the event loop.  Names
    are Xen domain names (the driver derives them from the Nomad task id); a backend never
    invents names itself.
    """

    #: Short identifier stored in the task's driver_state ("xl", "libvirt").
    kind: str
    #: Whether :meth:`dump_core` works: a job's ``on_crash = "coredump-destroy"`` is refused at
    #: validation on a backend without it.
    can_dump_core: bool
    #: Whether :meth:`rename` works on a running domain (a claimed pool member is shown under
    #: its task's domain name only where it does).
    can_rename: bool

    async def validate(self, spec: DomainSpec) -> None:
        """Check that the toolstack accepts ``spec`` without creating anything."""

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        """Create the domain (paused by default, so XenStore can be filled before it runs).

        ``background``: the build is not on any task's critical path (a warm-pool refill), so
        it runs at a lower CPU priority than the starts it must not slow down.  ``phases``
        times the backend's own steps: ``render`` (the toolstack's description of the domain)
        and ``domain_build`` (the toolstack building it)."""

    async def unpause(self, name: str, *, domid: int | None = None) -> None:
        """Let a paused domain run (``domid``, when known, allows a direct hypervisor call)."""

    async def shutdown(self, name: str, *, wait: bool = False) -> None:
        """Ask the guest to shut down cooperatively (PV ``control/shutdown``)."""

    async def destroy(self, name: str) -> None:
        """Kill the domain now and free its resources; a missing domain is not an error."""

    async def forget(self, name: str) -> None:
        """Remove what the backend keeps about a domain that is gone (a rendered config)."""

    async def rename(self, name: str, shown_as: str) -> None:
        """Have the toolstack's listings show the running domain ``name`` as ``shown_as`` (only
        where :attr:`can_rename`).  The driver keeps calling it ``name``: the backend translates
        in every call and listing, across plugin restarts too.  A domain that is gone raises
        :class:`DomainNotFound`."""

    def config_file(self, name: str) -> str:
        """The file the backend rendered for ``name``, or ``""`` when it keeps none."""

    async def dump_core(self, name: str, path: str) -> None:
        """Write the domain's memory image to ``path`` (only where :attr:`can_dump_core`)."""

    async def list_domains(self) -> list[DomainInfo]:
        """All domains the toolstack knows, in one call (the watcher and stats rely on this)."""

    async def domain(self, name: str) -> DomainInfo:
        """One domain, or :class:`DomainNotFound`."""

    async def host_facts(self) -> HostFacts:
        """The host's CPUs, memory (total and free) and CPU clock, as far as the toolstack says."""

    async def close(self) -> None:
        """Release connections and helpers; domains are left as they are."""


def open_backend(kind: str, *, state_dir: str | os.PathLike[str], xl_path: str, libvirt_uri: str) -> Backend:
    """The backend the plugin configuration names (``backend = "xl" | "libvirt"``).

    A backend whose binding is missing on this host (libvirt-python not installed) comes back as
    an :class:`UnavailableBackend`, so the plugin still takes its configuration and the
    fingerprint says what is missing, instead of the configuration call failing."""
    if kind == "libvirt":
        try:
            from xen_driver.xen.libvirt_backend import LibvirtBackend

            return LibvirtBackend(libvirt_uri)
        except BackendUnavailable as exc:
            return UnavailableBackend("libvirt", exc)
    from xen_driver.xen.xl import XlBackend

    return XlBackend(Path(state_dir) / "domains", xl=xl_path)


class UnavailableBackend:
    """Stands in for a toolstack that cannot be used on this host (its binding is not installed).

    The plugin still starts and takes its configuration; the fingerprint reports the node
    unhealthy with the reason, and every operation raises the same :class:`BackendUnavailable`,
    so Nomad and the operator see the cause instead of an internal error.
    """

    can_dump_core = False
    can_rename = False

    def __init__(self, kind: str, error: BackendUnavailable):
        self.kind = kind
        self.error = error

    def _fail(self) -> BackendUnavailable:
        return BackendUnavailable(str(self.error))

    async def validate(self, spec: DomainSpec) -> None:
        raise self._fail()

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        raise self._fail()

    async def unpause(self, name: str, *, domid: int | None = None) -> None:
        raise self._fail()

    async def shutdown(self, name: str, *, wait: bool = False) -> None:
        raise self._fail()

    async def destroy(self, name: str) -> None:
        raise self._fail()

    async def rename(self, name: str, shown_as: str) -> None:
        raise self._fail()

    async def forget(self, name: str) -> None:
        return None

    def config_file(self, name: str) -> str:
        return ""

    async def dump_core(self, name: str, path: str) -> None:
        raise self._fail()

    async def list_domains(self) -> list[DomainInfo]:
        raise self._fail()

    async def domain(self, name: str) -> DomainInfo:
        raise self._fail()

    async def host_facts(self) -> HostFacts:
        raise self._fail()

    async def close(self) -> None:
        return None
