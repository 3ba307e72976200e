"""The go-plugin handshake as a plugin process sees it (docs/PROTOCOL.md §1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class HandshakeConfig:
    """What a host and its plugins agree on before any RPC."""

    cookie_key: str
    cookie_value: str
    app_protocol_version: int
    core_protocol_version: int = 1


#: Nomad's values (unchanged since Nomad 0.9).
NOMAD_HANDSHAKE = HandshakeConfig(
    cookie_key="NOMAD_PLUGIN_MAGIC_COOKIE",
    cookie_value="e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
    app_protocol_version=2,
)

NOT_A_PROGRAM = (
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically\n"
)
MISCONFIGURED = "Misconfigured plugin handshake: the magic cookie key or value is empty\n"


class HandshakeError(Exception):
    """The host and this plugin cannot talk (wrong cookie, no common protocol version)."""


def check_cookie(config: HandshakeConfig, environ: Mapping[str, str]) -> None:
    """Raise HandshakeError unless the host's magic cookie is in the environment."""
    if not config.cookie_key or not config.cookie_value:
        raise HandshakeError(MISCONFIGURED)
    if environ.get(config.cookie_key) != config.cookie_value:
        raise HandshakeError(NOT_A_PROGRAM)


def negotiate_version(config: HandshakeConfig, environ: Mapping[str, str]) -> int:
    """The app protocol version to announce; the host lists what it accepts in
    ``PLUGIN_PROTOCOL_VERSIONS`` (absent: the host takes our single version)."""
    offered = environ.get("PLUGIN_PROTOCOL_VERSIONS", "").strip()
    if not offered:
        return config.app_protocol_version
    versions = set()
    for part in offered.split(","):
        try:
            versions.add(int(part.strip()))
        except ValueError:
            continue
    if config.app_protocol_version not in versions:
        raise HandshakeError(
            f"incompatible plugin protocol: the host accepts versions {offered}, "
            f"this plugin speaks {config.app_protocol_version}\n"
        )
    return config.app_protocol_version


def handshake_line(
    config: HandshakeConfig,
    network: str,
    address: str,
    app_version: int | None = None,
    *,
    multiplex: bool | None = None,
) -> str:
    """``CORE|APP|NETWORK|ADDR|grpc|`` plus a newline.

    The sixth field (server certificate) stays empty: Nomad does not use AutoMTLS. The seventh
    (broker multiplexing) is only written when the host asked for it, because older hosts would
    glue it onto the sixth.
    """
    if "|" in address or "\n" in address:
        raise ValueError(f"address {address!r} cannot be sent in a handshake line")
    fields = [
        str(config.core_protocol_version),
        str(app_version if app_version is not None else config.app_protocol_version),
        network,
        address,
        "grpc",
        "",
    ]
    if multiplex is not None:
        fields.append("true" if multiplex else "false")
    return "|".join(fields) + "\n"
