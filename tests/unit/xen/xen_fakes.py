"""The xen/ layer's test doubles live in tests/fakes/ (shared with the benchmarks)."""

from tests.fakes.backend import FakeBackend
from tests.fakes.xenstored import FakeXenstored

__all__ = ["FakeBackend", "FakeXenstored"]
