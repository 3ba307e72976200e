"""The fake hypervisor's domain table: one JSON file, shared by the fake ``xl`` processes and the
fake xenstored, serialised with ``flock``.  Standard library only: the fake ``xl`` imports it
at every call."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

#: Xen's shutdown codes, and the letter ``xl list`` prints for each.
REASON_LETTERS = {0: "-", 1: "r", 2: "s", 3: "c", 4: "w", 5: "S"}


class DomainTable:
    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, "domains.json")
        self.lock_path = os.path.join(root, "domains.lock")

    @contextlib.contextmanager
    def locked(self, write: bool = True) -> Iterator[dict]:
        """The table (``{"next_domid": n, "domains": {domid: {...}}}``), locked; saved on exit
        when ``write``."""
        os.makedirs(self.root, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                with open(self.path) as fh:
                    table = json.load(fh)
            except FileNotFoundError:
                table = {"next_domid": 1, "domains": {}}
            yield table
            if write:
                tmp = self.path + f".{os.getpid()}.tmp"
                with open(tmp, "w") as fh:
                    json.dump(table, fh, separators=(",", ":"))
                os.replace(tmp, self.path)

    def snapshot(self) -> dict[str, dict]:
        with self.locked(write=False) as table:
            return table["domains"]

    def by_name(self, table: dict, name: str) -> dict | None:
        for dom in table["domains"].values():
            if dom["name"] == name:
                return dom
        if name.isdigit() and name in table["domains"]:
            return table["domains"][name]
        return None

    def guest_shutdown(self, domid: int, reason: int) -> bool:
        """The guest of ``domid`` shuts down with ``reason`` (it ignores the request when its
        command line says ``ignore-shutdown``); True when its state changed."""
        with self.locked() as table:
            dom = table["domains"].get(str(domid))
            if dom is None or dom["state"] in ("s", "d"):
                return False
            if "ignore-shutdown" in dom.get("cmdline", "") and reason in (0, 1, 2):
                return False
            dom["state"], dom["reason"] = "s", reason
            dom["cpu_frozen"] = cpu_seconds(dom)
            return True


def cpu_seconds(dom: dict) -> float:
    """A guest's CPU time: ``burn=<pct>`` on its command line spins for that share of a CPU."""
    if "cpu_frozen" in dom:
        return dom["cpu_frozen"]
    pct = 0.0
    for word in dom.get("cmdline", "").split():
        if word.startswith("burn="):
            with contextlib.suppress(ValueError):
                pct = float(word[5:])
    running = 0.0 if dom["state"] == "p" else time.time() - dom.get("unpaused_at", dom["created_at"])
    return round(0.01 + running * pct / 100.0, 3)
