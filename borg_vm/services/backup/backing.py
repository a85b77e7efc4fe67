"""Snapshot layers in a backup run: each disk's image chain, the layers' names,
and which layers froze since the parent archive and how to read their final
changes (core/layers.py explains the model; format/manifest.py the records)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from borg_vm.adapters import qemu
from borg_vm.adapters.disk_sources import ImageSource, NbdServers
from borg_vm.adapters.libvirt import Domain
from borg_vm.core import bitmaps, domxml, layers, plan
from borg_vm.format.manifest import LayerRecord
from borg_vm.format.names import Level
from borg_vm.services.hosts import LOCAL, Host


@dataclass(frozen=True)
class DiskLayers:
    """One disk's images now (top first), their names, and the sealed layers to
    read: (index into chain, bitmap holding their final changes, or None to read
    the whole layer because the bitmap is missing or unusable)."""

    chain: tuple[qemu.Layer, ...]
    names: tuple[str, ...]
    sealed: tuple[tuple[int, str | None], ...]

    def records(self) -> tuple[LayerRecord, ...]:
        return tuple(LayerRecord(n, x.path, x.format)
                     for n, x in zip(self.names, self.chain, strict=True))


def of_disks(dom: Domain, disks: Sequence[plan.Disk], p: plan.Plan, host: Host = LOCAL
             ) -> dict[str, DiskLayers]:
    """Return each disk's layers (their images read on host), naming them after
    libvirt's snapshots."""
    images = domxml.snapshot_images(dom.snapshot_xmls())
    out = {}
    for d in disks:
        chain = tuple(qemu.backing_chain(d.source, d.format, host.run))
        paths = [x.path for x in chain]
        sealed: tuple[tuple[int, str | None], ...] = ()
        if p.disk_levels[d.target] == Level.INC:
            assert p.parent is not None, "an incremental plan has a parent"
            parent_top = p.parent.summary.disks[d.target].source
            sealed = tuple((i, _final_changes_bitmap(chain[i], p.parent.name.checkpoint))
                           for i in layers.sealed_since(paths, parent_top))
        out[d.target] = DiskLayers(chain, tuple(layers.layer_name(paths, i, images)
                                                for i in range(len(chain))), sealed)
    return out


def _final_changes_bitmap(layer: qemu.Layer, checkpoint: str) -> str | None:
    """Return the bitmap of a sealed layer that holds its writes since checkpoint,
    or None if there is no usable one (then the whole layer is read)."""
    flags = layer.bitmaps.get(checkpoint)
    return checkpoint if flags is not None and bitmaps.IN_USE not in flags else None


def top_layer(by_disk: dict[str, DiskLayers]) -> str:
    """Return the name of the layer the domain is on: its first disk's top."""
    return by_disk[min(by_disk)].names[0]


def key(target: str, layer: int) -> str:
    """Return the name a sealed layer has in sealed_source()."""
    return f"{target}@{layer}"


def sealed_source(by_disk: dict[str, DiskLayers], servers: NbdServers) -> ImageSource:
    """Return a source serving every sealed layer to read (with its backing
    chain, read-only: a running QEMU holds these images read-only too), its
    qemu-nbd started where servers says (the images' machine)."""
    return ImageSource({key(t, i): (d.chain[i].path, d.chain[i].format, bitmap)
                        for t, d in by_disk.items() for i, bitmap in d.sealed}, servers)
