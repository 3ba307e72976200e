#!/usr/bin/env bash
# Boot the testbed once and run SCRIPT in dom0 with the Xen toolstack up; exit with its exit code.
#
#   testbed/run.sh [--kvm] [--fwd HOSTPORT:GUESTPORT ...] [--scratch DIR] [--timeout S] SCRIPT
#
# The serial console (Xen, dom0, the script's output) streams to stdout and is kept in
# <scratch>/serial.log; the last line says "NDX-TESTBED EXIT: <rc>". In dom0 the repository is
# /src (read-only) and the scratch directory /host (read-write). TCG by default; --kvm only on
# hosts with hardware virtualisation. Exit 125: the machine never got to run the script.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m testbed run "$@"
