"""Restore planning: where each disk of a restore point goes, and which
archive's data fills which image. Three modes, one plan type (DiskPlan), one
way to turn plans into passes over the archives (passes) and to carry them
out (write):

- chain (the default): one image per archive of the disk's chain, each a
  qcow2 overlay on the one before, the full at the bottom in --format::

      web01.vda.borgvm-20261125T020000Z.qcow2 <- web01.vda.borgvm-20261126T020000Z.qcow2

- --flatten: one image, every archive of the chain written into it in order.

A restore point of complete images (format version 6, Borg 2) is one image per
disk in either mode, written from its image archive (write_images); with
--layers (version 7), one image per layer as below, each written from the
image archive of the layer as it was sealed where it differs from the one
below it (image_layer_plans).

- --layers: one image per snapshot layer of the disk's chain at that
  checkpoint, named after the layer (core/layers.py), each a qcow2 overlay on
  the one below, the bottom one in --format::

      web01.vda.base.qcow2  <-  web01.vda.S2.qcow2      (S2: the top, partial)
      (complete: as sealed by the snapshot)

  Which archive's data goes into which image is core.layers.restore_steps; its
  sealed-layer records need every archive's manifest, which is read first (one
  small export-tar per archive of the chain).

Images are named relative to the directory they are made in; backing paths are
relative too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from borg_vm import runtime
from borg_vm.adapters.borg import Repository
from borg_vm.core import chain, layers
from borg_vm.errors import LayersNotRecorded
from borg_vm.format import names as fmt
from borg_vm.format import reader
from borg_vm.format.manifest import Manifest
from borg_vm.format.names import LAYER_IMAGES_FROM
from borg_vm.format.summary import ArchiveInfo
from borg_vm.progress import Progress
from borg_vm.services.restore import images

log = logging.getLogger(__name__)

# (archive index, layer of that archive: 0 its top data, else a sealed layer, image index)
Step = tuple[int, int, int]
Pass = tuple[ArchiveInfo, dict[images.Key, images.Layer]]


@dataclass(frozen=True)
class DiskPlan:
    """Where one disk goes, and the writes that fill it."""

    target: str
    archives: tuple[ArchiveInfo, ...]     # the disk's chain, full first
    images: tuple[str, ...]               # file names, bottom first
    formats: tuple[str, ...]
    steps: tuple[Step, ...]               # in the order they are written
    names: tuple[str, ...] = ()           # --layers: the layers' names, bottom first
    # A point of complete images: the image archive each image is written from
    # (bottom first; None: the repository holds none of that layer, which stays
    # empty: what it held is in the next image above). Empty: the record's image.
    image_ids: tuple[str | None, ...] = ()

    @property
    def top(self) -> str:
        return self.images[-1]


def chain_plans(archives: list[ArchiveInfo], top: ArchiveInfo, targets: tuple[str, ...],
                base_format: str, flatten: bool) -> list[DiskPlan]:
    """Return where each disk of targets is restored to as a chain of images (or
    one flattened image). Pure.

    Raise BrokenChain, UnknownDisk, or FormatError if a disk changes size along
    its chain (chain.restore_chain).
    """
    plans = []
    for t in targets:
        arcs = tuple(chain.restore_chain(archives, top, t))
        stem = f"{top.name.domain}.{t}"
        if flatten:
            images_: tuple[str, ...] = (f"{stem}.{top.name.checkpoint}.{_ext(base_format)}",)
            formats: tuple[str, ...] = (base_format,)
            steps = tuple((i, 0, 0) for i in range(len(arcs)))
        else:
            formats = (base_format,) + ("qcow2",) * (len(arcs) - 1)
            images_ = tuple(f"{stem}.{a.name.checkpoint}.{_ext(f)}"
                            for a, f in zip(arcs, formats, strict=True))
            steps = tuple((i, 0, i) for i in range(len(arcs)))
        plans.append(DiskPlan(t, arcs, images_, formats, steps))
    return plans


def layer_plans(borg: Repository, archives: list[ArchiveInfo], top: ArchiveInfo,
                targets: tuple[str, ...], base_format: str, top_files: tuple[str, ...] = ()
                ) -> tuple[list[DiskPlan], dict[str, Manifest], dict[str, bytes]]:
    """Return each disk's plan of --layers, the manifests read for it (by archive
    name) and top's small members top_files, read with its manifest."""
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
        images_ = tuple(f"{stem}.{layers.escape(n)}.{_ext(f)}"
                        for n, f in zip(names, formats, strict=True))
        steps = layers.restore_steps([x.path for x in now],
                                     [([x.path for x in r.chain], [f.layer for f in r.sealed])
                                      for r in records])
        out.append(DiskPlan(t, tuple(arcs), images_, formats, tuple(steps), names))
    return out, manifests, files


def image_layer_plans(borg: Repository, top: ArchiveInfo, targets: tuple[str, ...],
                      base_format: str, top_files: tuple[str, ...] = ()
                      ) -> tuple[list[DiskPlan], dict[str, bytes]]:
    """Return each disk's plan of --layers at a record of complete images (format
    version 7: its manifest names the images of the sealed layers), and top's
    small members top_files, read with its manifest. Raise LayersNotRecorded for
    an older record, UnknownDisk for a target it does not hold."""
    if top.summary.version < LAYER_IMAGES_FROM:
        raise LayersNotRecorded(archive=top.archive, detail=(
            f"format version {top.summary.version}, from a borg-vm that recorded each disk "
            "only as the guest saw it"))
    manifests, files = _manifests(borg, [top], top, top_files)
    out = []
    for t in targets:
        chain.restore_chain([top], top, t)   # UnknownDisk
        record = manifests[top.archive].disks[t]
        assert record.image is not None, "a record of images names an image per disk"
        now = tuple(reversed(record.chain))
        formats = (base_format,) + ("qcow2",) * (len(now) - 1)
        stem = f"{top.name.domain}.{t}"
        out.append(DiskPlan(
            t, (top,), tuple(f"{stem}.{layers.escape(x.name)}.{_ext(f)}"
                             for x, f in zip(now, formats, strict=True)),
            formats, (), tuple(x.name for x in now),
            tuple(x.image for x in now[:-1]) + (record.image.id,)))
    return out, files


def _ext(format_: str) -> str:
    return "qcow2" if format_ == "qcow2" else "img"


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



def passes(plans: list[DiskPlan]) -> list[Pass]:
    """Return the passes over archives that fill every disk's images, in order:
    (archive, its writes), image paths relative to the directory they are made in."""
    started: set[tuple[str, int]] = set()   # images written to already
    out = []
    for arc in sorted({a.archive: a for d in plans for a in d.archives}.values(),
                      key=lambda a: a.order):
        out += [(arc, keys) for keys in _passes(arc, plans, started)]
    return out


def create_images(d: DiskPlan, stage: str, size: int) -> None:
    """Create a disk's images in stage, size bytes each, every one an overlay on
    the one before, readable by their owner only (images.create_image)."""
    for i, (image, f) in enumerate(zip(d.images, d.formats, strict=True)):
        images.create_image(os.path.join(stage, image), f, size,
                            os.path.join(stage, d.images[i - 1]) if i else None)


def write(found: Iterator, plans: list[DiskPlan], steps: list[Pass],
          sizes: dict[str, int], stage: str, progress: Progress) -> None:
    """Create every disk's images (sizes[target] bytes) in stage and fill them,
    one pass of steps (see passes) from each next stream of found."""
    for d in plans:
        create_images(d, stage, sizes[d.target])
    for arc, keys in steps:
        for (target, _layer), image in keys.items():
            log.info("restoring %s of %s into %s", target, arc.archive, image.path)
        images.apply_archive(next(found), arc, {
            k: dataclasses.replace(image, path=os.path.join(stage, image.path))
            for k, image in keys.items()}, progress)
        runtime.phase(runtime.APPLIED, "%s written into %s", arc.archive, stage)


# How much of a complete image a restore reads at once, and the blocks of zeros
# it leaves unwritten (the new image reads as zeros there).
IMAGE_READ = 1024 * 1024


def image_ids(d: DiskPlan) -> tuple[str | None, ...]:
    """The image archive each of d's images is written from (bottom first), of a
    point of complete images (format version 6: the plan holds one archive, its
    record)."""
    if d.image_ids:
        return d.image_ids
    (record,) = d.archives
    image = record.summary.disks[d.target].image
    assert image is not None, "a record of images names an image per disk"
    return (image.id,)


def image_steps(d: DiskPlan) -> list[tuple[str, str, str, str | None]]:
    """(image file, its format, the image archive it is written from, that of
    the image below it or None) of each of d's images the repository holds an
    image of (image_ids), bottom first."""
    steps: list[tuple[str, str, str, str | None]] = []
    for path, format_, image_id in zip(d.images, d.formats, image_ids(d), strict=True):
        if image_id is not None:
            steps.append((path, format_, image_id, steps[-1][2] if steps else None))
    return steps


def extract_order(plans: list[DiskPlan]) -> list[str]:
    """The image archives write_images reads, in the order it starts reading
    them (each image, then the one below it): images.ImageExtracts's order."""
    return [i for d in plans for _p, _f, image_id, below in image_steps(d)
            for i in (image_id, below) if i is not None]


def write_images(extracts: images.ImageExtracts, plans: list[DiskPlan], sizes: dict[str, int],
                 stage: str, progress: Progress) -> None:
    """Create every disk's images (sizes[target] bytes) in stage and fill each from
    its complete image archive (image_steps; extracts started in extract_order):
    the bottom one with what is not zeros, each above it with the blocks where
    its image differs from the one below it."""
    for d in plans:
        create_images(d, stage, sizes[d.target])
        for path, format_, image_id, below in image_steps(d):
            log.info("restoring %s of %s from image archive %s into %s", d.target,
                     d.archives[-1].archive, image_id, path)
            images.apply_image(extracts, image_id, images.Layer(os.path.join(stage, path),
                                                             format_, below is not None),
                               sizes[d.target], IMAGE_READ, progress, below)
        runtime.phase(runtime.APPLIED, "%s written into %s", d.archives[-1].archive, stage)


def _passes(arc: ArchiveInfo, plans: list[DiskPlan],
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
