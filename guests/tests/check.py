#!/usr/bin/env python3
"""Host-side checks of the ndx unikernel: `make -C guests check`.

Runs the host-compiled helpers (CRC-32 vs zlib, command-line parser,
formatting) and inspects the built PV ELF (class, machine, Xen notes, size).
"""

import os
import random
import struct
import subprocess
import sys
import tempfile
import zlib

XEN_NOTES = {
    1: "ENTRY",
    2: "HYPERCALL_PAGE",
    3: "VIRT_BASE",
    4: "PADDR_OFFSET",
    5: "XEN_VERSION",
    6: "GUEST_OS",
    7: "GUEST_VERSION",
    8: "LOADER",
}
MAX_SIZE = 64 * 1024


def xen_notes(data):
    """{type: desc bytes} of the 'Xen' notes found through PT_NOTE headers."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4] == 2, "not ELFCLASS64"
    assert data[5] == 1, "not little-endian"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    assert e_machine == 62, "not x86_64 (EM_X86_64)"
    assert e_type == 2, "not ET_EXEC"
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    notes, loads = {}, []
    for i in range(e_phnum):
        p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize
        )
        if p_type == 1:
            loads.append((vaddr, paddr, memsz))
        if p_type != 4:
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            pos += 12
            name = data[pos : pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos : pos + descsz]
            pos += (descsz + 3) & ~3
            if name == b"Xen":
                notes[ntype] = desc
    return notes, loads


def check_elf(path):
    data = open(path, "rb").read()
    notes, loads = xen_notes(data)
    missing = [XEN_NOTES[t] for t in XEN_NOTES if t not in notes]
    assert not missing, f"missing Xen notes: {missing}"
    assert notes[5].rstrip(b"\0") == b"xen-3.0"
    assert notes[8].rstrip(b"\0") == b"generic"
    (entry,) = struct.unpack("<Q", notes[1])
    (hcpage,) = struct.unpack("<Q", notes[2])
    assert hcpage % 4096 == 0, "hypercall page not page aligned"
    assert loads and all(v == p for v, p, _ in loads), "LMA != VMA"
    lo = min(v for v, _, _ in loads)
    hi = max(v + m for v, _, m in loads)
    assert lo <= entry < hi and lo <= hcpage < hi, "entry/hypercall page outside image"
    assert len(data) <= MAX_SIZE, f"image too big: {len(data)} bytes"
    print(f"elf ok: {path} {len(data)} bytes, memory {hi - lo} bytes, entry {entry:#x}, hypercall page {hcpage:#x}")


def run(tool, *args):
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True).stdout


def check_crc(tool):
    rnd = random.Random(1234)
    cases = [b"", b"a", b"123456789", bytes(range(256)) * 9, b"FromDevice(0) -> Print -> Discard;\n" * 40]
    cases += [rnd.randbytes(rnd.randrange(1, 5000)) for _ in range(20)]
    with tempfile.TemporaryDirectory() as d:
        for i, blob in enumerate(cases):
            p = os.path.join(d, f"b{i}")
            with open(p, "wb") as f:
                f.write(blob)
            want = f"{zlib.crc32(blob):08x} {len(blob)}"
            for split in ("0", "1", "992", "7"):
                got = run(tool, "crc", p, split).strip()
                assert got == want, f"crc case {i} split {split}: {got} != {want}"
    assert f"{zlib.crc32(b'123456789'):08x}" == "cbf43926"
    print(f"crc32 ok: {len(cases)} cases match zlib.crc32")


def parse_opts(tool, line):
    out = run(tool, "cmdline", line)
    res, unknown = {}, []
    for ln in out.splitlines():
        k, _, v = ln.partition(" ")
        if k == "unknown":
            unknown.append(v)
        else:
            res[k] = int(v)
    return res, unknown


def check_cmdline(tool):
    s = 1_000_000_000
    cases = [
        ("", {}, []),
        ("poweroff_after=3", {"poweroff_after_ns": 3 * s}, []),
        ("  crash_after=0.5\ttick=2 ", {"crash_after_ns": s // 2, "tick_ns": 2 * s}, []),
        ("ignore_shutdown clickos", {"ignore_shutdown": 1, "clickos": 1}, []),
        ("-d standard poweroff_after=1.25", {"poweroff_after_ns": 1_250_000_000}, ["-d", "standard"]),
        (
            "tick=0 tick= tick=x poweroff_after=-1 crash_after=1.2.3 clickosx",
            {},
            ["tick=0", "tick=", "tick=x", "poweroff_after=-1", "crash_after=1.2.3", "clickosx"],
        ),
        ("tick=0.000000001 crash_after=10.1234567891", {"tick_ns": 1, "crash_after_ns": 10 * s + 123456789}, []),
        ("poweroff_after=999999999999", {}, ["poweroff_after=999999999999"]),
        ("burn", {"burn_pct": 100}, []),
        ("tick=5 burn=50", {"tick_ns": 5 * s, "burn_pct": 50}, []),
        ("burn=1 burn=100", {"burn_pct": 100}, []),
        (
            "burn=0 burn=101 burn= burn=x burn=5% burn=-1 burnx",
            {},
            ["burn=0", "burn=101", "burn=", "burn=x", "burn=5%", "burn=-1", "burnx"],
        ),
    ]
    base = {
        "poweroff_after_ns": 0,
        "crash_after_ns": 0,
        "tick_ns": 0,
        "ignore_shutdown": 0,
        "clickos": 0,
        "burn_pct": 0,
    }
    for line, want, want_unknown in cases:
        got, unknown = parse_opts(tool, line)
        exp = dict(base, **want, bad=len(want_unknown))
        assert got == exp, f"cmdline {line!r}: {got} != {exp}"
        assert unknown == want_unknown, f"cmdline {line!r}: unknown {unknown}"
    print(f"cmdline ok: {len(cases)} cases")


def main():
    tool, image = sys.argv[1], sys.argv[2]
    subprocess.run([tool, "fmt"], check=True)
    print("fmt ok")
    check_crc(tool)
    check_cmdline(tool)
    check_elf(image)


if __name__ == "__main__":
    main()
