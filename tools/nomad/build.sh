#!/usr/bin/env bash
# Build the pinned Nomad agent from the Go module proxy and cache it outside the repository.
#
#   bash tools/nomad/build.sh        -> prints the path of the binary as its last line
#
# Nomad cannot be `go install`ed (its go.mod has `replace` directives), so we generate a small
# wrapper module that requires the pinned release, re-declares that release's own non-local
# replaces, pins the `api` sub-module to the release's commit (upstream builds it from ./api),
# and builds the dependency's main package with cgo on (Nomad 1.6's own `exec` driver, which
# our tests do not use, links libcontainer's nsenter, which does not build without cgo).
#
# Only open-source releases: release.py refuses a pin of 1.7.0 or later (Business Source
# License) before anything is fetched, and tools/licence_guard.py reads the licence of every
# module of the wrapper's build list.
#
# The result lives at $NDX_CACHE_DIR/nomad/<version>/nomad, next to the wrapper module
# (wrapper/, kept for the licence guard). When both exist and the binary reports the pinned
# version, this script does nothing but print that path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(tr -d ' \n\r\t' < "$here/VERSION")"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "build.sh: bad version '$version' in $here/VERSION" >&2; exit 2; }

cache_root="${NDX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-xen}"
out_dir="$cache_root/nomad/$version"
bin="$out_dir/nomad"
mkdir -p "$out_dir"

is_ready() {
    [[ -x "$bin" && -f "$out_dir/wrapper/go.mod" ]] && "$bin" version 2>/dev/null | head -n1 | grep -qx "Nomad v$version"
}

if is_ready; then
    echo "$bin"
    exit 0
fi

# One builder at a time (make and the test fixtures may ask concurrently).
exec 9>"$out_dir/.lock"
flock 9
if is_ready; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { echo "build.sh: a Go toolchain is needed to build Nomad (go not on PATH)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "build.sh: python3 is needed to read go.mod metadata" >&2; exit 2; }

started=$(date +%s)
src="$out_dir/wrapper"
rm -rf "$src"
mkdir -p "$src"
cd "$src"

export GOFLAGS="${GOFLAGS:-} -mod=mod"
mod="github.com/hashicorp/nomad"

# 1. What depending on the release takes (tools/nomad/release.py, shared with the conformance
#    suite): its go directive, its non-local replaces and the api sub-module at its commit.
release="$(python3 "$here/release.py")"
field() { awk -v k="$1" '$1 == k {print $2}' <<<"$release"; }
commit="$(field commit)"
api_version="$(field api)"
go_directive="$(field go)"
mapfile -t replaces < <(awk '$1 == "replace" {print "-replace=" $2}' <<<"$release")

cat > go.mod <<EOF
module ndx.invalid/nomad-build

go $go_directive
EOF
go mod edit "${replaces[@]}"

# 2. Fail here, with the proxy's answer, if the api pseudo-version cannot be had.
go mod download "$mod/api@$api_version"

# 3. Require Nomad as a tool of this module and build its main package.
go get -tool "$mod@v$version"
echo "build.sh: building Nomad v$version (commit ${commit:0:12}, api $api_version) ..." >&2
CGO_ENABLED=1 go build -trimpath -o "$bin.tmp" "$mod"
mv -f "$bin.tmp" "$bin"

is_ready || { echo "build.sh: built binary does not report Nomad v$version:" >&2; "$bin" version >&2 || true; exit 1; }
echo "build.sh: built in $(( $(date +%s) - started ))s" >&2
echo "$bin"
