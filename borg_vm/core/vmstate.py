"""A domain's state beyond its disks, and where libvirt keeps it. Pure, no I/O.

- ``nvram``: the UEFI variable store (boot entries, BootOrder, Secure Boot
  keys), the file ``<os><nvram>`` names. QEMU writes it in place while the
  guest runs; libvirt copies the firmware's template there at a domain's first
  start, so a domain that never ran may have none yet.
- ``tpm``: an emulated TPM's permanent state (``<tpm><backend
  type='emulator'>``), which swtpm rewrites whole (a new file renamed over the
  old) whenever the TPM's persistent data changes. libvirt keeps it under the
  domain's UUID: ``SWTPM_DIR/<uuid>/tpm2/tpm2-00.permall`` for TPM 2.0,
  ``.../tpm1.2/tpm-00.permall`` for 1.2. libvirt 9 offers no other place for
  it; if that directory holds state when the domain starts, swtpm runs on it,
  else libvirt manufactures a new TPM there (swtpm_setup).

The names are format.manifest.STATE's; a TPM passed through from the host
(``<backend type='passthrough'>``) has no state of the domain's own.
"""

from __future__ import annotations

import posixpath

from borg_vm.core.domxml import parse_xml

NVRAM = "nvram"
TPM = "tpm"
LABELS = {NVRAM: "UEFI variables", TPM: "TPM state"}   # as messages name them
# libvirt's swtpm state directory for qemu:///system.
SWTPM_DIR = "/var/lib/libvirt/swtpm"
_TPM_FILES = {"1.2": ("tpm1.2", "tpm-00.permall"), "2.0": ("tpm2", "tpm2-00.permall")}


def state_paths(domain_xml: str, uuid: str, swtpm_dir: str = SWTPM_DIR) -> dict[str, str]:
    """Given a domain's XML and UUID, return {name: file} of the state it has:
    NVRAM if it names a local variable store, TPM if it has an emulated TPM."""
    root = parse_xml(domain_xml)
    paths = {}
    nvram = root.find("os/nvram")
    path = "" if nvram is None or nvram.get("type", "file") != "file" else (nvram.text or "")
    if path.strip():
        paths[NVRAM] = path.strip()
    version = emulated_tpm_version(domain_xml)
    if version is not None:
        paths[TPM] = tpm_state_file(version, uuid, swtpm_dir)
    return paths


def emulated_tpm_version(domain_xml: str) -> str | None:
    """Return the TPM version ('2.0' or '1.2') of the domain's emulated TPM, or None
    if it has none. libvirt writes the version it chose; without one, 2.0."""
    backend = parse_xml(domain_xml).find("devices/tpm/backend[@type='emulator']")
    if backend is None:
        return None
    return "1.2" if backend.get("version") == "1.2" else "2.0"


def tpm_state_file(version: str, uuid: str, swtpm_dir: str = SWTPM_DIR) -> str:
    """Return the file libvirt's swtpm keeps the permanent state of a TPM of version
    in, for the domain with uuid."""
    subdir, name = _TPM_FILES[version]
    return posixpath.join(swtpm_dir, uuid, subdir, name)
