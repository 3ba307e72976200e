"""Log records have the shape go-plugin's stderr parser needs (docs/PROTOCOL.md §3)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from xen_driver import logging as xlog

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
GO_LEVELS = {"trace", "debug", "info", "warn", "error"}


def parse_like_go_plugin(line: str) -> dict:
    """What go-plugin requires of a JSON line, or it logs the raw line at DEBUG / panics."""
    assert "\n" not in line
    assert len(line.encode()) < 64 * 1024
    record = json.loads(line)
    assert isinstance(record, dict)
    for key in ("@message", "@level", "@timestamp"):
        assert isinstance(record[key], str), f"{key} must be a JSON string (a non-string kills the agent)"
    assert record["@level"] in GO_LEVELS
    assert TS.match(record["@timestamp"]), record["@timestamp"]
    return record


@pytest.fixture
def stream():
    buf = io.StringIO()
    xlog.configure(level="trace", stream=buf, install_hooks=False)
    yield buf
    xlog.configure(level="debug", install_hooks=False)


def lines(buf: io.StringIO) -> list[dict]:
    return [parse_like_go_plugin(line) for line in buf.getvalue().splitlines()]


def test_levels_map_onto_go_hclog_names(stream):
    log = xlog.get_logger("t")
    log.trace("a")
    log.debug("b")
    log.info("c")
    log.warn("d")
    log.warning("e")
    log.error("f")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("g")
    got = [(r["@message"], r["@level"]) for r in lines(stream)]
    assert got == [
        ("a", "trace"),
        ("b", "debug"),
        ("c", "info"),
        ("d", "warn"),
        ("e", "warn"),
        ("f", "error"),
        ("g", "error"),
    ]
    assert "RuntimeError: boom" in lines(stream)[-1]["traceback"]


def test_special_keys_are_always_strings(stream):
    log = xlog.get_logger("t")
    log.info(12345, count=3)  # a non-string event
    log.info("x", **{"@level": 7, "@timestamp": None, "@message": {"a": 1}})  # callers cannot break them
    first, second = lines(stream)
    assert first["@message"] == "12345" and first["count"] == 3
    assert second["@level"] == "info" and second["@message"] == "x"
    assert second["_@level"] == 7


def test_timestamp_has_six_digits_even_on_whole_seconds():
    import datetime as dt

    assert xlog.timestamp(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2024-01-02T03:04:05.000000Z"


def test_level_filter(stream):
    xlog.configure(level="warn", stream=stream, install_hooks=False)
    log = xlog.get_logger()
    log.info("hidden")
    log.warn("shown")
    assert [r["@message"] for r in lines(stream)] == ["shown"]


def test_huge_records_stay_below_the_go_plugin_buffer(stream):
    xlog.get_logger().info("big", blob="x" * 200_000, nested={"more": ["y" * 100_000]})
    (record,) = lines(stream)
    assert record["@message"] == "big" and "chars cut" in record["blob"]


def test_multiline_values_stay_on_one_line(stream):
    xlog.get_logger().error("multi\nline", detail="a\nb")
    (record,) = lines(stream)
    assert record["@message"] == "multi\nline"


def test_stdlib_logging_is_bridged(stream):
    import logging

    logging.getLogger("grpc._server").error("from stdlib")
    (record,) = lines(stream)
    assert record["@message"] == "from stdlib" and record["@level"] == "error" and record["@module"] == "grpc._server"


def test_writes_survive_a_closed_pipe(tmp_path):
    r, w = os.pipe()
    os.close(r)  # nobody reads any more: writes fail with EPIPE
    stream = os.fdopen(w, "w")
    fallback = tmp_path / "fallback.log"
    writer = xlog.configure(level="debug", stream=stream, fallback_path=str(fallback), install_hooks=False)
    try:
        log = xlog.get_logger()
        log.info("first")  # raises nothing
        log.error("second")
        assert writer.broken
        assert [parse_like_go_plugin(x)["@message"] for x in fallback.read_text().splitlines()] == ["first", "second"]
    finally:
        xlog.configure(level="debug", install_hooks=False)
        try:
            stream.close()
        except OSError:
            pass


def test_uncaught_exception_is_one_error_record():
    code = "from xen_driver import logging as l\nl.configure()\ndef f():\n    raise ValueError('bad thing')\nf()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    out = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(out) == 1, proc.stderr
    record = parse_like_go_plugin(out[0])
    assert record["@level"] == "error" and record["error"] == "ValueError: bad thing"
    assert "Traceback" in record["traceback"]
