"""The ``xl`` backend: asyncio subprocesses around the xl CLI.

Design decisions:

* **No per-domain monitor (``xl create -e``).**  Without ``-e`` every ``xl create`` leaves a
  forked ``xl`` process behind that waits for the domain's death and applies the ``on_*``
  actions.  With thousands of guests that is thousands of processes, and it races with us: a
  monitor that destroys a powered-off domain also destroys the shutdown reason we need for the
  exit code.  With ``-e`` the domain simply stays in the shut-down state (whatever ``on_*``
  says) until the driver has read the reason via :meth:`XlBackend.list_domains` and calls
  :meth:`XlBackend.destroy`.  The cost: ``on_reboot = "restart"`` is never applied; a guest
  reboot is reported as an exit with reason ``reboot`` and Nomad's restart policy decides.
* **Bounded concurrency.**  A semaphore caps simultaneous ``xl`` processes (each one maps the
  hypervisor interfaces and may take xl's global creation lock); callers queue, the event loop
  never blocks.
* **Every call is timed.**  :class:`XlCall` records argv, exit code and wall time; the driver
  turns these into its phase timings, and ``on_call`` lets it observe each one.
* **No thread per call.**  On Python 3.11 asyncio waits for each child in a thread of its own
  (``ThreadedChildWatcher``); with many guests starting and stopping that is a thread created and
  torn down per ``xl`` call.  Where the kernel has ``pidfd_open`` (Linux 5.3) the backend switches
  asyncio to ``PidfdChildWatcher``, which waits in the event loop (3.12 does that by default).
* **Precise errors.**  ``xl`` prints ``<id> is an invalid domain identifier`` for unknown
  names; we turn that into :class:`DomainNotFound` so ``destroy`` can be idempotent and the
  driver can tell "gone" from "toolstack broken".
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from xen_driver.xen.atomic import write_text_atomically
from xen_driver.xen.backend import (
    UNTIMED,
    CreatedDomain,
    DomainExists,
    DomainInfo,
    DomainNotFound,
    HostFacts,
    PhaseRecorder,
    XenBackendError,
)
from xen_driver.xen.childwatch import use_pidfd_child_watcher
from xen_driver.xen.fdlimit import EXHAUSTED_ERRNOS, OutOfFileDescriptors
from xen_driver.xen.spec import DomainSpec, check_name
from xen_driver.xen.xenctrl import XenCtrl, open_xenctrl
from xen_driver.xen.xlcfg import render
from xen_driver.xen.xlerrors import (
    _EXISTS_RE,
    _NOT_FOUND_RE,
    _REFUSED_RE,
    XlCall,
    XlError,
    XlNotFound,
    XlRefused,
    XlTimeout,
)
from xen_driver.xen.xllist import parse_xl_list
from xen_driver.xen.xlnames import ShownNames

__all__ = ["BACKGROUND_NICE", "XlBackend", "XlCall", "XlError", "XlNotFound", "XlRefused", "XlTimeout"]

log = structlog.get_logger(__name__)

#: CPU priority (nice value) of ``xl`` for builds off every task's critical path.
BACKGROUND_NICE = 10


class XlBackend:
    """Drive Xen through ``xl``.  See the module docstring for why it is shaped this way."""

    kind = "xl"
    can_dump_core = True
    can_rename = True

    def __init__(
        self,
        cfg_dir: str | os.PathLike[str],
        *,
        xl: str = "xl",
        max_concurrency: int = 4,
        timeout_s: float = 120.0,
        on_call: Callable[[XlCall], None] | None = None,
        history: int = 64,
    ):
        self.cfg_dir = Path(cfg_dir)
        #: The configured ``xl_path``: a name (searched on PATH, then in the sbin directories,
        #: exactly as the fingerprint searches it) or an absolute path.
        self.xl = xl
        self._executable: str | None = None
        self.timeout_s = timeout_s
        self.on_call = on_call
        self.calls: deque[XlCall] = deque(maxlen=history)
        self._sem = asyncio.Semaphore(max_concurrency)
        self._xc: XenCtrl | None = None
        self._xc_tried = False
        #: Domains ``xl list`` shows under another name than the driver's (see :mod:`.xlnames`).
        self.names = ShownNames(self.cfg_dir)
        #: Renames under way, by the driver's name: calls on that domain (forget too) wait for them.
        self._renaming: dict[str, asyncio.Event] = {}

    # ----------------------------------------------------------------- plumbing
    def executable(self) -> str:
        """The ``xl`` this backend runs: resolved once, the same way the fingerprint finds it, so
        an agent whose PATH lacks the sbin directories does not show healthy and then fail."""
        if self._executable is None:
            from xen_driver.xen.probe import find_xl

            found = find_xl(self.xl)
            if found is None:
                return self.xl  # not installed (yet): the call fails with XlNotFound, naming it
            self._executable = found
        return self._executable

    async def run(
        self, *args: str, timeout_s: float | None = None, check: bool = True, nice: int | None = None
    ) -> XlCall:
        """Run ``xl <args>``; raise :class:`XlError` on a non-zero exit when ``check``.

        ``nice``: run it at that lower CPU priority (through nice(1) where it exists)."""
        argv: tuple[str, ...] = (self.executable(), *args)
        if nice is not None and (nice_bin := shutil.which("nice")):
            argv = (nice_bin, "-n", str(nice), *argv)
        deadline = self.timeout_s if timeout_s is None else timeout_s
        use_pidfd_child_watcher()
        async with self._sem:
            start = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            except FileNotFoundError:
                raise XlNotFound(f"the xl executable {self.xl!r} was not found; is xen-utils installed?") from None
            except PermissionError as exc:
                raise XlNotFound(f"the xl executable {self.xl!r} cannot be run: {exc}") from None
            except OSError as exc:
                if exc.errno in EXHAUSTED_ERRNOS:  # no descriptor left for xl's pipes
                    raise OutOfFileDescriptors(exc.errno) from exc
                raise
            try:
                async with asyncio.timeout(deadline):
                    out, err = await proc.communicate()
            except TimeoutError:
                proc.kill()
                out, err = await proc.communicate()
                call = self._record(argv, None, out, err, start)
                raise XlTimeout(argv, None, call.stderr, f"`{' '.join(argv)}` timed out after {deadline:g}s") from None
            except asyncio.CancelledError:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                raise
            call = self._record(argv, proc.returncode, out, err, start)
        if check and call.rc != 0:
            raise XlError(argv, call.rc, call.stderr)
        return call

    def _record(self, argv: tuple[str, ...], rc: int | None, out: bytes, err: bytes, start: float) -> XlCall:
        call = XlCall(
            argv=argv,
            rc=rc,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_s=time.monotonic() - start,
        )
        self.calls.append(call)
        log.debug("xl call", argv=list(argv), rc=rc, duration_ms=round(call.duration_s * 1000, 1))
        if self.on_call is not None:
            self.on_call(call)
        return call

    async def _run_on_domain(
        self, name: str, *args: str, tail: tuple[str, ...] = (), timeout_s: float | None = None
    ) -> XlCall:
        """Run ``xl <args> <domain> <tail>``, mapping "unknown" to DomainNotFound.  A renamed
        domain is tried under its shown name, then under the driver's (see :mod:`.xlnames`).  A
        rename under way is waited for: trying one name before ``xl rename`` lands and the other
        after it would find neither."""
        check_name("name", name)
        if (renaming := self._renaming.get(name)) is not None:
            await renaming.wait()
        for target in self.names.targets(name):
            call = await self.run(*args, target, *tail, timeout_s=timeout_s, check=False)
            if call.rc == 0:
                return call
            if not _NOT_FOUND_RE.search(call.stderr):
                raise XlError(call.argv, call.rc, call.stderr)
        raise DomainNotFound(name)

    # --------------------------------------------------------------- configs
    def config_path(self, name: str) -> Path:
        check_name("name", name)
        return self.cfg_dir / f"{name}.cfg"

    def write_config(self, spec: DomainSpec) -> Path:
        """Render ``spec`` and write it atomically to ``<cfg_dir>/<name>.cfg`` (mode 0600)."""
        text = render(spec)
        self.cfg_dir.mkdir(parents=True, exist_ok=True)
        path = self.config_path(spec.name)
        write_text_atomically(path, text)
        return path

    # ------------------------------------------------------------ operations
    async def dry_run(self, cfg_path: str | os.PathLike[str]) -> str:
        """``xl create -n``: parse the config as xl would and return its JSON dump."""
        call = await self.run("create", "-n", str(Path(cfg_path).absolute()))
        return call.stdout

    async def validate(self, spec: DomainSpec) -> None:
        """Render ``spec`` to a scratch file and have ``xl create -n`` parse it."""
        text = render(spec)
        self.cfg_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".validate-{spec.name}.", suffix=".cfg", dir=self.cfg_dir)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(text)
            await self.dry_run(tmp)
        finally:
            os.unlink(tmp)

    async def create(
        self,
        cfg_path: str | os.PathLike[str],
        name: str,
        *,
        paused: bool = True,
        describe: bool = True,
        nice: int | None = None,
    ) -> DomainInfo | None:
        """``xl create -e [-p] <cfg>``, then (unless ``describe`` is False) read the new domain's
        id, uuid and state.

        ``describe=False`` returns None at once, so a caller can overlap that extra ``xl`` call
        with something else (the driver waits for the guest's boot meanwhile).  ``cfg_path`` is
        made absolute because xl resolves relative paths against its own config directory.
        """
        check_name("name", name)
        args = ["create", "-e"]
        if paused:
            args.append("-p")
        args.append(str(Path(cfg_path).absolute()))
        call = await self.run(*args, check=False, nice=nice)
        if call.rc != 0:
            if _EXISTS_RE.search(call.stderr):
                raise DomainExists(name)
            if _REFUSED_RE.search(call.stderr):
                raise XlRefused(call.argv, call.rc, call.stderr, f"xl refused to build the domain {name}")
            raise XlError(call.argv, call.rc, call.stderr)
        log.info("domain created", domain=name, paused=paused, duration_ms=round(call.duration_s * 1000, 1))
        return await self.domain(name) if describe else None

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        """Write the config for ``spec`` and create the domain from it.

        The domain id is not asked for (one ``xl`` process less on the critical path): the caller
        reads it from XenStore.  ``background`` runs ``xl`` at :data:`BACKGROUND_NICE`."""
        phases = phases or UNTIMED
        with phases.phase("render"):
            path = self.write_config(spec)
            if self.names:
                self.names.drop(spec.name)  # a stale record must not send calls to another domain
        with phases.phase("domain_build"):
            await self.create(
                path, spec.name, paused=paused, describe=False, nice=BACKGROUND_NICE if background else None
            )
        return CreatedDomain(name=spec.name, domid=None, config_file=str(path))

    async def unpause(self, name: str, *, domid: int | None = None) -> None:
        """Unpause a domain.  With its ``domid`` this is one hypercall through libxenctrl
        (:mod:`xen_driver.xen.xenctrl`) where the host allows it, which is all ``xl unpause``
        does for a PV guest, minus a process; otherwise ``xl unpause``."""
        if domid is not None and (xc := self._xenctrl()) is not None:
            try:
                xc.unpause(domid)
                return
            except OSError as exc:
                log.warning("direct unpause failed; using xl", domain=name, error=str(exc))
        await self._run_on_domain(name, "unpause")

    @property
    def unpause_path(self) -> str | None:
        """How :meth:`unpause` reached the hypervisor: ``"xenctrl"`` (one hypercall) or
        ``"xl unpause"``; None before the first unpause with a domid."""
        if not self._xc_tried:
            return None
        return "xenctrl" if self._xc is not None else "xl unpause"

    def _xenctrl(self) -> XenCtrl | None:
        if not self._xc_tried:
            self._xc_tried = True
            self._xc = open_xenctrl()
            log.info("unpause path", direct=self._xc is not None, library=getattr(self._xc, "path", None))
        return self._xc

    async def dump_core(self, name: str, path: str) -> None:
        """``xl dump-core``: the guest's memory image into ``path`` (xl runs as root and follows
        links, so the caller picks a path only it controls)."""
        await self._run_on_domain(name, "dump-core", tail=(path,))

    async def close(self) -> None:
        if self._xc is not None:
            self._xc.close()
            self._xc = None
        self._xc_tried = False

    async def pause(self, name: str) -> None:
        await self._run_on_domain(name, "pause")

    async def shutdown(self, name: str, *, wait: bool = False, timeout_s: float | None = None) -> None:
        """Cooperative shutdown request (``xl shutdown [-w]``)."""
        args = ["shutdown", "-w"] if wait else ["shutdown"]
        await self._run_on_domain(name, *args, timeout_s=timeout_s)

    async def destroy(self, name: str) -> None:
        """``xl destroy``; a domain that is already gone counts as destroyed."""
        try:
            call = await self._run_on_domain(name, "destroy")
        except DomainNotFound:
            log.debug("destroy: domain already gone", domain=name)
            return
        log.info("domain destroyed", domain=name, duration_ms=round(call.duration_s * 1000, 1))

    def remove_config(self, name: str) -> None:
        """Delete the rendered config of ``name`` (after the task is gone)."""
        try:
            self.config_path(name).unlink()
        except FileNotFoundError:
            pass

    async def forget(self, name: str) -> None:
        if (renaming := self._renaming.get(name)) is not None:
            await renaming.wait()  # a rename under way must not leave its record behind
        self.remove_config(name)
        self.names.drop(name)

    async def rename(self, name: str, shown_as: str) -> None:
        """Have ``xl list`` show ``name`` as ``shown_as`` (``xl rename``, at background priority).

        The driver goes on calling the domain ``name``: every call and listing of this backend
        translates (:mod:`.xlnames`).  Only a domain this backend created and has not forgotten
        is renamed; one that is gone raises :class:`DomainNotFound` and leaves no record."""
        check_name("name", name)
        check_name("shown_as", shown_as)
        if name in self._renaming:
            raise XenBackendError(f"{name} is being renamed already")
        # No await between this check and the registration: a forget either came first (no
        # config: nothing to rename) or waits for this rename to finish.
        if not self.config_path(name).exists():
            raise DomainNotFound(name)
        done = self._renaming[name] = asyncio.Event()
        try:
            self.names.record(name, shown_as)
            call = await self.run("rename", name, shown_as, check=False, nice=BACKGROUND_NICE)
            if call.rc != 0:
                self.names.drop(name)
                if _NOT_FOUND_RE.search(call.stderr):
                    raise DomainNotFound(name)
                if _EXISTS_RE.search(call.stderr):
                    raise DomainExists(shown_as)
                raise XlError(call.argv, call.rc, call.stderr)
        finally:
            del self._renaming[name]
            done.set()
        log.info("domain renamed", domain=name, shown_as=shown_as, duration_ms=round(call.duration_s * 1000, 1))

    def config_file(self, name: str) -> str:
        return str(self.config_path(name))

    async def list_domains(self) -> list[DomainInfo]:
        """All domains, from one ``xl list -v`` (includes shut-down ones and their reason)."""
        call = await self.run("list", "-v")
        domains = parse_xl_list(call.stdout)
        if self.names:
            domains = [replace(d, name=self.names.key(d.name)) for d in domains]
        return domains

    async def domain(self, name: str) -> DomainInfo:
        call = await self._run_on_domain(name, "list", "-v")
        targets = self.names.targets(name)
        for info in parse_xl_list(call.stdout):
            if info.name in targets:
                return replace(info, name=name)
        raise DomainNotFound(name)

    async def domid(self, name: str) -> int:
        call = await self._run_on_domain(name, "domid")
        return int(call.stdout.strip())

    async def host_facts(self) -> HostFacts:
        """CPUs, memory and CPU clock of the host, from one ``xl info``."""
        from xen_driver.xen.probe import cpu_mhz, parse_xl_info

        raw = parse_xl_info((await self.run("info", timeout_s=30)).stdout)

        def number(key: str) -> int | None:
            try:
                return int(raw[key].split()[0])
            except (KeyError, ValueError, IndexError):
                return None

        return HostFacts(
            nr_cpus=number("nr_cpus"),
            total_memory_mib=number("total_memory"),
            cpu_mhz=cpu_mhz(raw),
            free_memory_mib=number("free_memory"),
        )

    async def version(self) -> str:
        """Hypervisor version as ``xl info`` reports it (e.g. ``4.17.5``)."""
        call = await self.run("info", "xen_version")
        return call.stdout.strip()
