"""Backing up a shut-off domain: its images read directly, its checkpoint kept
in persistent bitmaps. The backup action's sibling of the libvirt job.

libvirt makes checkpoints and backup jobs of running domains only. Offline,
the same state lives in the images: a checkpoint is a persistent bitmap (named
after it) in each disk's top image plus libvirt's metadata, which can be
recorded afterwards (``virsh checkpoint-create --redefine``). One run::

    top images: remove stale borgvm bitmaps  (a crashed run's; never below the top)
    incremental disks: the parent's bitmap, merged down the chain if a snapshot
                       split it (core/bitmaps.py), into a temporary bitmap
    top images: add bitmap C (enabled)       writes from here on are C's
    qemu-nbd -r per disk, held for the run   the image locks: a domain start
                                             fails cleanly, nothing changes
    stream into Borg; it commits at the end  (services/backup/run.py)
    redefine checkpoint C in libvirt, drop the older ones (metadata + bitmaps)

On failure: the bitmaps this run added are removed. If the domain is started
between adding C and locking the images, qemu-nbd cannot lock them, the run
fails, and C stays as an orphan bitmap that the next offline run removes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime

from borg_vm.adapters import qemu
from borg_vm.adapters.disk_sources import ImageSource
from borg_vm.adapters.libvirt import Domain
from borg_vm.core import bitmaps, domxml, plan
from borg_vm.errors import CheckpointInconsistent, QemuImgError
from borg_vm.format import names as fmt
from borg_vm.format.names import Level
from borg_vm.services.backup import vmstate
from borg_vm.services.backup.context import BackupRun, Session
from borg_vm.services.hosts import LOCAL, Host

log = logging.getLogger(__name__)

# Bitmaps borg-vm adds for one run only (a merged view of a checkpoint's bitmaps).
TEMPORARY_PREFIX = "borgvm-merged-"


@contextlib.contextmanager
def session(run: BackupRun, p: plan.Plan, checkpoint: str, when: datetime,
            chains: dict[str, tuple[qemu.Layer, ...]]) -> Iterator[Session]:
    """Read the shut-off domain's disks as of now and record checkpoint C (created
    at when); yield the Session. On normal exit record C in libvirt and drop older
    checkpoints; on an exception remove what this run added. Raise
    CheckpointInconsistent if the parent checkpoint's bitmaps cannot serve an
    incremental. chains holds each disk's images, top first (qemu.backing_chain)."""
    dom, disks, host = run.dom, run.disks, run.host
    known = set(dom.checkpoints())
    for d in disks:
        if d.incremental_capable:
            _remove_stale_bitmaps(dom, chains[d.target][0], known, host)
    added: list[tuple[str, str]] = []  # (image, bitmap) this run made
    try:
        dirty = {d.target: _dirty_bitmap(dom, d, chains[d.target], p, checkpoint, added, host)
                 for d in disks if p.disk_levels[d.target] == Level.INC}
        for d in disks:
            if d.incremental_capable:
                qemu.bitmap_add(d.source, checkpoint, run=host.run)
                added.append((d.source, checkpoint))
        log.debug("%s: shut off; bitmap %s added, reading the images", dom.name, checkpoint)
        cp = domxml.checkpoint_xml(checkpoint, f"borg-vm backup of {dom.name}",
                                   {d.target: d.incremental_capable for d in disks},
                                   created=int(when.timestamp()))
        state = vmstate.read(dom.name, run.live.xml, dom.uuid, host)
        with ImageSource({d.target: (d.source, d.format, dirty.get(d.target))
                          for d in disks}, host.nbd_servers(dom.uuid)) as source:
            yield Session(source, lambda: cp, state=state)
    except BaseException:
        for image, bitmap in reversed(added):
            _remove_bitmap(dom, image, bitmap, host)
        raise
    for image, bitmap in added:
        if bitmap != checkpoint:
            _remove_bitmap(dom, image, bitmap, host)
    dom.redefine_checkpoint(cp)
    for old in sorted(c for c in known if fmt.is_own_checkpoint(c) and c != checkpoint):
        drop_checkpoint(dom, old, [d.source for d in disks if d.incremental_capable], host)


def _dirty_bitmap(dom: Domain, d: plan.Disk, chain: tuple[qemu.Layer, ...], p: plan.Plan,
                  checkpoint: str, added: list[tuple[str, str]], host: Host) -> str:
    """Return the name of a bitmap of d's top image holding every write since the
    parent checkpoint (the parent's own, or a merge of its copies down the chain)."""
    parent = p.parent_checkpoint
    assert parent is not None, "an incremental disk has a parent checkpoint"
    layers, why = bitmaps.layers_since([layer.bitmaps for layer in chain], parent)
    if why:
        raise CheckpointInconsistent(checkpoint=parent, name=dom.name,
                                     detail=f"disk {d.target}: {why}")
    if layers == [0]:
        return parent
    merged = TEMPORARY_PREFIX + checkpoint
    qemu.bitmap_add(d.source, merged, disabled=True, run=host.run)
    added.append((d.source, merged))
    for i in layers:
        qemu.bitmap_merge(d.source, merged, parent, chain[i].path, chain[i].format,
                          run=host.run)
    log.debug("%s: %s: bitmap %s merged from %d layers", dom.name, d.target, parent,
              len(layers))
    return merged


def drop_checkpoint(dom: Domain, name: str, top_images: list[str], host: Host = LOCAL
                    ) -> None:
    """Delete an older borg-vm checkpoint: through libvirt if the domain runs
    now, else its metadata and its bitmaps in the top images (on host)."""
    if dom.is_active():
        dom.delete_checkpoint(name)
        return
    dom.forget_checkpoint(name)
    for image in top_images:
        if name in qemu.backing_chain(image, "qcow2", host.run)[0].bitmaps:
            _remove_bitmap(dom, image, name, host)
    log.info("deleted checkpoint %s of %s", name, dom.name)


def _remove_stale_bitmaps(dom: Domain, top: qemu.Layer, known: set[str], host: Host) -> None:
    """Remove bitmaps a crashed borg-vm run left in a top image: temporary ones,
    and borg-vm checkpoint bitmaps libvirt has no checkpoint for."""
    for name in top.bitmaps:
        if name.startswith(TEMPORARY_PREFIX) or (fmt.is_own_checkpoint(name)
                                                  and name not in known):
            log.info("%s: removing bitmap %s of %s, left by a crashed run", dom.name,
                        name, top.path)
            _remove_bitmap(dom, top.path, name, host)


def _remove_bitmap(dom: Domain, image: str, bitmap: str, host: Host = LOCAL) -> None:
    """Remove a bitmap this run or a crashed one added. Best effort, logged: the
    original error is what the user sees, and a leftover is removed next time."""
    try:
        qemu.bitmap_remove(image, bitmap, host.run)
    except QemuImgError as e:
        log.error("%s: could not remove bitmap %s of %s: %s", dom.name, bitmap, image,
                  e.message)
