#!/usr/bin/env bash
# Keep this Go module pinned to the Nomad version in tools/nomad/VERSION (the one pin).
#
#   bash tests/conformance/pin.sh           # rewrite go.mod/go.sum for that version
#   bash tests/conformance/pin.sh --check   # exit 1 (saying what differs) when they do not match
#
# Same facts as tools/nomad/build.sh (both from tools/nomad/release.py): Nomad's own go.mod `replace` directives are not applied
# when Nomad is a dependency, so we repeat the tag's non-local replaces, and replace the `api`
# sub-module (which upstream builds from ./api) with the tag's commit as a pseudo-version.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(tr -d ' \n\r\t' < "$repo/tools/nomad/VERSION")"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "pin.sh: bad version '$version' in tools/nomad/VERSION" >&2; exit 2; }
mode="${1:-update}"
mod="github.com/hashicorp/nomad"

command -v go >/dev/null || { echo "pin.sh: a Go toolchain is needed (go not on PATH)" >&2; exit 2; }
cd "$here"
export GOFLAGS="${GOFLAGS:-} -mod=mod"

# What depending on the release takes, derived once for the agent build and for us.
release="$(python3 "$repo/tools/nomad/release.py")"
api_version="$(awk '$1 == "api" {print $2}' <<<"$release")"
# Expected replaces, one "old=new@version" per line, sorted: the tag's non-local ones + api.
expected="$(awk '$1 == "replace" {print $2}' <<<"$release")"

current_state() {
    go mod edit -json go.mod | python3 -c '
import json, sys
m = json.load(sys.stdin)
req = [r["Version"] for r in m.get("Require") or [] if r["Path"] == "github.com/hashicorp/nomad"]
print("require", req[0] if req else "none")
for r in sorted(m.get("Replace") or [], key=lambda r: r["Old"]["Path"]):
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    print("replace %s=%s@%s" % (old, r["New"]["Path"], r["New"].get("Version", "")))
'
}

want="$(echo "require v$version"; sed 's/^/replace /' <<<"$expected" | sort)"

if [[ "$mode" == "--check" ]]; then
    have="$(current_state | { read -r first; echo "$first"; sort; })"
    if [[ "$have" != "$want" ]]; then
        echo "pin.sh: tests/conformance/go.mod does not match tools/nomad/VERSION ($version):" >&2
        diff <(echo "$want") <(echo "$have") | sed 's/^/  /' >&2 || true
        echo "run: bash tests/conformance/pin.sh" >&2
        exit 1
    fi
    echo "tests/conformance/go.mod pins Nomad v$version (api $api_version)"
    exit 0
fi

# Update: drop every replace, set the new ones and the requirement, then tidy. On failure the
# previous go.mod/go.sum are put back.
[[ -e go.sum ]] || : > go.sum   # a hand-cleaned go.mod may come without one
cp go.mod go.mod.orig && cp go.sum go.sum.orig
trap 'mv -f go.mod.orig go.mod; mv -f go.sum.orig go.sum; echo "pin.sh: failed; go.mod/go.sum left unchanged" >&2' ERR
go mod edit -json go.mod | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    print("-dropreplace=" + old)
' | xargs -r go mod edit
mapfile -t args < <(sed 's/^/-replace=/' <<<"$expected")
go mod edit "${args[@]}" "-require=$mod@v$version"
go mod tidy
trap - ERR
rm -f go.mod.orig go.sum.orig
echo "tests/conformance/go.mod now pins Nomad v$version (api $api_version)"
