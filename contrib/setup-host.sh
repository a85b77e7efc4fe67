#!/usr/bin/env bash
# Make this Debian 12 (bookworm) or Debian 13 (trixie) machine able to run
# borg-vm, its demo and its tests. Both releases have every package below
# under the same name, and both ship libvirtd, the monolithic daemon, in
# libvirt-daemon (docs/platforms.md: what was tried on each). Other releases
# get a warning and the same steps.
#
#   contrib/setup-host.sh [VENV] [bench]   (as root; VENV defaults to ./.venv)
#
# With "bench" (make bench, make bench-quick) it also installs what only the
# benchmarks use: virtnbdbackup, which bench/nightly.py compares borg-vm with
# (Debian's package; `pip install virtnbdbackup` finds nothing: PyPI has no
# such project).
#
# Idempotent: a second run checks, changes nothing and takes a second or two.
# 1. Debian packages: QEMU, libvirt (daemon, QEMU driver, clients, Python
#    binding), libnbd (Python binding, tools), nbdkit and its python plugin and
#    llfuse (for borg-vm mount: nbdkit serves what 'borg mount' reads through
#    FUSE), defusedxml, systemd
#    (only for `systemd-analyze verify` of contrib/systemd in the tests: it is
#    not started, let alone made PID 1), faketime (the nights of `make
#    bench-retention`), e2fsprogs (the test guest's root filesystem, and
#    e2fsck of restored ones), rclone (Borg 2's rclone: repository
#    locations; the tests use its local backend), openssh-server (only for the tests' own sshd
#    on 127.0.0.1: when this script installs it, it first creates
#    /etc/ssh/sshd_not_to_be_run, Debian's switch that keeps the system sshd
#    from being started, now or at boot; remove that file to run it), ovmf
#    and swtpm, swtpm-tools (UEFI firmware and an emulated TPM 2.0 for the
#    test domains whose NVRAM and TPM state borg-vm keeps; swtpm-tools
#    creates the tss user, which libvirtd runs swtpm as when it exists at
#    libvirtd's start, else root), tpm2-tools (the tests read and write that
#    TPM state offline; it pulls in the swtpm TCTI, libtss2-tcti-swtpm0 on
#    Debian 12 and libtss2-tcti-swtpm0t64 on 13, so neither is named here),
#    and what building borgbackup needs; installed only when missing.
# 2. A venv from Debian's /usr/bin/python3 (3.11 on Debian 12, 3.13 on
#    Debian 13) with --system-site-packages (so the distribution's `libvirt`,
#    `nbd` and `llfuse` modules import), holding borgbackup 1.4.x (built from
#    source by pip) and borg-vm with its test extras (virt-firmware among
#    them: the tests edit UEFI variable stores with it).
# 2b. Borg 2 beside it, in VENV/borg2 (a venv of its own: its dependencies
#    are not borg 1.4's): borgbackup 2.0.0b23, the first beta with
#    `create --map/--reuse-from` and the newest that builds against Debian 12's
#    OpenSSL 3.0 (b24 and later need OpenSSL >= 3.2). Built from source by pip
#    (libssl-dev, pkg-config), a few minutes the first time; with mfusepy
#    (borg mount). borgstore's sftp, rclone and s3 backends (sftp://, rclone:,
#    s3: locations) go into VENV/borg2/stores, and VENV/borg2/bin/borg-stores
#    is that Borg with them: 2.0.0b23's borgstore imports every backend it
#    finds at each start (boto3 and paramiko: about 0.4 s of CPU of every borg
#    command), so the plain VENV/borg2/bin/borg, for local and ssh://
#    repositories, finds none.
# 3. A libvirt daemon answering on qemu:///system. One that answers already
#    is used as it is. Otherwise the minimum is configured (the libvirt-qemu
#    user; user/group root and stdio_handler "file" in qemu.conf, for hosts
#    without systemd or virtlogd) and libvirtd is started in the background;
#    its PID is recorded in /run/borg-vm-setup-libvirtd.pid.
# 4. The tiny Linux guest the tests and the demo boot (contrib/guest/build-guest.sh:
#    a kernel, busybox and qemu-guest-agent from Debian packages it downloads
#    with apt-get download, never installs; cached in /var/cache/borg-vm-guest).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
extras=${2:-}
uri=qemu:///system
libvirtd_pidfile=/run/borg-vm-setup-libvirtd.pid
borg_spec='borgbackup>=1.4,<1.5'
borg2_version=2.0.0b23

packages=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu
          libvirt-clients python3-libvirt python3-libnbd python3-defusedxml libnbd-bin nbdkit
          nbdkit-plugin-python python3-llfuse procps
          python3-venv python3-dev gcc pkg-config
          systemd faketime
          e2fsprogs openssh-server rclone
          ovmf swtpm swtpm-tools tpm2-tools
          libacl1-dev liblz4-dev libzstd-dev libxxhash-dev libssl-dev)
case $extras in
    "") ;;
    bench) packages+=(virtnbdbackup) ;;
    *) printf 'setup: unknown extra %s (known: bench)\n' "$extras"; exit 2 ;;
esac

say() { printf 'setup: %s\n' "$*"; }

check_release() {
    local version
    version=$(cat /etc/debian_version 2>/dev/null || echo unknown)
    case $version in
        12.*|13.*) say "Debian $version" ;;
        *) say "Debian $version: only Debian 12 and 13 are known to work; trying anyway" ;;
    esac
}

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' \
            || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        say "Debian packages: all present"
        return
    fi
    [ "$(id -u)" = 0 ] || { say "need root to install: ${missing[*]}"; exit 2; }
    say "installing Debian packages: ${missing[*]}"
    if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
        # The tests start their own sshd; the package would start the system one.
        mkdir -p /etc/ssh
        touch /etc/ssh/sshd_not_to_be_run
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

make_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        say "creating venv $venv (Debian python, system site packages)"
        /usr/bin/python3 -m venv --system-site-packages "$venv"
    fi
    if ! "$venv/bin/borg" --version 2>/dev/null | grep -q '^borg 1\.4\.'; then
        say "installing $borg_spec into $venv"
        "$venv/bin/pip" install -q "$borg_spec"
    fi
    # Reinstall borg-vm only when its packaging changed.
    local stamp="$venv/.borg-vm-installed" want
    want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing borg-vm (editable, with test extras) into $venv"
        "$venv/bin/pip" install -q -e "$here[test]"
        echo "$want" > "$stamp"
    fi
    # An editable install leaves borg-vm as source; where PYTHONDONTWRITEBYTECODE
    # is set (some CI runners set it) every borg-vm process would compile it all
    # again: about 0.2 s of CPU of each, and the tests start thousands.
    "$venv/bin/python" -m compileall -q "$here/borg_vm"
    "$venv/bin/python" -c 'import libvirt, nbd, llfuse' \
        || { say "libvirt/nbd/llfuse do not import in $venv"; exit 2; }
    say "venv: $("$venv/bin/borg" --version), borg-vm $("$venv/bin/borg-vm" --version | cut -d' ' -f2)"
}

make_borg2() {
    local dir="$venv/borg2"
    local stores="$dir/stores"
    # (an older set-up installed the backends into the venv itself: made again)
    if ! "$dir/bin/borg" --version 2>/dev/null | grep -qx "borg $borg2_version" ||
            "$dir/bin/python" -c 'import boto3' 2>/dev/null; then
        say "installing borgbackup $borg2_version into $dir (built from source: minutes)"
        rm -rf "$dir"
        /usr/bin/python3 -m venv "$dir"
        "$dir/bin/pip" install -q --pre "borgbackup==$borg2_version"
    fi
    # The store backends beyond a local path: sftp:// (paramiko), rclone:
    # (requests; rclone itself is the Debian package) and s3: (boto3), as
    # borgstore's own extras name them, at the version borg pulled in; only
    # bin/borg-stores puts them on Borg's path.
    if ! PYTHONPATH="$stores" "$dir/bin/python" -c 'import paramiko, requests, boto3' \
            2>/dev/null; then
        say "installing borgstore's sftp, rclone and s3 backends into $stores"
        "$dir/bin/pip" install -q --target "$stores" "borgstore[sftp,rclone,s3]==$(
            "$dir/bin/python" -c 'import importlib.metadata as m; print(m.version("borgstore"))')"
    fi
    PYTHONPATH="$stores" "$dir/bin/python" -c 'import paramiko, requests, boto3' ||
        { say "borgstore's backends do not import from $stores"; exit 2; }
    cat > "$dir/bin/borg-stores" <<'LAUNCHER'
#!/bin/sh
# Borg 2 with borgstore's sftp, rclone and s3 backends (contrib/setup-host.sh).
here=$(dirname "$(readlink -f "$0")")
PYTHONPATH="$here/../stores${PYTHONPATH:+:$PYTHONPATH}" exec "$here/borg" "$@"
LAUNCHER
    chmod 755 "$dir/bin/borg-stores"
    # borg mount (borg-vm mount of complete images): mfusepy, Borg 2's own
    # extra, pure Python over the system's libfuse3; no build.
    if ! "$dir/bin/python" -c 'import mfusepy' 2>/dev/null; then
        say "installing mfusepy (borg mount) into $dir"
        "$dir/bin/pip" install -q "mfusepy>=3.1.0,<4.0.0"
    fi
    say "Borg 2: $("$dir/bin/borg" --version) in $dir"
}

libvirt_answers() { timeout 10 virsh -c "$uri" version >/dev/null 2>&1; }

set_qemu_conf() {  # set key = value in qemu.conf, replacing an existing setting
    local conf=/etc/libvirt/qemu.conf key=$1 value=$2
    touch "$conf"
    if grep -qE "^\s*$key\s*=" "$conf"; then
        sed -i -E "s|^\s*$key\s*=.*|$key = $value|" "$conf"
    else
        echo "$key = $value" >> "$conf"
    fi
}

start_libvirt() {
    if libvirt_answers; then
        say "libvirt: a daemon answers on $uri; using it unchanged"
        return
    fi
    [ "$(id -u)" = 0 ] || { say "need root to start libvirtd"; exit 2; }
    getent passwd libvirt-qemu >/dev/null \
        || useradd --system --no-create-home --shell /usr/sbin/nologin libvirt-qemu
    set_qemu_conf user '"root"'
    set_qemu_conf group '"root"'
    set_qemu_conf stdio_handler '"file"'
    mkdir -p /var/log/libvirt /run/libvirt
    [ -x /usr/sbin/libvirtd ] \
        || { say "no /usr/sbin/libvirtd (package libvirt-daemon) to start"; exit 2; }
    say "starting libvirtd"
    /usr/sbin/libvirtd --daemon --pid-file "$libvirtd_pidfile"
    for _ in $(seq 60); do
        libvirt_answers && break
        sleep 0.5
    done
    libvirt_answers || { say "libvirtd did not answer on $uri within 30 s"; exit 2; }
    say "libvirt: libvirtd started, PID $(cat "$libvirtd_pidfile") (in $libvirtd_pidfile)"
}

swtpm_ca_for_tss() {
    # libvirtd runs swtpm (and swtpm_setup, which signs a new TPM's certificates
    # with swtpm's local CA) as tss when that user existed at libvirtd's start,
    # else as root. A CA made by root then refuses tss ("Need read/write rights
    # on /var/lib/swtpm-localca/.lock.swtpm-localca for user tss"): hand the CA
    # to tss, whose directory it is (root reads it either way).
    local ca=/var/lib/swtpm-localca
    if id tss >/dev/null 2>&1 && [ -d "$ca" ] && [ -n "$(find "$ca" ! -user tss)" ]; then
        say "swtpm: giving $ca to tss, as whom libvirtd runs swtpm_setup"
        chown -R tss "$ca"
    fi
}

report_kvm() {
    if [ -d /sys/module/kvm_pvm ]; then
        say "KVM: PVM (nested, no hardware virtualization): test domains use KVM, the" \
            "real test guest's stock kernel needs TCG (type='qemu')"
    elif [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        say "KVM: /dev/kvm usable"
    else
        say "KVM: not usable here; test and demo domains fall back to TCG (type='qemu')"
    fi
}

build_guest() {
    say "test guest: $(bash "$here/contrib/guest/build-guest.sh")"
}

check_release
install_packages
make_venv
make_borg2
swtpm_ca_for_tss
start_libvirt
report_kvm
build_guest
