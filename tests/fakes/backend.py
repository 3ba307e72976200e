"""A programmable :class:`~xen_driver.xen.backend.Backend` whose domain table a test edits directly."""

from __future__ import annotations

from xen_driver.xen.backend import CreatedDomain, DomainInfo, DomainNotFound, DomainState, HostFacts, PhaseRecorder
from xen_driver.xen.spec import DomainSpec


class FakeBackend:
    """A Backend whose domain table the test edits directly."""

    kind = "fake"
    can_dump_core = False
    can_rename = False

    def __init__(self) -> None:
        self.domains: dict[str, DomainInfo] = {}
        self.list_calls = 0
        self.destroyed: list[str] = []

    def set(self, name: str, domid: int, state: DomainState, **kw: object) -> None:
        self.domains[name] = DomainInfo(name=name, domid=domid, uuid=None, state=state, **kw)  # type: ignore[arg-type]

    async def list_domains(self) -> list[DomainInfo]:
        self.list_calls += 1
        return list(self.domains.values())

    async def domain(self, name: str) -> DomainInfo:
        if name not in self.domains:
            raise DomainNotFound(name)
        return self.domains[name]

    async def destroy(self, name: str) -> None:
        self.destroyed.append(name)
        self.domains.pop(name, None)

    async def validate(self, spec: DomainSpec) -> None:
        return None

    async def create_domain(
        self, spec: DomainSpec, *, paused: bool = True, background: bool = False, phases: PhaseRecorder | None = None
    ) -> CreatedDomain:
        raise NotImplementedError("this fake only follows domains a test puts in its table")

    async def unpause(self, name: str, *, domid: int | None = None) -> None:
        return None

    async def shutdown(self, name: str, *, wait: bool = False) -> None:
        return None

    async def forget(self, name: str) -> None:
        return None

    async def rename(self, name: str, shown_as: str) -> None:
        raise NotImplementedError("this fake cannot rename (can_rename is False)")

    def config_file(self, name: str) -> str:
        return ""

    async def dump_core(self, name: str, path: str) -> None:
        raise NotImplementedError("this fake cannot dump cores (can_dump_core is False)")

    async def host_facts(self) -> HostFacts:
        return HostFacts()

    async def close(self) -> None:
        return None
