"""Change and read a shut-off domain's UEFI variables and TPM state offline,
so that a test can plant a marker in each and find it again after a restore.

* UEFI variables live in the domain's NVRAM file (<os><nvram>), an edk2
  variable store that OVMF keeps on its second pflash. virt-fw-vars (PyPI
  virt-firmware) reads and rewrites it; the suite's variables carry their own
  vendor GUID (MARKER_GUID), so they never collide with OVMF's. A write
  takes about 2 s (virt-fw-vars pads the 256 KiB store a byte at a time).
* TPM 2.0 state lives in /var/lib/libvirt/swtpm/<uuid>/tpm2/tpm2-00.permall.
  A private swtpm (Swtpm) serves that directory on a Unix socket of ours and
  tpm2-tools, through the swtpm TCTI, define and read an NV index there. It
  runs as root: files it writes are then given back the owner they had (or,
  new, the directory's), as libvirt's swtpm runs as its swtpm_user (tss when
  that user existed at libvirtd's start, else root; /etc/libvirt/qemu.conf
  may name another).

Neither may run while the domain does: the swtpm of a running domain holds
the state directory's lock (our swtpm then fails to start), and OVMF would
overwrite the variable store.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from guest import poll

SWTPM_STATE = Path("/var/lib/libvirt/swtpm")
# A vendor GUID for the suite's own UEFI variables (random, fixed).
MARKER_GUID = "5e0d2b6c-8f4a-4c1e-9b7d-3a61f0c2e9d4"
# Non-volatile, boot service and runtime access: what an OS's variables have.
VARIABLE_ATTRIBUTES = 0x7
MARKER_NV_INDEX = 0x1500016     # in the owner's NV index range (0x01500000-)
MARKER_SIZE = 32
SWTPM_START_TIMEOUT = 10.0
SWTPM_STOP_TIMEOUT = 10.0
TPM_TOOL_TIMEOUT = 30.0


class StateError(AssertionError):
    """A tool that reads or writes offline VM state failed."""


def tpm_state_dir(uuid: str) -> Path:
    """Given a domain UUID, return the directory libvirt keeps its TPM 2.0
    state in (it may not exist: a TPM's state is made on its first start)."""
    return SWTPM_STATE / uuid / "tpm2"


# -- UEFI variables -------------------------------------------------------

def set_uefi_variable(nvram: Path, name: str, data: bytes, guid: str = MARKER_GUID) -> None:
    """Given a domain's NVRAM file, a variable name and its bytes, set the
    variable (vendor `guid`, non-volatile) in the file, in place, keeping the
    file's owner and mode; raise StateError if virt-fw-vars fails."""
    doc = {"version": 2, "variables": [{"name": name, "guid": guid,
                                        "attr": VARIABLE_ATTRIBUTES, "data": data.hex()}]}
    with _keeping_owner([nvram]), tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "set.json"
        spec.write_text(json.dumps(doc))
        _virt_fw_vars("--inplace", str(nvram), "--set-json", str(spec))


def uefi_variable(nvram: Path, name: str, guid: str = MARKER_GUID) -> bytes | None:
    """Given an NVRAM file and a variable name, return the variable's bytes,
    or None if the file has no such variable of vendor `guid`; raise
    StateError if virt-fw-vars cannot read the file."""
    return uefi_variables(nvram).get((name, guid))


def uefi_variables(nvram: Path) -> dict[tuple[str, str], bytes]:
    """Given an NVRAM file, return every variable in it: (name, vendor GUID)
    -> bytes; raise StateError if virt-fw-vars cannot read the file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vars.json"
        _virt_fw_vars("--input", str(nvram), "--output-json", str(out))
        doc = json.loads(out.read_text())
    return {(v["name"], v["guid"].lower()): bytes.fromhex(v["data"]) for v in doc["variables"]}


def _virt_fw_vars(*args: str) -> None:
    """Run virt-fw-vars (the module of this interpreter's virt-firmware) with
    `args`; raise StateError with its output if it fails."""
    argv = [sys.executable, "-m", "virt.firmware.vars", "--loglevel", "warning", *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise StateError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


# -- TPM state ------------------------------------------------------------

class Swtpm:
    """A private swtpm serving a TPM 2.0 state directory on Unix sockets in
    `workdir`, for tpm2-tools (run()); a context manager. On exit it stops
    swtpm (SIGTERM to its PID; it saves the state on every NV write anyway)
    and gives the state files back their owners."""

    def __init__(self, state_dir: Path, workdir: Path):
        self.state_dir = state_dir
        # Short: a Unix socket's path has at most 107 bytes, ".ctrl" included.
        self.socket = workdir / f"tpm-{secrets.token_hex(3)}.sock"
        self._proc: subprocess.Popen | None = None
        self._keep = _keeping_owner([state_dir, *_files(state_dir)], default=state_dir)

    def __enter__(self) -> Swtpm:
        if not (self.state_dir / "tpm2-00.permall").exists():
            raise StateError(f"no TPM 2.0 state in {self.state_dir}")
        # A file, not a pipe: swtpm logs every client's disconnection there.
        self._stderr = tempfile.TemporaryFile()
        self._keep.__enter__()
        # The swtpm TCTI finds the control channel at <server socket>.ctrl.
        self._proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir},mode=0600",
             "--server", f"type=unixio,path={self.socket}",
             "--ctrl", f"type=unixio,path={self.socket}.ctrl",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=self._stderr)
        try:
            poll(self._serving, SWTPM_START_TIMEOUT, f"swtpm serving {self.socket}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _serving(self) -> bool:
        """Return True once swtpm answers on its control channel; raise
        StateError if it exited. Its sockets alone do not tell: swtpm opens
        them before it starts the TPM (which locks the state), and exits
        after them if the lock is taken."""
        if self._proc.poll() is not None:
            self._stderr.seek(0)
            raise StateError(f"swtpm on {self.state_dir} exited {self._proc.returncode}: "
                             f"{self._stderr.read().decode(errors='replace').strip()}")
        ctrl = Path(f"{self.socket}.ctrl")
        if not (self.socket.exists() and ctrl.exists()):
            return False
        return subprocess.run(["swtpm_ioctl", "--unix", str(ctrl), "-c"],
                              capture_output=True).returncode == 0

    def __exit__(self, *exc) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(SWTPM_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            self._stderr.close()
            for path in (self.socket, Path(f"{self.socket}.ctrl")):
                path.unlink(missing_ok=True)
            self._keep.__exit__(None, None, None)

    def run(self, *argv: str, input: bytes | None = None) -> bytes:
        """Given a tpm2-tools command, run it against this TPM; return its
        stdout; raise StateError with its stderr if it fails."""
        env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={self.socket}")
        done = subprocess.run(list(argv), input=input, capture_output=True, env=env,
                              timeout=TPM_TOOL_TIMEOUT)
        if done.returncode != 0:
            raise StateError(f"{' '.join(argv)} exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def nv_indices(self) -> list[int]:
        """Return the NV indices defined in this TPM."""
        out = self.run("tpm2_getcap", "handles-nv-index").decode()
        return [int(line.strip("- \t"), 16) for line in out.splitlines() if line.strip()]


def write_tpm_marker(state_dir: Path, workdir: Path, data: bytes,
                     index: int = MARKER_NV_INDEX) -> None:
    """Given a domain's TPM 2.0 state directory (the domain shut off), a
    private directory for the sockets and some bytes, store them in the NV
    index `index` of the owner hierarchy (defined anew, of their size),
    keeping the files' owners; raise StateError if swtpm or tpm2-tools fail."""
    with Swtpm(state_dir, workdir) as tpm:
        if index in tpm.nv_indices():
            tpm.run("tpm2_nvundefine", "-C", "o", f"{index:#x}")
        tpm.run("tpm2_nvdefine", "-C", "o", "-s", str(len(data)), "-a",
                "ownerread|ownerwrite", f"{index:#x}")
        tpm.run("tpm2_nvwrite", "-C", "o", "-i", "-", f"{index:#x}", input=data)


def tpm_marker(state_dir: Path, workdir: Path, index: int = MARKER_NV_INDEX) -> bytes | None:
    """Given a TPM 2.0 state directory (its domain shut off) and a private
    directory for the sockets, return the bytes in NV index `index`, or None
    if the TPM has no such index; raise StateError if swtpm or tpm2-tools
    fail."""
    with Swtpm(state_dir, workdir) as tpm:
        if index not in tpm.nv_indices():
            return None
        return tpm.run("tpm2_nvread", "-C", "o", f"{index:#x}")


# -- ownership --------------------------------------------------------------

def _files(directory: Path) -> list[Path]:
    """Given a directory, return the regular files in it (none if it is missing)."""
    return [p for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []


class _keeping_owner:
    """A context manager that records the owner and mode of `paths` on entry
    and restores them on exit; regular files that appeared meanwhile in a
    directory among them get the owner of `default` (a directory)."""

    def __init__(self, paths: list[Path], default: Path | None = None):
        self._paths, self._default = paths, default
        self._saved: dict[Path, os.stat_result] = {}

    def __enter__(self) -> _keeping_owner:
        self._saved = {p: p.stat() for p in self._paths if p.exists()}
        return self

    def __exit__(self, *exc) -> None:
        for path, st in self._saved.items():
            if path.exists():
                os.chown(path, st.st_uid, st.st_gid)
                path.chmod(st.st_mode & 0o7777)
        if self._default is not None and self._default in self._saved:
            owner = self._saved[self._default]
            for path in _files(self._default):
                if path not in self._saved:
                    os.chown(path, owner.st_uid, owner.st_gid)
