#!/usr/bin/env bash
# The borg-vm demo (run by `make demo`): a throwaway VM running the real test
# guest (contrib/guest: a tiny Linux whose workload writes files, syncs them
# and reports their SHA-256 on its serial console) and a second, raw data disk
# the demo writes into through QEMU (data, zeroes, discards). A full backup and
# two incrementals with --quiesce while the guest writes; every checkpoint
# restored as a qcow2 chain and flattened, the data disk compared byte for byte
# with what the guest saw, the root's filesystem checked (e2fsck -n), and two
# restored VMs booted, which must hold every file synced before their
# checkpoint. Then the disaster: the VM is destroyed, `borg-vm boot` runs it
# straight from the repository, `borg-vm boot --finish` makes it independent
# of it, and it goes on writing, and still has its files.
# Everything the demo made is removed at the end (also on failure or Ctrl-C):
# its domains borgvm-demo-*, their files and the boot's server; the Borg
# repository stays in ./demo/repo for you to look at with `borg list demo/repo`.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
work=$top/demo
repo=$work/repo
name=borgvm-demo-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
vmdir=$work/$name
uri=qemu:///system
export BORG_REPO=$repo
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes  # the demo repo is unencrypted
export BORG_VM_KEYS_DIR=$work/keys  # the demo repo's keyring beside it, not in ~/.config

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
helper() { python3 "$top/contrib/demoguest.py" "$@"; }
console() {  # console SERIAL N: the guest's last N report lines
    grep -a '^borgvm: ' "$1" | tr -d '\r' | tail -n "$2" | sed 's/^/    /'
}

domains=()       # the domains the demo defined, removed at the end
booted_name=""   # the domain `borg-vm boot` defined, and its server's pid
server_pid=""
cleanup() {
    local d
    if [ -n "$booted_name" ]; then
        virsh -c "$uri" destroy "$booted_name" >/dev/null 2>&1 || true
        virsh -c "$uri" undefine "$booted_name" >/dev/null 2>&1 || true
        # --finish of a domain that is gone stops its server and removes its run
        # directory; the server is ours to stop (by pid) if that fails.
        borg-vm boot --finish "$booted_name" -q >/dev/null 2>&1 || true
        if [ -n "$server_pid" ] && grep -qas borg_vm "/proc/$server_pid/cmdline"; then
            kill "$server_pid" 2>/dev/null || true
        fi
    fi
    for d in "${domains[@]}"; do
        if virsh -c "$uri" dominfo "$d" >/dev/null 2>&1; then
            virsh -c "$uri" destroy "$d" >/dev/null 2>&1 || true
            virsh -c "$uri" undefine "$d" --checkpoints-metadata --snapshots-metadata \
                >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$vmdir"
}
trap cleanup EXIT
# A signal to this script is taken after the command that runs (bash waits for it),
# so cleanup never removes the VM under a borg-vm still at work.
trap 'exit 143' TERM
trap 'exit 130' INT

define_and_start() {  # define_and_start NAME XML-FILE: prints nothing, notes the time
    virsh -c "$uri" -q define "$2"
    domains+=("$1")
    started_at=$(date +%s.%N)
    virsh -c "$uri" -q start "$1"
}

hmp() {  # hmp "qemu-io command": a write to the data disk vdb, through QEMU
    local out
    out=$(virsh -c "$uri" qemu-monitor-command "$name" --hmp \
        "qemu-io -d /machine/peripheral/virtio-disk1/virtio-backend \"$1\"")
    if grep -qiE 'error|failed' <<<"$out"; then echo "$out" >&2; return 1; fi
}
vdb_view() {  # vdb_view OUT: what the guest sees on vdb, as a raw file
    hmp "flush"
    qemu-img convert -U -O raw "$vmdir/vdb.qcow2" "$1"
}

mkdir -p "$vmdir"
serial=$vmdir/$name.serial

step "The real test guest: a tiny Linux built from Debian packages (cached)"
run bash "$top/contrib/guest/build-guest.sh" | tee "$vmdir/guestdir"
guestdir=$(tail -n1 "$vmdir/guestdir")

step "A throwaway VM $name: vda its root (ext4, 64 MiB), vdb a 64 MiB data disk"
cp "$guestdir/root.qcow2" "$vmdir/vda.qcow2"
qemu-img create -q -f qcow2 "$vmdir/vdb.qcow2" 64M
helper xml "$name" "$vmdir" "$guestdir" files > "$vmdir/domain.xml"
grep -o "<domain type='[a-z]*'" "$vmdir/domain.xml" | sed "s/<domain type=/domain type /"
define_and_start "$name" "$vmdir/domain.xml"
helper started "$serial" files "$started_at"
console "$serial" 3

if [ ! -d "$repo" ]; then
    step "A Borg repository"
    run borg init --encryption none "$repo"
fi

step "Full backup with --quiesce, while the guest writes (vdb: 48 MiB written by the demo)"
hmp "write -P 0xb1 0 32M"
hmp "write -P 0xb2 40M 16M"
helper synced "$serial" 3 "$vmdir/synced-1.json"
run borg-vm backup "$name" --quiesce
vdb_view "$vmdir/vdb.1.raw"

step "The demo overwrites 1 MiB of vdb, zeroes 4 MiB and discards 8 MiB; an incremental"
hmp "write -P 0xc3 1M 1M"
hmp "write -z 4M 4M"
hmp "discard 40M 8M"
helper synced "$serial" 3 "$vmdir/synced-2.json"
run borg-vm backup "$name" --quiesce --json
vdb_view "$vmdir/vdb.2.raw"

step "More writes, another incremental"
hmp "write -P 0xd4 60M 2M"
helper synced "$serial" 3 "$vmdir/synced-3.json"
run borg-vm backup "$name" --quiesce
vdb_view "$vmdir/vdb.3.raw"

step "The archives"
run borg-vm list "$name"

step "Restore every checkpoint, as a chain and flattened; check vda's filesystem, compare vdb"
# --keep-host-resources: keep the kernel, initrd and serial file (host files) in
# the restored XML; the restored VMs below boot that kernel, their own consoles.
mapfile -t checkpoints < <(borg-vm list "$name" --json | python3 -c \
    'import json,sys; [print(a["checkpoint"]) for a in json.load(sys.stdin)["archives"]]')
for i in "${!checkpoints[@]}"; do
    cp=${checkpoints[$i]}; n=$((i + 1))
    run borg-vm restore "$name" --checkpoint "$cp" --to "$vmdir/chain-$n" -q \
        --keep-host-resources
    run borg-vm restore "$name" --checkpoint "$cp" --to "$vmdir/flat-$n" --flatten -q \
        --keep-host-resources
    chain=$vmdir/chain-$n/$name; flat=$vmdir/flat-$n/$name
    qemu-img compare -q -F raw "$chain.vdb.$cp.qcow2" "$vmdir/vdb.$n.raw"
    qemu-img compare -q -F raw "$flat.vdb.$cp.qcow2" "$vmdir/vdb.$n.raw"
    qemu-img compare -q "$chain.vda.$cp.qcow2" "$flat.vda.$cp.qcow2"
    echo "checkpoint $cp: vdb identical to the guest's view (chain and flattened)," \
         "vda the same in both"
    helper fsck "$chain.vda.$cp.qcow2" "$vmdir"
done
run qemu-img info --backing-chain "$vmdir/chain-3/$name.vda.${checkpoints[2]}.qcow2"

step "Boot two restored VMs: the full backup flattened and the last incremental's chain"
helper boot-xml "$vmdir/flat-1/$name.${checkpoints[0]}.xml" "$name-flat1" "$guestdir" \
    "$vmdir/flat1.serial" verify > "$vmdir/flat1.xml"
helper boot-xml "$vmdir/chain-3/$name.${checkpoints[2]}.xml" "$name-chain3" "$guestdir" \
    "$vmdir/chain3.serial" verify > "$vmdir/chain3.xml"
run virsh -c "$uri" -q define "$vmdir/flat1.xml"; domains+=("$name-flat1")
run virsh -c "$uri" -q define "$vmdir/chain3.xml"; domains+=("$name-chain3")
run virsh -c "$uri" -q start "$name-flat1"
run virsh -c "$uri" -q start "$name-chain3"
echo "$name-flat1 (verify workload):"
helper verify "$vmdir/flat1.serial" "$vmdir/synced-1.json"
echo "$name-chain3 (verify workload):"
helper verify "$vmdir/chain3.serial" "$vmdir/synced-3.json"
virsh -c "$uri" -q destroy "$name-flat1"
virsh -c "$uri" -q destroy "$name-chain3"

step "Disaster: the VM is gone. Boot it straight from the repository"
virsh -c "$uri" -q destroy "$name"
mv "$serial" "$vmdir/original.serial"   # the booted copy writes to the same console file
booted_name=$name-restored
started_at=$(date +%s.%N)
run borg-vm boot "$name" --to "$vmdir/boot" --keep-host-resources
server_pid=$(cat "/run/borg-vm/boot-$(virsh -c "$uri" domuuid "$booted_name" | head -n1)/server.pid")
helper started "$serial" files "$started_at"
helper synced "$serial" 3 "$vmdir/booted.json"
console "$serial" 4

step "Pull the rest out of the repository: afterwards the VM needs it no more"
run borg-vm boot --finish "$booted_name"
helper synced "$serial" 3 "$vmdir/running.json"
console "$serial" 3
run virsh -c "$uri" domblklist "$booted_name"

step "Its files, on its own images: the VM shut down, booted again to verify them"
virsh -c "$uri" -q destroy "$booted_name"
helper synced "$serial" 0 "$vmdir/finished.json"   # all it synced before it stopped
virsh -c "$uri" dumpxml --inactive "$booted_name" > "$vmdir/finished.xml"
helper boot-xml "$vmdir/finished.xml" "$booted_name" "$guestdir" "$serial" verify \
    > "$vmdir/finished-verify.xml"
rm -f "$serial"
started_at=$(date +%s.%N)
virsh -c "$uri" -q define "$vmdir/finished-verify.xml"
virsh -c "$uri" -q start "$booted_name"
# The workload started over at f0001 after the boot: the files it rewrote
# since replace those of the backup.
helper verify "$serial" --log-restarted "$vmdir/synced-3.json" "$vmdir/finished.json"

step "Read every archive back and check it; what prune would keep"
run borg-vm verify "$name" --all
run borg-vm prune "$name" --keep-last 2 --dry-run --list

step "Done. The VMs are removed; the repository stays:"
echo "  borg list $repo"
