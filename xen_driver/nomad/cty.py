"""cty types and the msgpack encoding Nomad uses for configs (go-cty ``cty/msgpack``).

Nomad evaluates a config block against our hclspec and sends the resulting cty value as msgpack.
Decoding is *type-directed*: a cty number may arrive as any msgpack int width, as a float64 or
as a decimal string, and only the declared type tells a number-as-string from a string. Our
schema builder (:mod:`xen_driver.nomad.hclspec`) knows the type of every node, so the decoder
gets it from there.

Decoded values: ``None`` for null, ``bool``, ``str``, numbers as ``int`` (integral), ``float``
(a float64 on the wire, including infinities) or ``Decimal`` (non-integral decimal text),
``list`` for list/set/tuple, ``dict`` for map/object. Unknown values (never sent for evaluated
configs) decode to :data:`UNKNOWN`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack


class CtyDecodeError(ValueError):
    """The bytes are not a cty-msgpack encoding of the expected type."""


class _Unknown:
    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


#: An unknown cty value (msgpack extension 0, or go-cty's refined-unknown extension 0x0c).
UNKNOWN = _Unknown()
_UNKNOWN_EXT_CODES = (0, 0x0C)


# ---- types ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    name: str  # "string", "number", "bool"

    def hcl(self) -> str:
        return self.name


@dataclass(frozen=True)
class Dynamic:
    def hcl(self) -> str:
        return "any"


@dataclass(frozen=True)
class ListOf:
    element: CtyType

    def hcl(self) -> str:
        return f"list({self.element.hcl()})"


@dataclass(frozen=True)
class SetOf:
    element: CtyType

    def hcl(self) -> str:
        return f"set({self.element.hcl()})"


@dataclass(frozen=True)
class MapOf:
    element: CtyType

    def hcl(self) -> str:
        return f"map({self.element.hcl()})"


@dataclass(frozen=True)
class Object:
    attributes: tuple[tuple[str, CtyType], ...]

    @classmethod
    def of(cls, attrs: Mapping[str, CtyType]) -> Object:
        return cls(tuple(sorted(attrs.items())))

    def hcl(self) -> str:
        return "object({" + ", ".join(f"{k} = {t.hcl()}" for k, t in self.attributes) + "})"


@dataclass(frozen=True)
class Tuple:
    elements: tuple[CtyType, ...]

    def hcl(self) -> str:
        return "tuple([" + ", ".join(t.hcl() for t in self.elements) + "])"


CtyType = Primitive | Dynamic | ListOf | SetOf | MapOf | Object | Tuple
#: The collection types by their cty name.
_COLLECTIONS: dict[str, Callable[[CtyType], CtyType]] = {"list": ListOf, "set": SetOf, "map": MapOf}

STRING = Primitive("string")
NUMBER = Primitive("number")
BOOL = Primitive("bool")
DYNAMIC = Dynamic()


# ---- HCL type expressions ("list(string)") ------------------------------------------------------


def parse_type_expr(text: str) -> CtyType:
    """Parse an HCL type expression as used in hclspec ``Attr.type``."""
    parser = _TypeParser(text)
    t = parser.type()
    parser.skip_ws()
    if parser.pos != len(text):
        raise ValueError(f"unexpected {text[parser.pos :]!r} in type expression {text!r}")
    return t


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, ch: str) -> None:
        self.skip_ws()
        if not self.text.startswith(ch, self.pos):
            raise ValueError(f"expected {ch!r} at {self.pos} in type expression {self.text!r}")
        self.pos += len(ch)

    def ident(self) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] == "_"):
            self.pos += 1
        if start == self.pos:
            raise ValueError(f"expected a name at {start} in type expression {self.text!r}")
        return self.text[start : self.pos]

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos : self.pos + 1]

    def type(self) -> CtyType:
        name = self.ident()
        if name in ("string", "number", "bool"):
            return Primitive(name)
        if name == "any":
            return DYNAMIC
        if name in ("list", "set", "map"):
            self.expect("(")
            inner = self.type()
            self.expect(")")
            return _COLLECTIONS[name](inner)
        if name == "object":
            self.expect("(")
            self.expect("{")
            attrs: dict[str, CtyType] = {}
            while self.peek() != "}":
                key = self.ident()
                self.expect("=")
                attrs[key] = self.type()
                if self.peek() == ",":
                    self.pos += 1
            self.expect("}")
            self.expect(")")
            return Object.of(attrs)
        if name == "tuple":
            self.expect("(")
            self.expect("[")
            elems: list[CtyType] = []
            while self.peek() != "]":
                elems.append(self.type())
                if self.peek() == ",":
                    self.pos += 1
            self.expect("]")
            self.expect(")")
            return Tuple(tuple(elems))
        raise ValueError(f"unknown type {name!r} in type expression {self.text!r}")


def type_from_json(value: Any) -> CtyType:
    """cty's JSON type notation (``"string"``, ``["list","number"]``, ``["object",{...}]``)."""
    if value == "string" or value == "number" or value == "bool":
        return Primitive(value)
    if value == "dynamic":
        return DYNAMIC
    if isinstance(value, list) and len(value) == 2:
        kind, arg = value
        if kind in ("list", "set", "map"):
            return _COLLECTIONS[kind](type_from_json(arg))
        if kind == "object" and isinstance(arg, dict):
            return Object.of({k: type_from_json(v) for k, v in arg.items()})
        if kind == "tuple" and isinstance(arg, list):
            return Tuple(tuple(type_from_json(v) for v in arg))
    if isinstance(value, list) and len(value) == 3 and value[0] == "object":
        # object with optional attributes: ["object", {...}, ["opt", ...]]
        return Object.of({k: type_from_json(v) for k, v in value[1].items()})
    raise CtyDecodeError(f"unsupported cty JSON type {value!r}")


# ---- decoding ------------------------------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> Any:
    if code in _UNKNOWN_EXT_CODES:
        return UNKNOWN
    return msgpack.ExtType(code, data)


def unpack(data: bytes) -> Any:
    """Raw msgpack -> Python (strings as str, bin as bytes, unknowns as UNKNOWN)."""
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise CtyDecodeError(f"not valid msgpack: {exc}") from None


def decode(data: bytes, cty_type: CtyType) -> Any:
    """Decode cty-msgpack bytes of the given type. Empty bytes decode to ``None``."""
    if not data:
        return None
    return convert(unpack(data), cty_type)


def number(value: Any) -> int | float | Decimal:
    """A cty number from any of its msgpack forms."""
    if isinstance(value, bool):
        raise CtyDecodeError(f"expected a number, got bool {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            d = Decimal(text.strip())
        except InvalidOperation:
            raise CtyDecodeError(f"expected a number, got string {text!r}") from None
        if d.is_nan():
            raise CtyDecodeError(f"expected a number, got {text!r}")
        if d.is_infinite():
            return float(d)
        if d == d.to_integral_value():
            return int(d)
        return d
    raise CtyDecodeError(f"expected a number, got {type(value).__name__}")


def convert(value: Any, cty_type: CtyType) -> Any:
    """Interpret an already unpacked msgpack value as ``cty_type``."""
    if value is None or value is UNKNOWN:
        return value
    if isinstance(cty_type, Primitive):
        if cty_type.name == "number":
            return number(value)
        if cty_type.name == "bool":
            if not isinstance(value, bool):
                raise CtyDecodeError(f"expected a bool, got {type(value).__name__}")
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if not isinstance(value, str):
            raise CtyDecodeError(f"expected a string, got {type(value).__name__}")
        return value
    if isinstance(cty_type, Dynamic):
        return _dynamic(value)
    if isinstance(cty_type, (ListOf, SetOf)):
        if not isinstance(value, (list, tuple)):
            raise CtyDecodeError(f"expected an array for {cty_type.hcl()}, got {type(value).__name__}")
        return [convert(v, cty_type.element) for v in value]
    if isinstance(cty_type, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(cty_type.elements):
            raise CtyDecodeError(f"expected a {len(cty_type.elements)}-element array for {cty_type.hcl()}")
        return [convert(v, t) for v, t in zip(value, cty_type.elements, strict=True)]
    if isinstance(cty_type, MapOf):
        if not isinstance(value, dict):
            raise CtyDecodeError(f"expected a map for {cty_type.hcl()}, got {type(value).__name__}")
        return {str(k): convert(v, cty_type.element) for k, v in value.items()}
    if isinstance(cty_type, Object):
        if not isinstance(value, dict):
            raise CtyDecodeError(f"expected a map for an object, got {type(value).__name__}")
        out = {name: convert(value.get(name), t) for name, t in cty_type.attributes}
        return out
    raise CtyDecodeError(f"unsupported cty type {cty_type!r}")  # pragma: no cover


def _dynamic(value: Any) -> Any:
    # A value declared as `any` but carrying a concrete type: [bin(JSON type), value].
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], bytes):
        try:
            t = type_from_json(json.loads(value[0]))
        except (ValueError, CtyDecodeError):
            return [_plain(v) for v in value]
        return convert(value[1], t)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# ---- encoding (tests and tooling: the inverse, shaped like go-cty's output) -----------------------


def encode(value: Any, cty_type: CtyType) -> bytes:
    """Encode a Python value as go-cty would encode the cty value of ``cty_type``."""
    return msgpack.packb(_to_wire(value, cty_type), use_bin_type=True)


def _to_wire(value: Any, cty_type: CtyType) -> Any:
    if value is None:
        return None
    if value is UNKNOWN:
        return msgpack.ExtType(0, b"\x00")
    if isinstance(cty_type, Primitive) and cty_type.name == "number":
        if isinstance(value, Decimal):
            return str(value)
        return value
    if isinstance(cty_type, (ListOf, SetOf)):
        return [_to_wire(v, cty_type.element) for v in value]
    if isinstance(cty_type, Tuple):
        return [_to_wire(v, t) for v, t in zip(value, cty_type.elements, strict=True)]
    if isinstance(cty_type, MapOf):
        return {k: _to_wire(v, cty_type.element) for k, v in sorted(value.items())}
    if isinstance(cty_type, Object):
        return {k: _to_wire(value.get(k), t) for k, t in cty_type.attributes}
    return value
