#!/usr/bin/env bash
# Install what the project needs on a fresh Debian 12 machine, then the Python environment.
#
#   bash tools/install-deps.sh [VENV]      (default VENV: .venv)
#
# Idempotent: Debian packages are only installed when one is missing; the virtualenv is created
# once and the project (editable, with the libvirt and test extras) re-installed into it.
set -euo pipefail

venv="${1:-.venv}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# libvirt-python builds from source against libvirt-dev (pkg-config finds it, gcc compiles it,
# python3-dev provides the headers); python3-venv gives us `python3 -m venv`.
debs=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing Debian packages: ${missing[*]}" >&2
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -o DPkg::Lock::Timeout=600
    $sudo apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            python="$candidate"
            break
        fi
    done
fi
[[ -n "$python" ]] || { echo "install-deps: Python >= 3.11 is required" >&2; exit 1; }

if [[ ! -x "$venv/bin/python" ]]; then
    echo "install-deps: creating virtualenv $venv with $python" >&2
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[libvirt,test]"
echo "install-deps: ready: $venv" >&2
