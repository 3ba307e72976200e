"""Command line of the testbed: ``python3 -m testbed run [--kvm] [--fwd H:G ...] SCRIPT``."""

from __future__ import annotations

import argparse
import sys

from testbed.vm import TestbedError, run_oneshot


def _forward(text: str) -> tuple[int, int]:
    host, sep, guest = text.partition(":")
    if not sep or not host.isdigit() or not guest.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOSTPORT:GUESTPORT, got {text!r}")
    return int(host), int(guest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="testbed/run.sh",
        description=(
            "Boot Xen + dom0 in QEMU, run SCRIPT in dom0 with the Xen toolstack up, print "
            "'NDX-TESTBED EXIT: <rc>', power off and exit with the script's exit code."
        ),
    )
    parser.add_argument("script", help="shell script (or any executable) to run in dom0")
    parser.add_argument("--kvm", action="store_true", help="use hardware KVM (-enable-kvm -cpu host) instead of TCG")
    parser.add_argument(
        "--fwd",
        action="append",
        type=_forward,
        default=[],
        metavar="HOSTPORT:GUESTPORT",
        help="forward 127.0.0.1:HOSTPORT on the host to dom0's GUESTPORT",
    )
    parser.add_argument(
        "--scratch", metavar="DIR", help="host directory shared read-write as /host (default: a new temporary one)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before QEMU is killed")
    parser.add_argument("--shell", action="store_true", help="a shell on the console after the script")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the serial console")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "run":
        print("usage: python3 -m testbed run [options] SCRIPT   (or: testbed/run.sh [options] SCRIPT)", file=sys.stderr)
        return 2
    args = parser.parse_args(argv[1:])
    try:
        rc = run_oneshot(
            args.script,
            forwards=dict(args.fwd),
            kvm=args.kvm,
            scratch_dir=args.scratch,
            timeout=args.timeout,
            shell=args.shell,
            echo=not args.quiet,
        )
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 125
    print(f"testbed: NDX-TESTBED EXIT: {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
