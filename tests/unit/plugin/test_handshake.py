"""The go-plugin handshake: line format, version negotiation, cookie refusal."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from xen_driver.plugin.handshake import (
    NOMAD_HANDSHAKE,
    HandshakeConfig,
    HandshakeError,
    check_cookie,
    handshake_line,
    negotiate_version,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_line_is_what_go_plugin_parses():
    line = handshake_line(NOMAD_HANDSHAKE, "unix", "/tmp/plugin123")
    assert line == "1|2|unix|/tmp/plugin123|grpc|\n"
    core, app, network, addr, proto, cert = line.rstrip("\n").split("|")
    assert (core, app, network, addr, proto, cert) == ("1", "2", "unix", "/tmp/plugin123", "grpc", "")


def test_multiplex_field_only_when_asked():
    assert handshake_line(NOMAD_HANDSHAKE, "unix", "/s", multiplex=False) == "1|2|unix|/s|grpc||false\n"
    with pytest.raises(ValueError):
        handshake_line(NOMAD_HANDSHAKE, "unix", "/a|b")


@pytest.mark.parametrize(
    "offered,ok", [("", True), ("2", True), ("1,2", True), (" 2 , 3", True), ("1", False), ("3,x", False)]
)
def test_version_negotiation(offered, ok):
    env = {"PLUGIN_PROTOCOL_VERSIONS": offered} if offered else {}
    if ok:
        assert negotiate_version(NOMAD_HANDSHAKE, env) == 2
    else:
        with pytest.raises(HandshakeError, match="incompatible plugin protocol"):
            negotiate_version(NOMAD_HANDSHAKE, env)


def test_cookie_check():
    check_cookie(NOMAD_HANDSHAKE, {NOMAD_HANDSHAKE.cookie_key: NOMAD_HANDSHAKE.cookie_value})
    with pytest.raises(HandshakeError, match="This binary is a plugin"):
        check_cookie(NOMAD_HANDSHAKE, {NOMAD_HANDSHAKE.cookie_key: "nope"})
    with pytest.raises(HandshakeError, match="Misconfigured"):
        check_cookie(HandshakeConfig("", "", 2), {})


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_PLUGIN", "PLUGIN_"))}
    env["PYTHONPATH"] = REPO
    env.update(extra)
    return env


@pytest.mark.parametrize("cookie", [None, "wrong"], ids=["no-cookie", "wrong-cookie"])
def test_run_by_a_person_is_refused(cookie):
    env = _env() if cookie is None else _env(NOMAD_PLUGIN_MAGIC_COOKIE=cookie)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "xen_driver"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""  # no handshake line
    assert proc.stderr.startswith("This binary is a plugin.")
    assert len(proc.stderr.splitlines()) <= 4
    assert time.monotonic() - start < 10


def test_host_without_our_protocol_version_gets_no_handshake():
    env = _env(NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_HANDSHAKE.cookie_value, PLUGIN_PROTOCOL_VERSIONS="1")
    proc = subprocess.run([sys.executable, "-m", "xen_driver"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert '"@level":"error"' in proc.stderr and "incompatible plugin protocol" in proc.stderr
