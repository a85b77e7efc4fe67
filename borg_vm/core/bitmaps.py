"""Which persistent bitmaps of a disk's image chain tell what changed since a
checkpoint, for a domain that is shut off. Pure, no I/O.

libvirt names a checkpoint's bitmap after the checkpoint and, when an
external snapshot puts a new overlay on a disk, adds a bitmap of the same
name to the overlay; the sealed layer below keeps its own (now disabled)
copy, holding the writes between the checkpoint and the snapshot::

    top      overlay   CP (auto)      writes since the snapshot
    below    base      CP (disabled)  writes from CP until the snapshot
    further  ...       (no CP)        older than the checkpoint: not needed

So the writes since CP are the union of CP from the top down to the last
layer that has it. A running QEMU can only use the top's when it is enabled
("auto"), and a bitmap flagged "in-use" was not stored cleanly (QEMU was
killed): then nothing can be trusted and a full backup is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ENABLED = "auto"
IN_USE = "in-use"


def layers_since(chain: Sequence[Mapping[str, Sequence[str]]], checkpoint: str
                 ) -> tuple[list[int], str | None]:
    """Given each layer's bitmaps (name -> flags), top first, return (indexes of the
    layers whose bitmap `checkpoint` together holds every write since it, None),
    or ([], why that is impossible)."""
    if not chain or checkpoint not in chain[0]:
        return [], f"the top image has no bitmap {checkpoint}"
    if ENABLED not in chain[0][checkpoint]:
        return [], f"bitmap {checkpoint} of the top image is disabled"
    layers = []
    for i, bitmaps in enumerate(chain):
        if checkpoint not in bitmaps:
            break
        if IN_USE in bitmaps[checkpoint]:
            return [], (f"bitmap {checkpoint} is marked in use (QEMU stopped without "
                        "storing it)")
        layers.append(i)
    return layers, None
