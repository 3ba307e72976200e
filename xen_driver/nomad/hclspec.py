"""Building hclspec schemas, and knowing the cty type each schema evaluates to.

A schema is a small tree of nodes (:class:`Attr`, :class:`Block`, :class:`BlockList`,
:class:`Default`, :class:`Literal`, :class:`Object`, ...). Each node converts to the wire
``hclspec.Spec`` (:meth:`to_proto`) and reports the cty type Nomad's evaluation yields
(:attr:`cty_type`), which drives :func:`xen_driver.nomad.cty.decode`.

Rules of Nomad's spec conversion this module follows:

* Inside an :class:`Object` the map key is the output name, and also the HCL name of a direct
  child that leaves its own name empty.
* :class:`Default` does not pass that implied name down, so :func:`attr` with a default always
  writes the name into the inner Attr explicitly.
* Literals are HCL expressions; :func:`hcl_literal` renders Python values as such (strings are
  escaped, including ``${`` / ``%{`` template openers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xen_driver._proto.nomad import hclspec_pb2 as pb
from xen_driver.nomad import cty


class Node:
    def to_proto(self, implied_name: str = "") -> pb.Spec:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def cty_type(self) -> cty.CtyType:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Attr(Node):
    type: str
    name: str = ""
    required: bool = False

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        return pb.Spec(Attr=pb.Attr(name=self.name or implied_name, type=self.type, required=self.required))

    @property
    def cty_type(self) -> cty.CtyType:
        return cty.parse_type_expr(self.type)


@dataclass(frozen=True)
class Literal(Node):
    """A constant HCL expression; ``type`` is the cty type it evaluates to."""

    value: str
    type: str = "any"

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        return pb.Spec(literal=pb.Literal(value=self.value))

    @property
    def cty_type(self) -> cty.CtyType:
        return cty.parse_type_expr(self.type)


@dataclass(frozen=True)
class Default(Node):
    primary: Node
    default: Node

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        # The implied name is not passed through Default by Nomad's converter: make it explicit.
        return pb.Spec(default=pb.Default(primary=self.primary.to_proto(implied_name), default=self.default.to_proto()))

    @property
    def cty_type(self) -> cty.CtyType:
        return self.primary.cty_type


@dataclass(frozen=True)
class Object(Node):
    attributes: Mapping[str, Node]

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        spec = pb.Spec(object=pb.Object())
        for key, node in self.attributes.items():
            spec.object.attributes[key].CopyFrom(node.to_proto(key))
        return spec

    @property
    def cty_type(self) -> cty.CtyType:
        return cty.Object.of({k: n.cty_type for k, n in self.attributes.items()})


@dataclass(frozen=True)
class Block(Node):
    nested: Node
    name: str = ""
    required: bool = False

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        return pb.Spec(
            block_value=pb.Block(name=self.name or implied_name, required=self.required, nested=self.nested.to_proto())
        )

    @property
    def cty_type(self) -> cty.CtyType:
        return self.nested.cty_type


@dataclass(frozen=True)
class BlockList(Node):
    nested: Node
    name: str = ""
    min_items: int = 0
    max_items: int = 0

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        return pb.Spec(
            block_list=pb.BlockList(
                name=self.name or implied_name,
                min_items=self.min_items,
                max_items=self.max_items,
                nested=self.nested.to_proto(),
            )
        )

    @property
    def cty_type(self) -> cty.CtyType:
        return cty.ListOf(self.nested.cty_type)


@dataclass(frozen=True)
class BlockMap(Node):
    """Labelled blocks (``pool "clickos" { ... }``): a map from the label to the nested value.

    One label gives ``map(<nested>)``; Nomad yields an empty map when no such block is given.
    """

    nested: Node
    labels: tuple[str, ...] = ("name",)
    name: str = ""

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        return pb.Spec(
            block_map=pb.BlockMap(
                name=self.name or implied_name, labels=list(self.labels), nested=self.nested.to_proto()
            )
        )

    @property
    def cty_type(self) -> cty.CtyType:
        out: cty.CtyType = self.nested.cty_type
        for _ in self.labels:
            out = cty.MapOf(out)
        return out


@dataclass(frozen=True)
class BlockAttrs(Node):
    type: str
    name: str = ""
    required: bool = False

    def to_proto(self, implied_name: str = "") -> pb.Spec:
        return pb.Spec(
            block_attrs=pb.BlockAttrs(name=self.name or implied_name, type=self.type, required=self.required)
        )

    @property
    def cty_type(self) -> cty.CtyType:
        return cty.MapOf(cty.parse_type_expr(self.type))


# ---- helpers -------------------------------------------------------------------------------------


def hcl_literal(value: Any) -> str:
    """Render a Python value as an HCL expression (for ``Literal.value``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("HCL has no literal for non-finite numbers")
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid HCL escapes; template openers must be doubled.
        return json.dumps(value, ensure_ascii=False).replace("${", "$${").replace("%{", "%%{")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hcl_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{hcl_literal(str(k))} = {hcl_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no HCL literal for {type(value).__name__}")


def attr(name: str, type: str, *, required: bool = False, default: Any = None) -> Node:
    """An attribute, optionally with a default filled in by Nomad when the user omits it."""
    inner = Attr(type=type, name=name, required=required)
    if default is None:
        return inner
    return Default(primary=inner, default=Literal(hcl_literal(default), type=type))


def block_list(name: str, attributes: Mapping[str, Node], *, min_items: int = 0, max_items: int = 0) -> Node:
    return BlockList(nested=Object(dict(attributes)), name=name, min_items=min_items, max_items=max_items)


def block_map(name: str, labels: tuple[str, ...], attributes: Mapping[str, Node]) -> Node:
    return BlockMap(nested=Object(dict(attributes)), labels=tuple(labels), name=name)


@dataclass(frozen=True)
class Schema:
    """A named top-level schema (an Object) with its proto and cty type."""

    root: Object
    docs: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> pb.Spec:
        return self.root.to_proto()

    @property
    def cty_type(self) -> cty.CtyType:
        return self.root.cty_type

    def decode(self, data: bytes) -> dict:
        """cty-msgpack bytes of this schema -> dict with every attribute present."""
        value = cty.decode(data, self.cty_type)
        if value is None:
            return {name: None for name, _ in self.cty_type.attributes}  # type: ignore[union-attr]
        return value
