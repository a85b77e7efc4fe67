"""The borg-vm archive format, versions 5 (Borg 1 repositories) and 7 (Borg 2
repositories; reads 1 to 7): this package is the one
place that defines it. names.py: archive and member names, versions and limits;
manifest.py: manifest.json; summary.py: the archive comment; fields.py: the
checks of their fields; writer.py and reader.py: writing and reading archives;
auth.py and trust.py: which archives are restore points.

Archive names
-------------
One Borg archive per domain per backup run, named::

    {domain}.{snapshot}.{checkpoint}
    e.g.  web01.pre-upgrade.borgvm-20261126T020000Z
          web01.base.borgvm-20261125T020000Z

- ``checkpoint`` is the libvirt checkpoint the run created, always
  ``borgvm-<UTC time YYYYmmddTHHMMSSZ>`` (plus ``-N`` if that name was taken).
  borg-vm creates and deletes only checkpoints with the ``borgvm-`` prefix.
- ``snapshot`` (version 2) names the layer the disks were on at that backup
  (core/layers.py): the libvirt snapshot that made the top image, ``base`` for
  a disk with no backing image, ``layer-<8 hex>`` for an overlay made without
  libvirt metadata; escaped (``layers.escape``: every character but
  ``A-Za-z0-9_+-`` as ``%XX``), so it holds no dot. Version 1 wrote the time of
  the chain's full backup here (``20261125T221800Z``); that still parses.
- Neither part contains a dot, so ``name.rsplit('.', 2)`` parses back even
  when the domain name has dots.
- A run writes its archive under the final name: borg commits it only when
  it reads the end of the tar stream, which borg-vm writes after the manifest,
  once every disk streamed completely (adapters/borg.py ``import_tar``: borg
  never reads an end of file, so a run cut short commits nothing). What a cut
  run may leave are borg's own checkpoint archives, ``{final}.checkpoint`` and
  ``{final}.checkpoint.N``. Earlier borg-vm wrote ``{final}.borgvm-partial``
  and renamed it when borg exited 0 (one more borg process per run); a cut
  run left that name and its checkpoints. The next run of the domain deletes
  all of these once its own archive is committed (their chunks reused first).
  A borg that fails after it committed leaves a complete archive: the run
  finds it in the repository, keeps it, and says so (services/backup/run.py).

Levels are per disk: an incremental archive may hold a full of a disk added
or resized since its parent; that disk's chain starts there.

Archive contents (a tar stream fed to ``borg import-tar``)
----------------------------------------------------------
In this order::

    domain.xml                      the domain XML at backup time (inactive + live paths)
    checkpoint.xml                  the libvirt checkpoint XML this run created
    state/nvram                     (version 5) the domain's UEFI variable store, the
                                    file <os><nvram> names, if it has one
    state/tpm                       (version 5) its emulated TPM's permanent state
                                    (swtpm's tpm2-00.permall or tpm-00.permall)
    disk/{target}/{offset:016x}.map (version 3) the pieces of the data member that
                                    follows: JSON [[start, length], ...]
    disk/{target}/{offset:016x}     data: pieces of disk {target} as the guest saw
                                    it, back to back; the first starts at byte
                                    offset
    frozen/{target}/{layer}/{offset:016x}[.map]
                                    (version 2) the same for layer {layer} (an index
                                    into the disk's layers) as it was when a snapshot
                                    froze it
    ...                             (ascending offset; per disk its top data, then its
                                    sealed layers; disks in target order)
    manifest.json                   last, when digests and counts are known

A data member without a map holds one piece: bytes [offset, offset+size) of
its disk (the only kind versions 1 and 2 write). A map member announces a
*pack* (version 3): the data member right after it holds the listed pieces
(ascending, disjoint, the first at offset, lengths adding up to its size)
back to back. Borg pays per member, so the writer packs the pieces smaller
than a block of a fragmented disk together and keeps larger pieces in
members of their own (format/packing.py says where packs end); readers follow
the maps, whatever packing made them.

Readers hold only domain.xml, checkpoint.xml, manifest.json, the state
members and map members whole, and refuse them unread when bigger than
``SMALL_MEMBERS`` says or ``packing.MAX_MAP_BYTES``; any other member under
``disk/`` or ``frozen/`` means a damaged archive; members they do not know
are skipped unread.

Whole pieces start on ``block_size`` boundaries (see ``extent.split_at_blocks``)
and Borg is run with a fixed chunker of ``block_size``, so identical disk
blocks become identical chunks across runs and across domains. Ranges that
read as zeros are not stored: the manifest lists them as zero extents and
restore zeroes them.

manifest.json
-------------
::

    {"format": "borg-vm", "version": 4,
     "domain": NAME, "uuid": UUID,
     "snapshot": S, "checkpoint": C, "level": "full"|"inc",
     "parent_checkpoint": C0|null, "parent_archive": A0|null,
     "parent_id": ID|null,                    # version 4: the parent's Borg archive ID
     "time": "2026-11-26T02:00:00Z",          # when the backup job started
     "block_size": 262144, "borg_vm_version": "0.1.0",
     "domain_xml_sha256": HEX,                # version 4: of the members domain.xml
     "checkpoint_xml_sha256": HEX,            #   and checkpoint.xml
     "auth": [KEY_ID, CODE],                  # version 4: format/auth.py
    "state": {"nvram": HEX, "tpm": HEX},     # version 5: SHA-256 of each state member
                                             #   the archive holds (either, both, none)
     "disks": {TARGET: {
         "level": "full"|"inc",               # raw disks are always full
         "format": "qcow2"|"raw", "source": PATH, "virtual_size": BYTES,
         "extents": [[START, LENGTH, "data"|"zero"], ...],  # sorted, disjoint
         "data_bytes": N, "zero_bytes": N,
         "sha256": HEX,                       # of the data bytes in offset order
         # version 2:
         "layers": [{"name": NAME, "path": PATH, "format": FMT}, ...],
                                              # the disk's images, top first;
                                              # layers[0]["path"] == source
         "frozen": [{"layer": I,              # 1 <= I < len(layers)
                     "level": "full"|"inc",   # whole layer, or since the parent
                     "extents": [...], "data_bytes": N, "zero_bytes": N,
                     "sha256": HEX}, ...]}}}

The top data (``extents``) is what the guest saw: after a snapshot, the writes
since the parent checkpoint on both sides of it (libvirt merges the bitmaps
down the chain), so over the sealed layer below it is a superset of the top
image's own clusters that reads exactly as the guest did. ``frozen`` holds,
for each layer sealed since the parent archive, its final changes (the writes
to it from the parent checkpoint until the snapshot, from that layer's own
copy of the checkpoint's bitmap; or the whole layer where that bitmap is
missing): with it, ``restore --layers`` rebuilds every sealed layer complete.

A disk at level ``full`` holds every byte of the disk (unlisted ranges are
zero); at level ``inc`` it holds what changed since the parent archive, and
unlisted ranges are as in the parent.

Version 3 changed only the data members (packs); its manifest is version 2's.
Version 4 authenticates (format/auth.py): the manifest and the comment carry
``auth``, a key id and an HMAC-SHA256 under a key of the host that wrote the
archive (services/keyring.py), over the archive's name and the document
without ``auth``; both name the parent by Borg archive ID (``parent_id``);
the manifest records the SHA-256 of domain.xml and checkpoint.xml, so the
manifest's code covers every member. format/trust.py decides which archives
are restore points.
Version 5 adds the domain's state beyond its disks (``STATE``): the UEFI
variable store and the emulated TPM's permanent state, read at the disks'
point in time (services/backup/vmstate.py), stored whole every run (Borg
deduplicates them), each listed in ``state`` with its digest and in the
comment by name. The manifest's code covers the digests, so a planted or
damaged state member fails like a damaged disk.
The manifest is written compact (no indentation): a fragmented 1 TiB disk
lists ~200,000 extents, ~5.5 MiB. Readers do not build it with json.loads
(a list, two ints and a string per extent: ~230 bytes) but with
format/extent_json.py, which holds each ``extents`` list in arrays (17 bytes an
extent) and refuses a key given twice in one object, values nested deeper
than it allows or holding more memory besides the extents; and the code is
checked over the document written again in pieces (``auth``: the same
bytes json.dumps writes).

Version 6: complete images (Borg 2 repositories)
------------------------------------------------
Borg 1 repositories keep getting version 5. In a Borg 2 repository a restore
point is a *record*, the archive above under the same name with no data
members, and per disk an *image archive* ``{record}~{target}`` holding one
file, the whole disk as the guest saw it, built by ``borg create --map
--reuse-from`` (format/writer.py ``write_images``; written before the record,
so a record exists only over complete images; images without their record
are what a cut run left, deleted by the domain's next run). A record's disk
has no ``extents``, ``sha256`` or ``frozen``; instead::

    "data_bytes": N, "zero_bytes": N,        # what the run read, what it mapped as zeros
    "image": [ID, FULL_TIME, RUNS]           # the image archive's Borg ID; when the disk
                                             #   was last read whole; runs since (0: now)

and ``level`` says how the image was read: ``full`` (every byte), ``inc`` (the
changes since the parent; the rest taken unread from the parent's image).
Every disk of a record is its own restore chain. Its comment's disk entries
carry the same ``[ID, FULL_TIME, RUNS]`` as a seventh element. The codes
cover the IDs, and Borg binds an image's every byte to its ID when read with
ID checks on (adapters/borg/borg2.py ``ASSERT_ID``).

Version 7: images of sealed snapshot layers
-------------------------------------------
A run that finds layers of a disk sealed since the parent (core/layers.py)
first builds an image archive of each, ``{record}~{target}.{layer}`` (the
layer's name escaped), deepest first: the layer as the guest saw it when it
was sealed, read where its own bitmap of the parent's checkpoint says it
changed, the rest taken from the image below it (the parent's image for the
parent's top), or read whole without a usable bitmap. In the manifest each
entry of ``layers`` below the top carries ``"image": ID|null``, and in the
comment each disk entry has an eighth element, ``[[PATH, ID|null], ...]``,
the layers below the top, top first. A later record names the same ID while
the layer is sealed with the same layers below and above it
(``layers.carried``); an image some record names is no leftover, and goes
when the last record naming it is deleted.

The archive comment carries a summary (``Summary``) so ``borg list --json``
alone can group and chain archives without extracting manifests; a reader
skips archives whose summary has a version it does not know. Written
compact, in this key order::

    {"borg-vm": 4, "level": L, "parent": A0|null, "parent_id": ID|null,
     "time": T, "uuid": UUID,
     "disks": {TARGET: [LEVEL, VIRTUAL_SIZE, FORMAT, SOURCE, DATA_BYTES, ZERO_BYTES]},
     "state": ["nvram", "tpm"],               # version 5: the state members it holds
     "auth": [KEY_ID, CODE]}                  # parent_id and auth: version 4

Readers reject a ``version`` they do not know, and any field of the manifest
or the comment whose type or value is not as above (a string where a string
is written, an int -- never a bool -- where a byte count is, ``time`` as
shown, ``sha256`` as 64 lower-case hex digits, ``virtual_size`` in
(0, MAX_VIRTUAL_SIZE], a power-of-two ``block_size``, no more extents in a
record than ``extent.max_extents`` allows its disk: one a 512-byte sector): a
repository may hold archives a compromised client crafted, so nothing is
trusted by shape.
"""
