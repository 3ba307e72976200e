# __main__ of dist/nomad-driver-xen (a shiv zipapp). tools/dist.py puts this file in place of
# shiv's two-line __main__.py (and fills in BUILD_ID).
#
# shiv unpacks the bundled site-packages once per build into SHIV_ROOT (default ~/.shiv) and
# reuses them on every later start. Nomad starts plugins with whatever environment the agent
# has: HOME may be unset (then ~ is the passwd entry's home, /root for root) and the home may be
# read-only (systemd's ProtectHome=read-only, say). So the root is: SHIV_ROOT when set; else
# ~/.shiv when this build is unpacked there already or it is writable; else a private directory
# of this user under $TMPDIR or /tmp.
#
# Once this build is unpacked, start it directly, exactly as shiv's bootstrap would (its
# site-packages before the interpreter's, then the entry point): that skips importing shiv's
# runtime and reading the archive's directory, which a plugin start (three of them when the
# agent starts) would pay every time. The first start goes through shiv's own bootstrap, which
# unpacks under a lock.
import os
import sys

BUILD_ID = "@BUILD_ID@"
ENTRY_POINT = "xen_driver.cli:main"

if sys.version_info[:2] != (3, 11):
    sys.stderr.write(
        "nomad-driver-xen: this file bundles binary modules for CPython 3.11 (Debian 12's python3); "
        "it was started by Python %d.%d (%s)\n" % (sys.version_info[0], sys.version_info[1], sys.executable)
    )
    sys.exit(1)


def _build_id():
    if not BUILD_ID.startswith("@"):
        return BUILD_ID
    import json
    import zipfile

    with zipfile.ZipFile(sys.argv[0]) as archive:
        return json.loads(archive.read("environment.json"))["build_id"]


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
    import stat

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


def _choose_root(unpacked):
    if os.environ.get("SHIV_ROOT"):
        return os.path.expanduser(os.environ["SHIV_ROOT"])
    try:
        home_root = os.path.join(os.path.expanduser("~"), ".shiv")
    except (KeyError, RuntimeError):
        home_root = None
    if home_root and not home_root.startswith("~") and _usable(home_root, unpacked):
        return home_root
    return _private_tmp_root()


def _run_unpacked(site_packages):
    import site
    from importlib import import_module

    # shiv's bootstrap, the part after unpacking: our site-packages goes before the first
    # site-packages/dist-packages directory of sys.path (Debian's python3-libvirt stays
    # importable after it).
    length = len(sys.path)
    index = next(
        (i for i, p in enumerate(sys.path) if os.path.basename(p) in ("site-packages", "dist-packages")), length
    )
    site.addsitedir(site_packages)
    sys.path = sys.path[:index] + sys.path[length:] + sys.path[index:length]
    module, _, func = ENTRY_POINT.partition(":")
    sys.exit(getattr(import_module(module), func)())


def _main():
    unpacked = "%s_%s" % (os.path.basename(os.path.realpath(sys.argv[0])), _build_id())
    root = _choose_root(unpacked)
    if root and not os.environ.get("SHIV_FORCE_EXTRACT"):
        site_packages = os.path.join(root, unpacked, "site-packages")
        if os.path.isdir(site_packages):
            _run_unpacked(site_packages)
    if root:
        os.environ["SHIV_ROOT"] = root
    import _bootstrap  # shiv's runtime, bundled in this file: unpacks, then runs the entry point

    _bootstrap.bootstrap()


_main()
