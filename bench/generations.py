"""Borg 1.4 chains against Borg 2 complete images (issue 22), side by side in
one run on this machine, written to bench/GENERATIONS.md by `make
bench-generations` (`--quick`: bench/work/quick/GENERATIONS.md). Not a test:
nothing here asserts a timing. The 90 nights under prune, and the storage
floor, are bench/retention.py's (RETENTION.md).

1. Nights. Two paused domains without OS, one per generation, each on its
   own copy of one 1 GiB qcow2 full of incompressible data (--quick: 256
   MiB), each backed up into a repository of its generation with borg-vm's
   defaults for it (chunk size 256 KiB for Borg 1.4, 64 KiB for Borg 2) and
   `--full-every never`: 30 nights (--quick: 4), the first a full, the
   second with nothing written (the fixed cost, and QEMU's own reads), then
   each night the same 2% rewritten in both guests (lab.nightly: half 64 KiB
   writes scattered over the disk, half 1 MiB runs). The generations take
   turns going first. Bytes read are counted twice: what borg-vm asked for
   (the data extents of its map: its --json `read`) and what the guest's
   QEMU read from its disk image while the backup ran (rchar of
   /proc/PID/io, minus that of the night with nothing written), so Borg 2's
   own reads through nbdfuse, and the kernel's read-ahead, are in it. Every
   other night with writes (the odd ones), what borg-vm keeps of the domain's
   archives (its catalog cache) is deleted first, so that run lists the
   repository before it plans, as a host that never saw the domain does; the
   other nights plan from what the host saw while borg lists.
2. Restores of the first point (the full) and of the newest (after the last
   night) of each repository, several rounds in a rotated order, against
   Borg alone with that point's archives (Borg 1.4: the chain's full and
   incrementals; Borg 2: the record and the image): a restore by hand, `borg
   extract` of each into an empty directory and `sync` of what it wrote (the
   target's measure: borg-vm's restore writes its images and makes them
   durable too), and `borg extract --stdout` into /dev/null (Borg's reading
   alone, the ceiling no restore that writes reaches). Each measure starts
   from a dropped page cache with no dirty pages (`sync`, then `echo 3 >
   /proc/sys/vm/drop_caches`). Borg 1.4 restores as a chain and with
   --flatten.
3. Many domains (issue item 4): N = 1, 2, 4 paused domains, each on its own
   512 MiB disk of other incompressible data (--quick: 128 MiB), backed up
   into one fresh repository, a full and then, after 2% of each disk was
   rewritten, an incremental: into Borg 2 all at once (`borg-vm backup D1..DN
   --jobs N`) and one after another (--jobs 1), into Borg 1.4 one after
   another (one writer at a time). Total wall time of each command.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
import report  # noqa: E402
import repos  # noqa: E402
from lab import BITMAP_GRANULARITY, GIB, MIB, say  # noqa: E402
from report import mb, med, met, secs, table  # noqa: E402

SEED = 22
READ_TARGET = 1.05       # Borg 2 incremental: bytes read <= this x the dirty bytes
FLAT_TARGET = 1.1        # Borg 2: restore of the newest point <= this x the first's
ALONE_TARGET = 1.05      # Borg 2: restore <= this x `borg extract` of the point's archives
NOTHING_NIGHT = 1        # the night nothing is written
JOBS = (1, 2, 4)
AT_ONCE, SERIAL = "at once", "one after another"
MODES = ((repos.BORG2, AT_ONCE), (repos.BORG2, SERIAL), (repos.BORG1, SERIAL))


@dataclass(frozen=True)
class Setup:
    disk: int
    nights: int
    rounds: int          # restore rounds
    many_disk: int
    many_rounds: int
    quick: bool


FULL = Setup(1 * GIB, 30, 3, 512 * MIB, 2, False)
QUICK = Setup(256 * MIB, 4, 1, 128 * MIB, 1, True)


def main() -> int:
    args, out = lab.report_args(__doc__, "GENERATIONS.md",
                                "smaller disks, 4 nights, one round, into bench/work/quick/")
    if args.render:
        out.write_text(render(json.loads(args.render.read_text())))
        return 0
    setup = QUICK if args.quick else FULL
    work = lab.fresh_work(setup.quick, "generations")
    env = lab.borg_env(work / "base")
    r = {"setup": asdict(setup), "machine": report.machine(env),
         "borg2": repos.BORG2.version(),
         "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    phases = lab.Phases()
    bench = lab.Lab()
    try:
        phases.next("nights", [])
        guests, nights_run = nights(bench, work, env, setup)
        r["nights"] = nights_run
        phases.next("restores", qemu_pids(bench))
        r["restores"] = restores(work, env, setup, guests, nights_run)
        for g, _repo in guests.values():
            bench.remove(g)
        phases.next("many domains", [])
        r["many"] = many(bench, work, env, setup, phases)
        phases.next("end", qemu_pids(bench))
    finally:
        bench.close()
    r["phases"] = phases.rows
    r["total_seconds"] = lab.elapsed()
    (work / "results.json").write_text(json.dumps(r, indent=1))
    out.write_text(render(r))
    say(f"wrote {out}")
    return 0


def qemu_pids(bench: lab.Lab) -> list[int]:
    return [p for g in bench.guests if (p := lab.qemu_pid(g.name))]


def disk_image(work: Path, name: str, size: int, key: str) -> Path:
    """A qcow2 of size bytes of incompressible data (key's keystream)."""
    data, disk = work / f"{name}.bin", work / f"{name}.qcow2"
    lab.make_data(data, size, key)
    lab.qcow2_from_pieces(disk, [data])
    data.unlink()
    return disk


# -- 1. nights ------------------------------------------------------------------

def nights(bench: lab.Lab, work: Path, env: dict, setup: Setup
           ) -> tuple[dict[str, tuple[lab.Guest, Path]], list[dict]]:
    """Run the nights in a guest and repository per generation; return them
    ({generation key: (guest, repository)}) and one row per backup."""
    say(f"nights: {setup.nights} in each generation, {lab.mib(setup.disk)} disks")
    source = disk_image(work, "disk", setup.disk, "bench")
    guests, rngs = {}, {}
    for gen in repos.GENERATIONS.values():
        disk = work / f"disk{gen.key}.qcow2"
        lab.run(["cp", "--reflink=auto", source, disk])
        repo = gen.init(work / f"repo{gen.key}", gen.env(env))
        guests[gen.key] = (bench.guest([disk]), repo)
        rngs[gen.key] = random.Random(SEED)   # the same writes in both guests
    source.unlink()
    rows = []
    gens = list(repos.GENERATIONS.values())
    for n in range(setup.nights):
        for gen in gens[n % 2:] + gens[:n % 2]:
            g, repo = guests[gen.key]
            writes = []
            if n > NOTHING_NIGHT:
                writes = lab.nightly(rngs[gen.key], setup.disk)
                g.write_many(writes, rngs[gen.key], work / "scratch")
                g.flush()
            rows.append(night(gen, g, repo, env, n, writes,
                              listed_first=n > NOTHING_NIGHT and n % 2 == 1))
            x = rows[-1]
            say(f"night {n}, {gen.label}: {x['level']} in {x['seconds']:.2f} s, dirty "
                f"{lab.mib(x['dirty'])}, asked {lab.mib(x['read'])}, QEMU read "
                f"{lab.mib(x['qemu_read'])}")
    return guests, rows


def forget_seen(env: dict, domain: str) -> None:
    """Delete what borg-vm keeps of domain's archives (its catalog cache, one
    JSON file per repository and domain): its next backup lists first."""
    for path in (Path(env["BORG_BASE_DIR"]) / ".cache" / "borg-vm").glob("catalog-*.json"):
        if json.loads(path.read_text()).get("domain") == domain:
            path.unlink()


def night(gen: repos.Generation, g: lab.Guest, repo: Path, env: dict, n: int,
          writes: list[tuple[int, int]], listed_first: bool = False) -> dict:
    """One backup of g (listed_first: with nothing kept of what the host saw);
    return its figures."""
    if listed_first:
        forget_seen(env, g.name)
    pid = lab.qemu_pid(g.name)
    before = lab.read_chars(pid)
    t, j = lab.borg_vm_backup(gen.env(env), g.name, repo, chunk=gen.chunk,
                              options=("--full-every", "never"))
    return {"night": n, "generation": gen.key, "level": j["level"], "seconds": t.seconds,
            "cpu": t.cpu, "read": sum(d["read"] for d in j["disks"].values()),
            "qemu_read": lab.read_chars(pid) - before,
            "dirty": len(lab.blocks_of(writes, BITMAP_GRANULARITY)) * BITMAP_GRANULARITY,
            "checkpoint": j["checkpoint"], "listed_first": listed_first,
            "archives": gen.point_archives(j["archive"], sorted(j["disks"]))}


# -- 2. restores ----------------------------------------------------------------

def restore_jobs(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(generation key, point, mode) of every restore measured."""
    jobs = []
    for key, modes in (("2", ("restore",)), ("1", ("restore", "flatten"))):
        if any(x["generation"] == key for x in rows):
            jobs += [(key, p, m) for p in ("first", "newest") for m in modes]
    return jobs


def restores(work: Path, env: dict, setup: Setup,
             guests: dict[str, tuple[lab.Guest, Path]], rows: list[dict]) -> list[dict]:
    """Restore the first and the newest point of each repository, and hand out
    their archives with Borg alone, setup.rounds rounds in a rotated order;
    return one row per (generation, point, mode) with its times."""
    say("restores")
    jobs = restore_jobs(rows)
    out = {job: {"generation": job[0], "point": job[1], "mode": job[2], "restore": [],
                 "alone": [], "files": []} for job in jobs}
    for i in range(setup.rounds):
        for job in jobs[i % len(jobs):] + jobs[:i % len(jobs)]:
            key, point, mode = job
            gen = repos.GENERATIONS[key]
            g, repo = guests[key]
            own = [x for x in rows if x["generation"] == key]
            top = own[0] if point == "first" else own[-1]
            # A Borg 1.4 point is its chain: every archive up to it.
            archives = ([a for x in own[:own.index(top) + 1] for a in x["archives"]]
                        if key == "1" else top["archives"])
            to = work / "restored"
            shutil.rmtree(to, ignore_errors=True)
            # Each measure starts as a restore months later would: nothing of the
            # repository cached, and no dirty pages of the one before to write.
            cold = lab.drop_caches()
            t, j = lab.borg_vm_restore(gen.env(env), g.name, repo, to, top["checkpoint"],
                                       flatten=mode == "flatten")
            x = out[job]
            x["restore"].append(t.seconds)
            if i == 0:
                source = g.disks[0] if point == "newest" else None
                x["identical"] = (lab.images_equal(Path(j["disks"]["vda"]["image"]), source)
                                  if source else None)
                x["archives"] = len(archives)
            shutil.rmtree(to)
            cold = lab.drop_caches() and cold
            x["alone"].append(gen.extract_stdout(repo, archives, gen.env(env)))
            cold = lab.drop_caches() and cold
            x["files"].append(gen.extract_files(repo, archives, gen.env(env), to))
            x["cold"] = cold and x.get("cold", True)
            say(f"round {i + 1}: {gen.label} {point} {mode}: {t.seconds:.2f} s, Borg alone "
                f"{x['files'][-1]:.2f} s into files, {x['alone'][-1]:.2f} s into /dev/null")
    return list(out.values())


# -- 3. many domains at once ----------------------------------------------------

def many(bench: lab.Lab, work: Path, env: dict, setup: Setup, phases: lab.Phases
         ) -> list[dict]:
    """Back up N = JOBS domains into one fresh repository per MODES mode, a full
    and an incremental each; return one row per (round, N, mode)."""
    say(f"many domains: {max(JOBS)} domains, {lab.mib(setup.many_disk)} disks")
    guests = [bench.guest([disk_image(work, f"many{i}", setup.many_disk, f"many-{i}")])
              for i in range(max(JOBS))]
    rngs = [random.Random(SEED + i) for i in range(max(JOBS))]
    rows = []
    for r in range(setup.many_rounds):
        for n in JOBS:
            order = MODES[(r + n) % len(MODES):] + MODES[:(r + n) % len(MODES)]
            for gen, mode in order:
                phases.next(f"{n} domain(s), {gen.label} {mode}", qemu_pids(bench))
                repo = gen.init(work / "many-repo", gen.env(env))
                names = [g.name for g in guests[:n]]
                jobs = n if mode == AT_ONCE else 1
                full = backup_all(gen, env, names, repo, jobs, "full")
                for g, rng in zip(guests[:n], rngs):
                    g.write_many(lab.nightly(rng, setup.many_disk), rng, work / "scratch")
                    g.flush()
                inc = backup_all(gen, env, names, repo, jobs, "inc")
                rows.append({"round": r, "domains": n, "generation": gen.key, "mode": mode,
                             "full": full, "inc": inc})
                say(f"{n} domain(s), {gen.label} {mode}: full {full:.2f} s, "
                    f"incremental {inc:.2f} s")
    return rows


def backup_all(gen: repos.Generation, env: dict, names: list[str], repo: Path, jobs: int,
               level: str) -> float:
    """Seconds of one `borg-vm backup NAMES --jobs JOBS`; raise RuntimeError if a
    domain's backup was not at level."""
    argv = [lab.BORG_VM, "backup", *names, "--repo", repo, "--json", "--no-progress",
            "--chunk-size", str(gen.chunk), "--full-every", "never",
            *(["--jobs", str(jobs)] if jobs > 1 else [])]
    t = lab.timed(argv, gen.env(env))
    levels = [json.loads(line)["level"] for line in t.stdout.decode().splitlines()
              if line.strip()]
    if levels != [level] * len(names):
        raise RuntimeError(f"{gen.label}: expected {len(names)} x {level}, got {levels}")
    return t.seconds


# -- the report -----------------------------------------------------------------

def of(rows: list[dict], key: str) -> list[dict]:
    return [x for x in rows if x["generation"] == key]


def incrementals(r: dict, key: str) -> tuple[list[dict], dict]:
    """The incrementals with writes of generation key, and its night with nothing
    written."""
    own = of(r["nights"], key)
    return ([x for x in own if x["night"] > NOTHING_NIGHT],
            next(x for x in own if x["night"] == NOTHING_NIGHT))


def read_ratios(r: dict, key: str) -> tuple[float, float]:
    """(borg-vm's asked, QEMU's net read) over the dirty bytes, medians."""
    incs, nothing = incrementals(r, key)
    return (med([x["read"] / x["dirty"] for x in incs]),
            med([(x["qemu_read"] - nothing["qemu_read"]) / x["dirty"] for x in incs]))


def restore_row(r: dict, key: str, point: str, mode: str = "restore") -> dict:
    return next(x for x in r["restores"]
                if (x["generation"], x["point"], x["mode"]) == (key, point, mode))


def many_total(r: dict, n: int, key: str, mode: str, level: str) -> list[float]:
    return [x[level] for x in r["many"]
            if (x["domains"], x["generation"], x["mode"]) == (n, key, mode)]


def summary(r: dict) -> str:
    read2, qemu2 = read_ratios(r, "2")
    inc = {k: med([x["seconds"] for x in incrementals(r, k)[0]]) for k in ("1", "2")}
    first, newest = restore_row(r, "2", "first"), restore_row(r, "2", "newest")
    flat = med(newest["restore"]) / med(first["restore"])
    alone = max(med(x["restore"]) / med(x["files"]) for x in (first, newest))
    ceiling = max(med(x["restore"]) / med(x["alone"]) for x in (first, newest))
    b1 = restore_row(r, "1", "newest")
    b1_first = restore_row(r, "1", "first")
    rows = [
        ["1", f"Borg 2 incremental reads <= {READ_TARGET} x the dirty bytes",
         f"{read2:.2f} x asked by borg-vm, {qemu2:.2f} x read by QEMU",
         met(max(read2, qemu2) <= READ_TARGET)],
        ["1", "Borg 2 incremental against Borg 1.4's of the same change (time)",
         f"{inc['2']:.2f} s against {inc['1']:.2f} s: {inc['2'] / inc['1']:.2f} x",
         "(reported)"],
        ["2", f"Borg 2 restore of the newest point <= {FLAT_TARGET} x the first's",
         f"{flat:.2f} x (Borg 1.4 chain: "
         f"{med(b1['restore']) / med(b1_first['restore']):.2f} x)",
         met(flat <= FLAT_TARGET)],
        ["2", f"Borg 2 restore <= {ALONE_TARGET} x `borg extract` of the point's archives",
         f"{alone:.2f} x at most (Borg 1.4 chain, newest: "
         f"{med(b1['restore']) / med(b1['files']):.2f} x); against Borg's reading alone "
         f"(`--stdout` into /dev/null) {ceiling:.2f} x", met(alone <= ALONE_TARGET)],
    ]
    split = {k: (med([x["seconds"] for x in incrementals(r, k)[0] if not x.get("listed_first")]),
                 med([x["seconds"] for x in incrementals(r, k)[0] if x.get("listed_first")]))
             for k in ("1", "2") if any(x.get("listed_first") for x in r["nights"])}
    if split:
        rows.append(["1", "an incremental planned from what this host saw while borg lists, "
                          "against one that lists first (time)",
                     "; ".join(f"{repos.GENERATIONS[k].label} {a:.2f} s against {b:.2f} s"
                               for k, (a, b) in split.items()), "(reported)"])
    for n in JOBS[1:]:
        at_once = med(many_total(r, n, "2", AT_ONCE, "inc"))
        serial = med(many_total(r, n, "2", SERIAL, "inc"))
        rows.append(["4", f"{n} domains at once against one after another (Borg 2, "
                          "incrementals)", f"{at_once / serial:.2f} x", "(reported)"])
    return table(["issue item", "what", "measured (medians)", "verdict"], rows)


def render(r: dict) -> str:
    s = Setup(**r["setup"])
    command = ("`.venv/bin/python bench/generations.py --quick`" if s.quick
               else "`make bench-generations` (`.venv/bin/python bench/generations.py`)")
    parts = [
        "# Borg 1.4 chains against Borg 2 complete images (issue 22)", "",
        ("**Quick run** (`--quick`: smaller disks, fewer nights, one round; not "
         "committed). " if s.quick else "")
        + f"Measured {r['started']} by {command}, which regenerates this file; the whole "
        f"run took {r['total_seconds'] / 60:.1f} min. Both generations side by side, on "
        f"this machine, in this one run: Borg 1.4 ({r['machine']['borg']}) and Borg 2 "
        f"({r['borg2']}), encrypted (`{repos.BORG1.encryption}`, "
        f"`{repos.BORG2.encryption}`: AES and HMAC-SHA256 ids in both), lz4, borg-vm's "
        "default chunk size for each (256 KiB, 64 KiB). What runs is in the docstring of "
        "bench/generations.py. Times are seconds, min / median where there are several "
        "runs; verdicts compare medians. The 90 nights under prune, with the storage "
        "floor, are in [RETENTION.md](RETENTION.md).", "",
        report.machine_table(r["machine"]),
        report.phases_table(r["phases"]),
        "## Summary", "", summary(r),
        nights_section(r, s), restores_section(r, s), many_section(r, s)]
    return "\n".join(parts)


def nights_section(r: dict, s: Setup) -> str:
    rows = []
    for gen in repos.GENERATIONS.values():
        incs, nothing = incrementals(r, gen.key)
        full = of(r["nights"], gen.key)[0]
        asked, qemu = read_ratios(r, gen.key)
        rows.append([gen.label, f"{full['seconds']:.2f}", f"{nothing['seconds']:.2f}",
                     mb(nothing["qemu_read"]), len(incs),
                     secs([x["seconds"] for x in incs]), secs([x["cpu"] for x in incs]),
                     mb(med([x["dirty"] for x in incs])), mb(med([x["read"] for x in incs])),
                     mb(med([x["qemu_read"] - nothing["qemu_read"] for x in incs])),
                     f"{asked:.2f}", f"{qemu:.2f}"])
    return f"""## 1. An incremental: bytes read and time

{s.nights} nights on a {lab.mib(s.disk)} disk: night 0 the full, night {NOTHING_NIGHT} with nothing
written, then each night 2% rewritten (the same writes in both generations'
guests). "Dirty" is the 64 KiB blocks the night's writes touched; "asked" is
the data borg-vm's map says to read (its `--json` read); "QEMU read" is what
the guest's QEMU read from its image during the backup (rchar of its
/proc/PID/io) minus what it read on the night with nothing written (its
own reads: qcow2 metadata, the checkpoint), which the next column shows.
"incremental" is every night with writes: on the odd ones the run listed the
repository before it planned (the summary compares the two). Target (Borg 2):
read <= {READ_TARGET} x dirty.

{table(["generation", "full", "nothing written", "QEMU read then MiB", "incrementals",
        "incremental", "CPU", "dirty MiB", "asked MiB", "QEMU read MiB (net)",
        "asked / dirty", "QEMU read / dirty"], rows)}"""


def restores_section(r: dict, s: Setup) -> str:
    cache = ("from a dropped page cache with no dirty pages (`sync`, then `echo 3 > "
             "/proc/sys/vm/drop_caches`)" if all(x.get("cold") for x in r["restores"]) else
             "with the page cache as the measure before left it (dropping it was **not** "
             "allowed here)")
    rows = []
    for x in r["restores"]:
        gen = repos.GENERATIONS[x["generation"]]
        mode = "`--flatten`" if x["mode"] == "flatten" else "restore"
        identical = {None: "-", True: "yes", False: "**NO**"}[x["identical"]]
        rows.append([gen.label, f"{x['point']} ({x['archives']} archive(s))", mode,
                     secs(x["restore"]), secs(x["files"]),
                     f"{med(x['restore']) / med(x['files']):.2f}", secs(x["alone"]),
                     f"{med(x['restore']) / med(x['alone']):.2f}", identical])
    return f"""## 2. Restore of the first and the newest point

After the {s.nights} nights, {s.rounds} round(s), every restore in a rotated order:
`borg-vm restore` of the first point (the full) and of the newest, into a
fresh directory, against Borg alone with that point's archives (a Borg 1.4
point needs its whole chain): restored by hand, `borg extract` of each into
an empty directory and `sync` of the files it wrote (as borg-vm's restore
makes its images durable), and Borg's reading alone, `borg extract --stdout`
of each into /dev/null. Each measure starts {cache}. "identical" is `qemu-img compare` of the restored
newest point with the guest's disk, once. Targets (Borg 2): newest <=
{FLAT_TARGET} x first, and each restore <= {ALONE_TARGET} x `borg extract`.

{table(["generation", "point", "how", "restore", "`borg extract`", "ratio",
        "`--stdout` into /dev/null", "ratio", "identical"], rows)}"""


def many_section(r: dict, s: Setup) -> str:
    rows = []
    for n in JOBS:
        serial2 = {lv: med(many_total(r, n, "2", SERIAL, lv)) for lv in ("full", "inc")}
        cells = [n]
        for key, mode in (("2", AT_ONCE), ("2", SERIAL), ("1", SERIAL)):
            for lv in ("full", "inc"):
                cells.append(secs(many_total(r, n, key, mode, lv)))
        cells += [f"{med(many_total(r, n, '2', AT_ONCE, lv)) / serial2[lv]:.2f}"
                  for lv in ("full", "inc")]
        rows.append(cells)
    return f"""## 3. Several domains into one repository

N paused domains, each on its own {lab.mib(s.many_disk)} disk of different incompressible
data, backed up into one fresh repository: the fulls with one command, then
(2% of each disk rewritten) the incrementals with one command; {s.many_rounds} round(s),
the three ways in a rotated order. Borg 2 at once is `borg-vm backup D1..DN
--jobs N`; one after another is `--jobs 1`; a Borg 1.4 repository takes one
writer, so it is only one after another. Total wall time of the command.

{table(["N", "Borg 2 at once: fulls", "incrementals", "Borg 2 one after another: fulls",
        "incrementals", "Borg 1.4 one after another: fulls", "incrementals",
        "Borg 2 at once / one after another: fulls", "incrementals"], rows)}"""


if __name__ == "__main__":
    sys.exit(main())
