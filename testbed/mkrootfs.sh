#!/usr/bin/env bash
# Stage 1 of the testbed build: the dom0 root filesystem as a directory tree.
#
#   mkrootfs.sh ROOT MIRROR SECURITY_MIRROR PACKAGES_FILE REQUIREMENTS_FILE
#
# debootstrap (minbase) + the Debian packages of PACKAGES_FILE + the PyPI wheels of
# REQUIREMENTS_FILE + static dom0 configuration. Everything that depends on our own scripts (the
# init, the command agent) is added by build.sh in stage 2, so editing those does not redo this.
#
# Called by build.sh inside a private mount namespace (unshare --mount): the /proc and /sys mounts
# made here for the chroot vanish with the process, whatever happens to it.
set -euo pipefail

ROOT=$1 MIRROR=$2 SECMIRROR=$3 PACKAGES_FILE=$4 REQUIREMENTS_FILE=$5
SUITE=bookworm
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
unset PYTHONPATH PYTHONHOME

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root "$@"; }
say() { echo "--- mkrootfs: $*"; }

say "debootstrap $SUITE (minbase) from $MIRROR"
debootstrap --variant=minbase --arch=amd64 --keyring="$KEYRING" "$SUITE" "$ROOT" "$MIRROR"

say "apt sources (main, updates, security) and settings taken from the build machine"
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECMIRROR $SUITE-security main
EOF
# Carry over the few apt settings of the build machine that decide whether its mirrors can be
# reached at all (proxy, release-file date checks); nothing else of the host's apt config.
: > "$ROOT/etc/apt/apt.conf.d/90ndx-host"
for key in Acquire::http::Proxy Acquire::https::Proxy Acquire::Check-Valid-Until Acquire::Check-Date; do
    value=; eval "$(apt-config shell value "$key")"
    if [ -n "$value" ]; then printf '%s "%s";\n' "$key" "$value" >> "$ROOT/etc/apt/apt.conf.d/90ndx-host"; fi
done
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$ROOT/etc/apt/apt.conf.d/90ndx-norecommends"
# no service may start inside the chroot
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"

# A small initramfs that only has to find the root filesystem on QEMU's virtio disk. Written before
# the kernel is installed so that its postinst generates the small one directly.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=gzip\n' > "$ROOT/etc/initramfs-tools/conf.d/ndx-testbed.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' > "$ROOT/etc/initramfs-tools/modules"

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"

mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$PACKAGES_FILE" | tr -d '[:blank:]')
say "apt-get install ${packages[*]}"
in_root apt-get update -q
in_root apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${packages[@]}"
in_root apt-get -y -q upgrade -o Dpkg::Options::=--force-confold

hv=$(in_root dpkg-query -W -f '${Version}' xen-hypervisor-4.17-amd64)
tools=$(in_root dpkg-query -W -f '${Version}' xen-utils-4.17)
if [ "$hv" != "$tools" ]; then
    echo "mkrootfs: xen-hypervisor-4.17-amd64 $hv and xen-utils-4.17 $tools differ" >&2; exit 1
fi
say "Xen $hv (hypervisor and toolstack)"

kver=$(ls "$ROOT/lib/modules" | sort -V | tail -n1)
[ -f "$ROOT/boot/initrd.img-$kver" ] || in_root update-initramfs -c -k "$kver"

pyver=$(in_root python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site="$ROOT/usr/local/lib/python$pyver/dist-packages"
say "PyPI wheels for CPython $pyver manylinux x86_64 -> ${site#"$ROOT"}"
mkdir -p "$site"
python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-compile \
    --target "$site" --only-binary=:all: --implementation cp --python-version "$pyver" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -r "$REQUIREMENTS_FILE"
rm -rf "$site/bin"
# prove that the wheels import on dom0's own interpreter (and byte-compile them once, here)
in_root python3 - <<'EOF'
import compileall, sys
import grpc, grpc_health.v1.health, grpc_status, google.protobuf, google.rpc.status_pb2, msgpack, structlog
import libvirt
site = "/usr/local/lib/python%d.%d/dist-packages" % sys.version_info[:2]
compileall.compile_dir(site, quiet=1, workers=1)
print("dom0 python imports ok: grpc", grpc.__version__, "protobuf", google.protobuf.__version__)
EOF

say "dom0 configuration"
echo dom0 > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost dom0\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
: > "$ROOT/etc/resolv.conf"
printf '# the root filesystem is mounted by the initramfs; /src and /host by ndx-init\n' > "$ROOT/etc/fstab"
mkdir -p "$ROOT/src" "$ROOT/host" "$ROOT/var/log/xen/console" "$ROOT/var/lib/xen" "$ROOT/etc/xen/auto"

say "libvirt (second backend): what libvirtd needs to start without libvirt-daemon-system"
# libvirtd also loads its QEMU driver, which refuses to start without the user and group that
# Debian's libvirt-daemon-system would have created.
in_root groupadd --system libvirt-qemu
in_root useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin libvirt-qemu
# The libxl driver names the host CPU after a model of libvirt's CPU map, from the features Xen
# reports. Xen hides SEP on an AMD-vendor CPU (no SYSENTER in long mode), and QEMU's qemu64 with
# svm is one, so no model matches and the driver refuses to start. Add qemu64 without SEP.
cpu_map="$ROOT/usr/share/libvirt/cpu_map"
sed -e "s/name='qemu64'/name='qemu64-xen-amd'/" -e "/<feature name='sep'\/>/d" \
    "$cpu_map/x86_qemu64.xml" > "$cpu_map/x86_qemu64-xen-amd.xml"
sed -i "s|^\( *\)<include filename='x86_qemu64.xml'/>|&\n\1<include filename='x86_qemu64-xen-amd.xml'/>|" \
    "$cpu_map/index.xml"
grep -q "x86_qemu64-xen-amd.xml" "$cpu_map/index.xml"

say "trim: package caches, documentation, kernel modules no dom0 here can use"
in_root apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/*
moddir="$ROOT/lib/modules/$kver/kernel"
for d in drivers/gpu drivers/media drivers/infiniband drivers/staging drivers/bluetooth \
         drivers/net/wireless drivers/iio drivers/isdn sound net/wireless net/mac80211 net/bluetooth; do
    rm -rf "${moddir:?}/$d"
done
in_root depmod -a "$kver"

umount "$ROOT/sys" "$ROOT/proc"
say "done: kernel $kver, Xen $hv"
