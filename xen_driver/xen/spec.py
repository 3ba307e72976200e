"""What the driver asks a backend to create: a toolstack-neutral description of one PV domain.

Most values here come from a Nomad job, i.e. from a user we do not trust with a root shell on
the host.  :meth:`DomainSpec.validate` therefore checks every field against an allow-list
before any backend renders it (xl.cfg text or libvirt XML).  The rules are deliberately
stricter than Xen's: a job never needs a quote, a backslash or a control character in a kernel
path or a bridge name, and refusing them removes whole classes of injection bugs from every
renderer at once.  Each refusal is a :class:`SpecError` that names the field and the offending
character, because the message ends up in ``nomad job status`` where the user must be able to
act on it.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field

#: ``on_poweroff`` / ``on_reboot`` / ``on_crash`` actions that xl.cfg(5) documents.
SHUTDOWN_ACTIONS = frozenset(
    {
        "destroy",
        "restart",
        "rename-restart",
        "preserve",
        "coredump-destroy",
        "coredump-restart",
        "soft-reset",
    }
)

#: Longest domain name we create.  Xen has no hard limit, but the name is also a file name
#: (``guest-<name>.log``) and shows up in every ``xl list``; 64 leaves room for both.
MAX_NAME_LEN = 64
#: Xen's MAX_GUEST_CMDLINE is 1024 bytes including the terminating NUL.
MAX_CMDLINE_LEN = 1023
#: Linux IFNAMSIZ is 16 including the NUL.
MAX_IFNAME_LEN = 15

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_CPUS_RE = re.compile(r"all|\^?[0-9]+(-[0-9]+)?(,\^?[0-9]+(-[0-9]+)?)*")
_SCRIPT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Characters allowed in host paths: enough for any sane image directory, nothing that is
# syntax in xl.cfg (quotes, '#', ',', '=', '[', ']') or a shell.
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@:")


class SpecError(ValueError):
    """A DomainSpec field holds a value we refuse to hand to the toolstack."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


def describe_char(ch: str) -> str:
    """A readable name for a refused character, e.g. ``double quote '"' (U+0022)``."""
    names = {
        '"': "double quote",
        "'": "single quote",
        "\\": "backslash",
        "\n": "newline",
        "\r": "carriage return",
        "\t": "tab",
        "#": "'#' (comment start in xl.cfg)",
        ",": "',' (separator in vif specs)",
        "=": "'=' (separator in vif specs)",
        " ": "space",
        "\x00": "NUL",
    }
    code = f"U+{ord(ch):04X}"
    if ch in names:
        return f"{names[ch]} ({code})"
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"control character ({code})"
    if ord(ch) > 0x7E:
        return f"non-ASCII character {ch!r} ({code})"
    return f"character {ch!r} ({code})"


def check_quotable(field_name: str, value: str, *, in_vif: bool = False) -> None:
    """Refuse anything that could end or escape a quoted xl.cfg string, or start a comment.

    xl's lexer (libxlu) accepts ``"..."`` and ``'...'`` strings with C-style backslash escapes
    and treats ``#`` as a comment start outside strings.  We never emit escapes: a value that
    would need one is rejected instead, so what the user wrote is exactly what Xen sees.
    Inside a vif spec ``,`` and ``=`` separate ``key=value`` pairs and are refused too.
    """
    if not isinstance(value, str):
        raise SpecError(field_name, f"must be a string, not {type(value).__name__}")
    forbidden = {'"', "'", "\\", "#"}
    if in_vif:
        forbidden |= {",", "="}
    for pos, ch in enumerate(value):
        if ch in forbidden or ord(ch) < 0x20 or ord(ch) == 0x7F or ord(ch) > 0x7E:
            raise SpecError(field_name, f"{describe_char(ch)} at position {pos} is not allowed")


def check_name(field_name: str, value: str) -> None:
    """Xen domain names as we create them: ``[A-Za-z0-9][A-Za-z0-9_.-]*``, not all digits.

    All-digit names are refused because ``xl`` takes a number as a domid; a leading ``-`` would
    be taken as an option; ``Domain-0`` is the control domain.
    """
    check_quotable(field_name, value)
    if not value:
        raise SpecError(field_name, "must not be empty")
    if len(value) > MAX_NAME_LEN:
        raise SpecError(field_name, f"is {len(value)} characters long; at most {MAX_NAME_LEN} are allowed")
    if not _NAME_RE.fullmatch(value):
        bad = next((c for c in value if not (c.isalnum() or c in "_.-")), value[0])
        raise SpecError(
            field_name,
            f"{describe_char(bad)} is not allowed; use letters, digits, '_', '.', '-' and start with a letter or digit",
        )
    if value.isdigit():
        raise SpecError(field_name, "must not be all digits (xl would read it as a domain id)")
    if value.lower() == "domain-0":
        raise SpecError(field_name, "Domain-0 is the control domain")


def sanitize_name(text: str, *, prefix: str = "", max_len: int = MAX_NAME_LEN) -> str:
    """Turn arbitrary text (a Nomad task id ``<alloc>/<task>/<rand>``) into a valid domain name.

    Characters outside ``[A-Za-z0-9_.-]`` become ``-``; runs of ``-`` collapse.  When the result
    is too long it is cut and an 8-hex-digit hash of the *whole* input is appended, so two
    different long inputs still give different names.  The result passes :func:`check_name`.
    """
    import hashlib

    body = re.sub(r"[^A-Za-z0-9_.-]+", "-", prefix + text).strip("-.") or "domain"
    body = re.sub(r"-{2,}", "-", body)
    if not body[0].isalnum():
        body = "d" + body
    if len(body) > max_len or body.isdigit() or body.lower() == "domain-0":
        digest = hashlib.sha256((prefix + text).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        body = f"{body[: max_len - 9].rstrip('-.')}-{digest}"
    check_name("name", body)
    return body


def check_abs_path(field_name: str, value: str) -> None:
    """An absolute, normalised host path made of ordinary file-name characters."""
    check_quotable(field_name, value)
    if not value.startswith("/"):
        raise SpecError(field_name, f"must be an absolute path, got {value!r}")
    for pos, ch in enumerate(value):
        if ch not in _PATH_CHARS:
            raise SpecError(field_name, f"{describe_char(ch)} at position {pos} is not allowed in a path")
    parts = value.split("/")
    if ".." in parts or "." in parts:
        raise SpecError(field_name, f"must not contain '.' or '..' components, got {value!r}")
    if "//" in value or (len(value) > 1 and value.endswith("/")):
        raise SpecError(field_name, f"must be a normalised file path, got {value!r}")


def check_ifname(field_name: str, value: str) -> None:
    """A Linux network interface name (bridges, vifname)."""
    check_quotable(field_name, value, in_vif=True)
    if not value or len(value) > MAX_IFNAME_LEN:
        raise SpecError(field_name, f"must be 1..{MAX_IFNAME_LEN} characters, got {len(value)}")
    if not _IFNAME_RE.fullmatch(value):
        bad = next((c for c in value if not (c.isalnum() or c in "_.-")), value[0])
        raise SpecError(field_name, f"{describe_char(bad)} is not allowed in an interface name")


def check_mac(field_name: str, value: str) -> None:
    """A unicast MAC ``xx:xx:xx:xx:xx:xx``; a multicast MAC on a vif breaks the bridge's FDB."""
    check_quotable(field_name, value, in_vif=True)
    if not _MAC_RE.fullmatch(value):
        raise SpecError(field_name, f"must look like 00:16:3e:xx:xx:xx, got {value!r}")
    if int(value[:2], 16) & 1:
        raise SpecError(field_name, f"{value} is a multicast address; a vif needs a unicast MAC")


@dataclass(frozen=True)
class VifSpec:
    """One PV network interface.  ``None`` fields are left to the toolstack's defaults."""

    bridge: str | None = None
    mac: str | None = None
    ip: str | None = None  # one or more addresses separated by spaces (vif-route scripts use it)
    script: str | None = None  # absolute path, or a script name under the toolstack's scripts dir
    vifname: str | None = None

    def validate(self, prefix: str) -> None:
        if self.bridge is not None:
            check_ifname(f"{prefix}.bridge", self.bridge)
        if self.mac is not None:
            check_mac(f"{prefix}.mac", self.mac)
        if self.ip is not None:
            check_quotable(f"{prefix}.ip", self.ip, in_vif=True)
            addrs = self.ip.split(" ")
            if not self.ip or any(not a for a in addrs):
                raise SpecError(f"{prefix}.ip", f"must be addresses separated by single spaces, got {self.ip!r}")
            for addr in addrs:
                try:
                    ipaddress.ip_address(addr)
                except ValueError:
                    raise SpecError(f"{prefix}.ip", f"{addr!r} is not an IPv4 or IPv6 address") from None
        if self.script is not None:
            check_quotable(f"{prefix}.script", self.script, in_vif=True)
            if self.script.startswith("/"):
                check_abs_path(f"{prefix}.script", self.script)
            elif not _SCRIPT_NAME_RE.fullmatch(self.script) or self.script in (".", ".."):
                raise SpecError(
                    f"{prefix}.script", f"must be an absolute path or a plain script name, got {self.script!r}"
                )
        if self.vifname is not None:
            check_ifname(f"{prefix}.vifname", self.vifname)


@dataclass(frozen=True)
class DomainSpec:
    """A PV domain: kernel, resources, network, and what Xen does when it stops.

    ``on_poweroff``/``on_reboot``/``on_crash`` default to ``preserve``: the driver needs the
    guest's shutdown *reason* (poweroff → exit 0, crash → failure), and Xen keeps the reason
    only while the domain exists.  A preserved domain also survives a plugin restart in its
    shut-down state, so the re-adopting driver still learns how it ended.  The driver destroys
    it after reading the reason.  (The xl backend creates domains without an ``xl`` monitor
    process anyway, see :mod:`xen_driver.xen.xl`, so these keys describe the policy for
    anyone who starts the rendered config by hand.)
    """

    name: str
    kernel: str
    memory_mb: int
    uuid: str | None = None
    ramdisk: str | None = None
    cmdline: str = ""
    maxmem_mb: int | None = None
    vcpus: int = 1
    cpus: str | None = None  # pinning, e.g. "0-1" or "all"
    vifs: tuple[VifSpec, ...] = field(default_factory=tuple)
    on_poweroff: str = "preserve"
    on_reboot: str = "preserve"
    on_crash: str = "preserve"

    def validate(self) -> None:
        """Raise :class:`SpecError` for the first field we refuse; return None if all are fine."""
        check_name("name", self.name)
        if self.uuid is not None:
            try:
                canonical = str(uuidlib.UUID(self.uuid))
            except (ValueError, AttributeError, TypeError):
                raise SpecError("uuid", f"{self.uuid!r} is not a UUID") from None
            if canonical != self.uuid.lower():
                raise SpecError("uuid", f"must be in canonical 8-4-4-4-12 form, got {self.uuid!r}")
        check_abs_path("kernel", self.kernel)
        if self.ramdisk is not None:
            check_abs_path("ramdisk", self.ramdisk)
        check_quotable("cmdline", self.cmdline)
        if len(self.cmdline) > MAX_CMDLINE_LEN:
            raise SpecError("cmdline", f"is {len(self.cmdline)} bytes; Xen allows {MAX_CMDLINE_LEN}")
        _check_int("memory_mb", self.memory_mb, 1, 1 << 22)
        if self.maxmem_mb is not None:
            _check_int("maxmem_mb", self.maxmem_mb, 1, 1 << 22)
            if self.maxmem_mb < self.memory_mb:
                raise SpecError("maxmem_mb", f"({self.maxmem_mb}) is below memory_mb ({self.memory_mb})")
        _check_int("vcpus", self.vcpus, 1, 512)
        if self.cpus is not None:
            check_quotable("cpus", self.cpus)
            if not _CPUS_RE.fullmatch(self.cpus):
                raise SpecError("cpus", f"must be 'all' or a list like '0-3,^2', got {self.cpus!r}")
        if not isinstance(self.vifs, (tuple, list)):
            raise SpecError("vifs", "must be a list of VifSpec")
        for i, vif in enumerate(self.vifs):
            if not isinstance(vif, VifSpec):
                raise SpecError(f"vifs[{i}]", f"must be a VifSpec, not {type(vif).__name__}")
            vif.validate(f"vifs[{i}]")
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            action = getattr(self, key)
            if action not in SHUTDOWN_ACTIONS:
                raise SpecError(key, f"{action!r} is not one of {', '.join(sorted(SHUTDOWN_ACTIONS))}")


def _check_int(field_name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(field_name, f"must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise SpecError(field_name, f"must be between {lo} and {hi}, got {value}")
