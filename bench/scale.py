"""Disks the size users have (issue #11), run by `make bench-scale`: a 1 TiB
fragmented qcow2, every figure beside its target, written to bench/SCALE.md.
Not a test: nothing here asserts a timing.

Scenario: two paused libvirt domains (no OS), each with a 1 TiB qcow2 disk
holding the same 6.1 GiB of incompressible data (100,000 x 64 KiB):

- *fragmented*: one 64 KiB extent at a random slot of each of 100,000 equal
  stripes of the disk, none touching another (tests/e2e/fragments.py), built
  offline through qemu-nbd without writing the holes;
- *contiguous*: the same bytes as one range at offset 0, the reference.

Measured: mapping and planning (from `borg-vm --debug` time stamps: job
started -> block status read), with QEMU's own share alone (`nbdinfo --map`
over `qemu-nbd`); full backups of both (alternating, fresh repositories);
the manifest and Borg's metadata per 100,000 extents; an incremental after
1% of the extents were rewritten with fresh bytes; restores of that chain
(chained and `--flatten`) beside `borg export-tar` of the same archives, and
whether a restored image holds data exactly where the disk did; `verify`.
Peak RSS is borg-vm's own process (VmHWM), polled.

SCALE_DISK_GIB, SCALE_EXTENTS and SCALE_RUNS shrink it for a try-out (the
report says which sizes it ran with).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fragments  # noqa: E402  (tests/e2e, on the path lab.py set)
import lab  # noqa: E402
import runner  # noqa: E402
from lab import BORG, BORG_VM, GIB, KIB, MIB, WORK, say, timed  # noqa: E402

from borg_vm import runtime  # noqa: E402  (its phase marks)
from borg_vm.format.names import BLOCK_SIZE  # noqa: E402

DISK = int(os.environ.get("SCALE_DISK_GIB", "1024")) * GIB
EXTENTS = int(os.environ.get("SCALE_EXTENTS", "100000"))
RUNS = int(os.environ.get("SCALE_RUNS", "2"))
EXTENT = 64 * KIB
REWRITES = EXTENTS // 100
MAP_RUNS = 3
DIR = WORK / "scale"
OUT = lab.BENCH / "SCALE.md"
PER = 100_000     # metadata is reported per this many extents

TARGET_MAP_SECONDS = 2.0
TARGET_RSS = 200 * MIB
TARGET_FULL_RATIO = 1.2
TARGET_READ_RATIO = 1.0
TARGET_RESTORE_RATIO = 1.2   # issue #11's restore target, as bench/bench.py's section 5

_STAMP = re.compile(r"^borg-vm:\s+(\d+) ms (.*)$")


def debug_seconds(stderr: bytes, start: str, end: str) -> float:
    """Seconds between the first --debug lines containing start and end."""
    stamps = {}
    for line in stderr.decode(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m:
            for key in (start, end):
                if key in m[2] and key not in stamps:
                    stamps[key] = int(m[1])
    return (stamps[end] - stamps[start]) / 1000


def mapping_seconds(t: lab.Timed) -> float:
    return debug_seconds(t.stderr, f"phase {runtime.JOB_STARTED}:", "block status read")


class Scale:
    def __init__(self):
        self.env = lab.borg_env(WORK / "borg-base")
        self.borg = lab.Borg(self.env)
        self.r: dict = {"disk": DISK, "extents": EXTENTS, "extent": EXTENT, "runs": RUNS,
                        "rewrites": REWRITES}
        self.lab: lab.Lab | None = None

    # -- setup ----------------------------------------------------------------
    def setup(self) -> None:
        shutil.rmtree(DIR, ignore_errors=True)
        DIR.mkdir(parents=True)
        rng = random.Random(11)
        self.layout = [(o, EXTENT) for o in fragments.spread(DISK, EXTENTS, EXTENT, rng)]
        self.index = {o: i for i, (o, _) in enumerate(self.layout)}
        data = DIR / "data.bin"
        say(f"setup: {lab.mib(EXTENTS * EXTENT)} of incompressible data")
        lab.make_data(data, EXTENTS * EXTENT)
        self.data = open(data, "rb")
        self.frag, self.contig = DIR / "fragmented.qcow2", DIR / "contiguous.qcow2"
        say(f"setup: {DISK // GIB} GiB qcow2, {EXTENTS} extents of 64 KiB spread over it")
        fragments.create_qcow2(self.frag, DISK, EXTENT)
        fragments.write_extents(self.frag, "qcow2", self.layout,
                                lambda o, n: os.pread(self.data.fileno(), n,
                                                      self.index[o] * EXTENT))
        say(f"setup: {DISK // GIB} GiB qcow2, the same bytes as one range")
        fragments.create_qcow2(self.contig, DISK, EXTENT)
        fragments.write_extents(self.contig, "qcow2",
                                [(i * EXTENT, EXTENT) for i in range(EXTENTS)],
                                lambda o, n: os.pread(self.data.fileno(), n, o))
        self.r["allocated"] = {"fragmented": len(fragments.data_ranges(self.frag)),
                               "contiguous": len(fragments.data_ranges(self.contig))}
        self.r["qemu_map_seconds"] = {name: self.qemu_map(image) for name, image in
                                      (("fragmented", self.frag), ("contiguous", self.contig))}

    def qemu_map(self, image: Path) -> float:
        """QEMU's own share of mapping: `nbdinfo --map` of the image over qemu-nbd."""
        times = [timed(["nbdinfo", "--map", "--", "[", "qemu-nbd", "-r", "-f", "qcow2",
                        image, "]"], discard_stdout=True).seconds for _ in range(MAP_RUNS)]
        return round(statistics.median(times), 2)

    # -- backups ----------------------------------------------------------------
    def backup(self, guest: lab.Guest, repo: Path, level: str) -> tuple[lab.Timed, dict]:
        t, j = lab.borg_vm_backup(self.env, guest.name, repo, chunk=BLOCK_SIZE, poll_rss=True,
                                  options=("--level", level, "--debug"))
        return t, j

    def fulls(self) -> None:
        self.r["full"] = {"fragmented": [], "contiguous": []}
        for run in range(RUNS):
            order = [("fragmented", self.gf), ("contiguous", self.gc)]
            for name, guest in (order if run % 2 == 0 else order[::-1]):
                repo = self.borg.init(DIR / f"repo-{name}", "none")
                say(f"full backup, {name}, run {run + 1}/{RUNS}")
                t, j = self.backup(guest, repo, "full")
                self.r["full"][name].append({
                    "seconds": round(t.seconds, 2), "map_seconds": mapping_seconds(t),
                    "peak_rss": t.peak_rss, "data": j["disks"]["vda"]["data"],
                    "archive": j["archive"], "checkpoint": j["checkpoint"]})
        for name in ("fragmented", "contiguous"):   # the last run's repositories stay
            self.r[f"archive_{name}"] = self.archive_stats(DIR / f"repo-{name}",
                                                           self.r["full"][name][-1]["archive"])

    def archive_stats(self, repo: Path, archive: str) -> dict:
        """Manifest size and extents, members, and Borg's bytes beyond the data."""
        manifest = lab.run([BORG, "extract", "--stdout", f"{repo}::{archive}", "manifest.json"],
                           env=self.env).stdout
        extents = sum(len(d["extents"]) for d in json.loads(manifest)["disks"].values())
        members = lab.run([BORG, "list", "--short", f"{repo}::{archive}"],
                          env=self.env).stdout.count(b"\n")
        stats = self.borg.info(repo, archive)
        stored = sum(f.stat().st_size for f in (repo / "data").rglob("*") if f.is_file())
        return {"manifest_bytes": len(manifest), "extents": extents, "members": members,
                "compressed": stats["compressed_size"], "repo_data_bytes": stored,
                "borg_metadata": stored - stats["compressed_size"]}

    def incremental(self) -> None:
        rng = random.Random(12)
        offsets = fragments.scattered([o for o, _ in self.layout], REWRITES, rng)
        say(f"rewriting {REWRITES} extents (1%) with fresh bytes")
        self.gf.write_many([(o, EXTENT) for o in offsets], rng, DIR / "writes")
        self.gf.flush()
        repo = DIR / "repo-fragmented"
        say("incremental backup, fragmented")
        t, j = self.backup(self.gf, repo, "inc")
        self.r["inc"] = {"seconds": round(t.seconds, 2), "map_seconds": mapping_seconds(t),
                         "peak_rss": t.peak_rss, "read": j["disks"]["vda"]["read"],
                         "dirty": REWRITES * EXTENT, "archive": j["archive"],
                         "checkpoint": j["checkpoint"]}

    # -- restore and verify ------------------------------------------------------
    def restores(self) -> None:
        repo = DIR / "repo-fragmented"
        self.r["restore"] = {}
        for mode, extra in (("chain", ()), ("flatten", ("--flatten",)),
                            ("flatten raw", ("--flatten", "--format", "raw"))):
            to = DIR / f"restore-{mode}"
            shutil.rmtree(to, ignore_errors=True)
            say(f"restore {mode}")
            t = timed([BORG_VM, "restore", self.gf.name, "--repo", repo, "--to", to,
                       "--checkpoint", self.r["inc"]["checkpoint"], "--json", "--no-progress",
                       *extra], self.env, poll_rss=True)
            image = Path(json.loads(t.stdout)["disks"]["vda"]["image"])
            same = lab.images_equal(image, self.frag)
            sparse = fragments.data_ranges(image) == fragments.data_ranges(self.frag)
            self.r["restore"][mode] = {"seconds": round(t.seconds, 2), "cpu": round(t.cpu, 2),
                                       "peak_rss": t.peak_rss, "same": same,
                                       "same_allocation": sparse}
            shutil.rmtree(to)
        export = extract = 0.0
        for archive in (self.r["full"]["fragmented"][-1]["archive"], self.r["inc"]["archive"]):
            export += self.borg.export_tar(repo, archive).seconds
            extract += self.borg.extract_stdout(repo, archive).seconds
        self.r["export_tar_seconds"] = round(export, 2)
        self.r["extract_stdout_seconds"] = round(extract, 2)
        say("verify")
        t = timed([BORG_VM, "verify", self.gf.name, "--repo", repo, "--json"], self.env,
                  poll_rss=True)
        self.r["verify"] = {"seconds": round(t.seconds, 2), "peak_rss": t.peak_rss,
                            "ok": json.loads(t.stdout)["ok"]}

    # -- the run ----------------------------------------------------------------
    def run(self) -> None:
        started = datetime.now(UTC)
        self.setup()
        self.lab = lab.Lab()
        try:
            self.gf, self.gc = self.lab.guest([self.frag]), self.lab.guest([self.contig])
            self.fulls()
            self.incremental()
            self.restores()
        finally:
            self.lab.close()
            self.data.close()
            shutil.rmtree(DIR, ignore_errors=True)   # tens of GB of images and repositories
        self.r["started"] = started.strftime("%Y-%m-%d %H:%M UTC")
        self.r["minutes"] = round((datetime.now(UTC) - started).seconds / 60, 1)
        (WORK / "scale-results.json").write_text(json.dumps(self.r, indent=1))
        OUT.write_text(render(self.r))
        say(f"wrote {OUT}")


# -- the report ------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(r: dict) -> str:
    full = {k: statistics.median(x["seconds"] for x in v) for k, v in r["full"].items()}
    ratio = full["fragmented"] / full["contiguous"]
    maps = [x["map_seconds"] for x in r["full"]["fragmented"]]
    rss = {"full": max(x["peak_rss"] for x in r["full"]["fragmented"]),
           "incremental": r["inc"]["peak_rss"],
           "restore (chain)": r["restore"]["chain"]["peak_rss"],
           "restore (flatten)": r["restore"]["flatten"]["peak_rss"],
           **({"restore (flatten raw)": r["restore"]["flatten raw"]["peak_rss"]}
              if "flatten raw" in r["restore"] else {}),
           "verify": r["verify"]["peak_rss"]}
    arc, ref = r["archive_fragmented"], r["archive_contiguous"]
    per = PER / r["extents"]
    read_ratio = r["inc"]["read"] / r["inc"]["dirty"]
    # Borg alone: the faster of export-tar and extract --stdout of both archives
    borg_alone = min(r["export_tar_seconds"], r.get("extract_stdout_seconds", float("inf")))
    lines = [
        "# Disks the size users have (issue #11)",
        "",
        f"`make bench-scale`, {r['started']}, {r['minutes']} minutes: a "
        f"{r['disk'] // GIB} GiB qcow2 with {r['extents']:,} separate 64 KiB extents spread "
        f"over it ({lab.mib(r['extents'] * r['extent'])} of incompressible data), beside the "
        f"same bytes as one range; {r['runs']} full backups of each, alternating. "
        "See bench/scale.py for the scenario. Borg alone, the restores' reference: the "
        f"faster of `borg export-tar` ({r['export_tar_seconds']:.1f} s) and `borg extract "
        f"--stdout` ({r.get('extract_stdout_seconds', '-')} s) of both archives into /dev/null.",
        "",
        "| figure | measured | target | verdict |",
        "|---|---|---|---|",
        f"| mapping + planning, full (borg-vm, median) | {statistics.median(maps):.2f} s "
        f"(QEMU alone, `nbdinfo --map`: {r['qemu_map_seconds']['fragmented']:.2f} s) "
        f"| < {TARGET_MAP_SECONDS:.0f} s | {verdict(statistics.median(maps) < TARGET_MAP_SECONDS)} |",
        f"| mapping + planning, incremental | {r['inc']['map_seconds']:.2f} s "
        f"| < {TARGET_MAP_SECONDS:.0f} s | {verdict(r['inc']['map_seconds'] < TARGET_MAP_SECONDS)} |",
        f"| full backup, fragmented / contiguous | {full['fragmented']:.1f} s / "
        f"{full['contiguous']:.1f} s = {ratio:.2f} x | <= {TARGET_FULL_RATIO} x "
        f"| {verdict(ratio <= TARGET_FULL_RATIO)} |",
        f"| incremental after 1% scattered rewrites: read / dirty | "
        f"{lab.mib(r['inc']['read'])} / {lab.mib(r['inc']['dirty'])} = {read_ratio:.2f} x "
        f"({r['inc']['seconds']:.1f} s) | {TARGET_READ_RATIO} x "
        f"| {verdict(read_ratio == TARGET_READ_RATIO)} |",
        *(f"| peak RSS of borg-vm, {what} | {lab.mib(v)} | < {lab.mib(TARGET_RSS)} "
          f"| {verdict(v < TARGET_RSS)} |" for what, v in rss.items()),
        *(f"| restore of full + incremental, {mode} | {x['seconds']:.1f} s"
          + (f" (CPU {x['cpu']:.1f} s)" if "cpu" in x else "")
          + f", {x['seconds'] / borg_alone:.1f} x Borg alone | <= {TARGET_RESTORE_RATIO} x "
          f"| {verdict(x['seconds'] / borg_alone <= TARGET_RESTORE_RATIO)} |"
          for mode, x in r["restore"].items()),
        "| restored images equal the disk; data exactly where it had data | "
        + "; ".join(f"{mode}: {x['same']}, {x['same_allocation']}"
                    for mode, x in r["restore"].items())
        + f" | yes | {verdict(all(v for m in r['restore'].values() for v in (m['same'], m['same_allocation'])))} |",
        f"| verify of the chain | {r['verify']['seconds']:.1f} s, ok: {r['verify']['ok']} "
        f"| ok | {verdict(r['verify']['ok'])} |",
        "",
        "Archive metadata of the fragmented full, also per 100,000 of its data extents "
        "(the contiguous full for reference; format 2 wrote one member per data extent):",
        "",
        "| | fragmented | per 100,000 extents | contiguous |",
        "|---|---|---|---|",
        f"| extents in the manifest (data and zero) | {arc['extents']:,} "
        f"| {arc['extents'] * per:,.0f} | {ref['extents']:,} |",
        f"| manifest.json | {lab.mib(arc['manifest_bytes'])} | "
        f"{lab.mib(arc['manifest_bytes'] * per)} | {lab.mib(ref['manifest_bytes'])} |",
        f"| tar members (Borg items) | {arc['members']:,} | {arc['members'] * per:,.0f} "
        f"| {ref['members']:,} |",
        f"| Borg's bytes beyond the data (repository data files - compressed data) "
        f"| {lab.mib(arc['borg_metadata'])} | {lab.mib(arc['borg_metadata'] * per)} "
        f"| {lab.mib(ref['borg_metadata'])} |",
        "",
        "Full backups, each run (seconds, mapping seconds, peak RSS):",
        "",
        *(f"- {name}: " + ", ".join(f"{x['seconds']} s / {x['map_seconds']} s / "
                                    f"{lab.mib(x['peak_rss'])}" for x in runs)
          for name, runs in r["full"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    runner.arguments(__doc__)   # --help, and no unknown option starts a long run
    Scale().run()
