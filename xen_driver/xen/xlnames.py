"""The name ``xl list`` shows for a domain the driver knows under another name.

A pool member is built as ``ndx-pool-<profile>-...``.  Once a task has claimed it and it runs,
the driver has it renamed (``xl rename``) to the task's domain name, so an operator's ``xl list``
says whose guest it is.  The driver keeps addressing the domain by the name it was built with:
that name is in the task's handle, names its files and its console log.  This table maps the
driver's name to the shown one and back.

It is kept in the backend's configuration directory, one ``<name>.shown`` file beside
``<name>.cfg``, and a rename is recorded *before* ``xl rename`` runs.  A plugin that stops at any
point therefore finds the domain under one of the two names it knows:

* a call by the driver's name goes to the shown name first and, when xl does not know that one
  (the rename is still under way, or stopped before xl ran), to the driver's name;
* a listing reports a shown name as the driver's name, so nothing above the backend (the exit
  watcher, the stats sampler, the pool's adoption, recovery) ever sees the rename.
"""

from __future__ import annotations

from pathlib import Path

from xen_driver.xen.atomic import write_text_atomically
from xen_driver.xen.spec import check_name

SUFFIX = ".shown"


class ShownNames:
    """Driver name → shown name, persisted in ``directory`` (loaded on first use)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._shown: dict[str, str] | None = None
        self._keys: dict[str, str] = {}

    def _table(self) -> dict[str, str]:
        if self._shown is None:
            shown: dict[str, str] = {}
            if self.directory.is_dir():
                for entry in self.directory.iterdir():
                    if not entry.name.endswith(SUFFIX) or entry.name.startswith("."):
                        continue
                    try:
                        value = entry.read_text(encoding="ascii").strip()
                        check_name("name", value)
                    except (OSError, ValueError):
                        continue  # unreadable or not a domain name: the driver's name stands
                    shown[entry.name[: -len(SUFFIX)]] = value
            self._shown = shown
            self._keys = {v: k for k, v in shown.items()}
        return self._shown

    def shown(self, name: str) -> str:
        """The name ``xl`` should find ``name`` under (itself when it was never renamed)."""
        return self._table().get(name, name)

    def targets(self, name: str) -> tuple[str, ...]:
        """The names to try for ``name``, most likely first."""
        shown = self.shown(name)
        return (name,) if shown == name else (shown, name)

    def key(self, shown: str) -> str:
        """The driver's name for a name ``xl list`` printed."""
        self._table()
        return self._keys.get(shown, shown)

    def __bool__(self) -> bool:
        return bool(self._table())

    def record(self, name: str, shown: str) -> None:
        """Remember that ``name`` is (about to be) shown as ``shown``; durable before it returns."""
        check_name("name", name)
        check_name("shown_as", shown)
        table = self._table()
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.directory / f"{name}{SUFFIX}", shown + "\n", durable=True)
        old = table.get(name)
        if old is not None:
            self._keys.pop(old, None)
        table[name] = shown
        self._keys[shown] = name

    def drop(self, name: str) -> None:
        """Forget ``name``'s shown name (the domain is gone, or was never renamed)."""
        table = self._table()
        shown = table.pop(name, None)
        if shown is not None:
            self._keys.pop(shown, None)
        try:
            (self.directory / f"{name}{SUFFIX}").unlink()
        except FileNotFoundError:
            pass
