"""Value checks shared by the plugin, task and pool configurations: Go duration strings, strings
that end up inside a quoted xl.cfg value, paths, bounded integers and choices.

Each check takes the scope (``plugin config`` or ``task config``) and the field's name, and either
returns the value in its typed form or raises a :class:`ConfigError` saying what is accepted.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from xen_driver.driver.errors import ConfigError

# ---- durations ---------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
DURATION_HINT = 'must be a duration such as "500ms", "30s" or "2m"'


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("1m30s", "500ms", "0") into seconds; ValueError if invalid."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


# ---- value checks ------------------------------------------------------------------------------

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_SCRIPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Characters that would end, escape or comment out a quoted xl.cfg string, plus anything that is
# not printable ASCII: such values are refused instead of escaped (see xen/spec.py).
_XL_UNSAFE = frozenset("\"'\\#")


def _unsafe_char(value: str) -> str | None:
    for ch in value:
        if ch in _XL_UNSAFE or ord(ch) < 0x20 or ord(ch) >= 0x7F:
            return ch
    return None


def _char_name(ch: str) -> str:
    names = {'"': "double quotes", "'": "single quotes", "\\": "backslashes", "#": "'#'", "\n": "newlines"}
    return names.get(ch, f"U+{ord(ch):04X}")


def _xl_string(scope: str, name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(scope, name, value, "must be a string")
    if not value and not allow_empty:
        raise ConfigError(scope, name, value, "must not be empty")
    bad = _unsafe_char(value)
    if bad is not None:
        raise ConfigError(
            scope,
            name,
            value,
            f"must be printable ASCII without quotes, backslashes or '#' (found {_char_name(bad)})",
        )
    return value


def _plain_string(scope: str, name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(scope, name, value, "must be a string")
    if not value and not allow_empty:
        raise ConfigError(scope, name, value, "must not be empty")
    if "\x00" in value:
        raise ConfigError(scope, name, value, "must not contain NUL characters")
    return value


def _abs_dir(scope: str, name: str, value: Any) -> str:
    path = _xl_string(scope, name, value)
    if not path.startswith("/"):
        raise ConfigError(scope, name, value, "must be an absolute path")
    return posixpath.normpath(path)


def _integer(scope: str, name: str, value: Any, lo: int, hi: int) -> int:
    accepted = f"must be an integer between {lo} and {hi}"
    if isinstance(value, bool) or value is None:
        raise ConfigError(scope, name, value, accepted)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value)
        except Exception:
            raise ConfigError(scope, name, value, accepted) from None
        if not d.is_finite() or d != d.to_integral_value():
            raise ConfigError(scope, name, value, accepted)
        number = int(d)
    else:
        raise ConfigError(scope, name, value, accepted)
    if not lo <= number <= hi:
        raise ConfigError(scope, name, value, accepted)
    return number


def _choice(scope: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(scope, name, value, "must be one of " + ", ".join(f'"{c}"' for c in choices))
    return value


def _duration(scope: str, name: str, value: Any, lo: float, hi: float) -> float:
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        raise ConfigError(scope, name, value, DURATION_HINT) from None
    if not lo <= seconds <= hi:
        raise ConfigError(scope, name, value, f"must be a duration between {_fmt_s(lo)} and {_fmt_s(hi)}")
    return seconds


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


def _relative_path(scope: str, name: str, value: Any) -> str:
    path = _xl_string(scope, name, value)
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ConfigError(scope, name, value, "must be a path relative to the task directory that stays inside it")
    return norm


def _get(data: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> Any:
    value = data.get(key)
    return defaults.get(key) if value is None else value
