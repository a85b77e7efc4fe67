#!/usr/bin/env bash
# The borg-vm demo (run by `make demo`): a throwaway VM with two qcow2 disks
# and no OS, a full backup, guest writes (data, zeroes, discards), two
# incrementals, an external snapshot (S2) and two incrementals on it, then
# restores of every checkpoint as a qcow2 chain and as a flattened image, and
# of the last by snapshot layers, each compared byte for byte with what the
# guest saw (and the restored base layer with the frozen base image), and
# every archive read back and checked (verify).
# The VM is removed at the end (also on failure); the Borg repository stays in
# ./demo/repo for you to look at with `borg list demo/repo`.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
work=$top/demo
repo=$work/repo
name=borgvm-demo-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
vmdir=$work/$name
uri=qemu:///system
export BORG_REPO=$repo
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes  # the demo repo is unencrypted

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
    if virsh -c "$uri" dominfo "$name" >/dev/null 2>&1; then
        virsh -c "$uri" destroy "$name" >/dev/null 2>&1 || true
        virsh -c "$uri" undefine "$name" --checkpoints-metadata --snapshots-metadata \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$vmdir"
}
trap cleanup EXIT
# A SIGTERM to this script is taken after the command that runs (bash waits for it),
# so cleanup never removes the VM under a borg-vm still at work.
trap 'exit 143' TERM

hmp() {  # hmp DISK-INDEX "qemu-io command": a guest write without a guest OS
    local out
    out=$(virsh -c "$uri" qemu-monitor-command "$name" --hmp \
        "qemu-io -d /machine/peripheral/virtio-disk$1/virtio-backend \"$2\"")
    if grep -qiE 'error|failed' <<<"$out"; then echo "$out" >&2; return 1; fi
}

declare -A top_image=()  # each disk's top image: the base, then the snapshot's overlay
guest_view() {  # guest_view TARGET OUT: what the guest sees on a disk, as a raw file
    local i=${1#vd}; i=$(( $(printf '%d' "'$i") - 97 ))
    hmp "$i" "flush"
    qemu-img convert -U -O raw "${top_image[$1]}" "$2"
}

check_backup() {  # check_backup JSON-FILE LAYER VDA-FROZEN: stop unless the run in the file was
                  # an incremental on LAYER that read VDA-FROZEN bytes of vda's frozen layers
    python3 - "$@" <<'PY'
import json, sys
path, layer, frozen = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.loads(open(path).read().splitlines()[-1])
got = (r["level"], r["snapshot"], r["disks"]["vda"]["frozen"])
if got != ("inc", layer, frozen):
    sys.exit(f"demo: expected an inc backup on {layer} with {frozen} frozen bytes of vda, got {got}")
PY
}

mkdir -p "$vmdir"
domtype=qemu
[ -r /dev/kvm ] && [ -w /dev/kvm ] && domtype=kvm

step "A throwaway VM: $name ($domtype), disks vda 256 MiB and vdb 64 MiB, no OS"
qemu-img create -q -f qcow2 "$vmdir/vda.qcow2" 256M
qemu-img create -q -f qcow2 "$vmdir/vdb.qcow2" 64M
top_image[vda]=$vmdir/vda.qcow2; top_image[vdb]=$vmdir/vdb.qcow2
cat > "$vmdir/domain.xml" <<EOF
<domain type='$domtype'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='$vmdir/vda.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='$vmdir/vdb.qcow2'/><target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
virsh -c "$uri" -q define "$vmdir/domain.xml"
virsh -c "$uri" -q start --paused "$name"

step "The guest writes 48 MiB to vda and 8 MiB to vdb"
hmp 0 "write -P 0xa1 0 32M"
hmp 0 "write -P 0xa2 100M 16M"
hmp 1 "write -P 0xb1 8M 8M"

if [ ! -d "$repo" ]; then
    step "A Borg repository"
    run borg init --encryption none "$repo"
fi

step "Full backup: reads only the allocated extents"
run borg-vm backup "$name"
guest_view vda "$vmdir/vda.1.raw"; guest_view vdb "$vmdir/vdb.1.raw"

step "The guest overwrites 1 MiB, zeroes 4 MiB and discards 8 MiB"
hmp 0 "write -P 0xc3 1M 1M"
hmp 0 "write -z 4M 4M"
hmp 1 "discard 8M 8M"

step "Incremental backup: reads only what the dirty bitmap marks"
run borg-vm backup "$name" --json
guest_view vda "$vmdir/vda.2.raw"; guest_view vdb "$vmdir/vdb.2.raw"

step "More writes, another incremental"
hmp 0 "write -P 0xd4 200M 2M"
hmp 1 "write -P 0xe5 60M 64k"
run borg-vm backup "$name"
guest_view vda "$vmdir/vda.3.raw"; guest_view vdb "$vmdir/vdb.3.raw"

step "An external snapshot S2: vda.qcow2 and vdb.qcow2 freeze, the guest writes to overlays"
hmp 0 "write -P 0xf6 30M 2M"          # before the snapshot: the base's final changes
run virsh -c "$uri" snapshot-create-as "$name" S2 --disk-only --atomic \
    --diskspec "vda,file=$vmdir/vda.S2.qcow2" --diskspec "vdb,file=$vmdir/vdb.S2.qcow2"
top_image[vda]=$vmdir/vda.S2.qcow2; top_image[vdb]=$vmdir/vdb.S2.qcow2
hmp 0 "write -P 0xf7 31M 4M"          # over the base's data
hmp 1 "write -z 8M 1M"

step "Incremental backup on the new layer: the guest's changes and the base's final ones"
run borg-vm backup "$name" --json | tee "$vmdir/backup-4.json"
check_backup "$vmdir/backup-4.json" S2 $((2 << 20))   # the 2 MiB written just before S2
guest_view vda "$vmdir/vda.4.raw"; guest_view vdb "$vmdir/vdb.4.raw"

step "More writes on S2, another incremental: nothing froze since the last one"
hmp 0 "write -P 0xf8 64M 1M"
hmp 1 "write -P 0xe9 32M 1M"
run borg-vm backup "$name" --json | tee "$vmdir/backup-5.json"
check_backup "$vmdir/backup-5.json" S2 0
guest_view vda "$vmdir/vda.5.raw"; guest_view vdb "$vmdir/vdb.5.raw"

step "The archives, by snapshot layer"
run borg-vm list "$name"

step "Restore every checkpoint, as a chain and flattened, and compare with the guest's view"
mapfile -t checkpoints < <(borg-vm list "$name" --json | python3 -c \
    'import json,sys; [print(a["checkpoint"]) for a in json.load(sys.stdin)["archives"]]')
for i in "${!checkpoints[@]}"; do
    cp=${checkpoints[$i]}; n=$((i + 1))
    run borg-vm restore "$name" --checkpoint "$cp" --to "$vmdir/chain-$n" -q
    run borg-vm restore "$name" --checkpoint "$cp" --to "$vmdir/flat-$n" --flatten --format raw -q
    for t in vda vdb; do
        qemu-img compare -q -F raw "$vmdir/chain-$n/$name.$t.$cp.qcow2" "$vmdir/$t.$n.raw"
        qemu-img compare -q -F raw "$vmdir/flat-$n/$name.$t.$cp.img" "$vmdir/$t.$n.raw"
    done
    echo "checkpoint $cp: vda and vdb identical to the guest's view (chain and flattened)"
done
run qemu-img info --backing-chain "$vmdir/chain-3/$name.vda.${checkpoints[2]}.qcow2"

step "Restore the last checkpoint by snapshot layers: the base complete, S2 partial on top"
last=${checkpoints[4]}
run borg-vm restore "$name" --checkpoint "$last" --to "$vmdir/layers" --layers
for t in vda vdb; do
    qemu-img compare -q -U "$vmdir/layers/$name.$t.base.qcow2" "$vmdir/$t.qcow2"
    qemu-img compare -q -F raw "$vmdir/layers/$name.$t.S2.qcow2" "$vmdir/$t.5.raw"
done
echo "base layers identical to the frozen base images; S2 on top identical to the guest's view"
run qemu-img info --backing-chain "$vmdir/layers/$name.vda.S2.qcow2"

step "Read every archive back and check it; what prune would keep"
run borg-vm verify "$name" --all
run borg-vm prune "$name" --keep-last 2 --dry-run --list

step "Done. The VM is removed; the repository stays:"
echo "  borg list $repo"
