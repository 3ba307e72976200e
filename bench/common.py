"""What the testbed benchmarks share, so every side of a comparison is measured the same way.

Stdlib only: the dom0 halves of the benchmarks import it from the repository (``/src``) too.
"""

from __future__ import annotations

import statistics
import threading
import time

MARKER = b"NDX-GUEST READY"
CONSOLE = "/var/log/xen/console"


class MarkerPoller:
    """The one way every side waits: poll the guest's console log for the marker every 2 ms."""

    def __init__(self, name: str, *, marker: bytes = MARKER, console_dir: str = CONSOLE) -> None:
        self.path = f"{console_dir}/guest-{name}.log"
        self.marker = marker
        self.seen: float | None = None
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop and self.seen is None:
            try:
                with open(self.path, "rb") as fh:
                    if self.marker in fh.read():
                        self.seen = time.monotonic()
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.002)

    def wait(self, timeout: float = 300) -> float:
        self.thread.join(timeout)
        self.stop = True
        if self.seen is None:
            raise SystemExit(f"{self.path}: no boot marker")
        return self.seen


def spread_ms(samples: list[float]) -> dict:
    """Median, quartiles and extremes of samples in seconds, in ms."""
    ms = sorted(x * 1000 for x in samples)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {
        "median": round(statistics.median(ms), 1),
        "min": round(ms[0], 1),
        "p25": round(q[0], 1),
        "p75": round(q[2], 1),
        "max": round(ms[-1], 1),
        "samples": [round(x, 1) for x in ms],
    }
