"""hclspec construction: what Nomad's converter needs to turn our schemas into decoders."""

from __future__ import annotations

import pytest

from xen_driver._proto.nomad import hclspec_pb2 as pb
from xen_driver.driver.config import PLUGIN_DEFAULTS, TASK_DEFAULTS
from xen_driver.nomad import cty
from xen_driver.nomad.hclspec import Attr, Block, BlockAttrs, BlockList, Default, Literal, Object, attr, hcl_literal
from xen_driver.nomad.schemas import PLUGIN_SCHEMA, TASK_SCHEMA


def _attr_of(spec: pb.Spec) -> pb.Attr:
    """The Attr a top-level entry declares, looking through a Default."""
    kind = spec.WhichOneof("block")
    if kind == "default":
        return _attr_of(spec.default.primary)
    assert kind == "Attr", kind
    return spec.Attr


def test_plugin_schema_is_an_object_of_all_fields():
    spec = PLUGIN_SCHEMA.to_proto()
    assert spec.WhichOneof("block") == "object"
    assert set(spec.object.attributes) == set(PLUGIN_DEFAULTS) | {"pool"}


@pytest.mark.parametrize("schema", [PLUGIN_SCHEMA, TASK_SCHEMA], ids=["plugin", "task"])
def test_every_attr_names_itself_even_inside_default(schema):
    # Nomad does not pass the object key into a Default: the inner Attr must carry the name.
    for key, entry in schema.to_proto().object.attributes.items():
        kind = entry.WhichOneof("block")
        if kind == "block_list":
            assert entry.block_list.name == key
            continue
        if kind == "block_map":
            assert entry.block_map.name == key and list(entry.block_map.labels) == ["name"]
            continue
        a = _attr_of(entry)
        assert a.name == key
        assert a.type, f"{key} has no type"
        cty.parse_type_expr(a.type)  # a valid HCL type expression


def test_defaults_are_literals_of_the_documented_values():
    spec = PLUGIN_SCHEMA.to_proto()
    for key, value in PLUGIN_DEFAULTS.items():
        entry = spec.object.attributes[key]
        assert entry.WhichOneof("block") == "default"
        assert entry.default.default.literal.value == hcl_literal(value)
    task = TASK_SCHEMA.to_proto()
    for key, value in TASK_DEFAULTS.items():
        assert task.object.attributes[key].default.default.literal.value == hcl_literal(value)


def test_task_schema_shape():
    spec = TASK_SCHEMA.to_proto().object.attributes
    assert spec["kernel"].Attr.required is True
    assert spec["kernel"].Attr.type == "string"
    assert spec["memory"].Attr.type == "number"
    assert spec["ramdisk"].Attr.required is False
    vif = spec["vif"].block_list
    assert vif.name == "vif" and vif.min_items == 0 and vif.max_items == 0
    assert set(vif.nested.object.attributes) == {"bridge", "mac", "ip", "script"}
    assert vif.nested.object.attributes["mac"].Attr.name == "mac"
    assert TASK_SCHEMA.cty_type == cty.Object.of(
        {
            "kernel": cty.STRING,
            "ramdisk": cty.STRING,
            "cmdline": cty.STRING,
            "memory": cty.NUMBER,
            "vcpus": cty.NUMBER,
            "cpus": cty.STRING,
            "vif": cty.ListOf(cty.Object.of({k: cty.STRING for k in ("bridge", "mac", "ip", "script")})),
            "click_config": cty.STRING,
            "click_config_file": cty.STRING,
            "click_router_id": cty.NUMBER,
            "on_crash": cty.STRING,
            "boot_marker": cty.STRING,
            "boot_timeout": cty.STRING,
            "pool": cty.STRING,
            "advertise_vif": cty.NUMBER,
        }
    )


def test_schema_survives_the_wire():
    raw = TASK_SCHEMA.to_proto().SerializeToString()
    assert pb.Spec.FromString(raw) == TASK_SCHEMA.to_proto()


@pytest.mark.parametrize(
    "value,literal",
    [
        ("xl", '"xl"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("line\nbreak", r'"line\nbreak"'),
        ("${NOMAD_TASK_DIR}", '"$${NOMAD_TASK_DIR}"'),
        ("%{if}", '"%%{if}"'),
        (30, "30"),
        (True, "true"),
        (None, "null"),
        (["/a", "/b"], '["/a", "/b"]'),
        ({"k": 1}, '{"k" = 1}'),
    ],
)
def test_hcl_literal(value, literal):
    assert hcl_literal(value) == literal


def test_node_kinds_to_proto():
    obj = Object(
        {
            "a": Attr("string"),
            "b": Block(Object({"x": Attr("number")})),
            "c": BlockList(Object({"y": Attr("bool")}), min_items=1, max_items=3),
            "d": BlockAttrs("string"),
            "e": Default(Attr("number", name="e"), Literal("5", type="number")),
        }
    )
    spec = obj.to_proto().object.attributes
    assert spec["a"].Attr.name == "a"  # implied by the object key
    assert spec["b"].block_value.name == "b" and spec["b"].block_value.nested.object.attributes["x"].Attr.name == "x"
    assert (spec["c"].block_list.min_items, spec["c"].block_list.max_items) == (1, 3)
    assert spec["d"].block_attrs.name == "d" and spec["d"].block_attrs.type == "string"
    assert spec["e"].default.primary.Attr.name == "e" and spec["e"].default.default.literal.value == "5"
    assert obj.cty_type == cty.Object.of(
        {
            "a": cty.STRING,
            "b": cty.Object.of({"x": cty.NUMBER}),
            "c": cty.ListOf(cty.Object.of({"y": cty.BOOL})),
            "d": cty.MapOf(cty.STRING),
            "e": cty.NUMBER,
        }
    )


def test_attr_helper_without_default_is_plain():
    assert attr("x", "string") == Attr("string", name="x")
