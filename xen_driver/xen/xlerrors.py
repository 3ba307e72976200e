"""How the ``xl`` backend (:mod:`.xl`, which re-exports these names) reads xl's failures, the
exceptions it raises for them, and its record of one ``xl`` call."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from xen_driver.xen.backend import BackendUnavailable, DomainRefused, XenBackendError

_NOT_FOUND_RE = re.compile(
    r"invalid domain identifier|not found|no such domain|unable to find domain info", re.IGNORECASE
)
_EXISTS_RE = re.compile(r"already exists", re.IGNORECASE)
#: What libxl says when it will never build this domain, however often it is asked: the kernel is
#: no loadable PV image, or a setting is impossible on this host.  Anything else (a timeout, a
#: hotplug script, memory that ballooning did not free in time) may pass, and stays retryable.
_REFUSED_RE = re.compile(
    r"no loader found|xc_dom_parse_image failed|invalid kernel|xc_dom_kernel_(file|mem) failed"
    r"|failed to parse config|vcpu hard affinity map is empty|elf_xen_note_check",
    re.IGNORECASE,
)


class XlError(XenBackendError):
    """``xl`` ran and failed."""

    def __init__(self, argv: Sequence[str], rc: int | None, stderr: str, message: str | None = None):
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        tail = _last_lines(stderr)
        text = message or f"`{' '.join(self.argv)}` exited with status {rc}"
        super().__init__(f"{text}: {tail}" if tail else text)


class XlRefused(XlError, DomainRefused):
    """``xl create`` failed in a way that retrying cannot fix (see ``_REFUSED_RE``)."""


class XlTimeout(XlError):
    """``xl`` did not finish within its deadline and was killed."""


class XlNotFound(BackendUnavailable):
    """The ``xl`` executable is not installed (or not on PATH)."""


@dataclass(frozen=True)
class XlCall:
    """One finished ``xl`` invocation, for timing logs and tests."""

    argv: tuple[str, ...]
    rc: int | None
    stdout: str
    stderr: str
    duration_s: float


# ---------------------------------------------------------------- parsing
_CLEANUP_RE = re.compile(r"destroy|destruction|non-existant domain|non-existent domain", re.IGNORECASE)


def _last_lines(text: str, n: int = 3) -> str:
    """The last ``n`` lines of xl's stderr that say why it failed (clean-up chatter skipped)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    causes = [ln for ln in lines if not _CLEANUP_RE.search(ln)]
    return " | ".join((causes or lines)[-n:])
