"""The real test guest: a tiny Linux built by contrib/guest/build-guest.sh from
Debian packages, booted by libvirt's direct kernel boot (guest.Boot).

Its init (contrib/guest/init) starts qemu-ga on the org.qemu.guest_agent.0
channel and runs the workload the kernel command line names, reporting on
the serial console, a file on the host (Console reads it):

    borgvm: agent started on vport1p1
    borgvm: workload files started
    borgvm: synced f0001 <sha256>        f0001 is complete and synced to disk
    ...
    borgvm: file f0001 <sha256>          (workload verify) one per /data/f*
    borgvm: log whole 812 lines          (or: log broken at line N)
    borgvm: verify done
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import guest
import libvirt
import libvirt_qemu
from guest import Boot, poll

BUILD = Path(__file__).resolve().parents[2] / "contrib" / "guest" / "build-guest.sh"
BUILD_TIMEOUT = 600
BOOT_TIMEOUT = 120         # a TCG boot takes 4-9 s here (2 busy cores), under OVMF 11-25 s
AGENT_TIMEOUT = 30
VERIFY_TIMEOUT = 60
# PVM ("pagetable-based virtual machine"), a KVM module that runs nested guests
# without hardware virtualization, boots only PVM-enabled guest kernels:
# Debian's stock kernel hangs in its real-mode setup code there (measured).
PVM_MODULE = Path("/sys/module/kvm_pvm")
REPORT = re.compile(r"^borgvm: (.*?)\r?$", re.M)
SYNCED = re.compile(r"synced (\S+) ([0-9a-f]{64})")
HAVE = re.compile(r"file (\S+) ([0-9a-f]{64})")


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path
    root: Path
    cmdline: str

    def boot(self, workload: str) -> Boot:
        """Given a workload (files, verify, idle), return the Boot that runs it."""
        return Boot(self.kernel, self.initrd, f"{self.cmdline} borgvm.workload={workload}",
                    self.root)


def build() -> GuestFiles:
    """Run contrib/guest/build-guest.sh (cached: about a second once built);
    return its files. Raise CalledProcessError (with its output) if it fails."""
    out = subprocess.run(["bash", str(BUILD)], check=True, capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT).stdout
    return built(Path(out.strip().splitlines()[-1]))


def built(d: Path) -> GuestFiles:
    """Given the directory build-guest.sh printed, return the guest's files in it."""
    return GuestFiles(d / "vmlinuz", d / "initrd.img", d / "root.qcow2",
                      (d / "cmdline").read_text().strip())


class Console:
    """The guest's serial console, as the file libvirt's <serial type='file'> writes."""

    def __init__(self, path: Path):
        self.path = path

    def reports(self) -> list[str]:
        """Return the guest's "borgvm: ..." lines so far, without the prefix."""
        try:
            text = self.path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        return REPORT.findall(text)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Given a regex, return the match of the first report that matches it,
        polling; raise TimeoutError with the console's tail after `timeout`."""
        regex = re.compile(pattern)

        def found():
            return next(filter(None, map(regex.fullmatch, self.reports())), None)
        try:
            return poll(found, timeout, f"{pattern!r} on the serial console {self.path}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; console tail: {self.tail()!r}") from None

    def tail(self, size: int = 2000) -> str:
        try:
            return self.path.read_bytes()[-size:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def synced(self) -> dict[str, str]:
        """Return {file name: sha256} of every file the workload reported synced."""
        return files_in(SYNCED, self.reports())

    def wait_synced(self, count: int, timeout: float) -> dict[str, str]:
        """Return synced() once it lists at least `count` files; raise TimeoutError."""
        def enough():
            synced = self.synced()
            return synced if len(synced) >= count else None
        return poll(enough, timeout, f"{count} files synced in {self.path}")


def wait_booted(domain, workload: str) -> float:
    """Given a Domain booting the real guest and its workload, wait until the
    workload reports it started and the guest agent is connected; return the
    seconds from the domain's start to the workload's start line being read
    (the boot time, give or take a poll interval)."""
    console = Console(domain.serial)
    console.wait_for(f"workload {workload} started", BOOT_TIMEOUT)
    booted = time.monotonic() - domain.started
    poll(lambda: agent_connected(domain.dom), AGENT_TIMEOUT, f"{domain.name}'s guest agent")
    return booted


def kvm_boots_stock_kernels(conn: libvirt.virConnect) -> bool:
    """Given a connection, return True if KVM is usable here for a stock Linux
    kernel such as the real guest's (not under PVM)."""
    return guest.kvm_usable(conn) and not PVM_MODULE.exists()


def boot_restored(make_domain, restored: dict, files: GuestFiles, workdir: Path):
    """Given the make_domain fixture, what `borg-vm restore --json` printed and
    the guest's files, define the restored domain XML under a new name
    borgvm-test-<8 hex>-restored with the verify workload and a serial console
    in workdir, and start it; return its guest.Domain."""
    name = f"{guest.PREFIX}{secrets.token_hex(4)}-restored"
    serial = workdir / f"{name}.serial"
    xml = guest.with_boot(Path(restored["domain_xml"]).read_text(), name, files.boot("verify"),
                          serial)
    return make_domain.define(xml, {t: (Path(d["image"]), "qcow2")
                                    for t, d in restored["disks"].items()}, serial)


@dataclass(frozen=True)
class Verified:
    files: dict[str, str]   # /data/fNNNN name -> sha256, as the guest read them
    log: str                # "whole N lines" or "broken at line N"

    def wrong(self, expected: dict[str, str]) -> dict[str, tuple[str, str | None]]:
        """Given {name: sha256} of files that must be there, return {name:
        (expected, found or None)} of those missing or changed."""
        return {f: (sha, self.files.get(f)) for f, sha in expected.items()
                if self.files.get(f) != sha}


def verified(domain) -> Verified:
    """Given a Domain booting the real guest with the verify workload, wait for
    its report and return it; raise TimeoutError if it does not finish."""
    return verified_on(Console(domain.serial))


def verified_on(console: Console) -> Verified:
    """Given the console of the real guest booting the verify workload, wait for
    its report and return it; raise TimeoutError if it does not finish."""
    console.wait_for("verify done", BOOT_TIMEOUT + VERIFY_TIMEOUT)
    reports = console.reports()
    log = next((r[4:] for r in reports if r.startswith("log ")), "missing")
    return Verified(files_in(HAVE, reports), log)


def files_in(regex: re.Pattern, reports: list[str]) -> dict[str, str]:
    """Given a regex of (name, sha256) and reports, return {name: sha256} of those it matches."""
    return dict(m.groups() for m in map(regex.fullmatch, reports) if m)


def agent_connected(dom: libvirt.virDomain) -> bool:
    """Given a running domain, return True if libvirt sees its guest agent
    connected (the channel's state in the live XML)."""
    target = guest.agent_channel(ET.fromstring(dom.XMLDesc(0)))
    return target is not None and target.get("state") == "connected"


def agent(dom: libvirt.virDomain, command: str) -> object:
    """Given a domain and a guest agent command name, run it and return its
    "return" value (a test-only path: libvirt marks the domain tainted)."""
    reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": command}),
                                          AGENT_TIMEOUT, 0)
    return json.loads(reply)["return"]


def fsfreeze_status(dom: libvirt.virDomain) -> str:
    """Return "frozen" or "thawed", as the guest agent reports its filesystems."""
    return agent(dom, "guest-fsfreeze-status")


@dataclass(frozen=True)
class FsCheck:
    code: int             # e2fsck's exit code: 0 clean
    output: str
    needs_recovery: bool  # the journal holds transactions not yet written home


def e2fsck(image: Path, workdir: Path) -> FsCheck:
    """Given a (qcow2, maybe chained) image of the guest's root, convert it to
    raw in workdir and check that: `e2fsck -fn` (forced, read-only: it replays
    no journal) and whether the superblock flags the journal as needing
    recovery, as a filesystem in use is, and a frozen one is not (ext4 flushes
    its journal when frozen)."""
    raw = workdir / f"{image.name}.fsck.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    try:
        fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
        header = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True,
                                check=True).stdout
    finally:
        raw.unlink()
    features = next(line for line in header.splitlines()
                    if line.startswith("Filesystem features:")).split()[2:]
    return FsCheck(fsck.returncode, fsck.stdout + fsck.stderr, "needs_recovery" in features)
