"""restore --layers: rebuild each disk's snapshot layers as of a checkpoint.

One image per layer of the disk's chain at that checkpoint, named after the
layer (core/layers.py), each a qcow2 overlay on the one below (relative
backing path), the bottom one in --format::

    web01.vda.base.qcow2  <-  web01.vda.S2.qcow2      (S2: the top, partial)
    (complete: as frozen by the snapshot)

Which archive's data goes into which image is core.layers.restore_steps; its
sealed-layer records need every archive's manifest, which is read first (one
small export-tar per archive of the chain).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from borg_vm.adapters.borg import Repository
from borg_vm.core import chain, layers
from borg_vm.format import names as fmt
from borg_vm.format import reader
from borg_vm.format.manifest import Manifest
from borg_vm.format.summary import ArchiveInfo
from borg_vm.progress import Progress
from borg_vm.services.restore import images


@dataclass(frozen=True)
class LayeredDisk:
    """Where one disk's layers go, and the writes that fill them."""

    target: str
    archives: tuple[ArchiveInfo, ...]     # the disk's chain, full first
    names: tuple[str, ...]                # layer names, bottom first
    images: tuple[str, ...]               # file names, bottom first
    formats: tuple[str, ...]
    steps: tuple[tuple[int, int, int], ...]  # (archive index, layer of it, image index)

    @property
    def top(self) -> str:
        return self.images[-1]


def plan(borg: Repository, archives: list[ArchiveInfo], top: ArchiveInfo, targets: tuple[str, ...],
         base_format: str, top_files: tuple[str, ...] = ()
         ) -> tuple[list[LayeredDisk], dict[str, Manifest], dict[str, bytes]]:
    """Return each disk's layered plan, the manifests read for it (by archive name)
    and top's small members top_files, read with its manifest."""
    chains = {t: chain.restore_chain(archives, top, t) for t in targets}
    manifests, files = _manifests(borg, list({a.archive: a for arcs in chains.values()
                                              for a in arcs}.values()), top, top_files)
    out = []
    for t, arcs in chains.items():
        records = [manifests[a.archive].disks[t] for a in arcs]
        now = records[-1].chain
        names = tuple(x.name for x in reversed(now))
        formats = (base_format,) + ("qcow2",) * (len(now) - 1)
        stem = f"{top.name.domain}.{t}"
        images = tuple(f"{stem}.{layers.escape(n)}.{'qcow2' if f == 'qcow2' else 'img'}"
                       for n, f in zip(names, formats, strict=True))
        steps = layers.restore_steps([x.path for x in now],
                                     [([x.path for x in r.chain], [f.layer for f in r.sealed])
                                      for r in records])
        out.append(LayeredDisk(t, tuple(arcs), names, images, formats, tuple(steps)))
    return out, manifests, files


def _manifests(borg: Repository, arcs: list[ArchiveInfo], top: ArchiveInfo,
               top_files: tuple[str, ...]) -> tuple[dict[str, Manifest], dict[str, bytes]]:
    """Return the archives' manifests by archive name (each borg starting while the
    manifest before is read), and top's top_files (one of arcs) read with its own;
    all checked (reader.check_archive) before anything is written."""
    out, files = {}, {}
    # (each path once: borg warns of a pattern that matched nothing, a repeated one too)
    wanted = {a.archive: tuple(dict.fromkeys((fmt.MANIFEST,) + (
        top_files if a.archive == top.archive else ()))) for a in arcs}
    with reader.read_ahead(borg, [reader.Read(a.archive, wanted[a.archive])
                                   for a in arcs]) as found:
        for a, stream in zip(arcs, found, strict=True):
            with stream as ms:
                small = reader.small_files(ms, a.archive, wanted[a.archive])
            out[a.archive] = reader.check_archive(a, small, wanted[a.archive])
            if a.archive == top.archive:
                files = small
    return out, files


def passes(plans: list[LayeredDisk]) -> list[tuple[ArchiveInfo, dict[images.Key, images.Layer]]]:
    """Return the passes over archives that fill every disk's layer images, in order:
    (archive, its writes), image paths relative to the directory they are made in."""
    started: set[tuple[str, int]] = set()   # images written to already
    out = []
    for arc in sorted({a.archive: a for d in plans for a in d.archives}.values(),
                      key=lambda a: a.order):
        out += [(arc, keys) for keys in _passes(arc, plans, started)]
    return out


def write(found: Iterator, plans: list[LayeredDisk],
          steps: list[tuple[ArchiveInfo, dict[images.Key, images.Layer]]],
          sizes: dict[str, int], stage: str, progress: Progress) -> None:
    """Create every disk's layer images (sizes[target] bytes) in stage and fill
    them, one pass of steps (see passes) from each next stream of found."""
    for d in plans:
        for i, (image, f) in enumerate(zip(d.images, d.formats, strict=True)):
            images.create_image(os.path.join(stage, image), f, sizes[d.target],
                               os.path.join(stage, d.images[i - 1]) if i else None)
    for arc, keys in steps:
        images.apply_archive(next(found), arc, {
            k: dataclasses.replace(image, path=os.path.join(stage, image.path))
            for k, image in keys.items()}, progress)


def _passes(arc: ArchiveInfo, plans: list[LayeredDisk],
            started: set[tuple[str, int]]) -> list[dict[images.Key, images.Layer]]:
    """Return the archive's writes grouped into passes over it, in step order, each
    pass writing at most one image per disk: a qemu-nbd writing an overlay opens
    the image below it, which another qemu-nbd of the same pass could not then
    lock for writing (and, after a commit, a sealed layer and the top data may
    land in one image, the older sealed data first)."""
    passes: list[dict[images.Key, images.Layer]] = []
    for d in plans:
        if arc not in d.archives:
            continue
        index = d.archives.index(arc)
        for n, (_a, layer, image) in enumerate(s for s in d.steps if s[0] == index):
            if n == len(passes):
                passes.append({})
            # The bottom image starts empty: its first write needs no zeros.
            zeros = image > 0 or (d.target, image) in started
            started.add((d.target, image))
            passes[n][(d.target, layer)] = images.Layer(d.images[image], d.formats[image], zeros)
    return passes
