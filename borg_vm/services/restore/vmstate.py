"""Putting a restore point's state (core/vmstate.py) where the restored domain
uses it: restore and boot.

- The UEFI variable store goes beside the restored images (``NAME.nvram.fd``,
  0600) and the restored XML's ``<nvram>`` names it: a file of the domain's
  own, kept without --keep-host-resources.
- The TPM state goes where libvirt's swtpm looks for the restored domain's
  (new) UUID, before its first start: ``SWTPM_DIR/<uuid>/tpm2/tpm2-00.permall``,
  directories 0711 and 0700 and the file 0600 as libvirt makes them (libvirt
  hands them to its swtpm user when the domain starts). libvirt 9 cannot put a
  domain's TPM state anywhere else, so this is the one thing a restore writes
  outside its target directory; undefining the domain removes it (unless
  ``virsh undefine --keep-tpm``).

An archive without state (written before format 5, or of a domain that had
none) restores as before; where the domain's XML uses state the archive lacks,
the restored domain starts with fresh UEFI variables or a new TPM, and the
restore says so.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

from borg_vm.core import vmstate
from borg_vm.format import names as fmt
from borg_vm.format.manifest import Manifest
from borg_vm.services.restore import images

log = logging.getLogger(__name__)

# Modes libvirt gives the TPM state it makes: the domain's directory may be
# passed through, its TPM's directory and state are private.
UUID_DIR_MODE = 0o711
TPM_DIR_MODE = 0o700


def nvram_name(stem: str) -> str:
    """The file a restored domain's UEFI variable store is written to, beside its
    images (stem: the restored domain's name or its XML's)."""
    return f"{stem}.nvram.fd"


def warn_missing(archive: str, domain_xml: str, manifest: Manifest) -> None:
    """Warn about state the archived domain used that the archive does not hold."""
    lacking = [n for n in vmstate.state_paths(domain_xml, manifest.uuid)
               if n not in manifest.state]
    if not lacking:
        return
    why = (f"it was written by archive format {manifest.version}, before borg-vm stored them"
           if manifest.version < fmt.STATE_FROM else "the domain had not run when it was "
           "backed up")
    log.warning("%s holds no %s (%s): the restored domain starts with %s", archive,
                " or ".join(vmstate.LABELS[n] for n in lacking), why,
                " and ".join({vmstate.NVRAM: "fresh UEFI variables",
                              vmstate.TPM: "a new TPM"}[n] for n in lacking))


def place(state: dict[str, bytes], domain_xml: str, uuid: str | None, nvram: str | None,
          undo: Callable[..., object]) -> dict[str, str]:
    """Write a restore point's state (by name) where the domain (domain_xml, uuid)
    uses it: its UEFI variables to the file nvram, its TPM state where libvirt
    keeps that of uuid (place_tpm). Register with undo(fn, *args) how to take
    each back; return {name: file written}. State the domain has no place for
    (nvram or uuid None) is not written."""
    placed = {}
    raw = state.get(vmstate.NVRAM)
    if raw is not None and nvram is not None:
        write_nvram(nvram, raw)
        undo(images.remove_file, nvram)
        placed[vmstate.NVRAM] = nvram
    raw = state.get(vmstate.TPM)
    if raw is not None and uuid is not None:
        placed[vmstate.TPM] = place_tpm(domain_xml, uuid, raw)
        undo(remove_tpm, placed[vmstate.TPM])
    return placed


def write_nvram(path: str, raw: bytes) -> None:
    """Write a UEFI variable store to path (new, 0600)."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, images.PRIVATE), "wb") as f:
        f.write(raw)


def place_tpm(domain_xml: str, uuid: str, raw: bytes) -> str:
    """Write TPM state raw where libvirt's swtpm keeps the state of the domain with
    uuid (its TPM's version as domain_xml says); return the file. Raise
    FileExistsError if that domain already has state; on failure leave nothing."""
    version = vmstate.emulated_tpm_version(domain_xml) or "2.0"
    path = vmstate.tpm_state_file(version, uuid)
    tpm_dir = os.path.dirname(path)
    uuid_dir = os.path.dirname(tpm_dir)
    os.makedirs(os.path.dirname(uuid_dir), mode=UUID_DIR_MODE, exist_ok=True)
    os.mkdir(uuid_dir, UUID_DIR_MODE)
    try:
        os.chmod(uuid_dir, UUID_DIR_MODE)   # whatever the umask
        os.mkdir(tpm_dir, TPM_DIR_MODE)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, images.PRIVATE),
                  "wb") as f:
            f.write(raw)
            os.fsync(f.fileno())
    except BaseException:
        remove_tpm(path)
        raise
    return path


def remove_tpm(path: str) -> None:
    """Remove TPM state place_tpm wrote (the file path), with its directories."""
    shutil.rmtree(os.path.dirname(os.path.dirname(path)), ignore_errors=True)
