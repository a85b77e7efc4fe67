"""The borg-vm benchmark (issue 4), run by `make bench`: one run on this machine,
every figure side by side with its ceiling or baseline, written to
bench/RESULTS.md. Not a test: nothing here asserts a timing.

Scenario: a paused libvirt domain (no OS) with a 4 GiB qcow2 disk holding
2 GiB of incompressible data at offset 0, 512 MiB written as zeros at
2560 MiB and the rest unallocated; "guest writes" are HMP qemu-io commands on
the virtio-blk backend, so QEMU's dirty bitmaps see them. Each measured run
gets a fresh repository where a repeat would dedup; inputs are read once
before they are timed (warm page cache), nothing is dropped from it.

Order matters: a domain has one borg-vm checkpoint at a time (each backup
deletes the older ones), so the full backups into fresh repositories come
first and the incremental chain is started by the last full.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
import report  # noqa: E402
import runner  # noqa: E402
from lab import GIB, KIB, MIB, WORK, Borg, say  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))  # fewer only for a quick try-out
GRAIN = lab.BITMAP_GRANULARITY
CLONE_RUNS = 8
CHAIN_INCREMENTALS = 5


@dataclass(frozen=True)
class Sizes:
    """How many runs of each figure, and the disk they are measured on: data at
    offset 0, zeros written at zero_at, the rest unallocated; the big disk is
    the same twice over."""
    runs: int
    headline_runs: int
    disk: int
    data: int
    zero_at: int
    zero_size: int
    seq_write: int

    @property
    def big_disk(self) -> int:
        return 2 * self.disk

    @property
    def scatter_writes(self) -> int:
        return round(0.02 * self.disk / GRAIN)     # 2% of the disk: 1311 x 64 KiB of 4 GiB

    @property
    def clone_writes(self) -> int:
        return round(0.05 * self.data / GRAIN)     # 5% of its allocated bytes


# The headline comparison (borg-vm full vs import-tar, no encryption) gets two
# more rounds: its ceiling varies by +-1 s from run to run on this machine.
FULL = Sizes(runs=RUNS, headline_runs=RUNS + 2, disk=4 * GIB, data=2 * GIB,
             zero_at=2560 * MIB, zero_size=512 * MIB, seq_write=80 * MIB)
# `--quick`: every figure once, on a disk a quarter the size (fixed costs weigh more).
QUICK = Sizes(runs=1, headline_runs=1, disk=1 * GIB, data=512 * MIB,
              zero_at=640 * MIB, zero_size=128 * MIB, seq_write=20 * MIB)
# The incremental whose fixed cost is broken down: a few scattered writes.
SMALL_INC_WRITES = 16
# The ways borg-vm restores (borg-vm restore options), each against Borg alone.
RESTORE_MODES = {"chain": (), "flatten": ("--flatten",),
                 "flatten_raw": ("--flatten", "--format", "raw"), "layers": ("--layers",)}
CHUNKS = (4 * MIB, 1 * MIB, 256 * KIB, 64 * KIB)
ALIGNMENTS = (0, 1 * MIB, 4 * MIB)
PREDICTED_ALIGNMENTS = (0, 64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB)
ENCRYPTIONS = ("none", "repokey-blake2")
# BENCH_REV=HEAD (any git revision) benchmarks that revision's borg_vm instead of
# the work tree, e.g. while uncommitted work is in progress.
REV = os.environ.get("BENCH_REV")
SOURCE = WORK / "src"


def rotated(items: tuple, i: int) -> tuple:
    """items starting at position i (mod len): round i's running order."""
    k = i % len(items)
    return items[k:] + items[:k]


def size_name(n: int) -> str:
    return f"{n // MIB}M" if n >= MIB else f"{n // KIB}K" if n else "0"


class Bench:
    def __init__(self, sizes: Sizes):
        self.s = sizes
        self.env = lab.borg_env(WORK / "borg-base", SOURCE if REV else None)
        self.borg = Borg(self.env)
        self.lab = lab.Lab()
        self.phases = lab.Phases()
        self.r: dict = {"runs": sizes.runs, "phases": self.phases.rows, "quick": sizes == QUICK,
                        "sizes": {**asdict(sizes), "big_disk": sizes.big_disk,
                                  "scatter_writes": sizes.scatter_writes}}
        self.repos = WORK / "repos"

    # -- helpers ------------------------------------------------------------
    def repo(self, name: str, encryption: str = "none") -> Path:
        return self.borg.init(self.repos / name, encryption)

    def load(self, where: str) -> None:
        """End the current phase (recording how busy the machine was with work not
        ours during it) and start the next one."""
        self.phases.next(where, [p for g in self.lab.guests if (p := lab.qemu_pid(g.name))])

    def full(self, guest: lab.Guest, repo: Path, chunk: int | None = None) -> tuple:
        t, j = lab.borg_vm_backup(self.env, guest.name, repo, chunk=chunk, poll_rss=True)
        if j["level"] != "full":
            raise RuntimeError(f"expected a full backup, got {j['level']}: {j['reason']}")
        return t, j

    def inc(self, guest: lab.Guest, repo: Path, align: int = 0) -> tuple:
        t, j = lab.borg_vm_backup(self.env, guest.name, repo, align=align)
        if j["level"] != "inc":
            raise RuntimeError(f"expected an incremental, got {j['level']}: {j['reason']}")
        return t, j

    # -- setup ----------------------------------------------------------------
    def setup(self) -> None:
        lab.clear_work(WORK, keep=(lab.QUICK.name,))
        WORK.mkdir(parents=True, exist_ok=True)
        self.repos.mkdir()
        if REV:
            self.checkout(REV)
        s = self.s
        say(f"setup: {lab.mib(s.data)} of incompressible data")
        data = WORK / "data.bin"
        hole = lab.make_hole(WORK / "hole.raw", s.disk - s.data)
        lab.make_data(data, s.data)
        # data + hole concatenated = the data at offset 0 of a sparse raw disk
        say(f"setup: {lab.mib(s.disk)} qcow2 ({lab.mib(s.data)} data, {lab.mib(s.zero_size)} "
            f"zero-written, the rest unallocated)")
        self.disk = WORK / "a.qcow2"
        lab.qcow2_from_pieces(self.disk, [data, hole])
        lab.qemu_io(self.disk, f"write -z {s.zero_at} {s.zero_size}")
        self.r["allocated"] = lab.allocated_data(self.disk)
        say(f"setup: clone images and the {lab.mib(s.big_disk)} disk ({lab.mib(2 * s.data)} data)")
        self.clone_disks = {v: WORK / f"clone-{v}.qcow2" for v in ("scattered", "runs")}
        for path in self.clone_disks.values():
            lab.run(["cp", "--reflink=auto", self.disk, path])
        self.big_disk = WORK / "big.qcow2"
        lab.qcow2_from_pieces(self.big_disk, [data, hole, data, hole])
        say("setup: ceiling tar (the members borg-vm writes, same data bytes)")
        self.tar = WORK / "ceiling.tar"
        placeholder = b"<domain/>\n".ljust(4096, b" ")
        self.r["tar_size"] = lab.build_tar(self.tar, [
            ("domain.xml", placeholder), ("checkpoint.xml", placeholder),
            ("disk/vda/0000000000000000", data), ("manifest.json", placeholder)])
        data.unlink()
        hole.unlink()
        say("setup: domains")
        self.a = self.lab.guest([self.disk])
        self.clones = {v: self.lab.guest([p]) for v, p in self.clone_disks.items()}
        self.big = self.lab.guest([self.big_disk])
        say(f"setup: {self.a.name} (vda {lab.mib(s.disk)}), clones "
            f"{', '.join(g.name for g in self.clones.values())}, {self.big.name} "
            f"({lab.mib(s.big_disk)})")
        self.modify_clones()

    def checkout(self, rev: str) -> None:
        """Extract borg_vm as of git revision rev into SOURCE (borg-vm runs from there)."""
        sha = lab.run(["git", "-C", lab.TOP, "rev-parse", "--short", rev]).stdout.decode().strip()
        SOURCE.mkdir()
        archive = lab.run(["git", "-C", lab.TOP, "archive", sha, "borg_vm"]).stdout
        subprocess.run(["tar", "-x", "-C", str(SOURCE)], input=archive, check=True)
        found = subprocess.run([str(lab.VENV_BIN / "python"), "-c",
                                "import borg_vm; print(borg_vm.__file__)"], cwd="/",
                               env=self.env, capture_output=True, text=True).stdout.strip()
        if not found.startswith(str(SOURCE)):
            raise RuntimeError(f"borg-vm would not run from {SOURCE} but from {found!r}")
        self.r["source"] = f"{sha} (BENCH_REV={rev}; the work tree was not used)"
        say(f"setup: borg-vm from revision {rev} = {sha}")

    def modify_clones(self) -> None:
        rng = random.Random(5)
        scattered = lab.scattered(rng, self.s.data, self.s.clone_writes)
        length = self.s.clone_writes // CLONE_RUNS * GRAIN
        contiguous = lab.runs(rng, self.s.data, CLONE_RUNS, length)
        self.r["clone_changes"] = {"scattered": [len(scattered), GRAIN],
                                   "runs": [CLONE_RUNS, length]}
        say(f"clones: {len(scattered)} scattered 64 KiB writes; {CLONE_RUNS} runs of "
            f"{lab.mib(length)}")
        self.clones["scattered"].write_many(scattered, rng, WORK / "src")
        self.clones["runs"].write_many(contiguous, rng, WORK / "src")
        self.r["clone_changed_bytes"] = {"scattered": len(scattered) * GRAIN,
                                         "runs": CLONE_RUNS * length}
        self.r["clone_blocks_touched"] = {
            v: {size_name(c): lab.blocks_touched(w, c) for c in CHUNKS}
            for v, w in (("scattered", scattered), ("runs", contiguous))}

    # -- 1 and 6: full backups against the import-tar ceiling ------------------
    def fulls_vs_ceiling(self, encryption: str, rounds: int, keep_last: bool) -> Path | None:
        """Rounds of: import-tar of the tar file, the same through a pipe, borg-vm
        full, in an order rotated every round (what runs just before a job
        affects it). With keep_last, return the last borg-vm repository."""
        self.load(f"fulls {encryption}")
        lab.warm(self.tar, self.disk)
        res = self.r.setdefault("full", {}).setdefault(encryption, {
            "file": [], "pipe": [], "borg_vm": [], "read": [], "rss": [], "duration": []})
        kept = None
        for i in range(rounds):
            for job in rotated(("file", "pipe", "borg-vm"), i):
                if job != "borg-vm":
                    repo = self.repo(f"ceiling-{job}", encryption)
                    t = self.borg.import_tar(repo, "x", self.tar, pipe=(job == "pipe"))
                    res[job].append(t.seconds)
                    shutil.rmtree(repo)
                    say(f"full {encryption} round {i + 1}: import-tar {job}: {t.seconds:.2f} s")
                    continue
                repo = self.repo(f"full-{encryption}", encryption)
                t, j = self.full(self.a, repo)
                res["borg_vm"].append(t.seconds)
                res["duration"].append(j["duration"])
                res["read"].append(j["disks"]["vda"]["read"])
                res["rss"].append(t.peak_rss)
                say(f"full {encryption} round {i + 1}: borg-vm {t.seconds:.2f} s, read "
                    f"{lab.mib(j['disks']['vda']['read'])}, peak RSS {lab.mib(t.peak_rss)}")
                if keep_last and i == rounds - 1:
                    kept = repo
                else:
                    shutil.rmtree(repo)
        return kept

    # -- 4: chunk sizes and clone dedup --------------------------------------
    def chunk_sizes(self) -> None:
        """Rounds of borg-vm full backups with each chunk size (order rotated every
        round); the first round's repositories then receive the clones."""
        self.load("chunk sizes")
        lab.warm(self.disk)
        res = self.r.setdefault("chunk_full", {})
        first: dict[int, tuple[Path, dict]] = {}
        for i in range(self.s.runs):
            for chunk in rotated(CHUNKS, i):
                repo = self.repo(f"chunk-{size_name(chunk)}")
                t, j = self.full(self.a, repo, chunk)
                res.setdefault(size_name(chunk), []).append(t.seconds)
                say(f"full, chunk {size_name(chunk)}, round {i + 1}: {t.seconds:.2f} s")
                if i == 0:
                    kept = repo.with_name(f"{repo.name}-first")
                    repo.rename(kept)
                    first[chunk] = (kept, j)
                else:
                    shutil.rmtree(repo)
        for chunk, (repo, j) in first.items():
            self.clone_dedup(repo, chunk, j)
            shutil.rmtree(repo)

    def clone_dedup(self, repo: Path, chunk: int, base: dict) -> None:
        """Full backups of both clones into the repository holding the first domain's
        full; record what each adds (borg's deduplicated size)."""
        res = self.r.setdefault("clone", {}).setdefault(size_name(chunk), {})
        base_stats = self.borg.info(repo, base["archive"])
        res["base_deduplicated"] = base_stats["deduplicated_size"]
        for variant, guest in self.clones.items():
            t, j = lab.borg_vm_backup(self.env, guest.name, repo, chunk=chunk)
            stats = self.borg.info(repo, j["archive"])
            res[variant] = {"allocated": j["disks"]["vda"]["data"],
                            "added": stats["deduplicated_size"],
                            "original": stats["original_size"], "seconds": t.seconds}
            say(f"clone {variant}, chunk {size_name(chunk)}: adds "
                f"{lab.mib(stats['deduplicated_size'])} of {lab.mib(j['disks']['vda']['data'])}"
                f" ({t.seconds:.2f} s)")
        to = WORK / "restore-chunk"
        shutil.rmtree(to, ignore_errors=True)
        t, _ = lab.borg_vm_restore(self.env, self.a.name, repo, to, base["checkpoint"],
                                   flatten=True)
        shutil.rmtree(to)
        res["restore_full"] = t.seconds
        say(f"restore of the full backup, chunk {size_name(chunk)}: {t.seconds:.2f} s")

    # -- 2, 3, 5: the incremental chain --------------------------------------
    def scatter(self, rng: random.Random) -> list:
        writes = lab.scattered(rng, self.s.data, self.s.scatter_writes)
        self.a.write_many(writes, rng, WORK / "src")
        return writes

    def inc_round(self, key: str, repo: Path, rng: random.Random, align: int = 0,
                  nightly: Path | None = None, night: int = 0) -> dict:
        writes = self.scatter(rng)
        t, j = self.inc(self.a, repo, align)
        d = j["disks"]["vda"]
        row = {"seconds": t.seconds, "read": d["read"], "dirty": len(writes) * GRAIN,
               "archive": j["archive"], "checkpoint": j["checkpoint"],
               "predicted": {size_name(a): (lab.blocks_touched(writes, a) * a if a
                                            else len(writes) * GRAIN)
                             for a in PREDICTED_ALIGNMENTS}}
        row["stored"] = self.borg.info(repo, j["archive"])["deduplicated_size"]
        self.r.setdefault("inc", {}).setdefault(key, []).append(row)
        say(f"inc {key}: {t.seconds:.2f} s, read {lab.mib(d['read'])} for "
            f"{lab.mib(row['dirty'])} dirty, stored {lab.mib(row['stored'])}")
        if nightly is not None:
            self.a.flush()
            n = self.borg.create_file(nightly, f"night-{night}", self.disk)
            stats = json.loads(n.stdout)["archive"]["stats"]
            self.r.setdefault("nightly", []).append(
                {"seconds": n.seconds, "read": stats["original_size"],
                 "stored": stats["deduplicated_size"]})
            say(f"nightly borg create of the image: {n.seconds:.2f} s, read "
                f"{lab.mib(stats['original_size'])}, stored {lab.mib(stats['deduplicated_size'])}")
        return row

    def repokey_incs(self, repo: Path) -> None:
        self.load("repokey incrementals")
        rng = random.Random(7)
        for _ in range(self.s.runs):
            self.inc_round("scattered repokey-blake2", repo, rng)
        shutil.rmtree(repo)

    def chain(self) -> None:
        self.load("chain")
        main = self.repo("main")
        t, j = self.full(self.a, main)
        self.r["chain_full"] = {"seconds": t.seconds, "archive": j["archive"]}
        say(f"chain: full {t.seconds:.2f} s")
        nightly = self.repo("nightly")
        self.a.flush()
        n = self.borg.create_file(nightly, "night-0", self.disk)
        self.r["nightly_first"] = n.seconds
        say(f"nightly: first night (stores everything) {n.seconds:.2f} s")
        rng = random.Random(4)
        rows = [self.inc_round("scattered", main, rng, nightly=nightly, night=i + 1)
                for i in range(CHAIN_INCREMENTALS)]
        shutil.rmtree(nightly)
        self.restore(main, rows[-1]["checkpoint"],
                     [self.r["chain_full"]["archive"]] + [x["archive"] for x in rows])
        self.fixed_cost(main, rng)
        for _i in range(self.s.runs):
            offset = rng.randrange((self.s.data - self.s.seq_write) // GRAIN) * GRAIN
            self.a.write_many([(offset, self.s.seq_write)], rng, WORK / "src")
            t, j = self.inc(self.a, main)
            d = j["disks"]["vda"]
            self.r["inc"].setdefault("sequential", []).append(
                {"seconds": t.seconds, "read": d["read"], "dirty": self.s.seq_write,
                 "offset": offset})
            say(f"inc sequential {lab.mib(self.s.seq_write)} at {offset}: {t.seconds:.2f} s, read {lab.mib(d['read'])}")
        for align in ALIGNMENTS[1:]:
            for _ in range(self.s.runs):
                self.inc_round(f"scattered align {size_name(align)}", main, rng, align)
        shutil.rmtree(main)

    def restore(self, repo: Path, checkpoint: str, archives: list[str]) -> None:
        """Restore the 5th incremental in every mode (RESTORE_MODES) against Borg alone
        handing out the same archives (export-tar and extract --stdout into
        /dev/null), all in one round, the order rotated every round; and against
        qemu-img convert of the disk as it was at that backup."""
        self.load("restore")
        self.a.flush()
        src, dst = WORK / "src.qcow2", WORK / "dst.qcow2"
        lab.convert_copy(self.disk, src)
        lab.warm(src)
        res = self.r["restore"] = {"convert": [], "convert_flushed": [], "verify": [],
                                   "archives": len(archives)}
        for i in range(self.s.runs):
            res["convert"].append(lab.convert_copy(src, dst))
            res["convert_flushed"].append(lab.convert_copy(src, dst, cache="writeback"))
            say(f"restore run {i + 1}: qemu-img convert {res['convert'][-1]:.2f} s, "
                f"with -t writeback {res['convert_flushed'][-1]:.2f} s")
            # verify reads the same archives (the checkpoint and its chain), writes nothing
            res["verify"].append(lab.timed([lab.BORG_VM, "verify", self.a.name, "--repo", repo,
                                            "--checkpoint", checkpoint, "--json"],
                                           self.env).seconds)
            say(f"restore run {i + 1}: borg-vm verify of the same archives "
                f"{res['verify'][-1]:.2f} s")
            for job in rotated(("export", "extract", *RESTORE_MODES), i):
                t = self.restore_job(job, repo, checkpoint, archives, src, first=(i == 0))
                res.setdefault(job, []).append(t.seconds)
                res.setdefault(f"{job}_cpu", []).append(t.cpu)
                say(f"restore run {i + 1}: {job}: {t.seconds:.2f} s, CPU {t.cpu:.2f} s, "
                    f"load {os.getloadavg()[0]:.2f}")
        res["source_data"] = lab.allocated_data(src)
        src.unlink()
        dst.unlink()

    def restore_job(self, job: str, repo: Path, checkpoint: str, archives: list[str],
                    src: Path, first: bool) -> lab.Timed:
        """Run one job of a restore round: Borg alone over every archive ("export",
        "extract"; their times and CPU summed) or borg-vm restore in a mode, whose
        result is compared with src the first time (outside the timing)."""
        if job in ("export", "extract"):
            ts = [(self.borg.export_tar if job == "export" else self.borg.extract_stdout)(
                repo, a) for a in archives]
            return lab.Timed(sum(t.seconds for t in ts), b"", cpu=sum(t.cpu for t in ts))
        to = WORK / f"restore-{job}"
        shutil.rmtree(to, ignore_errors=True)
        t, j = lab.borg_vm_restore(self.env, self.a.name, repo, to, checkpoint,
                                   options=RESTORE_MODES[job])
        if first:
            res = self.r["restore"]
            top = Path(j["disks"]["vda"]["image"])
            res[f"{job}_identical"] = lab.images_equal(src, top)
            res[f"{job}_images"] = len(j["disks"]["vda"]["chain"])
            say(f"restore {job}: {res[f'{job}_images']} image(s), identical to the source: "
                f"{res[f'{job}_identical']}")
        shutil.rmtree(to)
        return t

    def fixed_cost(self, repo: Path, rng: random.Random) -> None:
        """Incrementals of a few scattered 64 KiB writes with --debug: the time between
        the phase marks (borg_vm/runtime.py) of each, and the wall time around them."""
        self.load("incremental fixed cost")
        runs = self.r["fixed_cost"] = []
        for i in range(self.s.runs):
            writes = lab.scattered(rng, self.s.data, SMALL_INC_WRITES)
            self.a.write_many(writes, rng, WORK / "src")
            t, j = lab.borg_vm_backup(self.env, self.a.name, repo, options=("--debug",))
            if j["level"] != "inc":
                raise RuntimeError(f"expected an incremental, got {j['level']}: {j['reason']}")
            marks = lab.phase_marks(t.stderr.decode(errors="replace"))
            if i == 0:   # for reading the phases closer, in results.json
                self.r["fixed_cost_log"] = t.stderr.decode(errors="replace")
            runs.append({"seconds": t.seconds, "cpu": t.cpu, "marks": marks,
                         "read": j["disks"]["vda"]["read"],
                         "loadavg": round(os.getloadavg()[0], 2)})
            say(f"small incremental {i + 1}: {t.seconds:.2f} s (CPU {t.cpu:.2f} s), read "
                f"{lab.mib(j['disks']['vda']['read'])}; phases at "
                + ", ".join(f"{m} {ms / 1000:.2f}" for m, ms in marks))

    # -- 6: memory with a disk twice as large ------------------------------
    def big_fulls(self) -> None:
        self.load(f"{self.s.big_disk // GIB} GiB fulls")
        lab.warm(self.big_disk)
        res = self.r["big"] = {"rss": [], "seconds": [], "read": []}
        for i in range(self.s.runs):
            repo = self.repo("big")
            t, j = self.full(self.big, repo)
            res["rss"].append(t.peak_rss)
            res["seconds"].append(t.seconds)
            res["read"].append(j["disks"]["vda"]["read"])
            say(f"8 GiB disk full run {i + 1}: {t.seconds:.2f} s, read "
                f"{lab.mib(j['disks']['vda']['read'])}, peak RSS {lab.mib(t.peak_rss)}")
            shutil.rmtree(repo)

    # -- the whole run --------------------------------------------------------
    def run(self) -> None:
        self.setup()
        self.fulls_vs_ceiling("none", self.s.headline_runs, keep_last=False)
        self.chunk_sizes()
        key_repo = self.fulls_vs_ceiling("repokey-blake2", self.s.runs, keep_last=True)
        self.repokey_incs(key_repo)
        self.chain()
        self.big_fulls()
        self.load("end")

    def close(self) -> None:
        self.lab.close()
        lab.clear_work(WORK, keep=("results.json", lab.QUICK.name))


if __name__ == "__main__":
    sys.exit(runner.main(__doc__, f"every figure once, a {QUICK.disk // GIB} GiB disk with "
                                  f"{QUICK.data // MIB} MiB of data",
                         lambda quick: Bench(QUICK if quick else FULL), report.render,
                         "RESULTS", report.summary))
