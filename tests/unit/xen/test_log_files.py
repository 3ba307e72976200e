"""The driver's own log files (log_collection = "driver"): Nomad's names, rotation, resumption, and
no writing through what a job could plant in its allocation's log directory."""

from __future__ import annotations

import os

import pytest

from xen_driver.xen.sinks import RotatingFileSink, SinkUnavailable


def files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


async def test_writes_nomads_log_file_names_and_rotates_keeping_max_files(tmp_path):
    sink = RotatingFileSink(tmp_path / "web.stdout", max_files=2, max_bytes=10)
    for piece in (b"aaaa\n", b"bbbb\n", b"cccc\n", b"dddd\n", b"eeee\n"):
        await sink.write(piece)
    await sink.close()
    # 10 bytes per file: a piece that would pass it starts the next file; only the newest 2 stay.
    assert files(tmp_path) == {"web.stdout.1": b"cccc\ndddd\n", "web.stdout.2": b"eeee\n"}


async def test_a_successor_appends_to_the_newest_file(tmp_path):
    (tmp_path / "web.stdout.0").write_bytes(b"old\n")
    (tmp_path / "web.stdout.3").write_bytes(b"new\n")
    (tmp_path / "web.stdout.fifo-ish").write_bytes(b"not ours\n")
    sink = RotatingFileSink(tmp_path / "web.stdout", max_files=5, max_bytes=1 << 20)
    await sink.write(b"more\n")
    await sink.close()
    assert (tmp_path / "web.stdout.3").read_bytes() == b"new\nmore\n"
    assert (tmp_path / "web.stdout.0").read_bytes() == b"old\n"


async def test_a_piece_larger_than_max_bytes_goes_whole_into_a_file_of_its_own(tmp_path):
    sink = RotatingFileSink(tmp_path / "t.stdout", max_files=3, max_bytes=4)
    await sink.write(b"12345678")  # never split: the offset commits whole pieces
    await sink.write(b"9")
    await sink.close()
    assert files(tmp_path) == {"t.stdout.0": b"12345678", "t.stdout.1": b"9"}


async def test_a_symlink_under_a_log_name_is_refused_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    logs = tmp_path / "logs"
    logs.mkdir()
    os.symlink(target, logs / "t.stdout.0")
    sink = RotatingFileSink(logs / "t.stdout", max_files=3, max_bytes=100)
    with pytest.raises(SinkUnavailable, match="symbolic link"):
        await sink.write(b"x")
    assert target.read_bytes() == b""


async def test_a_directory_under_a_log_name_is_refused(tmp_path):
    (tmp_path / "t.stdout.0").mkdir()
    sink = RotatingFileSink(tmp_path / "t.stdout", max_files=3, max_bytes=100)
    with pytest.raises(SinkUnavailable, match="not a plain file"):
        await sink.write(b"x")


async def test_a_removed_log_directory_is_unavailable_not_an_error(tmp_path):
    sink = RotatingFileSink(tmp_path / "gone" / "t.stdout", max_files=3, max_bytes=100)
    with pytest.raises(SinkUnavailable, match="allocation is gone"):
        await sink.write(b"x")


def test_limits_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        RotatingFileSink(tmp_path / "t.stdout", max_files=0, max_bytes=1)
