#!/usr/bin/env bash
# Build the tiny Linux guest the tests boot, from Debian packages
# only, and print the directory that holds it:
#
#   contrib/guest/build-guest.sh        -> /var/cache/borg-vm-guest/<key>
#
#   vmlinuz       the kernel of Debian's linux-image-cloud-amd64 (fetched with
#                 `apt-get download`, unpacked with `dpkg-deb -x`: nothing is
#                 installed on this host)
#   initrd.img    busybox-static and the modules the root needs (virtio_pci,
#                 virtio_blk, virtio_console and their dependencies, resolved
#                 with the modules.dep busybox's depmod writes; modules the
#                 kernel has built in are skipped, compressed ones (.ko.xz,
#                 .ko.gz) are stored uncompressed); its /init is
#                 contrib/guest/initramfs-init
#   root.qcow2    an ext4 root (mke2fs -d) with busybox, qemu-ga and the shared
#                 libraries ldd names, and contrib/guest/init as /sbin/init
#   cmdline       the kernel command line to boot it with (add
#                 borgvm.workload=files|verify|idle)
#
# Works with the packages of Debian 12 (bookworm: busybox in /bin, modules in
# /lib/modules, all three virtio drivers modules) and Debian 13 (trixie:
# busybox in /usr/bin, modules xz-compressed in /usr/lib/modules, virtio_pci
# and virtio_console built into the kernel).
#
# Boot it with libvirt's direct kernel boot (<kernel>, <initrd>, <cmdline>),
# a virtio disk vda, a serial port (the init reports there) and a virtio
# channel org.qemu.guest_agent.0. tests/e2e/realguest.py does.
#
# Cached: the directory's name is a hash of every input (these scripts, the
# packages' versions, the host libraries copied), so a second run only checks
# and prints; builds from older inputs stay until the cache is removed.
# BORG_VM_GUEST_CACHE moves the cache (default /var/cache/borg-vm-guest). Needs apt-get, dpkg-deb, mke2fs (e2fsprogs),
# qemu-img, gzip, flock; the libraries qemu-ga links to (glib, libnuma,
# liburing, libudev: qemu-system-x86 depends on them all).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${BORG_VM_GUEST_CACHE:-/var/cache/borg-vm-guest}
kernel_meta=linux-image-cloud-amd64
root_size=64M
cmdline="console=ttyS0 root=/dev/vda rw quiet panic=-1"
modules=(virtio_pci virtio_blk virtio_console)

say() { printf 'build-guest: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported"
mkdir -p "$cache/debs"
exec 9>"$cache/.lock"
flock 9

# One apt-cache call (each costs most of a second): the versions apt would
# install, and the package the kernel metapackage depends on,
# linux-image-<abi>-cloud-amd64, with its version.
resolve() {
    apt-cache show --no-all-versions "$kernel_meta" busybox-static qemu-guest-agent \
        2>/dev/null | awk '
        /^Package: / { p = $2 }
        /^Version: / && p != km { print p, $2 }
        /^Depends: / && p == km { sub(/^Depends: /, ""); sub(/,.*/, "");
                                  gsub(/[()=]/, ""); print $1, $2 }' km="$kernel_meta"
}

resolved=$(resolve)
if [ "$(wc -l <<<"$resolved")" != 3 ]; then
    say "apt does not know $kernel_meta, busybox-static and qemu-guest-agent: apt-get update"
    apt-get update -qq
    resolved=$(resolve)
fi
[ "$(wc -l <<<"$resolved")" = 3 ] \
    || die "apt lacks one of $kernel_meta, busybox-static, qemu-guest-agent"
kpkg=$(awk '/^linux-image-/ { print $1 }' <<<"$resolved")

fetch() {  # download package $1 (version $2) into the cache once; print its .deb
    local version=$2 deb
    deb="$cache/debs/${1}_${version//:/%3a}_amd64.deb"
    if [ ! -f "$deb" ]; then
        say "downloading $1 $version"
        (cd "$cache/debs" && apt-get download -q=2 "${sandbox[@]}" "$1=$version") >&2
    fi
    [ -f "$deb" ] || die "apt-get download $1=$version made no $deb"
    echo "$deb"
}

# apt-get run as root downloads as user _apt, who cannot write to the cache.
sandbox=()
[ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
debs=()
while read -r p v; do debs+=("$(fetch "$p" "$v")"); done <<<"$resolved"

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$(printf '%s\n' "${debs[@]}" | grep /qemu-guest-agent_)" "$work/pkgs"  # for ldd
qga="$work/pkgs/usr/sbin/qemu-ga"

# The libraries qemu-ga needs, as this host resolves them.
libs=$(ldd "$qga" | awk '/not found/ { print "MISSING " $1; next }
                         $2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if grep -q '^MISSING' <<<"$libs"; then
    die "qemu-ga needs libraries this host lacks: $(grep '^MISSING' <<<"$libs" | tr '\n' ' ')"
fi

key=$( { sha256sum "$here/build-guest.sh" "$here/init" "$here/initramfs-init" \
         | cut -d' ' -f1
         printf '%s\n' "${debs[@]##*/}" "$root_size" "$cmdline" "${modules[@]}"
         sha256sum $libs; } | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -f "$out/root.qcow2" ]; then
    echo "$out"
    exit 0
fi
say "building the guest into $out"
for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$work/pkgs"; done
# Debian 12 ships busybox as /bin/busybox, Debian 13 as /usr/bin/busybox.
busybox=
for b in "$work/pkgs/bin/busybox" "$work/pkgs/usr/bin/busybox"; do
    [ -x "$b" ] && { busybox=$b; break; }
done
[ -n "$busybox" ] || die "busybox-static has no bin/busybox or usr/bin/busybox"

# --- the kernel and its modules ----------------------------------------------
kver=${kpkg#linux-image-}
cp "$work/pkgs/boot/vmlinuz-$kver" "$work/vmlinuz"
moddir="lib/modules/$kver"  # in the initramfs, where busybox modprobe looks
# In the package: lib/modules (Debian 12) or usr/lib/modules (Debian 13).
modbase=
for b in "$work/pkgs" "$work/pkgs/usr"; do
    [ -d "$b/$moddir" ] && { modbase=$b; break; }
done
[ -n "$modbase" ] || die "$kpkg has no lib/modules/$kver or usr/lib/modules/$kver"
"$busybox" depmod -b "$modbase" "$kver"

needed=()  # the modules' files, dependencies first
add_module() {  # $1: a module name or a path relative to $moddir
    local rel line dep
    case $1 in
        *.ko|*.ko.*) rel=$1 ;;
        *) rel=$(grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$modbase/$moddir/modules.dep" \
                     | cut -d: -f1) || true ;;  # no match: built in, or missing
    esac
    if [ -z "$rel" ]; then
        # Built into the kernel (Debian 13's virtio_pci, virtio_console): nothing to load.
        grep -qE "(^|/)$1\.ko\$" "$modbase/$moddir/modules.builtin" 2>/dev/null \
            && return
        die "module $1 is not in $kpkg"
    fi
    case " ${needed[*]} " in *" $rel "*) return ;; esac
    line=$(grep "^$rel:" "$modbase/$moddir/modules.dep")
    for dep in ${line#*:}; do add_module "$dep"; done
    needed+=("$rel")
}
for m in "${modules[@]}"; do add_module "$m"; done

# --- the initramfs -------------------------------------------------------------
ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,"$moddir"}
cp "$busybox" "$ird/bin/busybox"
for applet in sh mount umount modprobe sleep switch_root poweroff; do
    ln -s busybox "$ird/bin/$applet"
done
for rel in "${needed[@]}"; do  # stored uncompressed: busybox need not unpack them
    src="$modbase/$moddir/$rel" dst="$ird/$moddir/${rel%.ko*}.ko"
    mkdir -p "$(dirname "$dst")"
    case $rel in
        *.ko) install -m 0644 "$src" "$dst" ;;
        *.ko.xz) "$busybox" xzcat "$src" > "$dst" ;;
        *.ko.gz) "$busybox" zcat "$src" > "$dst" ;;
        *) die "module $rel: compression not supported" ;;
    esac
done
# Lets modprobe of a built-in module succeed without a .ko file.
[ ! -f "$modbase/$moddir/modules.builtin" ] \
    || cp "$modbase/$moddir/modules.builtin" "$ird/$moddir/"
"$busybox" depmod -b "$ird" "$kver"
install -m 0755 "$here/initramfs-init" "$ird/init"
(cd "$ird" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) \
    | gzip -9 > "$work/initrd.img"

# --- the root filesystem -------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,data,etc,var}
ln -s ../run "$root/var/run"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$qga" "$root/usr/sbin/qemu-ga"
for lib in $libs; do install -D -m 0755 "$lib" "$root$lib"; done
install -m 0755 "$here/init" "$root/sbin/init"
mke2fs -q -F -t ext4 -b 4096 -L borgvm-root -E root_owner=0:0 -d "$root" \
    "$work/root.raw" "$root_size" >&2
qemu-img convert -q -f raw -O qcow2 "$work/root.raw" "$work/root.qcow2"
echo "$cmdline" > "$work/cmdline"

rm -rf "$out"
mkdir "$work/out"
mv "$work/vmlinuz" "$work/initrd.img" "$work/root.qcow2" "$work/cmdline" "$work/out/"
mv "$work/out" "$out"
say "built: kernel $kver, initrd $(du -k "$out/initrd.img" | cut -f1) KiB," \
    "root $(du -k "$out/root.qcow2" | cut -f1) KiB"
echo "$out"
