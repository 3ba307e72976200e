"""``XlBackend.rename``: the toolstack lists a domain under a new name while the driver keeps
calling it by the old one, through every call, listing and plugin restart, and leaves no
record behind.  Runs the fake ``xl`` executable of tests/fakes (domains in a file)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.domains import DomainTable
from xen_driver.xen.backend import DomainExists, DomainNotFound, DomainState
from xen_driver.xen.spec import DomainSpec
from xen_driver.xen.xl import XlBackend

FAKE_XL = Path(__file__).resolve().parents[2] / "fakes" / "xl"


@pytest.fixture
def xen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, DomainTable]:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF fake kernel")
    monkeypatch.setenv("FAKE_XEN_DIR", str(tmp_path / "xen"))
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.setenv("FAKE_XEN_CONSOLE_DIR", "")
    return tmp_path, DomainTable(str(tmp_path / "xen"))


def backend(tmp_path: Path) -> XlBackend:
    return XlBackend(tmp_path / "domains", xl=str(FAKE_XL))


def listed(table: DomainTable) -> dict[str, int]:
    """What ``xl list`` shows: name → domid."""
    return {d["name"]: d["domid"] for d in table.snapshot().values()}


def xl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FAKE_XL), *args], capture_output=True, text=True, env=os.environ.copy())


async def make(be: XlBackend, tmp_path: Path, name: str) -> int:
    await be.create_domain(DomainSpec(name=name, kernel=str(tmp_path / "kernel"), memory_mb=16))
    return (await be.domain(name)).domid or 0


async def test_a_renamed_domain_is_listed_under_its_new_name_and_driven_under_its_old(xen) -> None:
    tmp_path, table = xen
    be = backend(tmp_path)
    domid = await make(be, tmp_path, "ndx-pool-p-1")
    await be.rename("ndx-pool-p-1", "nomad-web-1")
    assert listed(table) == {"nomad-web-1": domid}  # the operator's xl list
    # The driver's view is unchanged: by its own name, in one domain and in the listing.
    assert (await be.domain("ndx-pool-p-1")).domid == domid
    assert [(d.name, d.domid) for d in await be.list_domains() if d.domid] == [("ndx-pool-p-1", domid)]
    await be.unpause("ndx-pool-p-1")
    assert (await be.domain("ndx-pool-p-1")).state is DomainState.BLOCKED

    # A new plugin (a new backend on the same state) keeps the translation.
    be2 = backend(tmp_path)
    assert (await be2.domain("ndx-pool-p-1")).domid == domid
    await be2.destroy("ndx-pool-p-1")
    assert listed(table) == {}
    await be2.forget("ndx-pool-p-1")
    assert sorted(p.name for p in (tmp_path / "domains").iterdir()) == []  # config and record gone


async def test_a_rename_recorded_but_never_run_still_finds_the_domain(xen) -> None:
    """The plugin died after recording the rename and before ``xl rename`` ran."""
    tmp_path, table = xen
    be = backend(tmp_path)
    domid = await make(be, tmp_path, "ndx-pool-p-2")
    be.names.record("ndx-pool-p-2", "nomad-web-2")
    be2 = backend(tmp_path)
    assert (await be2.domain("ndx-pool-p-2")).domid == domid
    assert [d.name for d in await be2.list_domains() if d.domid] == ["ndx-pool-p-2"]
    await be2.destroy("ndx-pool-p-2")
    assert listed(table) == {}


async def test_renaming_a_gone_or_forgotten_domain_leaves_no_record(xen) -> None:
    tmp_path, table = xen
    be = backend(tmp_path)
    await make(be, tmp_path, "ndx-pool-p-3")
    xl("destroy", "ndx-pool-p-3")  # destroyed behind the backend's back
    with pytest.raises(DomainNotFound):
        await be.rename("ndx-pool-p-3", "nomad-web-3")
    await be.forget("ndx-pool-p-3")
    with pytest.raises(DomainNotFound):
        await be.rename("ndx-pool-p-3", "nomad-web-3")  # forgotten: not even tried
    assert list((tmp_path / "domains").iterdir()) == []


async def test_a_taken_name_is_refused_and_the_domain_keeps_its_own(xen) -> None:
    tmp_path, table = xen
    be = backend(tmp_path)
    a = await make(be, tmp_path, "ndx-pool-p-4")
    b = await make(be, tmp_path, "nomad-web-4")
    with pytest.raises(DomainExists):
        await be.rename("ndx-pool-p-4", "nomad-web-4")
    assert listed(table) == {"ndx-pool-p-4": a, "nomad-web-4": b}
    assert (await be.domain("nomad-web-4")).domid == b  # calls still reach the right domains
    assert (await be.domain("ndx-pool-p-4")).domid == a


async def test_a_new_domain_under_an_old_name_is_not_sent_to_the_renamed_one(xen) -> None:
    """A stale record (its domain destroyed while no plugin ran) must not redirect calls for a
    new domain that reuses the driver's name."""
    tmp_path, table = xen
    be = backend(tmp_path)
    await make(be, tmp_path, "ndx-pool-p-5")
    await be.rename("ndx-pool-p-5", "nomad-web-5")
    other = await make(be, tmp_path, "nomad-other")
    be.names.record("ndx-pool-p-6", "nomad-other")  # a stale record pointing at another domain
    domid = await make(be, tmp_path, "ndx-pool-p-6")
    assert (await be.domain("ndx-pool-p-6")).domid == domid != other


async def test_a_destroy_during_a_rename_waits_for_it_and_destroys_the_domain(xen, monkeypatch) -> None:
    """The race a testbed run hit: the destroy tried the shown name before ``xl rename`` got there
    and the driver's name after it had, found neither, and left the guest running."""
    tmp_path, table = xen
    be = backend(tmp_path)
    await make(be, tmp_path, "ndx-pool-p-7")
    monkeypatch.setenv("FAKE_XL_RENAME_DELAY", "0.5")
    renaming = asyncio.ensure_future(be.rename("ndx-pool-p-7", "nomad-web-7"))
    run = be.run

    async def run_then_let_the_rename_finish(*args: str, **kw: object):  # type: ignore[no-untyped-def]
        call = await run(*args, **kw)  # type: ignore[arg-type]
        if args[:2] == ("destroy", "nomad-web-7") and call.rc != 0:
            await renaming  # the worst moment for it to land: between the two names
        return call

    be.run = run_then_let_the_rename_finish  # type: ignore[method-assign]
    while be.names.shown("ndx-pool-p-7") != "nomad-web-7":
        await asyncio.sleep(0.01)  # the rename is under way (recorded, xl not done)
    await be.destroy("ndx-pool-p-7")
    await renaming
    assert listed(table) == {}
