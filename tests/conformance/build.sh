#!/usr/bin/env bash
# Compile the conformance suite into one static test binary and cache it.
#
#   bash tests/conformance/build.sh     -> prints the path of the binary as its last line
#
# The binary runs on the host and, copied into the Xen testbed, in dom0 (CGO_ENABLED=0, so it
# needs nothing there). It is cached under $NDX_CACHE_DIR/conformance/<hash of the module's
# sources, go.mod, go.sum and the Go version>; Go's own build cache (shared with
# tools/nomad/build.sh, which builds with cgo, so only the packages cgo does not touch are
# reused) makes a rebuild after a source change a matter of seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${NDX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-xen}"
command -v go >/dev/null || { echo "build.sh: a Go toolchain is needed (go not on PATH)" >&2; exit 2; }

cd "$here"
key="$( { go env GOVERSION GOARCH; cat go.mod go.sum; for f in *.go; do echo "== $f"; cat "$f"; done; } | sha256sum | cut -c1-16)"
out_dir="$cache_root/conformance/$key"
bin="$out_dir/conformance.test"
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$out_dir"
exec 9>"$out_dir/.lock"
flock 9
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

started=$(date +%s)
echo "build.sh: compiling the conformance suite ..." >&2
# -mod=readonly: go.mod/go.sum are committed (tests/conformance/pin.sh maintains them).
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" go test -c -trimpath -o "$bin.tmp" .
mv -f "$bin.tmp" "$bin"
echo "build.sh: built in $(( $(date +%s) - started ))s" >&2
echo "$bin"
