"""The benchmark's bench: throw-away domains, disk images, and timed runs of
borg-vm, borg and qemu-img, each measured from the outside (wall time around
the process, peak RSS polled from /proc).

Only domains named ``borgvm-test-bench-<8 hex>`` that carry this benchmark's
owner metadata are ever touched; ``Lab`` removes its own in ``close()``, and
``remove_stale`` removes those of an earlier run whose process is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

BENCH = Path(__file__).resolve().parent
TOP = BENCH.parent
WORK = BENCH / "work"
# `--quick` runs write their reports here instead of over the committed ones.
QUICK = WORK / "quick"
VENV_BIN = TOP / ".venv" / "bin"
BORG_VM = VENV_BIN / "borg-vm"
BORG = VENV_BIN / "borg"
# Borg 2, installed by `make setup` beside Borg 1.4 (docs/borg2.md).
BORG2 = TOP / ".venv" / "borg2" / "bin" / "borg"

URI = "qemu:///system"
PREFIX = "borgvm-test-bench-"
METADATA_URI = "https://borg-vm.invalid/bench"
METADATA_KEY = "borgvmbench"
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
BORG_VM_RUNTIME_DIR = Path("/run/borg-vm")
PASSPHRASE = "bench-passphrase"
RSS_POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 30
# qemu-io writes through the virtio-blk device's own BlockBackend, the path
# guest I/O takes, so dirty bitmaps see them.
QEMU_IO_DEVICE = "/machine/peripheral/virtio-disk{index}/virtio-backend"
BITMAP_GRANULARITY = 64 * KIB

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Print one progress line, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.monotonic() - _T0


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


# -- processes ------------------------------------------------------------

def borg_env(base_dir: Path, source: Path | None = None) -> dict[str, str]:
    """Return our environment without BORG_* variables, with a private
    BORG_BASE_DIR and answers for borg's questions (unencrypted repos, the
    benchmark's passphrase); with source, borg-vm is imported from there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG")}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    env.update(BORG_BASE_DIR=str(base_dir), BORG_PASSPHRASE=PASSPHRASE,
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    return env


def run(argv: list, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run argv to completion; return it, or raise RuntimeError with its stderr."""
    argv = [str(a) for a in argv]
    proc = subprocess.run(argv, env=env, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                           f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc


@dataclass
class Timed:
    seconds: float
    stdout: bytes
    peak_rss: int = 0   # bytes, VmHWM of the process itself (0 if not polled)
    stderr: bytes = b""
    cpu: float = 0.0    # CPU seconds (user + system) of the process and its waited-for children


def children_cpu() -> float:
    """CPU seconds used so far by this process's children that have been waited for."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def timed(argv: list, env: dict | None = None, poll_rss: bool = False,
          stdin_from: Path | None = None, discard_stdout: bool = False,
          cwd: Path | None = None) -> Timed:
    """Run argv; return its wall time, CPU time, stdout and (poll_rss) peak RSS.

    With stdin_from, the file is fed through a pipe by a `cat` child, as a
    shell's `cat FILE | cmd` would, and the time covers both; with
    discard_stdout, stdout goes to /dev/null; cwd: where argv runs. Raise
    RuntimeError if a process fails.
    """
    argv = [str(a) for a in argv]
    start, cpu = time.monotonic(), children_cpu()
    feeder = None
    if stdin_from is not None:
        feeder = subprocess.Popen(["cat", str(stdin_from)], stdout=subprocess.PIPE)
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, cwd=cwd,
                            stdout=subprocess.DEVNULL if discard_stdout else subprocess.PIPE,
                            stdin=feeder.stdout if feeder else subprocess.DEVNULL)
    if feeder:
        feeder.stdout.close()  # the child holds it now
    peak = [0]
    poller = None
    if poll_rss:
        poller = threading.Thread(target=_poll_hwm, args=(proc, peak), daemon=True)
        poller.start()
    try:
        out, err = proc.communicate()
    except BaseException:  # Ctrl-C or SIGTERM: stop the child as a terminal would
        stop(proc)
        if feeder:
            stop(feeder)
        raise
    seconds = time.monotonic() - start
    if feeder:
        feeder.wait()
        seconds = time.monotonic() - start
    if poller:
        poller.join()
    if proc.returncode != 0 or (feeder and feeder.returncode != 0):
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                           f"{err.decode(errors='replace')[-3000:]}")
    return Timed(seconds, out, peak[0], err, children_cpu() - cpu)


def stop(proc: subprocess.Popen) -> None:
    """SIGINT (borg and borg-vm clean up on it), then SIGKILL after a grace time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _poll_hwm(proc: subprocess.Popen, peak: list) -> None:
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * KIB)
        except OSError:
            return
        time.sleep(RSS_POLL_SECONDS)


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> bool:
    """Write dirty pages out and drop the page cache (and dentries, inodes), as
    before a cold nightly run; return False where the machine does not allow it
    (no root, or a container's read-only /proc/sys)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def device_read_bytes(path: Path) -> int:
    """Bytes read so far from the block device holding path, by anyone on the
    machine (/proc/diskstats); 0 if the device is not listed there."""
    dev = os.stat(path).st_dev
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if (int(fields[0]), int(fields[1])) == (os.major(dev), os.minor(dev)):
            return int(fields[5]) * 512   # sectors read, always 512 bytes here
    return 0


def clear_work(where: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove everything in the directory where except the names in keep."""
    if not where.exists():
        return
    for p in where.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def report_args(doc: str, report: str, quick_help: str) -> tuple[argparse.Namespace, Path]:
    """Parse a bench script's command line (--quick: quick_help; --render RESULTS_JSON:
    only write the report again); return it and where its report goes (report,
    in bench/, or with --quick in QUICK)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                    help="only write the report again from a run's results.json")
    args = ap.parse_args()
    return args, (QUICK if args.quick else BENCH) / report


def fresh_work(quick: bool, name: str) -> Path:
    """The bench's scratch directory name (under QUICK with quick), emptied, made."""
    work = (QUICK if quick else WORK) / name
    clear_work(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def warm(*paths: Path) -> None:
    """Read files once so the timed runs find them in the page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 * MIB):
                pass


# -- other load on the machine -------------------------------------------------

def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_chars(pid: int) -> int:
    """Bytes a live process (all its threads, living and ended) has read through
    read(2) and its kin, from files, pipes and devices: rchar of /proc/PID/io
    (QEMU reads its disk images so; socket receives do not count)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no rchar in /proc/{pid}/io")


def qemu_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class CpuSnapshot:
    when: float
    busy: float    # CPU seconds the whole machine was busy (all cores, kernel included)
    steal: float   # CPU seconds the hypervisor gave to someone else
    ours: float    # CPU seconds of this process, its waited-for children and our QEMUs


def cpu_snapshot(qemu_pids: list[int]) -> CpuSnapshot:
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = \
            (int(x) for x in f.readline().split()[1:9])
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return CpuSnapshot(time.monotonic(), (user + nice + system + irq + softirq) / hz,
                       steal / hz, ours + sum(proc_cpu(p) for p in qemu_pids))


def foreign_cores(a: CpuSnapshot, b: CpuSnapshot) -> tuple[float, float]:
    """Between two snapshots: average cores busy with work that is not ours
    (other processes, and kernel threads such as page-cache writeback), and
    average cores stolen by the hypervisor."""
    span = max(b.when - a.when, 1e-9)
    return (max(0.0, (b.busy - a.busy) - (b.ours - a.ours)) / span,
            (b.steal - a.steal) / span)


class Phases:
    """The phases of a run, each with how busy the machine was with work that
    was not ours during it (rows for report.phases_table)."""

    def __init__(self):
        self.rows: list[dict] = []
        self._current: tuple[str, CpuSnapshot] | None = None

    def next(self, name: str, qemu_pids: list[int]) -> None:
        """End the current phase (if any) and start the one called name; pass
        the PIDs of our QEMU processes, whose CPU time is ours."""
        now = cpu_snapshot(qemu_pids)
        if self._current is not None:
            was, start = self._current
            foreign, steal = foreign_cores(start, now)
            self.rows.append({"phase": was, "seconds": round(now.when - start.when, 1),
                              "foreign_cores": round(foreign, 2),
                              "steal_cores": round(steal, 2),
                              "loadavg": round(os.getloadavg()[0], 2)})
        self._current = (name, now)


# -- borg -----------------------------------------------------------------

class Borg:
    """Plain borg commands against repositories under the work directory."""

    def __init__(self, env: dict):
        self.env = env

    def init(self, repo: Path, encryption: str) -> Path:
        if repo.exists():
            shutil.rmtree(repo)
        run([BORG, "init", "--encryption", encryption, repo], env=self.env)
        return repo

    def unique_csize(self, repo: Path) -> int:
        """Bytes the repository holds after deduplication and compression
        (`borg info` of the whole repository)."""
        out = run([BORG, "info", "--json", repo], env=self.env).stdout
        return json.loads(out)["cache"]["stats"]["unique_csize"]

    def info(self, repo: Path, archive: str) -> dict:
        out = run([BORG, "info", "--json", f"{repo}::{archive}"], env=self.env).stdout
        return json.loads(out)["archives"][0]["stats"]

    def import_tar(self, repo: Path, archive: str, tar: Path, pipe: bool,
                   chunk: int = 4 * MIB) -> Timed:
        argv = [BORG, "import-tar", "--chunker-params", f"fixed,{chunk}", "-C", "lz4",
                f"{repo}::{archive}", "-" if pipe else tar]
        return timed(argv, self.env, stdin_from=tar if pipe else None)

    def export_tar(self, repo: Path, archive: str) -> Timed:
        """borg's own extraction speed: an archive as tar into /dev/null."""
        return timed([BORG, "export-tar", f"{repo}::{archive}", "-"], self.env,
                     discard_stdout=True)

    def extract_stdout(self, repo: Path, archive: str) -> Timed:
        """The other way borg hands data out: the archive's file contents, one after
        the other, into /dev/null."""
        return timed([BORG, "extract", "--stdout", f"{repo}::{archive}"], self.env,
                     discard_stdout=True)

    def create_file(self, repo: Path, archive: str, path: Path) -> Timed:
        """The usual nightly script: the whole image file, fixed 4 MiB chunks."""
        argv = [BORG, "create", "--json", "--read-special", "--chunker-params",
                "fixed,4194304", "-C", "lz4", f"{repo}::{archive}", path]
        return timed(argv, self.env)


# Sections 1-3 and 5 are measured with 4 MiB chunks, the reference the chunk
# size comparison (section 4) is expressed against; borg-vm's own default is
# what section 4 picks.
REFERENCE_CHUNK = 4 * MIB


def borg_vm_backup(env: dict, domain: str, repo: Path, chunk: int | None = None,
                   align: int | None = None, poll_rss: bool = False,
                   options: tuple[str, ...] = ()) -> tuple[Timed, dict]:
    """Run `borg-vm backup --json [options]`; return (timing, its JSON result)."""
    argv = [BORG_VM, "backup", domain, "--repo", repo, "--json", "--no-progress",
            "--chunk-size", str(chunk or REFERENCE_CHUNK), *options]
    if align is not None:
        argv += ["--read-alignment", str(align)]
    t = timed(argv, env, poll_rss=poll_rss)
    return t, json.loads(t.stdout.decode().strip().splitlines()[-1])


PHASE_LINE = re.compile(r"^borg-vm:\s+(\d+) ms borg_vm\.runtime: phase ([a-z-]+): ")


def phase_marks(debug_log: str) -> list[tuple[str, int]]:
    """Return (phase name, ms since borg-vm started logging) of each phase mark in
    the stderr of a `borg-vm --debug` run, in order."""
    return [(m[2], int(m[1])) for line in debug_log.splitlines()
            if (m := PHASE_LINE.match(line))]


def borg_vm_restore(env: dict, domain: str, repo: Path, to: Path, checkpoint: str,
                    flatten: bool = False, options: tuple[str, ...] = ()
                    ) -> tuple[Timed, dict]:
    """Run `borg-vm restore --json [--flatten] [options]`; return (timing, its JSON result)."""
    argv = [BORG_VM, "restore", domain, "--repo", repo, "--to", to, "--checkpoint",
            checkpoint, "--json", "--no-progress", *options] + (["--flatten"] if flatten else [])
    t = timed(argv, env)
    return t, json.loads(t.stdout)


# -- images ---------------------------------------------------------------

@contextlib.contextmanager
def keystream(key: str = "bench") -> Iterator[Callable[[int], bytes]]:
    """Yield read(n): the next n bytes of an endless incompressible stream (an
    AES-CTR keystream with a fixed key, the same on every run; another key,
    another stream)."""
    with open("/dev/zero", "rb") as zero:
        ossl = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-pass", f"pass:{key}",
                                 "-nosalt", "-pbkdf2"], stdin=zero,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def read(n: int) -> bytes:
            block = ossl.stdout.read(n)
            if len(block) != n:
                raise RuntimeError("openssl stopped early")
            return block
        try:
            yield read
        finally:
            ossl.kill()
            ossl.wait()
            ossl.stdout.close()


def make_data(path: Path, size: int, key: str = "bench") -> None:
    """Write size bytes of incompressible data (the first bytes of key's keystream)."""
    with open(path, "wb") as out, keystream(key) as read:
        left = size
        while left:
            block = read(min(left, 8 * MIB))
            out.write(block)
            left -= len(block)


def make_hole(path: Path, size: int) -> Path:
    """A sparse raw file of size bytes: reads as zeros, nothing allocated."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def qcow2_from_pieces(out: Path, pieces: list[Path]) -> None:
    """Concatenate raw pieces into one qcow2 (holes stay unallocated)."""
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *pieces, out])


def build_tar(out: Path, members: list[tuple[str, Path | bytes]]) -> int:
    """Write a GNU tar of (name, file or bytes) members, file data copied in the
    kernel; return its size."""
    with open(out, "wb") as f:
        for name, content in members:
            size = content.stat().st_size if isinstance(content, Path) else len(content)
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o600
            f.write(info.tobuf(format=tarfile.GNU_FORMAT))
            if isinstance(content, Path):
                f.flush()
                with open(content, "rb") as src:
                    left = size
                    while left:
                        left -= os.copy_file_range(src.fileno(), f.fileno(), left)
                f.seek(0, os.SEEK_END)
            else:
                f.write(content)
            f.write(bytes(-size % tarfile.BLOCKSIZE))
        f.write(bytes(2 * tarfile.BLOCKSIZE))
        return f.tell()


def qemu_io(image: Path, command: str) -> None:
    run(["qemu-io", "-f", "qcow2", "-c", command, image])


def allocated_data(image: Path) -> int:
    """Bytes of the image's guest view that hold data (not zero, not holes)."""
    out = run(["qemu-img", "map", "-U", "--output=json", image]).stdout
    return sum(e["length"] for e in json.loads(out) if e.get("data") and not e.get("zero"))


def convert_copy(src: Path, dst: Path, cache: str | None = None) -> float:
    """qemu-img convert -U src to a fresh qcow2 dst (no bitmaps); return seconds.

    qemu-img's default cache mode for the output is "unsafe" (never flushed);
    cache="writeback" flushes at the end, as a borg-vm restore does.
    """
    if dst.exists():
        dst.unlink()
    start = time.monotonic()
    run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2",
         *(["-t", cache] if cache else []), src, dst])
    return time.monotonic() - start


def images_equal(a: Path, b: Path) -> bool:
    proc = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"qemu-img compare failed: {proc.stderr.decode(errors='replace')}")
    return proc.returncode == 0


# -- domains --------------------------------------------------------------

# Which process made a domain, across pid reuse: the e2e tier's helpers own
# this logic; the benchmark tags its domains the same way.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from guest import Boot, domain_owner, owner_token  # noqa: E402
from guest import domain_xml as _guest_domain_xml  # noqa: E402
from guest import owner_alive as _owner_alive  # noqa: E402


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def domain_xml(name: str, disks: list[Path], boot: Boot | None = None,
               serial: Path | None = None, virt_type: str | None = None) -> str:
    """Return the XML of a benchmark domain: the e2e tier's guest, qcow2 disks
    vda, vdb, ... with discard, tagged with the benchmark's own namespace; with
    boot, the real guest (tests/e2e/realguest.py), its console in serial, run
    as virt_type ('kvm' or 'qemu'; default: KVM if usable)."""
    return _guest_domain_xml(
        name, virt_type or ("kvm" if kvm_usable() else "qemu"),
        [(f"vd{chr(ord('a') + i)}", path, "qcow2") for i, path in enumerate(disks)],
        "unmap", owner_token(), metadata=(METADATA_KEY, METADATA_URI), boot=boot,
        serial=serial)


def _remove(dom: libvirt.virDomain) -> None:
    if not dom.name().startswith(PREFIX):
        raise ValueError(f"refusing to remove domain {dom.name()!r}")
    try:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def remove_stale(conn: libvirt.virConnect) -> None:
    """Remove benchmark domains whose creating process is gone (a killed run)."""
    for dom in conn.listAllDomains(0):
        owner = domain_owner(dom, METADATA_URI) if dom.name().startswith(PREFIX) else None
        if owner and not _owner_alive(owner):
            say(f"removing {dom.name()}, left by an earlier benchmark run")
            _remove(dom)


class Guest:
    """A running (paused) domain without OS whose 'guest writes' are HMP qemu-io."""

    def __init__(self, dom: libvirt.virDomain, disks: list[Path]):
        self.dom = dom
        self.name = dom.name()
        self.disks = disks
        self.log = QEMU_LOG_DIR / f"{self.name}.log"

    def hmp(self, command: str) -> str:
        return libvirt_qemu.qemuMonitorCommand(
            self.dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)

    def qemu_io(self, command: str, disk: int = 0) -> None:
        reply = self.hmp(f'qemu-io -d {QEMU_IO_DEVICE.format(index=disk)} "{command}"')
        if reply.strip():
            raise RuntimeError(f"{self.name}: qemu-io {command!r}: {reply.strip()}")

    def write_many(self, writes: list[tuple[int, int]], rng: random.Random,
                   scratch: Path, disk: int = 0) -> None:
        """Make the guest write fresh incompressible bytes (from rng) over each
        (offset, length) range, then check that QEMU's log (where qemu-io
        reports) shows each one written."""
        scratch.mkdir(parents=True, exist_ok=True)
        mark = self.log.stat().st_size
        try:
            for i, (offset, length) in enumerate(writes):
                src = scratch / f"w{i}"
                src.write_bytes(rng.randbytes(length))
                self.qemu_io(f"write -s {src} {offset} {length}", disk)
                src.unlink()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        with open(self.log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        done = text.count("wrote ")
        if done != len(writes) or "failed" in text:
            raise RuntimeError(f"{self.name}: {done} of {len(writes)} writes reported done")

    def flush(self, disk: int = 0) -> None:
        self.qemu_io("flush", disk)


class Lab:
    """Creates guests and removes every one of them in close()."""

    def __init__(self):
        self.conn = libvirt.open(URI)
        remove_stale(self.conn)
        self.guests: list[Guest] = []

    def guest(self, disks: list[Path], boot: Boot | None = None, serial: Path | None = None,
              virt_type: str | None = None) -> Guest:
        """Define and start a domain on disks: paused without OS, or running the
        real guest with boot (see domain_xml)."""
        name = PREFIX + secrets.token_hex(4)
        dom = self.conn.defineXML(domain_xml(name, disks, boot, serial, virt_type))
        g = Guest(dom, disks)
        self.guests.append(g)
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if boot is None else 0)
        return g

    def adopt(self, name: str) -> Guest:
        """Given the name of a domain made for the benchmark by someone else
        (`borg-vm boot --name PREFIX...`), remove it in close() too."""
        g = Guest(self.conn.lookupByName(name), [])
        self.guests.append(g)
        return g

    def remove(self, g: Guest) -> None:
        """Remove one of our domains now; raise libvirtError if libvirt refuses."""
        uuid = g.dom.UUIDString()
        _remove(g.dom)
        self.guests.remove(g)
        # borg-vm's per-domain lock file; the domain is gone, so is its use.
        (BORG_VM_RUNTIME_DIR / f"{uuid}.lock").unlink(missing_ok=True)

    def close(self) -> None:
        for g in list(self.guests):
            try:
                self.remove(g)
            except libvirt.libvirtError as e:
                say(f"could not remove {g.name}: {e}")
        self.guests.clear()
        self.conn.close()


# -- write patterns -----------------------------------------------------------

def scattered(rng: random.Random, region: int, count: int, size: int = BITMAP_GRANULARITY,
              start: int = 0) -> list[tuple[int, int]]:
    """count (offset, size) writes at distinct random size-aligned offsets inside
    [start, start+region); sorted."""
    slots = rng.sample(range(region // size), count)
    return sorted((start + s * size, size) for s in slots)


def runs(rng: random.Random, region: int, count: int, run_length: int
         ) -> list[tuple[int, int]]:
    """count contiguous (offset, run_length) runs at random 64 KiB-aligned places
    inside [0, region), one per equal slice of it, so they never touch; sorted."""
    slot = region // count // BITMAP_GRANULARITY * BITMAP_GRANULARITY
    if run_length > slot - BITMAP_GRANULARITY:
        raise ValueError("runs do not fit")
    room = (slot - run_length) // BITMAP_GRANULARITY
    return [(i * slot + rng.randrange(room) * BITMAP_GRANULARITY, run_length)
            for i in range(count)]


# A night's changes in the long-run benchmarks (retention.py, generations.py).
NIGHTLY_SHARE = 0.02
NIGHTLY_RUN = 1 * MIB


def nightly(rng: random.Random, disk: int) -> list[tuple[int, int]]:
    """A night's writes on a disk of disk bytes: NIGHTLY_SHARE of it, half as
    64 KiB writes scattered over the disk, half as NIGHTLY_RUN runs; sorted
    (a 64 KiB write may fall inside a run)."""
    half = round(NIGHTLY_SHARE * disk) // 2
    writes = scattered(rng, disk, half // BITMAP_GRANULARITY)
    writes += runs(rng, disk, half // NIGHTLY_RUN, NIGHTLY_RUN)
    return sorted(writes)


def blocks_of(writes: list[tuple[int, int]], block: int) -> set[int]:
    """The indices of the block-aligned blocks the writes touch."""
    touched: set[int] = set()
    for offset, length in writes:
        touched.update(range(offset // block, (offset + length - 1) // block + 1))
    return touched


def blocks_touched(writes: list[tuple[int, int]], block: int) -> int:
    """Number of distinct block-aligned blocks the writes touch."""
    return len(blocks_of(writes, block))
