#!/usr/bin/env bash
# Build, or find in the cache, the images of the real-Xen testbed (Xen 4.17 + Debian dom0 in QEMU).
#
#   testbed/build.sh            build if needed; the last line of stdout is the image directory
#   testbed/build.sh --locate   print the image directory if it is already built, else exit 1
#
# Image directory: ${NDX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-xen}/testbed/<key>/
#   xen            Xen hypervisor, the gunzipped multiboot ELF (QEMU -kernel)
#   vmlinuz        dom0 kernel      } QEMU -initrd modules
#   initrd.img     dom0 initramfs   }  (ours: initrd-init, busybox, the virtio disk modules)
#   dom0.ext4      dom0 root filesystem; QEMU opens it with snapshot=on, so it is never written
#   manifest.json  key, versions, what went in
# <key> is a hash of every file the images are made from and of the Debian mirrors used, so an
# unchanged recipe makes this a no-op. The build runs in a temporary directory renamed into place
# at the end: a half-built image is never used. After a successful build, other keys are removed.
#
# Two stages, each cached: the root filesystem tree (mkrootfs.sh: debootstrap, Debian packages,
# PyPI wheels; minutes) and the images (this file: our init and agent added, ext4 made; seconds).
#
# Progress goes to stderr, the full output of each step to $CACHE/build.log; a failure names the
# step and that log. Debian packages and the mirrors come from this machine's apt configuration.
set -Eeuo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${NDX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-xen}
CACHE=$CACHE_ROOT/testbed
LOG=$CACHE/build.log
ROOTFS_RECIPE=(mkrootfs.sh dom0-packages.txt dom0-requirements.txt)
IMAGE_RECIPE=(build.sh dom0-init initrd-init agent.py)
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600)

step=setup
say() { echo "==> testbed build: $*" >&2; }
die() { echo "testbed build FAILED at step '$step': $*" >&2; echo "    log: $LOG" >&2; exit 1; }
on_error() {
    local rc=$?
    if [ -f "$LOG" ]; then echo "--- last lines of $LOG:" >&2; tail -n 25 "$LOG" >&2; fi
    echo "testbed build FAILED at step '$step' (exit $rc); full log: $LOG" >&2
    exit "$rc"
}
trap on_error ERR
run_logged() { "$@" >>"$LOG" 2>&1; }

# Debian mirrors as this machine's apt knows them (deb822 .sources files and/or sources.list).
# Prints "<main-uri> <security-uri>".
apt_mirrors() {
    python3 - /etc/apt/sources.list /etc/apt/sources.list.d/* <<'EOF'
import re, sys
main = security = None
def consider(types, uris, suites):
    global main, security
    if "deb" not in types:
        return
    for uri in uris:
        for suite in suites:
            if suite == "bookworm-security" and security is None:
                security = uri
            elif suite == "bookworm" and main is None:
                main = uri
for path in sys.argv[1:]:
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError):
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.split()
            if fields.get("enabled", ["yes"])[0].lower() == "no":
                continue
            consider(fields.get("types", []), fields.get("uris", []), fields.get("suites", []))
    elif path.endswith(".list"):
        for line in text.splitlines():
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3:
                consider([line[0]], [line[1]], [line[2]])
if not main or not security:
    sys.exit("no apt source for bookworm and bookworm-security found in /etc/apt")
print(main.rstrip("/"), security.rstrip("/"))
EOF
}

recipe_hash() {  # sha256 over "name\0content\0" of the given files, then of extra words
    local f
    { for f in "$@"; do
        if [ -f "$HERE/$f" ]; then printf '%s\0' "$f"; cat "$HERE/$f"; printf '\0'; else printf '%s\0' "$f"; fi
      done; } | sha256sum | cut -c1-16
}

image_complete() {
    local d=$1 f
    for f in xen vmlinuz initrd.img dom0.ext4 manifest.json; do [ -s "$d/$f" ] || return 1; done
}

# Install whatever of the build machine's packages is missing (other builds may hold the dpkg lock).
ensure_host_packages() {
    local want=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || want+=("$pkg")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    say "installing host packages: ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get "${APT_OPTS[@]}" update >>"$LOG" 2>&1 || true
    apt-get "${APT_OPTS[@]}" install --no-install-recommends "${want[@]}" >>"$LOG" 2>&1 \
        || die "apt-get install ${want[*]} failed"
}

remove_tree() {  # never crosses into a mounted filesystem (/proc, /sys of a chroot)
    [ -e "$1" ] || return 0
    rm -rf --one-file-system "$1"
}

mkdir -p "$CACHE"
locate_only=0
[ "${1:-}" = "--locate" ] && locate_only=1

step="read apt mirrors"
read -r MIRROR SECMIRROR < <(apt_mirrors) || die "cannot read the Debian mirrors from /etc/apt"
ROOTFS_KEY=$( { recipe_hash "${ROOTFS_RECIPE[@]}"; echo "$MIRROR $SECMIRROR amd64"; } | sha256sum | cut -c1-16)
KEY=$( { echo "$ROOTFS_KEY"; recipe_hash "${IMAGE_RECIPE[@]}"; } | sha256sum | cut -c1-16)
OUT=$CACHE/$KEY
ROOTFS=$CACHE/rootfs-$ROOTFS_KEY

if image_complete "$OUT"; then
    [ $locate_only = 1 ] || ensure_host_packages qemu-system-x86
    echo "$OUT"; exit 0
fi
[ $locate_only = 1 ] && { echo "testbed images for key $KEY are not built (run testbed/build.sh)" >&2; exit 1; }

# One build at a time per cache; whoever waited re-checks, the image may be there now.
exec 9>"$CACHE/.lock"
flock -n 9 || { say "waiting for another build (lock $CACHE/.lock)"; flock 9; }
if image_complete "$OUT"; then ensure_host_packages qemu-system-x86; echo "$OUT"; exit 0; fi

: > "$LOG"
start=$(date +%s)
say "building key $KEY (rootfs $ROOTFS_KEY); log: $LOG"
echo "testbed build key=$KEY rootfs=$ROOTFS_KEY mirror=$MIRROR security=$SECMIRROR" >>"$LOG"

step="host packages"
ensure_host_packages qemu-system-x86 debootstrap e2fsprogs cpio debian-archive-keyring util-linux coreutils
python3 -m pip --version >>"$LOG" 2>&1 || { ensure_host_packages python3-pip; }

step="dom0 root filesystem"
if [ -f "$ROOTFS/.complete" ]; then
    say "root filesystem $ROOTFS_KEY cached"
else
    say "root filesystem (debootstrap + packages + wheels, a few minutes)"
    tmp_rootfs=$CACHE/.tmp-rootfs-$ROOTFS_KEY
    remove_tree "$tmp_rootfs"
    run_logged unshare --mount --propagation private \
        bash "$HERE/mkrootfs.sh" "$tmp_rootfs" "$MIRROR" "$SECMIRROR" \
        "$HERE/dom0-packages.txt" "$HERE/dom0-requirements.txt"
    touch "$tmp_rootfs/.complete"
    remove_tree "$ROOTFS"
    mv "$tmp_rootfs" "$ROOTFS"
fi

step="assemble images"
say "images: init, agent, initramfs, boot files, ext4"
TMP=$CACHE/.tmp-$KEY
remove_tree "$TMP"
mkdir -p "$TMP"
# A hard-linked copy of the cached tree: new files only, never edits of linked ones.
cp -al "$ROOTFS" "$TMP/root"
rm -f "$TMP/root/.complete"
install -m 0755 "$HERE/dom0-init" "$TMP/root/sbin/ndx-init"
install -D -m 0755 "$HERE/agent.py" "$TMP/root/usr/local/lib/ndx/agent.py"
kver=$(ls "$TMP/root/lib/modules" | sort -V | tail -n1)
xen_gz=$(ls "$TMP/root"/boot/xen-4.17*.gz | sort -V | tail -n1)
zcat "$xen_gz" > "$TMP/xen"
cp "$TMP/root/boot/vmlinuz-$kver" "$TMP/vmlinuz"
# initramfs: static busybox, initrd-init, and the virtio disk + ext4 modules in load order.
# Uncompressed: unpacking costs less emulated CPU time than inflating.
ird=$TMP/initrd
mkdir -p "$ird/bin" "$ird/dev" "$ird/proc" "$ird/sys" "$ird/newroot" "$ird/lib/modules"
install -m 0755 "$TMP/root/bin/busybox" "$ird/bin/busybox"
file_is_static() {  # an ELF without a PT_INTERP program header
    python3 - "$1" <<'PY'
import struct, sys
elf = open(sys.argv[1], "rb").read()
phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
sys.exit(1 if 3 in types else 0)
PY
}
file_is_static "$ird/bin/busybox" || die "dom0's /bin/busybox is not static (busybox-static missing?)"
install -m 0755 "$HERE/initrd-init" "$ird/init"
chroot "$TMP/root" /sbin/modprobe --set-version "$kver" --show-depends -a virtio_pci virtio_blk ext4 crc32c_generic \
    | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$TMP/initrd-modules"
[ -s "$TMP/initrd-modules" ] || die "no module list for the initramfs"
while read -r ko; do
    cp "$TMP/root$ko" "$ird/lib/modules/"
    basename "$ko" >> "$ird/modules.order"
done < "$TMP/initrd-modules"
rm -f "$TMP/initrd-modules"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$TMP/initrd.img"
remove_tree "$ird"
# size: the tree plus 1 GiB for what tests write (a Nomad binary, data dirs), in whole MiB
used_mib=$(du -sm --apparent-size "$TMP/root" | cut -f1)
size_mib=$(( used_mib * 11 / 10 + 1024 ))
# no journal and no lazy init: the kernel would otherwise spend emulated CPU time zeroing tables
run_logged mkfs.ext4 -q -F -L ndx-dom0 -O ^has_journal -E lazy_itable_init=0,root_owner=0:0 \
    -d "$TMP/root" "$TMP/dom0.ext4" "${size_mib}M"

python3 - "$TMP" "$KEY" "$ROOTFS_KEY" "$kver" "$MIRROR" "$SECMIRROR" "$HERE/dom0-requirements.txt" <<'EOF' >>"$LOG" 2>&1
import json, os, re, sys, time
tmp, key, rootfs_key, kver, mirror, secmirror, reqs = sys.argv[1:]
status = open(os.path.join(tmp, "root/var/lib/dpkg/status"), encoding="utf-8").read()
versions = {}
for block in status.split("\n\n"):
    name = re.search(r"^Package: (.+)$", block, re.M)
    ver = re.search(r"^Version: (.+)$", block, re.M)
    if name and ver and re.search(r"^Status: .* installed$", block, re.M):
        versions[name.group(1)] = ver.group(1)
manifest = {
    "key": key,
    "rootfs_key": rootfs_key,
    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "xen_version": versions.get("xen-hypervisor-4.17-amd64"),
    "xen_utils_version": versions.get("xen-utils-4.17"),
    "dom0_kernel": kver,
    "libvirt_version": versions.get("libvirt-daemon"),
    "python3_version": versions.get("python3"),
    "mirrors": [mirror, secmirror],
    "wheels": [l.strip() for l in open(reqs) if l.strip() and not l.startswith("#")],
    "files": {f: os.path.getsize(os.path.join(tmp, f)) for f in ("xen", "vmlinuz", "initrd.img", "dom0.ext4")},
}
json.dump(manifest, open(os.path.join(tmp, "manifest.json"), "w"), indent=2)
print(json.dumps(manifest, indent=2))
EOF
remove_tree "$TMP/root"

step="install into cache"
remove_tree "$OUT"
mv "$TMP" "$OUT"
image_complete "$OUT" || die "image directory $OUT incomplete after the build"
# keep only what this key uses: other image keys, other root filesystems, leftovers of crashed builds
for d in "$CACHE"/* "$CACHE"/.tmp-*; do
    [ -d "$d" ] || continue
    case "$d" in "$OUT"|"$ROOTFS") continue ;; esac
    say "removing stale $(basename "$d")"
    remove_tree "$d"
done
say "done in $(( $(date +%s) - start )) s: $OUT"
echo "$OUT"
