"""Checkpoints come back from the repository.

libvirt keeps a checkpoint's metadata apart from its bitmaps: the metadata
is lost when a domain is undefined and defined again, when libvirt's state
directory is lost, or when the domain and its images move to a new host,
while the bitmaps stay in the images. Every archive holds the XML of the
checkpoint its run created (checkpoint.xml), so before planning, a backup
whose newest archive's checkpoint libvirt no longer knows redefines it from
that XML. For a running domain libvirt validates it against QEMU's bitmaps
(missing, disabled or in-use ones are refused); for a shut-off one the
offline backup checks the bitmaps in the images. Whatever cannot be
recovered means a full backup, with the reason.
"""

from __future__ import annotations

import logging

from borg_vm.adapters.borg import Repository
from borg_vm.adapters.libvirt import Domain
from borg_vm.core import domxml
from borg_vm.errors import BorgVmError
from borg_vm.format import names as fmt
from borg_vm.format import reader
from borg_vm.format.summary import ArchiveInfo

log = logging.getLogger(__name__)


def checkpoint(dom: Domain, borg: Repository, parent: ArchiveInfo) -> str | None:
    """Redefine parent's checkpoint in libvirt from the XML stored in parent.

    Return None when it is back, else why it could not be brought back.
    """
    name = parent.name.checkpoint
    try:
        raw = reader.read_small(borg, parent.archive, (fmt.CHECKPOINT_XML, fmt.MANIFEST))
        reader.check_archive(parent, raw, (fmt.CHECKPOINT_XML,))
        xml = domxml.checkpoint_to_redefine(raw[fmt.CHECKPOINT_XML], name)
        dom.redefine_checkpoint(xml, validate=dom.is_active())
    except ValueError as e:
        return f"its XML in {parent.archive} {e}"
    except BorgVmError as e:
        return e.message
    log.info("%s: checkpoint %s was gone from libvirt; recovered it from %s", dom.name,
                name, parent.archive)
    return None
