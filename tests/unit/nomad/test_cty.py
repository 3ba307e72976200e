"""cty-msgpack decoding: every encoding go-cty may produce for our configs (docs/PROTOCOL.md §4.3)."""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xen_driver.driver.config import PluginConfig, TaskConfig
from xen_driver.nomad import cty
from xen_driver.nomad.schemas import PLUGIN_SCHEMA, TASK_SCHEMA

N, S, B = cty.NUMBER, cty.STRING, cty.BOOL

# (raw bytes as go-cty/msgpack may write them, declared type, expected Python value)
TABLE = [
    ("nil", b"\xc0", S, None),
    ("nil number", b"\xc0", N, None),
    ("true", b"\xc3", B, True),
    ("false", b"\xc2", B, False),
    ("fixstr", b"\xa2xl", S, "xl"),
    ("str8", b"\xd9\x03abc", S, "abc"),
    ("str16", b"\xda\x00\x03abc", S, "abc"),
    ("str32", b"\xdb\x00\x00\x00\x03abc", S, "abc"),
    ("utf-8", "\xa2".encode("latin-1") + "é".encode(), S, "é"),
    ("positive fixint", b"\x05", N, 5),
    ("zero", b"\x00", N, 0),
    ("uint8", b"\xcc\xc8", N, 200),
    ("uint16", b"\xcd\x01\x00", N, 256),
    ("uint32", b"\xce\x00\x01\x00\x00", N, 65536),
    ("uint64", b"\xcf" + struct.pack(">Q", 2**63 + 5), N, 2**63 + 5),
    ("uint8 small value (non-compact writer)", b"\xcc\x01", N, 1),
    ("negative fixint", b"\xff", N, -1),
    ("int8", b"\xd0\x80", N, -128),
    ("int16", b"\xd1\xff\x00", N, -256),
    ("int32", b"\xd2\xff\xff\x00\x00", N, -65536),
    ("int64", b"\xd3" + struct.pack(">q", -(2**62)), N, -(2**62)),
    ("int64 small value (non-compact writer)", b"\xd3" + struct.pack(">q", 7), N, 7),
    ("float64", b"\xcb" + struct.pack(">d", 1.5), N, 1.5),
    ("float64 integral", b"\xcb" + struct.pack(">d", 2.0), N, 2.0),
    ("float32 (never sent, tolerated)", b"\xca" + struct.pack(">f", 0.5), N, 0.5),
    (
        "decimal string, huge integer",
        msgpack.packb("123456789012345678901234567890"),
        N,
        123456789012345678901234567890,
    ),
    (
        "decimal string, precise fraction",
        msgpack.packb("0.1000000000000000000001"),
        N,
        Decimal("0.1000000000000000000001"),
    ),
    ("decimal string, negative", msgpack.packb("-42"), N, -42),
    ("+inf", b"\xcb" + struct.pack(">d", math.inf), N, math.inf),
    ("-inf", b"\xcb" + struct.pack(">d", -math.inf), N, -math.inf),
    ("list", msgpack.packb(["a", "b"]), cty.ListOf(S), ["a", "b"]),
    ("set", msgpack.packb([1, 2]), cty.SetOf(N), [1, 2]),
    ("tuple", msgpack.packb(["a", 1]), cty.Tuple((S, N)), ["a", 1]),
    ("empty list", b"\x90", cty.ListOf(S), []),
    ("map", msgpack.packb({"k": "v"}), cty.MapOf(S), {"k": "v"}),
    ("map of numbers as strings", msgpack.packb({"k": "1e3"}), cty.MapOf(N), {"k": 1000}),
    (
        "object, absent attribute as nil",
        msgpack.packb({"a": None, "b": 3}),
        cty.Object.of({"a": S, "b": N}),
        {"a": None, "b": 3},
    ),
    (
        "object, key missing entirely (robust)",
        msgpack.packb({"b": 3}),
        cty.Object.of({"a": S, "b": N}),
        {"a": None, "b": 3},
    ),
    ("unknown (ext 0)", b"\xd4\x00\x00", S, cty.UNKNOWN),
    ("refined unknown (ext 0x0c)", b"\xc7\x01\x0c\x80", S, cty.UNKNOWN),
    (
        "dynamic with concrete type",
        msgpack.packb([json.dumps(["list", "string"]).encode(), ["x"]], use_bin_type=True),
        cty.DYNAMIC,
        ["x"],
    ),
    (
        "dynamic number as decimal string",
        msgpack.packb([b'"number"', "12"], use_bin_type=True),
        cty.DYNAMIC,
        12,
    ),
    ("dynamic plain value", msgpack.packb({"a": [1, "b"]}), cty.DYNAMIC, {"a": [1, "b"]}),
]


@pytest.mark.parametrize("raw,cty_type,expected", [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_decoding_table(raw, cty_type, expected):
    value = cty.decode(raw, cty_type)
    if isinstance(expected, float) and math.isinf(expected):
        assert value == expected
    else:
        assert value == expected
        assert type(value) is type(expected)


def test_empty_bytes_decode_to_none():
    assert cty.decode(b"", S) is None


@pytest.mark.parametrize(
    "raw,cty_type",
    [
        (msgpack.packb("twelve"), N),
        (msgpack.packb("NaN"), N),
        (msgpack.packb(True), N),
        (msgpack.packb(1), B),
        (msgpack.packb(1), S),
        (msgpack.packb("x"), cty.ListOf(S)),
        (b"\xc1", S),  # never-used msgpack byte
    ],
)
def test_wrong_shapes_are_refused(raw, cty_type):
    with pytest.raises(cty.CtyDecodeError):
        cty.decode(raw, cty_type)


def test_plugin_config_every_number_width_reaches_the_same_config():
    # fingerprint_period is a string; the numbers here go through the task schema instead.
    base = {k: None for k, _ in TASK_SCHEMA.cty_type.attributes}
    for vcpus_raw in (
        b"\x02",
        b"\xcc\x02",
        b"\xcd\x00\x02",
        b"\xd3" + struct.pack(">q", 2),
        b"\xcb" + struct.pack(">d", 2.0),
        msgpack.packb("2"),
    ):
        body = dict(base, kernel="k")
        packed = bytearray([0x80 | len(body)])  # a fixmap of every attribute, keys sorted like go-cty
        for key in sorted(body):
            packed += msgpack.packb(key)
            packed += vcpus_raw if key == "vcpus" else msgpack.packb(body[key])
        cfg = TaskConfig.from_dict(TASK_SCHEMA.decode(bytes(packed)))
        assert cfg.vcpus == 2


def test_plugin_schema_roundtrip_with_defaults():
    decoded = PLUGIN_SCHEMA.decode(
        cty.encode({"backend": "libvirt", "image_dirs": ["/srv/img"]}, PLUGIN_SCHEMA.cty_type)
    )
    assert set(decoded) == {name for name, _ in PLUGIN_SCHEMA.cty_type.attributes}
    cfg = PluginConfig.from_dict(decoded)
    assert cfg.backend == "libvirt" and cfg.image_dirs == ("/srv/img",)
    assert cfg.fingerprint_period == 30.0  # absent -> default


def test_go_cty_shaped_task_config_decodes():
    # Shape of a real agent-evaluated config: every key present and sorted, vif as a list of objects.
    wire = {
        "boot_marker": None,
        "boot_timeout": "45s",
        "click_config": "FromDevice(0) -> ToDevice(0);",
        "click_config_file": None,
        "click_router_id": 0,
        "cmdline": "-d standard",
        "cpus": None,
        "kernel": "local/clickos_x86_64",
        "memory": 16,
        "on_crash": "destroy",
        "ramdisk": None,
        "vcpus": 1,
        "vif": [{"bridge": "xenbr0", "ip": None, "mac": "00:16:3e:00:00:01", "script": None}],
    }
    cfg = TaskConfig.from_dict(TASK_SCHEMA.decode(msgpack.packb(wire)))
    assert cfg.memory == 16 and cfg.boot_timeout == 45.0
    assert cfg.vif[0].bridge == "xenbr0" and cfg.vif[0].mac == "00:16:3e:00:00:01"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_dynamic_roundtrip_property(value):
    assert cty.decode(msgpack.packb(value, use_bin_type=True), cty.DYNAMIC) == value


@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False), max_size=6))
def test_number_lists_roundtrip_property(values):
    assert cty.decode(cty.encode(values, cty.ListOf(N)), cty.ListOf(N)) == values


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("string", S),
        ("number", N),
        ("bool", B),
        ("any", cty.DYNAMIC),
        ("list(string)", cty.ListOf(S)),
        ("set(number)", cty.SetOf(N)),
        ("map(list(bool))", cty.MapOf(cty.ListOf(B))),
        ("object({a = string, b = number})", cty.Object.of({"a": S, "b": N})),
        ("tuple([string, number])", cty.Tuple((S, N))),
    ],
)
def test_type_expressions(expr, expected):
    assert cty.parse_type_expr(expr) == expected
    assert cty.parse_type_expr(expected.hcl()) == expected


@pytest.mark.parametrize("expr", ["", "strin", "list(string", "list(string))", "object({a string})"])
def test_bad_type_expressions(expr):
    with pytest.raises(ValueError):
        cty.parse_type_expr(expr)
