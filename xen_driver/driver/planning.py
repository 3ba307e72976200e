"""From a task to a domain: the checks and the mapping, before anything is created.

The job's ``config {}`` (decoded and value-checked into a
:class:`~xen_driver.driver.config.TaskConfig`) is resolved against the host and the plugin's
policy (:mod:`xen_driver.driver.policy`): where kernels may come from, which bridges and
scripts a job may name, what the host's CPUs and memory allow.  The result is a
:class:`~xen_driver.xen.spec.DomainSpec` any backend can build.
"""

from __future__ import annotations

import re
import time
import uuid as uuidlib

from xen_driver.driver import network, policy
from xen_driver.driver.config import TASK, TaskConfig
from xen_driver.driver.errors import (
    ConfigError,
)
from xen_driver.driver.models import (
    TaskSpec,
)
from xen_driver.driver.task import LifecycleCore
from xen_driver.xen.probe import XenHostInfo
from xen_driver.xen.spec import DomainSpec, SpecError, VifSpec

#: Smallest guest we create.  A PV domain needs its page tables, start info, console and
#: XenStore rings; below a few MiB the domain builder fails with an obscure error, so refuse
#: early with a message that names the field.
MIN_MEMORY_MIB = 8


class DomainPlanning(LifecycleCore):
    """Turns a task into a checked, toolstack-neutral domain description (no side effects)."""

    def resolve_image(self, spec: TaskSpec, field_name: str, value: str) -> str:
        """Absolute real path of a kernel/ramdisk, checked against where images may come from."""
        return policy.resolve_image(
            value, field=field_name, task_dir=spec.task_dir or None, image_dirs=self.config.image_dirs
        )

    def _click_config(self, spec: TaskSpec) -> str | None:
        cfg = spec.config
        if cfg.click_config is not None:
            return policy.check_click_text(cfg.click_config, self.config)
        if cfg.click_config_file is None:
            return None
        if not spec.task_dir:
            raise ConfigError(TASK, "click_config_file", cfg.click_config_file, "needs a task directory")
        return policy.read_click_config_file(cfg.click_config_file, spec.task_dir, self.config)

    def _vif_specs(self, cfg: TaskConfig, macs: tuple[str, ...]) -> tuple[VifSpec, ...]:
        """The job's vifs, with every bridge and hotplug script checked against the plugin's allow-lists."""
        policy.check_vif_count(len(cfg.vif), self.config)
        vifs = []
        for i, v in enumerate(cfg.vif):
            if v.bridge is not None:
                policy.check_bridge(i, v.bridge, self.config, self.bridge_exists)
            script = policy.resolve_vif_script(i, v.script, self.config) if v.script is not None else None
            vifs.append(VifSpec(bridge=v.bridge, mac=macs[i], ip=v.ip, script=script))
        return tuple(vifs)

    def _macs_in_use(self) -> set[str]:
        """MACs of the guests this driver runs, so a derived MAC never repeats one of them."""
        return {m.lower() for t in self._tasks.values() if t.running for m in t.state.vif_macs}

    def domain_spec(self, spec: TaskSpec, name: str) -> DomainSpec:
        """Map a task onto a toolstack-neutral domain description (validated)."""
        cfg: TaskConfig = spec.config
        kernel = self.resolve_image(spec, "kernel", cfg.kernel)
        ramdisk = self.resolve_image(spec, "ramdisk", cfg.ramdisk) if cfg.ramdisk else None
        if cfg.memory is not None:
            memory, mem_field = cfg.memory, "memory"
        else:
            memory, mem_field = spec.memory_mb, "resources.memory"
        if memory < MIN_MEMORY_MIB:
            raise ConfigError(TASK, mem_field, memory, f"must be at least {MIN_MEMORY_MIB} MiB for a PV guest")
        policy.check_memory(memory, mem_field, self.host_limits)
        policy.check_vcpus(cfg.vcpus, self.host_limits)
        maxmem = spec.memory_max_mb if cfg.memory is None and spec.memory_max_mb > memory else None
        if cfg.cpus is not None:
            self._check_cpus(cfg.cpus)
        if cfg.on_crash == "coredump-destroy" and not self.backend.can_dump_core:
            raise ConfigError(
                TASK,
                "on_crash",
                cfg.on_crash,
                f'the {self.backend.kind} backend cannot dump a guest\'s core; use "destroy" or "preserve"',
            )
        dspec = DomainSpec(
            name=name,
            uuid=str(uuidlib.uuid4()),
            kernel=kernel,
            ramdisk=ramdisk,
            cmdline=cfg.cmdline or "",
            memory_mb=memory,
            maxmem_mb=maxmem,
            vcpus=cfg.vcpus,
            cpus=cfg.cpus,
            # (the MACs in use are only looked at, a pass over every task, when there are vifs)
            vifs=self._vif_specs(cfg, network.vif_macs(spec.id, cfg.vif, self._macs_in_use() if cfg.vif else set())),
            on_crash="preserve" if cfg.on_crash == "destroy" else cfg.on_crash,
        )
        try:
            dspec.validate()
        except SpecError as exc:
            raise ConfigError(TASK, _task_field(exc.field), "", exc.problem) from None
        return dspec

    def _check_cpus(self, cpus: str) -> None:
        """Pinning must leave the guest at least one CPU this host has: xl refuses the domain
        otherwise, with an error that does not name the job's setting."""
        if cpus == "all" or cpus.startswith("nodes:"):
            return
        items = cpus.split(",")
        if all(item.startswith("^") for item in items):
            raise ConfigError(TASK, "cpus", cpus, "must include at least one CPU, not only exclusions (^n)")
        if self.host_cpus is None:
            return
        highest = max(int(n) for n in re.findall(r"\d+", cpus))
        if highest >= self.host_cpus:
            raise ConfigError(TASK, "cpus", cpus, f"names CPU {highest}, but this host has CPUs 0-{self.host_cpus - 1}")

    @property
    def host_limits(self) -> policy.HostLimits:
        return policy.HostLimits(nr_cpus=self.host_cpus, total_memory_mib=self.host_memory_mib)

    def learn_host_info(self, info: XenHostInfo) -> None:
        """Host facts from the fingerprint's probe (it runs ``xl info`` anyway, and Nomad places no
        task before the node is healthy), so no start pays for an ``xl info`` of its own."""
        if info.nr_cpus > 0:
            self.host_cpus = info.nr_cpus
        if info.total_memory_mib > 0:
            self.host_memory_mib = info.total_memory_mib
        if info.cpu_mhz > 0 and self.host_cpu_mhz is None:
            self.host_cpu_mhz = info.cpu_mhz

    async def _learn_host_facts(self) -> None:
        """What the fingerprint's probe did not tell yet (CPUs, memory, CPU MHz), asked of the
        backend once, and again at most once a minute while something is still unknown."""
        if None not in (self.host_cpus, self.host_memory_mib, self.host_cpu_mhz):
            return
        if time.monotonic() - self._host_facts_asked < 60:
            return
        self._host_facts_asked = time.monotonic()
        try:
            facts = await self.backend.host_facts()
        except Exception as exc:  # noqa: BLE001 - starts and stats go on, with what is known
            self._log.warn(
                "cannot learn the host's CPUs, memory and MHz; vcpus, cpus and memory checked for syntax only,"
                " CPU reported as percent only",
                error=str(exc),
            )
            return
        self.host_cpus = self.host_cpus or facts.nr_cpus
        self.host_memory_mib = self.host_memory_mib or facts.total_memory_mib
        self.host_cpu_mhz = self.host_cpu_mhz or facts.cpu_mhz
        if self.host_cpu_mhz is None:
            self._log.warn("the host does not say its CPU MHz; CPU is reported as percent only")


def _task_field(spec_field: str) -> str:
    """Name a DomainSpec field the way the job spells it."""
    if spec_field.startswith("vifs["):
        return "vif" + spec_field[4:]
    return {"memory_mb": "memory", "maxmem_mb": "resources.memory_max"}.get(spec_field, spec_field)
