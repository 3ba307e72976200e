"""The ndx unikernel (guests/) builds with plain gcc into a small x86_64 PV ELF.

Builds with `make -C guests` (a no-op when up to date), then checks the image
and runs the host-side helper tests of `make -C guests check`.
"""

import importlib.util
import pathlib
import shutil
import struct
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
IMAGE = GUESTS / "build" / "ndx-unikernel"

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None, reason="needs gcc and make"
)


def _check_module():
    spec = importlib.util.spec_from_file_location("ndx_guest_check", GUESTS / "tests" / "check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def image():
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True, capture_output=True)
    return IMAGE.read_bytes()


def test_is_small_x86_64_pv_elf_with_xen_notes(image):
    notes, loads = _check_module().xen_notes(image)
    assert notes[5] == b"xen-3.0\0"  # XEN_VERSION
    assert notes[8] == b"generic\0"  # LOADER
    assert notes[6].startswith(b"ndx")  # GUEST_OS
    assert struct.unpack("<Q", notes[3]) == (0,)  # VIRT_BASE
    assert struct.unpack("<Q", notes[2])[0] % 4096 == 0  # HYPERCALL_PAGE
    assert len(loads) == 1
    assert len(image) < 64 * 1024


def test_host_side_checks():
    out = subprocess.run(["make", "-s", "-C", str(GUESTS), "check"], check=True, capture_output=True, text=True).stdout
    assert "crc32 ok" in out and "cmdline ok" in out and "elf ok" in out
