# __main__ of dist/nomad-driver-xen (a shiv zipapp). tools/dist.py puts this file in place of
# shiv's two-line __main__.py; it only decides where shiv unpacks the bundled site-packages,
# then hands over to shiv's own bootstrap.
#
# shiv unpacks once per build into SHIV_ROOT (default ~/.shiv) and reuses that on every later
# start. Nomad starts plugins with whatever environment the agent has: HOME may be unset (then
# ~ is the passwd entry's home, /root for root) and the home may be read-only (systemd's
# ProtectHome=read-only, say). So: SHIV_ROOT when set; else ~/.shiv when this build is already
# unpacked there or it is writable; else a private directory of this user under $TMPDIR or /tmp.
import json
import os
import stat
import sys
import zipfile

if sys.version_info[:2] != (3, 11):
    sys.stderr.write(
        "nomad-driver-xen: this file bundles binary modules for CPython 3.11 (Debian 12's python3); "
        "it was started by Python %d.%d (%s)\n" % (sys.version_info[0], sys.version_info[1], sys.executable)
    )
    sys.exit(1)


def _usable(root, unpacked):
    """The build is unpacked below root already, or root can be created and written."""
    if os.path.isdir(os.path.join(root, unpacked, "site-packages")):
        return True
    path = root
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _private_tmp_root():
    """$TMPDIR/nomad-driver-xen-<uid>: created 0700, and used only if it is ours alone."""
    base = os.path.join(os.environ.get("TMPDIR") or "/tmp", "nomad-driver-xen-%d" % os.getuid())
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return os.path.join(base, "shiv")


def _choose_root():
    if os.environ.get("SHIV_ROOT"):
        return None
    with zipfile.ZipFile(sys.argv[0]) as archive:
        build_id = json.loads(archive.read("environment.json"))["build_id"]
    unpacked = "%s_%s" % (os.path.basename(os.path.realpath(sys.argv[0])), build_id)
    try:
        home_root = os.path.join(os.path.expanduser("~"), ".shiv")
    except (KeyError, RuntimeError):
        home_root = None
    if home_root and not home_root.startswith("~") and _usable(home_root, unpacked):
        return home_root
    return _private_tmp_root()


_root = _choose_root()
if _root:
    os.environ["SHIV_ROOT"] = _root

import _bootstrap  # noqa: E402  (shiv's runtime, bundled in this file)

_bootstrap.bootstrap()
