"""Snapshot layers: what borg-vm calls the images of a disk's backing chain,
which of them were sealed since the last backup, and which restored image each
archive's data belongs to. Pure, no I/O.

A disk is a chain of images, the top one written, the ones below **sealed** by
external snapshots (libvirt's design: formatsnapshot,
kbase/incrementalbackupinternals): read-only from then on. ("frozen" is the
word for guest filesystems --quiesce freezes; archives keep it as the name of
sealed layers' members and records, from version 2.)::

    T1  base                  backups B1 read the top (base)
    T2  base <- S2            snapshot: base sealed, S2 written
    T3  base <- S2            backup B2 reads S2's view (writes of both sides, merged
                              by libvirt) and base's final changes since B1 (base's
                              own copy of bitmap B1)
    T5  restore --layers at B2:  base = B1 + base's final changes   (complete)
                                 S2   = B2's data, over base        (partial)

Names (the ``snapshot`` part of an archive name, and restored file names):
the libvirt snapshot that made the image, if one did (``virsh snapshot-list``);
``base`` for the bottom of a chain; ``layer-<8 hex>`` (a hash of its path) for
an overlay made without libvirt metadata. In archive names they are escaped
(``escape``) so they hold no dot and parse back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

BASE = "base"
UNNAMED_PREFIX = "layer-"
_PLAIN = re.compile(r"[A-Za-z0-9_+-]")
_ESCAPED = re.compile(r"(?:[A-Za-z0-9_+-]|%[0-9A-F]{2})+")


def layer_name(chain: Sequence[str], index: int, snapshots: Mapping[str, str]) -> str:
    """Given a disk's image paths (top first), an index into them and the images
    libvirt snapshots made (path -> snapshot name), return that layer's name."""
    path = chain[index]
    if path in snapshots:
        return snapshots[path]
    if index == len(chain) - 1:
        return BASE
    return UNNAMED_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:8]


def escape(name: str) -> str:
    """Return name with every character but A-Z a-z 0-9 _ + - as %XX (UTF-8 bytes):
    no dot, no slash, no space, nothing a terminal or a shell treats specially."""
    return "".join(c if _PLAIN.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode())
                   for c in name)


def unescape(text: str) -> str:
    """Return the name escape() made text from; raise ValueError if it is not one."""
    if not _ESCAPED.fullmatch(text):
        raise ValueError(f"{text!r} is not an escaped layer name")
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "%":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode("utf-8")


def sealed_since(chain: Sequence[str], parent_top: str | None) -> list[int]:
    """Given a disk's image paths now (top first) and the top image of the parent
    archive, return the indexes of the layers sealed since then: from just below
    the top down to the parent's top. None froze if the top is the same; and if
    the parent's top is no longer in the chain (committed into a lower image),
    what it held reached the images the backup job reads, so none are read."""
    if parent_top is None or not chain or chain[0] == parent_top or parent_top not in chain:
        return []
    return list(range(1, chain.index(parent_top) + 1))


def home(chain_now: Sequence[str], chain_then: Sequence[str]) -> int:
    """Given the image paths of a disk at the restore point (top first) and the
    paths below some data as it was backed up (its layer first), return the index
    in chain_now of the image that holds that data now: its own layer, or the
    nearest one below it that survived (a commit merges an overlay down). Data
    of images none of which survived (the disk moved) goes to the bottom."""
    for path in chain_then:
        if path in chain_now:
            return list(chain_now).index(path)
    return len(chain_now) - 1


def restore_steps(chain_now: Sequence[str], archives: Sequence[tuple[Sequence[str],
                                                                    Sequence[int]]]
                  ) -> list[tuple[int, int, int]]:
    """Plan a restore by layers of one disk.

    Given the disk's image paths at the restore point (top first) and, for each
    archive of its chain (full first), its image paths then (top first) and the
    indexes of the layers it holds sealed data of, return the writes in order as
    (archive index, layer of that archive: 0 for its top data, else the sealed
    layer, image index counted from the bottom). An archive's sealed layers are
    written deepest first (they froze in that order), then its top data."""
    steps = []
    bottom = len(chain_now) - 1
    for a, (chain_then, sealed) in enumerate(archives):
        for layer in sorted(sealed, reverse=True) + [0]:
            steps.append((a, layer, bottom - home(chain_now, chain_then[layer:])))
    return steps


def carried(chain_now: Sequence[str], chain_then: Sequence[str],
            images_then: Mapping[str, str | None]) -> dict[int, str]:
    """Return which images of sealed layers a disk's record carries over from the
    record before it (index into chain_now -> image archive ID).

    Given the disk's image paths now and at that record (top first), and the
    images that record named of the layers below its top (path -> ID or None):
    a layer below the top now keeps its image if it was below the top then too,
    with the same layers below it and the same one above it. A layer sealed
    since (the top then) gets an image of its own this run; one with another
    layer above it now had that layer committed into it, which changed it."""
    out = {}
    for i in range(1, len(chain_now)):
        path = chain_now[i]
        image = images_then.get(path)
        if image is None or path not in chain_then[1:]:
            continue
        j = list(chain_then).index(path)
        if list(chain_then[j:]) == list(chain_now[i:]) and chain_then[j - 1] == chain_now[i - 1]:
            out[i] = image
    return out
