"""Property test: whatever a job puts into a string field, the rendered xl.cfg either is refused
or parses -- under xl's own lexical rules -- to exactly the settings we meant, value unchanged.

The tokenizer below follows the token rules of libxlu's flex lexer (identifiers
``[a-z][._0-9a-z]*``, numbers, ``'...'``/``"..."`` strings that may not contain a raw newline and
take backslash escapes, ``#`` comments to end of line, ``,`` ``[`` ``]`` ``=`` ``+=`` ``;``
and newlines as tokens).  It is a reading aid written for this test, not libxlu's code.
"""

from __future__ import annotations

import dataclasses
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from xen_driver.xen.spec import DomainSpec, SpecError, VifSpec
from xen_driver.xen.xlcfg import render

_TOKEN = re.compile(
    r"""(?P<ws>[ \t]+)
      |(?P<newline>\n|\#[^\n]*\n)
      |(?P<ident>[a-z][._0-9a-z]*)
      |(?P<number>[0-9][0-9a-fx]*)
      |(?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
      |(?P<op>\+=|[=,\[\];])""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unquote(tok: str) -> str:
    out, i, body = [], 0, tok[1:-1]
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def xl_settings(text: str) -> dict[str, object]:
    """key → value (str, int or list of str) as xl would see them; raises on a lexical error."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"lexical error at {pos}: {text[pos : pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    result: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "newline" or val == ";":
            i += 1
            continue
        assert kind == "ident" and tokens[i + 1] == ("op", "="), tokens[i : i + 2]
        key, i = val, i + 2
        kind, val = tokens[i]
        if kind == "string":
            result[key], i = _unquote(val), i + 1
        elif kind == "number":
            result[key], i = int(val), i + 1
        else:
            assert val == "["
            items, i = [], i + 1
            while tokens[i] != ("op", "]"):
                if tokens[i] != ("op", ","):
                    assert tokens[i][0] == "string"
                    items.append(_unquote(tokens[i][1]))
                i += 1
            result[key], i = items, i + 1
        assert key not in ("",)
    return result


BASE = DomainSpec(name="ndx-prop", kernel="/img/k", memory_mb=16, vifs=(VifSpec(bridge="br0"),))
NASTY = st.text(alphabet=st.sampled_from(list("ab/.-_ =,#'\"\\\n\r\t;[]:@+\x00\x1b\u00e9")), max_size=24)
SAFE = st.text(alphabet=st.sampled_from(list("abcXYZ019/._-+@: =,;[]")), min_size=1, max_size=24)
ACCEPTED: list[str] = []


def _with(field: str, value: str) -> DomainSpec:
    if field == "bridge":
        return dataclasses.replace(BASE, vifs=(VifSpec(bridge=value),))
    if field == "kernel":
        value = "/" + value
    return dataclasses.replace(BASE, **{field: value})


@settings(max_examples=600, deadline=None)
@given(field=st.sampled_from(["kernel", "cmdline", "bridge", "name"]), value=st.one_of(NASTY, SAFE))
def _renders_exactly_what_we_meant(field: str, value: str) -> None:
    spec = _with(field, value)
    try:
        text = render(spec)
    except SpecError as exc:
        assert exc.field in (field, "vifs[0].bridge")
        return
    ACCEPTED.append(field)
    expected: dict[str, object] = {
        "type": "pv",
        "name": spec.name,
        "kernel": spec.kernel,
        "memory": 16,
        "vcpus": 1,
        "vif": [f"bridge={spec.vifs[0].bridge}"],
        "on_poweroff": "preserve",
        "on_reboot": "preserve",
        "on_crash": "preserve",
    }
    if spec.cmdline:
        expected["cmdline"] = spec.cmdline
    assert xl_settings(text) == expected


def test_rendered_config_means_exactly_what_we_meant() -> None:
    ACCEPTED.clear()
    _renders_exactly_what_we_meant()
    # It must have seen accepted values of every field, or it proved nothing about good input.
    assert {"kernel", "cmdline", "bridge", "name"} <= set(ACCEPTED), ACCEPTED[:20]


def test_lexer_sees_an_injection_when_values_are_not_checked() -> None:
    # The tokenizer is strict enough to tell: an unchecked quote in a value adds a setting.
    evil = 'kernel = "/k"\ndisk = [ "/dev/sda,raw,xvda,rw" ]\n'
    assert xl_settings(evil)["disk"] == ["/dev/sda,raw,xvda,rw"]
    assert xl_settings('cmdline = "a\\"b" # c\n') == {"cmdline": 'a"b'}
