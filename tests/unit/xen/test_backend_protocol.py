"""Every backend, and every fake the driver's tests use in place of one, implements the whole
:class:`~xen_driver.xen.backend.Backend` protocol with the same parameters, so what the driver
is tested against is what it runs against."""

from __future__ import annotations

import inspect

import pytest

from tests.fakes.backend import FakeBackend
from tests.unit.driver.test_lifecycle import FakeXen
from tests.unit.driver.test_pool import PoolXen
from xen_driver.xen.backend import Backend, UnavailableBackend
from xen_driver.xen.libvirt_backend import LibvirtBackend
from xen_driver.xen.xl import XlBackend

IMPLEMENTATIONS = [XlBackend, LibvirtBackend, UnavailableBackend, FakeXen, PoolXen, FakeBackend]


def _members() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(Backend).items()
        if not name.startswith("_") and (inspect.isfunction(value) or name in Backend.__annotations__)
    } | {name: None for name in Backend.__annotations__}


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_implements_every_member_with_the_same_parameters(impl: type) -> None:
    for name, proto in _members().items():
        assert hasattr(impl, name) or name in getattr(impl, "__annotations__", {}) or name == "kind", (
            f"{impl.__name__} lacks {name}"
        )
        if proto is None or not inspect.isfunction(proto):
            continue
        got = getattr(impl, name)
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(proto), f"{impl.__name__}.{name}: async?"
        want, have = _params(proto), _params(got)
        why = f"{impl.__name__}.{name}{inspect.signature(got)} does not accept {inspect.signature(proto)}"
        assert have[: len(want)] == want, why
        # More is allowed only as optional keywords (a caller of the protocol never passes them).
        assert all(
            kind is inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty
            for _n, kind, default in have[len(want) :]
        ), why


def test_the_protocol_names_no_toolstack_specific_operation() -> None:
    """The driver may call only these; anything xl- or libvirt-specific stays in its backend."""
    assert sorted(n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_")) == [
        "close",
        "config_file",
        "create_domain",
        "destroy",
        "domain",
        "dump_core",
        "forget",
        "host_facts",
        "list_domains",
        "rename",
        "shutdown",
        "unpause",
        "validate",
    ]
