"""What it takes to depend on the pinned Nomad release from another Go module.

    python3 tools/nomad/release.py      (run inside any Go module directory)

Nomad's go.mod has ``replace`` directives that are not applied when Nomad is a dependency, and
its ``api`` sub-module is built from ``./api`` upstream (there are no ``api/v*`` tags).  So a
module that requires Nomad — the wrapper that builds the agent (build.sh) and the conformance
suite (tests/conformance/pin.sh) — must repeat the release's non-local replaces and pin ``api``
to the release's commit as a pseudo-version.  This script derives all of that, once, from the
release's own go.mod as served by the Go module proxy, and prints one fact per line:

    version <x.y.z>               the pin, from tools/nomad/VERSION
    gomod <path>                  the release's go.mod in the module cache
    commit <40 hex>
    go <directive>                the release's `go` directive
    api <pseudo-version>          v0.0.0-<UTC commit time>-<12 hex of the commit>
    replace <old>=<new>@<ver>     every replace a dependent module needs (sorted; api included)
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

MODULE = "github.com/hashicorp/nomad"
VERSION_FILE = Path(__file__).resolve().parent / "VERSION"
#: Nomad is under the Business Source License from this release on; the project uses none of them.
FIRST_BSL_RELEASE = (1, 7, 0)


def go_json(*args: str) -> dict:
    out = subprocess.run(["go", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    version = VERSION_FILE.read_text().strip()
    try:
        release = tuple(int(part) for part in version.split("."))
    except ValueError:
        sys.exit(f"release.py: {VERSION_FILE} says {version!r}, not a release number such as 1.6.3")
    if len(release) != 3 or release >= FIRST_BSL_RELEASE:
        # Checked before anything is fetched: such a release must not even be downloaded.
        sys.exit(
            f"release.py: {VERSION_FILE} pins Nomad {version}; Nomad is under the Business Source License "
            f"from {'.'.join(map(str, FIRST_BSL_RELEASE))} on, pin an open-source (MPL-2.0) release such as 1.6.3"
        )
    meta = go_json("mod", "download", "-json", f"{MODULE}@v{version}")
    if meta.get("Error"):
        sys.exit(f"release.py: {meta['Error']}")
    commit = (meta.get("Origin") or {}).get("Hash", "")
    if not commit:
        sys.exit(f"release.py: the module proxy did not report the commit of {meta['Version']}")
    with open(meta["Info"]) as fh:
        when = dt.datetime.strptime(json.load(fh)["Time"], "%Y-%m-%dT%H:%M:%SZ")
    api = f"v0.0.0-{when:%Y%m%d%H%M%S}-{commit[:12]}"
    gomod = go_json("mod", "edit", "-json", meta["GoMod"])
    replaces = []
    for r in gomod.get("Replace") or []:
        new = r["New"]
        if not new.get("Version"):
            continue  # a local directory (./api): replaced by the api pseudo-version below
        old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
        replaces.append(f"{old}={new['Path']}@{new['Version']}")
    replaces.append(f"{MODULE}/api={MODULE}/api@{api}")
    print(f"version {version}")
    print(f"gomod {meta['GoMod']}")
    print(f"commit {commit}")
    print(f"go {gomod['Go']}")
    print(f"api {api}")
    for line in sorted(replaces):
        print(f"replace {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
