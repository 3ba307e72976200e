"""Replace a small file whole: readers see the old content or the new, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_text_atomically(path: Path, text: str, *, durable: bool = False, encoding: str = "ascii") -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path`` (mode 0600,
    from ``mkstemp``).  ``durable``: flushed to disk before the rename, so the new content
    survives a host crash once this returns."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
