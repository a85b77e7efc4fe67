"""Living with a VM for 90 nights (issue 9), run by `make bench-retention`:
what `--full-every` costs and buys, measured, written to bench/RETENTION.md;
under both Borg generations side by side (issue 22): Borg 1.4's chains and
Borg 2's complete images (bench/repos.py), each against the storage floor.

A scaled-down hypervisor: per generation one paused domain without OS whose
1 GiB qcow2 disk is full of incompressible data (1/100 of the README's 100 GiB
disk; the two start as copies of one image), and each "night" both guests
rewrite the same 2% of it with fresh incompressible bytes (lab.nightly: half
as 64 KiB writes scattered over the disk, half as 1 MiB runs), then the
nightly job runs what contrib/systemd/borg-vm@.service runs: `borg-vm
backup` (the generation's default chunk size: 256 KiB for Borg 1.4, 64 KiB
for Borg 2) with the default `--full-every 30d` (a new chain for Borg 1.4, a
full read for Borg 2) and `borg-vm prune --keep-daily 7 --keep-weekly 4
--keep-monthly 6`. The generations take turns going first. The nights are
24 h apart on a fake clock (libfaketime on borg-vm: archive names and times,
checkpoint names, the age `--full-every` compares, the `now` prune counts
from; Borg runs on the real clock, given each archive's time by borg-vm),
so 90 nights take minutes. Each repository is compacted and measured
every 7th night, around every 30th and on every full.

Bytes read are borg-vm's (its --json `read`: the data its map asks for) and
the guest's QEMU's (rchar of /proc/PID/io while the backup ran: what was read
from the disk image, Borg 2's own reads through nbdfuse included).

The floor is the distinct data of the restore points the rules keep after
the last night: the bench knows which 64 KiB blocks each night rewrote, so
it counts the distinct (block, night last written) pairs over those points.

Then restores of the oldest and the newest kept point of each repository;
and, for Borg 1.4, on the chain of the first 30 nights kept aside before
prune could touch it: `borg-vm restore --flatten` and chain restores of the
restore points at several chain lengths, to put restore time against chain
length (the price of never starting a new chain).

Sizes scale by SCALE to the README's example; times do not (Borg's fixed cost
per archive does not shrink with the disk), so the report fits restore time =
fixed + per-archive x links + per-byte x bytes read, and extrapolates with
that fit, saying so.

`--quick` (or RETENTION_NIGHTS other than 90) is a try-out: a 256 MiB disk,
RETENTION_NIGHTS nights (default 10), into bench/work/quick/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
import repos  # noqa: E402
from lab import BITMAP_GRANULARITY, BORG_VM, GIB, MIB, WORK, say, timed  # noqa: E402
from report import met, table  # noqa: E402

SCALE = 100                        # 1 GiB here stands for the README's 100 GiB
NIGHTS = 90
FULL_EVERY = "30d"
KEEP = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6"]
START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
RESTORE_RUNS = 3
SEED = 9
FLOOR_TARGET = 1.1      # Borg 2's repository after prune: at most this x the floor
FLOOR_ESTIMATE = 2.55   # issue 22's estimate of the floor, x the disk
NEEDED_BY = "needed by "   # prune's reason for an archive kept only for a chain


@dataclass(frozen=True)
class Setup:
    disk: int
    nights: int
    dir: Path
    out: Path
    quick: bool

    @property
    def nightly(self) -> int:
        return round(lab.NIGHTLY_SHARE * self.disk)

    @property
    def kept(self) -> Path:
        """Borg 1.4's repository as it was on the first chain's last night."""
        return self.dir / "first-chain"

    @property
    def chain_points(self) -> tuple[int, ...]:
        """The incrementals on the first full whose restores are timed."""
        return tuple(k for k in (0, 7, 14, 21, 29) if k < self.nights)


def setup_of(quick: bool) -> Setup:
    """The full run, or with --quick or RETENTION_NIGHTS a try-out into QUICK."""
    nights = int(os.environ.get("RETENTION_NIGHTS", "10" if quick else str(NIGHTS)))
    if quick or nights != NIGHTS:
        return Setup(256 * MIB, nights, lab.QUICK / "retention", lab.QUICK / "RETENTION.md",
                     True)
    return Setup(1 * GIB, nights, WORK / "retention", lab.BENCH / "RETENTION.md", False)


FAKETIME_VARIABLES = ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC")
REAL_SLEEP = lab.BENCH / "realsleep.c"


def fake_clock(env: dict, where: Path, gen: repos.Generation) -> dict:
    """env in which borg-vm runs on a fake clock (set by at()) and gen's borg on
    the real one (real_clock), monotonic sleeps kept real (REAL_SLEEP, built
    into where)."""
    shim = where / "realsleep.so"
    if not shim.exists():
        lab.run(["cc", "-shared", "-fPIC", "-O2", "-o", shim, REAL_SLEEP, "-ldl"])
    return dict(env, LD_PRELOAD=f"{shim} {FAKETIME_LIB}", FAKETIME_DONT_FAKE_MONOTONIC="1",
                TZ="UTC", BORG_VM_BORG=str(real_clock(gen, where)))


def at(env: dict, when: datetime) -> dict:
    """env (from fake_clock) in which borg-vm sees `when` as the time now."""
    return dict(env, FAKETIME="@" + when.strftime("%Y-%m-%d %H:%M:%S"))


def real_clock(gen: repos.Generation, where: Path) -> Path:
    """Write and return a borg for BORG_VM_BORG that runs gen's borg on the real
    clock: borg-vm gives Borg each archive's time itself (--timestamp), and a
    Borg that saw the fake clock would see the repository's manifest go back
    in time after any borg of the real clock (compact) wrote it."""
    wrapper = where / f"borg{gen.key}-real-clock"
    unset = " ".join(f"-u {v}" for v in FAKETIME_VARIABLES)
    wrapper.write_text(f'#!/bin/sh\nexec env {unset} {gen.borg} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def restore_once(s: Setup, env: dict, guest: str, repo: Path, checkpoint: str,
                 flatten: bool) -> float:
    to = s.dir / "restored"
    shutil.rmtree(to, ignore_errors=True)
    t, _ = lab.borg_vm_restore(env, guest, repo, to, checkpoint, flatten)
    shutil.rmtree(to)
    return t.seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generation", choices=("1", "2", "both"), default="both",
                    help="Borg 1.4 (1), Borg 2 (2) or both side by side (default)")
    ap.add_argument("--quick", action="store_true",
                    help="a try-out: 256 MiB disk, RETENTION_NIGHTS nights (default 10), "
                         "into bench/work/quick/")
    step = ap.add_mutually_exclusive_group()
    step.add_argument("--restores", action="store_true",
                      help="measure the restores again, on the repositories of the last run")
    step.add_argument("--report", action="store_true",
                      help="only write the report again from the last run's figures")
    args = ap.parse_args()
    s = setup_of(args.quick)
    if not (args.restores or args.report):
        nights(s, repos.chosen(args.generation), s.dir / "nights.json")
    r = json.loads((s.dir / "nights.json").read_text())
    if not args.report:
        restores(s, r, s.dir / "restores.json")
    r.update(json.loads((s.dir / "restores.json").read_text()))
    s.out.write_text(report(s, r))
    say(f"wrote {s.out}")
    return 0


def nights(s: Setup, gens: list[repos.Generation], out: Path) -> None:
    """Run the nights under each generation; write their figures to out, and keep
    a copy of Borg 1.4's repository as it was on the first chain's last night."""
    shutil.rmtree(s.dir, ignore_errors=True)
    s.dir.mkdir(parents=True)
    env = lab.borg_env(s.dir / "borg-base")
    lab.run(["test", "-e", FAKETIME_LIB])
    say(f"retention: {lab.mib(s.disk)} qcow2 of incompressible data, {s.nights} nights, "
        + " and ".join(g.label for g in gens))
    data = s.dir / "data.bin"
    lab.make_data(data, s.disk)
    source = s.dir / "disk.qcow2"
    lab.qcow2_from_pieces(source, [data])
    data.unlink()
    runs = {}
    written = []
    bench = lab.Lab()
    try:
        for gen in gens:
            disk = s.dir / f"disk{gen.key}.qcow2"
            lab.run(["cp", "--reflink=auto", source, disk])
            runs[gen.key] = Night(gen, bench.guest([disk]), gen.init(s.dir / f"repo{gen.key}",
                                                                    gen.env(env)), env,
                                  fake_clock(gen.env(env), s.dir, gen))
        source.unlink()
        for n in range(s.nights):
            when = START + timedelta(days=n)
            order = gens[n % len(gens):] + gens[:n % len(gens)]
            writes = []
            for gen in order:
                writes = runs[gen.key].night(s, n, when)
            written.append(sorted(lab.blocks_of(writes, BITMAP_GRANULARITY)))
            if n == max(s.chain_points) and "1" in runs:
                # Borg 1.4's first chain, complete, before a later prune trims it.
                shutil.copytree(runs["1"].repo, s.kept)
    finally:
        bench.close()
    out.write_text(json.dumps({
        "generations": {k: {"domain": x.guest.name, "nights": x.done, "prune": x.last_prune}
                        for k, x in runs.items()},
        "written": written, "disk": s.disk,
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": os.getloadavg()[0]}))


class Night:
    """One generation's guest and repository, night after night."""

    def __init__(self, gen: repos.Generation, guest: lab.Guest, repo: Path, env: dict,
                 faked: dict):
        self.gen, self.guest, self.repo, self.env = gen, guest, repo, gen.env(env)
        self.faked = faked   # for at()
        self.rng = random.Random(SEED)   # the same writes in every generation's guest
        self.done: list[dict] = []
        self.last_prune: list[dict] = []

    def night(self, s: Setup, n: int, when: datetime) -> list[tuple[int, int]]:
        """Write the night's changes, back up and prune; return the writes."""
        g, gen = self.guest, self.gen
        writes = lab.nightly(self.rng, s.disk) if n else []
        if writes:
            g.write_many(writes, self.rng, s.dir / "scratch")
            g.flush()
        pid = lab.qemu_pid(g.name)
        before = lab.read_chars(pid)
        t, j = lab.borg_vm_backup(at(self.faked, when), g.name, self.repo, chunk=gen.chunk,
                                  options=("--full-every", FULL_EVERY))
        qemu_read = lab.read_chars(pid) - before
        p = timed([BORG_VM, "prune", *KEEP, "--json", g.name, "--repo", self.repo],
                  at(self.faked, when + timedelta(minutes=30)))
        pruned = json.loads(p.stdout)
        self.last_prune = pruned["archives"]
        x = {"night": n, "level": j["level"], "reason": j["reason"],
             "read": sum(d["read"] for d in j["disks"].values()), "qemu_read": qemu_read,
             "backup_s": t.seconds, "prune_s": p.seconds, "archive": j["archive"],
             "checkpoint": j["checkpoint"], "deleted": len(pruned.get("deleted", []))}
        # (a full read can come a night late: the generations take turns going
        # first, and --full-every counts from the last full's own time)
        if n % 7 == 6 or n % 30 in (29, 0, 1) or j["level"] == "full" or n == s.nights - 1:
            x["repo_bytes"], x["repo_apparent"] = gen.size(self.repo, self.env)
        self.done.append(x)
        say(f"night {n}, {gen.label}: {j['level']} read {lab.mib(x['read'])} (QEMU "
            f"{lab.mib(qemu_read)}) in {t.seconds:.1f} s, pruned {x['deleted']}"
            + (f", repository {lab.mib(x['repo_bytes'])}" if "repo_bytes" in x else ""))
        return writes


def kept_nights(nights: list[dict], decisions: list[dict], rules_only: bool) -> list[int]:
    """The nights whose restore points the last prune kept (rules_only: those the
    rules keep, not those kept only because a kept point's chain needs them)."""
    kept = {d["name"] for d in decisions if d["decision"] == "keep"
            and not (rules_only and d["reason"].startswith(NEEDED_BY))}
    return [x["night"] for x in nights if x["archive"] in kept]


def floor_bytes(written: list[list[int]], kept: list[int], disk: int) -> int:
    """Given the 64 KiB blocks each night rewrote with fresh data (night 0: the
    disk as made) and the nights whose points are kept, return the bytes of
    distinct data those points hold: distinct (block, night it was last
    written) pairs, x 64 KiB."""
    version = [0] * (disk // BITMAP_GRANULARITY)
    pairs: set[tuple[int, int]] = set()
    keep = set(kept)
    for n, blocks in enumerate(written):
        for b in blocks:
            version[b] = n
        if n in keep:
            pairs.update(enumerate(version))
    return len(pairs) * BITMAP_GRANULARITY


def floor_expected(written: list[list[int]], kept: list[int], disk: int) -> float:
    """The floor, x the disk, were each block rewritten independently each night
    with the nights' mean share: 1 + the sum over the gaps between kept points
    of the chance a block was rewritten in the gap."""
    share = statistics.mean(len(b) for b in written[1:]) * BITMAP_GRANULARITY / disk
    kept = sorted(kept)
    return 1 + sum(1 - (1 - share) ** (b - a) for a, b in zip(kept, kept[1:]))


def restores(s: Setup, r: dict, out: Path) -> None:
    """Restore the oldest and newest kept point of each repository, and (Borg 1.4)
    the first chain's points at chain_points from the kept copy, flattened and
    as a chain; RESTORE_RUNS rounds, each visiting every restore in a rotated
    order, so drift in the machine's load hits all alike. Write the times to out."""
    base = lab.borg_env(s.dir / "borg-base")
    jobs = []
    for key, x in r["generations"].items():
        gen = repos.GENERATIONS[key]
        kept = kept_nights(x["nights"], x["prune"], rules_only=True)
        for which, n in (("oldest", min(kept)), ("newest", max(kept))):
            jobs.append((f"{key} {which}", gen.env(base), x["domain"], s.dir / f"repo{key}",
                         x["nights"][n]["checkpoint"], key == "1"))
        if key == "1":
            # The copy has the repository's ID: a cache of its own, borg-vm's keys.
            kept_env = dict(gen.env(lab.borg_env(s.dir / "borg-base-kept")),
                            BORG_VM_KEYS_DIR=str(s.dir / "borg-base" / ".config" / "borg-vm"
                                                 / "keys"))
            for k in s.chain_points:
                for mode in ("flatten", "chain"):
                    jobs.append((f"chain {k} {mode}", kept_env, x["domain"], s.kept,
                                 x["nights"][k]["checkpoint"], mode == "flatten"))
    times: dict[str, list[float]] = {job[0]: [] for job in jobs}
    loads = []
    for i in range(RESTORE_RUNS):
        for name, env, domain, repo, checkpoint, flatten in jobs[i % len(jobs):] + jobs[:i % len(jobs)]:
            times[name].append(restore_once(s, env, domain, repo, checkpoint, flatten))
            say(f"round {i + 1}: restore {name}: {times[name][-1]:.1f} s")
            loads.append(os.getloadavg()[0])
    chain = [{"incrementals": k,
              **{m: statistics.median(times[f"chain {k} {m}"]) for m in ("flatten", "chain")},
              **{f"{m}_min": min(times[f"chain {k} {m}"]) for m in ("flatten", "chain")}}
             for k in s.chain_points if f"chain {k} chain" in times]
    kept = {name: v for name, v in times.items() if not name.startswith("chain ")}
    out.write_text(json.dumps({"chain": chain, "kept_restores": kept,
                               "restore_load": [min(loads), max(loads)]}, indent=1))


def fit(chain: list[dict], key: str) -> tuple[float, float]:
    """Least squares restore seconds = a + b * incrementals; return (a, b)."""
    xs = [c["incrementals"] for c in chain]
    ys = [c[key] for c in chain]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB"


def model(s: Setup, chain: list[dict], key: str) -> tuple[float, float, float]:
    """From restore times of the same disk after k incrementals (each holding
    s.nightly bytes, the full s.disk bytes), return (fixed seconds per archive,
    bytes per second, seconds per link), assuming time = archives x fixed +
    bytes / rate: a0 = c + disk/r and the slope b = c + nightly/r."""
    a0, b = fit(chain, key)
    rate = (s.disk - s.nightly) / (a0 - b)
    return b - s.nightly / rate, rate, b


def report(s: Setup, r: dict) -> str:
    gens = {k: repos.GENERATIONS[k] for k in r["generations"]}
    count = len(next(iter(r["generations"].values()))["nights"])
    quick = ("**Try-out run** (`--quick` or RETENTION_NIGHTS: a smaller disk, fewer "
             "nights; not committed). " if s.quick else "")
    out = [
        "# Living with a VM for 90 nights (issues 9 and 22)",
        "",
        f"{quick}Measured {r['when']} by "
        + ("`.venv/bin/python bench/retention.py --quick`" if s.quick else
           "`make bench-retention` (`.venv/bin/python bench/retention.py`)")
        + ", which regenerates this file. What it runs is in the "
        f"docstring of bench/retention.py: per generation ({', '.join(g.label for g in gens.values())}: "
        + ", ".join(f"{g.version()}, `{g.encryption}`, chunk size {g.chunk // 1024} KiB"
                    for g in gens.values())
        + f") a paused domain without OS, its {lab.mib(s.disk)} qcow2 disk full of "
        "incompressible data, the same 2% of it rewritten each night in both (half 64 KiB "
        "writes scattered over the disk, half 1 MiB runs), then what "
        f"contrib/systemd/borg-vm@.service runs: `borg-vm backup --full-every {FULL_EVERY}` "
        f"and `borg-vm prune {' '.join(KEEP)}`, nights 24 h apart on a fake clock "
        f"(libfaketime), {count} nights, the generations taking turns to go first (1-min "
        f"load of the machine when they ended: {r['load']:.1f}, 2 cores). "
        "`retention.py --restores` measures the restores again alone. Sizes are shown as "
        "measured and x100 (the README's 100 GiB disk with 2 GiB of changes a day): data "
        "and deduplication scale with the disk, Borg's metadata a little less. The writes "
        "are uniformly random: the worst case for what a new full stores (a guest that "
        "rewrites the same hot blocks night after night changes fewer chunks between "
        "fulls).",
        "",
        side_by_side(s, r, gens),
        floor_section(s, r, gens),
        storage_section(r, gens),
    ]
    for key, gen in gens.items():
        out.append(reads_section(s, r["generations"][key], gen))
    out.append(restores_section(s, r, gens))
    return "\n".join(out) + "\n"


def side_by_side(s: Setup, r: dict, gens: dict) -> str:
    """One row per generation: what issue 22 asks of the nights, medians."""
    floor = floor_bytes(r["written"], kept_for_floor(r), s.disk)
    rows = []
    for key, gen in gens.items():
        nights = r["generations"][key]["nights"]
        incs = [n for n in nights if n["level"] == "inc"]
        fulls = [n for n in nights if n["level"] == "full"]
        oldest, newest = (r["kept_restores"][f"{key} {w}"] for w in ("oldest", "newest"))
        rows.append([gen.label, f"{nights[-1]['repo_bytes'] / floor:.2f} x",
                     f"{lab.mib(sum(n['read'] for n in nights))} / "
                     f"{lab.mib(sum(n['qemu_read'] for n in nights))}",
                     f"{statistics.median(n['backup_s'] for n in incs):.2f}" if incs else "-",
                     f"{statistics.median(n['backup_s'] for n in fulls):.1f} ({len(fulls)})",
                     f"{statistics.median(n['prune_s'] for n in nights):.2f}",
                     f"{statistics.median(oldest):.1f} / {statistics.median(newest):.1f}"])
    return f"""## Side by side

{table(["generation", "repository after prune, x floor (on disk)",
        "read in all: asked by borg-vm / by QEMU", "incremental night s (median)",
        "full (read) night s (median, count)", "prune s (median)",
        "restore of the oldest / newest kept point s (median)"], rows)}"""


def kept_for_floor(r: dict) -> list[int]:
    """The nights of the points the rules keep (Borg 2's, when it ran: it keeps
    nothing else)."""
    key = "2" if "2" in r["generations"] else "1"
    x = r["generations"][key]
    return kept_nights(x["nights"], x["prune"], rules_only=True)


def floor_section(s: Setup, r: dict, gens: dict) -> str:
    kept = kept_for_floor(r)
    floor = floor_bytes(r["written"], kept, s.disk)
    rows = []
    for key, gen in gens.items():
        x = r["generations"][key]
        last = x["nights"][-1]
        everything = kept_nights(x["nights"], x["prune"], rules_only=False)
        rows.append([gen.label, len(everything),
                     f"{lab.mib(last['repo_bytes'])} ({gib(last['repo_bytes'] * SCALE)})",
                     f"{last['repo_bytes'] / floor:.2f}",
                     f"{lab.mib(last['repo_apparent'])}",
                     f"{last['repo_apparent'] / floor:.2f}",
                     met(max(last["repo_bytes"], last["repo_apparent"]) <= FLOOR_TARGET * floor)
                     if key == "2" else "(beside)"])
    differ = [gen.label for key, gen in gens.items()
              if kept_nights(r["generations"][key]["nights"], r["generations"][key]["prune"],
                             rules_only=True) != kept]
    return f"""## Repository size after prune against the floor

The floor is the distinct data of the restore points the rules keep after
the last night (nights {', '.join(map(str, kept))}): {len(kept)} points. The bench knows which 64 KiB blocks
each night rewrote with fresh incompressible data, so the floor is the
distinct (block, night it was last written) pairs over those points, x 64 KiB:
**{lab.mib(floor)} ({floor / s.disk:.2f} x the disk; x100: {gib(floor * SCALE)})**. Were
every block rewritten independently each night with the nights' mean share,
it would be {floor_expected(r['written'], kept, s.disk):.2f} x the disk; issue 22 estimated about
{FLOOR_ESTIMATE} x for 90 nights. Repositories are compacted before they are measured:
on disk (allocated blocks) and apparent (bytes in files: what an object store
bills). Target: Borg 2 within {FLOOR_TARGET} x the floor (both columns).
{"" if not differ else chr(10) + "**The rules kept other points in " + ", ".join(differ) + "** (the floor is Borg 2's)." + chr(10)}
{table(["generation", "archives kept", "repository on disk (x100)", "x floor",
        "apparent", "x floor", f"target <= {FLOOR_TARGET} x"], rows)}"""


def storage_section(r: dict, gens: dict) -> str:
    keys = list(gens)
    by = {k: {x["night"]: x for x in r["generations"][k]["nights"]} for k in keys}
    measured = sorted(set.intersection(*({n for n, x in by[k].items() if "repo_bytes" in x}
                                         for k in keys)))
    header = ["night"]
    for k in keys:
        header += [f"{gens[k].label}: backup", "read", "repository", "x100",
                   "archives deleted so far"]
    rows = []
    for n in measured:
        row = [n]
        for k in keys:
            x = by[k][n]
            deleted = sum(y["deleted"] for y in r["generations"][k]["nights"][:n + 1])
            row += [x["level"], lab.mib(x["read"]), lab.mib(x["repo_bytes"]),
                    gib(x["repo_bytes"] * SCALE), deleted]
        rows.append(row)
    return f"""## Storage and nightly reads

Every 7th night and around every 30th: the backup, what borg-vm read, and the
repository after prune + compact (on disk).

{table(header, rows)}"""


def reads_section(s: Setup, x: dict, gen: repos.Generation) -> str:
    nights = x["nights"]
    by_night = {n["night"]: n for n in nights}
    fulls = [n for n in nights if n["level"] == "full"]
    incs = [n for n in nights if n["level"] == "inc"]
    read_total = sum(n["read"] for n in nights)
    qemu_total = sum(n["qemu_read"] for n in nights)
    inc_reads = [n["read"] for n in incs]
    out = [f"### {gen.label}", "",
           f"- {len(fulls)} full backups (nights {', '.join(str(f['night']) for f in fulls)}; "
           f"{statistics.median(f['backup_s'] for f in fulls):.1f} s, median), "
           f"{len(incs)} incrementals reading {lab.mib(statistics.median(inc_reads))} each "
           f"(median; x100: {gib(statistics.median(inc_reads) * SCALE)}) in "
           f"{statistics.median(n['backup_s'] for n in incs):.2f} s (median; min "
           f"{min(n['backup_s'] for n in incs):.2f} s, max {max(n['backup_s'] for n in incs):.2f} s); "
           f"prune {statistics.median(n['prune_s'] for n in nights):.2f} s (median)."
           if incs and fulls else f"- {len(nights)} nights.",
           f"- Read over {len(nights)} nights: {gib(read_total)} asked by borg-vm (x100: "
           f"{gib(read_total * SCALE)}), {gib(qemu_total)} read by the guest's QEMU from its "
           f"image during the backups; a nightly `borg create --read-special` of the image "
           f"reads {gib(s.disk * len(nights))} (x100: {gib(s.disk * len(nights) * SCALE)}).",
           ]
    for f in fulls[1:]:
        before, after = by_night.get(f["night"] - 1), by_night[f["night"]]
        if before and "repo_bytes" in before and "repo_bytes" in after:
            grew = after["repo_bytes"] - before["repo_bytes"]
            out.append(f"- The full on night {f['night']} read the whole disk in "
                       f"{f['backup_s']:.1f} s (the first full: {fulls[0]['backup_s']:.1f} s) "
                       f"and added {lab.mib(grew)} to the repository (x100: {gib(grew * SCALE)}).")
    out += [f"- Prune deleted {sum(n['deleted'] for n in nights)} archives in all; after night "
            f"{nights[-1]['night']} the repository holds {lab.mib(nights[-1]['repo_bytes'])} "
            f"(x100: {gib(nights[-1]['repo_bytes'] * SCALE)}).", ""]
    return "\n".join(out)


def restores_section(s: Setup, r: dict, gens: dict) -> str:
    kept = r["kept_restores"]
    rows = []
    for key, gen in gens.items():
        x = r["generations"][key]
        points = kept_nights(x["nights"], x["prune"], rules_only=True)
        for which, n in (("oldest", min(points)), ("newest", max(points))):
            v = kept[f"{key} {which}"]
            how = "`--flatten`" if key == "1" else "restore"
            rows.append([gen.label, f"{which} (night {n})", how,
                         f"{min(v):.1f} / {statistics.median(v):.1f}"])
    lo, hi = r["restore_load"]
    out = [f"""## Restore of the oldest and newest kept point

After the last night, {RESTORE_RUNS} rounds (min / median s), every restore of this
section and the next in each round, in a rotated order (1-minute load during
them: {lo:.1f} to {hi:.1f}, 2 cores). Borg 1.4 restores its point's chain
flattened into one image; Borg 2 reads the point's one image.

{table(["generation", "point", "how", "restore (min / median s)"], rows)}"""]
    if r["chain"]:
        out.append(chain_section(s, r["chain"]))
    return "\n".join(out)


def chain_section(s: Setup, chain: list[dict]) -> str:
    out = [
        "## Borg 1.4: restore time against chain length",
        "",
        f"Restores ({RESTORE_RUNS} rounds, min / median) of the restore points of the first chain "
        "(a copy of the repository taken on its last night), each a full plus k "
        "incrementals:",
        "",
        "| incrementals | restore --flatten (min / median s) | chain restore (min / median s) |",
        "|---|---|---|",
    ]
    for c in chain:
        out.append(f"| {c['incrementals']} | {c['flatten_min']:.1f} / {c['flatten']:.1f} | "
                   f"{c['chain_min']:.1f} / {c['chain']:.1f} |")
    if len(chain) >= 2:
        out += ["", "Fitted (least squares over the medians) as time = archives x a fixed "
                "cost + bytes / rate, and extrapolated with that fit to the 100 GiB disk "
                "(an extrapolation, not a measurement):", "",
                "| restore | fixed s per archive | rate | s per incremental here | "
                "x100: full alone | x100: +29 incrementals | x100: +89 | x100: +364 |",
                "|---|---|---|---|---|---|---|---|"]
        for key, label in (("flatten", "--flatten"), ("chain", "chain")):
            c, rate, b = model(s, chain, key)
            if c < 0 or rate <= 0:
                out.append(f"| {label} | the medians do not fit the model (too noisy) "
                           "| | | | | | |")
                continue

            def t(k, c=c, rate=rate):
                return (1 + k) * c + (s.disk + k * s.nightly) * SCALE / rate
            out.append(f"| {label} | {c:.2f} | {lab.mib(rate)}/s | {b:.2f} | "
                       f"{t(0) / 60:.0f} min | {t(29) / 60:.0f} min ({t(29) / t(0):.2f} x) | "
                       f"{t(89) / 60:.0f} min ({t(89) / t(0):.2f} x) | "
                       f"{t(364) / 60:.0f} min ({t(364) / t(0):.2f} x) |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
