"""What every case of the fault matrix does, so that a case is a few lines:

    t = target()                # a domain: a good full backup, then guest writes
    result = t.strike(runtime.STREAMING, kill_borg)   # borg-vm stopped at a phase
                                # mark, struck there (by killing borg), let go on
    t.failed(result, "words", "of its error")
    t.next_run()       # incremental on the last good archive (or a full, and why)
    t.check()          # nothing left behind; verify, borg check; every point restores

A run stops at a phase with BORG_VM_TEST_STOP_AT (borg_vm/runtime.py): borg-vm
logs the phase mark and SIGSTOPs itself right there, so a test strikes at
exactly that point and, for a fault of a part around it, lets it go on with
SIGCONT. No sleeps: every wait polls for its event with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from borgvm import BORG, Result, archive_names, backup, read_image, restore_and_compare, run, start
from guest import MIB, poll

from borg_vm import runtime
from borg_vm.format.names import is_partial_of, parse_image_archive_name

LIBVIRTD = "/usr/sbin/libvirtd"
LIBVIRTD_PIDFILE = Path("/run/borg-vm-setup-libvirtd.pid")   # contrib/setup-host.sh's
STOP_TIMEOUT = 120
RUN_TIMEOUT = 300
EXIT_TIMEOUT = 60
WRITE = 2 * MIB      # what each write() of the guest writes
STRIDE = 5           # write() goes this many slots on each time
CHUNK = 256 * 1024   # borg-vm's default chunk size: distinct() data never deduplicates


def process_state(pid: int) -> str | None:
    """Return the state letter of a process (R, S, T for stopped, Z...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_stopped(proc: subprocess.Popen, phase: str) -> None:
    """Wait until borg-vm stopped itself at phase; fail with its output if it ended."""
    poll(lambda: proc.poll() is not None or process_state(proc.pid) == "T", STOP_TIMEOUT,
         f"borg-vm to stop at phase {phase}")
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"borg-vm ended ({proc.returncode}) before phase {phase}:\n"
                             f"{out}\n{err}")


def children(pid: int) -> list[int]:
    """Return the pids of a process's children."""
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in Path(task).read_text().split()]
    return found


def kill_borg(proc: subprocess.Popen) -> None:
    """SIGKILL the borg that borg-vm runs now."""
    (borg,) = children(proc.pid)
    os.kill(borg, signal.SIGKILL)


def processes_naming(text: str, program: str) -> list[str]:
    """Return the command lines of running `program` processes whose argv holds text."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = Path(cmdline).read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(os.path.basename(a) == program for a in argv[:2]) and any(text in a for a in argv):
            found.append(" ".join(argv))
    return found


@contextlib.contextmanager
def small_fs(path: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of size bytes at path (made) for the block."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(fs: Path, leave: int) -> Path:
    """Fill the file system at fs up to `leave` free bytes; return the filler file."""
    st = os.statvfs(fs)
    filler = fs / "filler"
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize - leave), str(filler)],
                   check=True)
    return filler


def difference(actual: bytes, expected: bytes) -> tuple[int, int]:
    """Return how a restored disk differs from what the guest saw: (bytes that differ,
    the offset of the first)."""
    wrong = abs(len(actual) - len(expected)) + sum(a != b for a, b in zip(actual, expected))
    at = next(i for i, (a, b) in enumerate(zip(actual + b"\0", expected + b"\1")) if a != b)
    return wrong, at


def restart_libvirtd(conn, domain) -> None:
    """Restart the libvirt daemon contrib/setup-host.sh started (SIGTERM, then started
    the same way) and give the domain a handle on the new connection; skip (a
    failure under CI) if this machine's daemon is not that one."""
    try:
        pid = int(LIBVIRTD_PIDFILE.read_text())
        ours = Path(f"/proc/{pid}/exe").resolve() == Path(LIBVIRTD).resolve()
    except (OSError, ValueError):
        ours = False
    if not ours:
        pytest.skip(f"libvirtd was not started by contrib/setup-host.sh ({LIBVIRTD_PIDFILE})")
    uuid = domain.dom.UUIDString()
    os.kill(pid, signal.SIGTERM)
    poll(lambda: process_state(pid) in (None, "Z"), EXIT_TIMEOUT, "libvirtd to exit")
    subprocess.run([LIBVIRTD, "--daemon", "--pid-file", str(LIBVIRTD_PIDFILE)], check=True)
    poll(lambda: subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                                capture_output=True).returncode == 0,
         EXIT_TIMEOUT, "libvirtd to answer again")
    domain.dom = conn.lookupByUUIDString(uuid)


class Target:
    """A test domain, its repository, and its good backups with the guest's view at
    each: what every restore point must give back, bit for bit."""

    def __init__(self, domain, repo: str, tmp_path: Path, record: dict,
                 args: tuple[str, ...] = (), scratch: Path | None = None):
        self.d = domain
        self.repo = repo
        self.tmp = tmp_path
        self.record = record
        self.args = args + (("--scratch-dir", str(scratch)) if scratch else ())
        self.scratch = scratch
        self.good: list[dict] = []
        self.views: list[dict[str, bytes]] = []
        self.pending: dict[str, bytes] | None = None   # the guest's view when a run began
        self._writes = 0
        self._runs: list[subprocess.Popen] = []

    @property
    def name(self) -> str:
        return self.d.name

    def write(self, length: int = WRITE) -> None:
        """Make the guest write length bytes of a new pattern, somewhere new (the disk
        cut in slots of length, taken by a stride prime to their number)."""
        i = self._writes
        self._writes += 1
        slots = self.d.sizes["vda"] // length
        self.d.write("vda", (i * STRIDE % slots) * length, length, 0x40 + i)

    def distinct(self, offset: int, length: int) -> None:
        """Make the guest write a different pattern into each chunk of the range, so
        that none of it deduplicates (nor, with --compression none, compresses)."""
        for i, at in enumerate(range(offset, offset + length, CHUNK)):
            self.d.write("vda", at, CHUNK, 1 + i % 255)

    def backup(self, *extra: str, env: dict | None = None, code: int = 0) -> dict:
        """Run a backup that must succeed (exit code: 1 if it must warn); remember it
        and the view it holds."""
        view = self.d.views()
        result = backup(self.name, self.repo, *self.args, *extra, env=env, code=code)
        self.took(result, view)
        return result

    def took(self, result: dict, view: dict[str, bytes]) -> None:
        """Remember a good backup and the guest's view it holds."""
        self.good.append(result)
        self.views.append(view)

    def start(self, *extra: str, stop_at: str | None = None,
              env: dict | None = None) -> subprocess.Popen:
        """Start a backup (stopped at phase stop_at, if given) whose archive, if it gets a
        final name, must hold the guest's view now."""
        self.pending = self.d.views()
        env = dict(os.environ if env is None else env)
        if stop_at:
            env[runtime.STOP_AT_ENV] = stop_at
        proc = start("backup", self.name, "--repo", self.repo, "--json", *self.args, *extra,
                     env=env)
        self._runs.append(proc)
        if stop_at:
            wait_stopped(proc, stop_at)
        return proc

    def strike(self, phase: str, fault, *extra: str, env: dict | None = None,
               code: int | None = 2) -> Result:
        """Start a backup stopped at phase, call fault(proc) there, let the run go on
        and wait for it; return its Result, its exit code asserted (None: any)."""
        proc = self.start(*extra, stop_at=phase, env=env)
        fault(proc)
        proc.send_signal(signal.SIGCONT)
        return self.finish(proc, code)

    def end_runs(self) -> None:
        """SIGKILL the runs start() started that still run (or stopped at a phase)."""
        for proc in self._runs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def finish(self, proc: subprocess.Popen, code: int | None) -> Result:
        """Wait for a started run; assert its exit code (None: any) and return its Result."""
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        if code is not None:
            assert proc.returncode == code, f"exited {proc.returncode}, not {code}:\n{out}\n{err}"
        return Result(proc.returncode, out, err)

    def succeeded(self, result: Result) -> dict:
        """Assert a started run made a good backup, of the view from when it began."""
        assert result.code == 0, result
        (doc,) = result.json_lines()
        self.took(doc, self.pending)
        self.record["did"] = f"exit 0: {doc['level']} backup {doc['archive']}"
        return doc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL borg-vm (stopped or running) and reap it."""
        proc.kill()
        self.finish(proc, -signal.SIGKILL)
        self.record["did"] = "killed: it can say nothing"

    def failed(self, result: Result, *words: str) -> str:
        """Assert a run failed as it should: exit 2, its last line borg-vm's own error
        with the words, no traceback, and on stdout nothing or (backup --json, a
        failure of the domain's own) only that error as its failure object; return
        that line."""
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.code == 2, result
        assert lines and lines[-1].startswith("borg-vm: "), result.stderr
        if result.stdout:
            assert result.json_lines() == [{
                "domain": self.name, "exit_code": 2,
                "error": lines[-1].removeprefix(f"borg-vm: {self.name}: ")}], result.stdout
        assert "Traceback" not in result.stderr, result.stderr
        for w in words:
            assert w in lines[-1], lines[-1]
        self.record["did"] = f"exit 2: {lines[-1].removeprefix('borg-vm: ')}"
        return lines[-1]

    def adopt(self) -> None:
        """After a fault: a run that gave its archive the final name before it was struck
        made a restore point, which must hold the view from when it began."""
        listed = run("list", "--repo", self.repo, "--json").json()["archives"]
        new = [a for a in listed if a["domain"] == self.name
               and a["name"] not in {g["archive"] for g in self.good}]
        assert len(new) <= 1, new
        for doc in new:
            self.took({"archive": doc["name"], "checkpoint": doc["checkpoint"]}, self.pending)

    def next_run(self, level: str = "inc", reason: str | None = None, code: int = 0) -> dict:
        """Run the next backup after the fault: an incremental on top of the last good
        archive, or (level "full") a full whose reason says reason; code 1 if it must
        warn (a full instead of the incremental it planned)."""
        poll(lambda: not self._processes(), EXIT_TIMEOUT, "the struck run's processes to end")
        self.adopt()
        self.record["left"] = ", ".join(self.leftovers()) or "nothing"
        last = self.good[-1]["archive"] if self.good else None
        self.write()
        result = self.backup(code=code)
        assert result["level"] == level, result["reason"]
        if level == "inc":
            listed = run("list", self.name, "--repo", self.repo, "--json").json()["archives"]
            assert listed[-1]["parent"] == last, (listed[-1], last)
            self.record["next"] = "incremental on the last good archive"
        else:
            assert reason in result["reason"], result["reason"]
            self.record["next"] = f"full: {result['reason']}"
        return result

    def _processes(self) -> list[str]:
        """Return the qemu-nbd and borg processes working on this test's files, and
        the nbdfuse processes and mounts of this domain's Borg 2 backups (their
        files are borg-vm-image.DOMAIN.* directories of their own), not those of
        other tests that may run meanwhile."""
        images = f"/borg-vm-image.{self.name}."
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if images in line.split()[1]]
        return (processes_naming(str(self.tmp), "qemu-nbd") + processes_naming(self.repo, "borg")
                + processes_naming(images, "nbdfuse") + mounts)

    def leftovers(self) -> list[str]:
        """Return what runs left behind, one kind each: job, checkpoints, run
        directory and lock, scratch files, partial archives, processes."""
        found = []
        if self.d.dom.isActive():
            with contextlib.suppress(libvirt.libvirtError):
                self.d.dom.backupGetXMLDesc()
                found.append("backup job")
        checkpoints = [c.getName() for c in self.d.dom.listAllCheckpoints()]
        if checkpoints != [g["checkpoint"] for g in self.good[-1:]]:
            found.append(f"checkpoints {', '.join(sorted(checkpoints))}")
        found += [f"{os.path.basename(p)} in {runtime.base_dir()}" for p in
                  glob.glob(os.path.join(runtime.base_dir(), f"{self.d.dom.UUIDString()}.*"))]
        if self.scratch:
            found += [f"scratch file {p.name}" for p in self.scratch.iterdir()]
        names = self._archive_names()
        found += [f"partial archive {n}" for n in names if is_partial_of(n, self.name)]
        found += [f"image archive {n} without its record" for n in names
                  if (image := parse_image_archive_name(n)) is not None
                  and image[0].domain == self.name and str(image[0]) not in names]
        return found + self._processes()

    def _borg(self, command: str, *args: str) -> list[str]:
        """The argv of a borg command on the repository, in the repository's
        generation: Borg 2 where borg-vm is pointed at it ($BORG_VM_BORG)."""
        borg2 = os.environ.get("BORG_VM_BORG")
        if borg2:
            return [borg2, "-r", self.repo, command, *args]
        return [BORG, command, *args, self.repo]

    def _archive_names(self) -> list[str]:
        """Every archive's name (Borg 1's checkpoint archives too)."""
        if not os.environ.get("BORG_VM_BORG"):
            return archive_names(self.repo)
        out = subprocess.run(self._borg("repo-list", "--json"), check=True,
                             capture_output=True, text=True).stdout
        return [a["name"] for a in json.loads(out)["archives"]]

    def check(self, every: bool = True) -> None:
        """Nothing left behind; every archive verifies, the repository checks, and every
        good restore point restores bit for bit (not every: only the newest, and the
        caller verifies and checks the repository)."""
        left = self.leftovers()
        assert left == [], left
        if every:
            run("verify", self.name, "--all", "--repo", self.repo)
            subprocess.run(self._borg("check"), check=True, capture_output=True)
        restored = self.tmp / f"restored-{self.name}-{len(self.good)}"
        restored.mkdir()
        if every:
            points, lost = self.restore_points(restored)
            assert lost == {} and points == len(self.good), (points, lost)
            self.record["lost"] = (f"nothing: {points} restore points verified and restored "
                                   "bit for bit")
        # The newest flattened too: a fault strikes archives, not the restore modes.
        restore_and_compare(self.name, self.repo, self.good[-1]["checkpoint"], self.views[-1],
                            restored, "flat", "--flatten")

    def restore_points(self, into: Path) -> tuple[int, dict[str, tuple[int, int]]]:
        """Restore every good point, each chain once, through its newest point: a chain
        restore writes an image per archive, and the image of archive i reads as the
        disk did at i. Return (points compared with the guest's views, {"checkpoint disk":
        (bytes that differ, first offset)} for every one that differs)."""
        views = {g["checkpoint"]: v for g, v in zip(self.good, self.views)}
        compared, lost = set(), {}
        for newest in reversed(self.good):
            if newest["checkpoint"] in compared:
                continue
            doc = run("restore", self.name, "--repo", self.repo, "--checkpoint",
                      newest["checkpoint"], "--to", str(into / newest["checkpoint"]),
                      "--json", "--no-progress").json()
            for target, disk in doc["disks"].items():
                for image in disk["chain"]:
                    checkpoint = Path(image).name.split(".")[-2]
                    if checkpoint in views:
                        compared.add(checkpoint)
                        actual, expected = read_image(image, into), views[checkpoint][target]
                        if actual != expected:
                            lost[f"{checkpoint} {target}"] = difference(actual, expected)
        return len(compared), lost
