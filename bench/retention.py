"""Living with a VM for 90 nights (issue 9), run by `make bench-retention`:
what `--full-every` costs and buys, measured, written to bench/RETENTION.md.

A scaled-down hypervisor: one paused domain without OS whose 1 GiB qcow2 disk
is full of incompressible data (1/100 of the README's 100 GiB disk), and each
"night" the guest rewrites 2% of it with fresh incompressible bytes (half as
64 KiB writes scattered over the disk, half as 1 MiB runs), then the nightly
job runs what contrib/systemd/borg-vm@.service runs: `borg-vm backup` (default
chunk size) with the candidate default `--full-every` and `borg-vm prune --keep-daily 7
--keep-weekly 4 --keep-monthly 6`. The nights are 24 h apart on a fake clock
(libfaketime on borg-vm and borg: archive times, checkpoint names, the age
`--full-every` compares, the `now` prune counts from), so 90 nights take
minutes. The repository is compacted and measured every 7th night and around
every new chain.

Then, on the repository as the run left it, and on the chain of the first
30 nights kept aside before prune could touch it: `borg-vm restore --flatten`
and chain restores of the restore points at several chain lengths, to put
restore time against chain length (the price of never starting a new chain).

Sizes scale by SCALE to the README's example; times do not (Borg's fixed cost
per archive does not shrink with the disk), so the report fits restore time =
fixed + per-archive x links + per-byte x bytes read, and extrapolates with
that fit, saying so.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
from lab import BORG, BORG_VM, GIB, KIB, MIB, WORK, say, timed  # noqa: E402

from borg_vm.format.names import BLOCK_SIZE  # noqa: E402

SCALE = 100                        # 1 GiB here stands for the README's 100 GiB
DISK = 1 * GIB
NIGHTLY = round(0.02 * DISK)      # 2% of the disk a night: 2 GiB/day at scale
SCATTER = 64 * KIB
RUN = 1 * MIB
NIGHTS = int(os.environ.get("RETENTION_NIGHTS", "90"))   # fewer only for a try-out
FULL_EVERY = "30d"
KEEP = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6"]
START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
CHAIN_POINTS = tuple(k for k in (0, 7, 14, 21, 29) if k < NIGHTS)   # incrementals on the full
RESTORE_RUNS = 3
OUT = lab.BENCH / "RETENTION.md"
DIR = WORK / "retention"
KEPT = DIR / "first-chain"


def at(env: dict, when: datetime) -> dict:
    """env in which borg-vm and its borg children see `when` as the time now."""
    return dict(env, LD_PRELOAD=FAKETIME_LIB, FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME="@" + when.strftime("%Y-%m-%d %H:%M:%S"), TZ="UTC")


def repo_bytes(env: dict, repo: Path) -> int:
    """Compact the repository; return the bytes its files take on disk."""
    lab.run([BORG, "compact", repo], env=env)
    return sum(f.stat().st_blocks * 512 for f in repo.rglob("*") if f.is_file())


def night_writes(rng: random.Random) -> list[tuple[int, int]]:
    half = NIGHTLY // 2
    writes = lab.scattered(rng, DISK, half // SCATTER)
    writes += lab.runs(rng, DISK, half // RUN, RUN)
    return sorted(writes)


def restore_once(env: dict, guest: str, repo: Path, checkpoint: str, flatten: bool) -> float:
    to = DIR / "restored"
    shutil.rmtree(to, ignore_errors=True)
    t, _ = lab.borg_vm_restore(env, guest, repo, to, checkpoint, flatten)
    shutil.rmtree(to)
    return t.seconds


def main() -> int:
    args = sys.argv[1:]
    if args not in ([], ["--restores"], ["--report"]):
        say("usage: retention.py [--restores | --report]")
        return 2
    if not args:
        nights(DIR / "nights.json")
    if args != ["--report"]:
        restores(json.loads((DIR / "nights.json").read_text()), DIR / "restores.json")
    result = {**json.loads((DIR / "nights.json").read_text()),
              **json.loads((DIR / "restores.json").read_text())}
    OUT.write_text(report(result))
    say(f"wrote {OUT}")
    return 0


def nights(out: Path) -> None:
    """Run the NIGHTS nights; write their figures to out, and keep a copy of the
    repository as it was on the first chain's last night (KEPT)."""
    shutil.rmtree(DIR, ignore_errors=True)
    DIR.mkdir(parents=True)
    env = lab.borg_env(DIR / "borg-base")
    lab.run(["test", "-e", FAKETIME_LIB])
    say("retention: 1 GiB qcow2 of incompressible data")
    data = DIR / "data.bin"
    lab.make_data(data, DISK)
    disk = DIR / "disk.qcow2"
    lab.qcow2_from_pieces(disk, [data])
    data.unlink()
    repo = DIR / "repo"
    lab.run([BORG, "init", "--encryption", "none", repo], env=env)
    rng = random.Random(9)
    done = []
    bench = lab.Lab()
    try:
        g = bench.guest([disk])
        for n in range(NIGHTS):
            when = START + timedelta(days=n)
            if n:
                g.write_many(night_writes(rng), rng, DIR / "scratch")
                g.flush()
            t, j = lab.borg_vm_backup(at(env, when), g.name, repo, chunk=BLOCK_SIZE,
                                      options=("--full-every", FULL_EVERY))
            p = timed([BORG_VM, "prune", *KEEP, "--json", g.name, "--repo", repo],
                      at(env, when + timedelta(minutes=30)))
            night = {"night": n, "level": j["level"], "reason": j["reason"],
                     "read": sum(d["read"] for d in j["disks"].values()),
                     "backup_s": t.seconds, "prune_s": p.seconds,
                     "checkpoint": j["checkpoint"],
                     "deleted": len(json.loads(p.stdout).get("deleted", []))}
            if n % 7 == 6 or n % 30 in (0, 29) or n == NIGHTS - 1:
                night["repo_bytes"] = repo_bytes(env, repo)
            done.append(night)
            say(f"night {n}: {j['level']} read {lab.mib(night['read'])} in {t.seconds:.1f} s,"
                f" pruned {night['deleted']}"
                + (f", repository {lab.mib(night['repo_bytes'])}" if "repo_bytes" in night
                   else ""))
            if n == max(CHAIN_POINTS):
                # The first chain, complete, before a later prune trims it.
                shutil.copytree(repo, KEPT)
    finally:
        bench.close()
    out.write_text(json.dumps({"domain": g.name, "nights": done,
                               "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                               "load": os.getloadavg()[0]}, indent=1))


def restores(r: dict, out: Path) -> None:
    """Restore the first chain's points at CHAIN_POINTS from KEPT, flattened and as
    a chain, RESTORE_RUNS rounds; each round visits every point in a rotated order,
    so drift in the machine's load hits every chain length alike. Write the times
    to out."""
    env = lab.borg_env(DIR / "borg-base-kept")   # KEPT has REPO's ID: a cache of its own
    times = {(k, m): [] for k in CHAIN_POINTS for m in ("flatten", "chain")}
    loads = []
    for i in range(RESTORE_RUNS):
        for k in CHAIN_POINTS[i % len(CHAIN_POINTS):] + CHAIN_POINTS[:i % len(CHAIN_POINTS)]:
            for mode in ("flatten", "chain"):
                times[k, mode].append(restore_once(env, r["domain"], KEPT,
                                                   r["nights"][k]["checkpoint"],
                                                   mode == "flatten"))
            say(f"round {i + 1}: restore after {k} incrementals: flatten "
                f"{times[k, 'flatten'][-1]:.1f} s, chain {times[k, 'chain'][-1]:.1f} s")
            loads.append(os.getloadavg()[0])
    chain = [{"incrementals": k, "checkpoint": r["nights"][k]["checkpoint"],
              **{m: statistics.median(times[k, m]) for m in ("flatten", "chain")},
              **{f"{m}_min": min(times[k, m]) for m in ("flatten", "chain")}}
             for k in CHAIN_POINTS]
    out.write_text(json.dumps({"chain": chain, "restore_load": [min(loads), max(loads)]},
                              indent=1))


def fit(chain: list[dict], key: str) -> tuple[float, float]:
    """Least squares restore seconds = a + b * incrementals; return (a, b)."""
    xs = [c["incrementals"] for c in chain]
    ys = [c[key] for c in chain]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB"


def model(chain: list[dict], key: str) -> tuple[float, float, float]:
    """From restore times of the same disk after k incrementals (each holding
    NIGHTLY bytes, the full DISK bytes), return (fixed seconds per archive,
    bytes per second, seconds per link), assuming time = archives x fixed +
    bytes / rate: a0 = c + DISK/r and the slope b = c + NIGHTLY/r."""
    a0, b = fit(chain, key)
    rate = (DISK - NIGHTLY) / (a0 - b)
    return b - NIGHTLY / rate, rate, b


def report(r: dict) -> str:
    nights, chain = r["nights"], r["chain"]
    by_night = {n["night"]: n for n in nights}
    fulls = [n for n in nights if n["level"] == "full"]
    read_total = sum(n["read"] for n in nights)
    deleted = sum(n["deleted"] for n in nights)
    last = nights[-1]
    out = [
        "# Living with a VM for 90 nights (issue 9)",
        "",
        f"Measured {r['when']} by `make bench-retention` (`.venv/bin/python "
        "bench/retention.py`), which regenerates this file. What it runs is in the "
        "docstring of bench/retention.py: a paused domain without OS, its 1 GiB qcow2 disk "
        "full of incompressible data, 2% of it rewritten each night (half 64 KiB writes "
        "scattered over the disk, half 1 MiB runs), then what contrib/systemd/borg-vm@.service "
        f"runs: `borg-vm backup --full-every {FULL_EVERY}` and `borg-vm prune "
        f"{' '.join(KEEP)}`, nights 24 h apart on a fake clock (libfaketime), {len(nights)} "
        f"nights (1-min load of the machine when they ended: {r['load']:.1f}, 2 cores). "
        "`retention.py --restores` measures the restores again alone. Sizes are shown as measured and x100 (the README's 100 GiB disk with "
        "2 GiB of changes a day): data and deduplication scale with the disk, Borg's "
        "metadata a little less. The writes are uniformly random: the worst case for what "
        "a new full stores (a guest that rewrites the same hot blocks night after night "
        "changes fewer chunks between fulls).",
        "",
        "## Storage and nightly reads",
        "",
        "| night | backup | read | x100 | repository after prune + compact | x100 | archives deleted so far |",
        "|---|---|---|---|---|---|---|",
    ]
    so_far = 0
    for n in nights:
        so_far += n["deleted"]
        if "repo_bytes" in n:
            out.append(f"| {n['night']} | {n['level']} | {lab.mib(n['read'])} | "
                       f"{gib(n['read'] * SCALE)} | {lab.mib(n['repo_bytes'])} | "
                       f"{gib(n['repo_bytes'] * SCALE)} | {so_far} |")
    inc_reads = [n["read"] for n in nights if n["level"] == "inc"]
    added = []
    for f in fulls[1:]:
        before, after = by_night.get(f["night"] - 1), by_night[f["night"]]
        if before and "repo_bytes" in before and "repo_bytes" in after:
            added.append((f["night"], after["repo_bytes"] - before["repo_bytes"],
                          after["backup_s"]))
    out += [
        "",
        f"- {len(fulls)} full backups (nights {', '.join(str(f['night']) for f in fulls)}), "
        f"{len(inc_reads)} incrementals reading {lab.mib(statistics.median(inc_reads))} "
        f"each (median; x100: {gib(statistics.median(inc_reads) * SCALE)}).",
        f"- Read over {len(nights)} nights: {gib(read_total)} (x100: "
        f"{gib(read_total * SCALE)}); a nightly `borg create --read-special` of the image "
        f"reads {gib(DISK * len(nights))} (x100: {gib(DISK * len(nights) * SCALE)}); with "
        "one chain for ever (no `--full-every`) borg-vm would read "
        f"{gib(DISK + sum(inc_reads) + NIGHTLY * (len(fulls) - 1))} (x100: "
        f"{gib((DISK + sum(inc_reads) + NIGHTLY * (len(fulls) - 1)) * SCALE)}).",
    ]
    for night, grew, seconds in added:
        out.append(f"- The new chain's full on night {night} read the whole disk in "
                   f"{seconds:.1f} s (the first full: {fulls[0]['backup_s']:.1f} s) and "
                   f"added {lab.mib(grew)} to the repository (x100: {gib(grew * SCALE)}): "
                   "what changed since the previous full, in Borg chunks; the rest "
                   "deduplicates.")
    out += [
        f"- Prune deleted {deleted} archives in all; after night {last['night']} the "
        f"repository holds {lab.mib(last['repo_bytes'])} (x100: "
        f"{gib(last['repo_bytes'] * SCALE)}).",
        "",
        "## Restore time against chain length",
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
    lo, hi = r["restore_load"]
    out += ["", f"The 1-minute load average during these restores was {lo:.1f} to {hi:.1f} "
            "(2 cores); every round visits every chain length, in a rotated order."]
    if len(chain) >= 2:
        out += ["", "Fitted (least squares over the medians) as time = archives x a fixed "
                "cost + bytes / rate, and extrapolated with that fit to the 100 GiB disk "
                "(an extrapolation, not a measurement):", "",
                "| restore | fixed s per archive | rate | s per incremental here | "
                "x100: full alone | x100: +29 incrementals | x100: +89 | x100: +364 |",
                "|---|---|---|---|---|---|---|---|"]
        for key, label in (("flatten", "--flatten"), ("chain", "chain")):
            c, rate, b = model(chain, key)
            if c < 0 or rate <= 0:
                out.append(f"| {label} | the medians do not fit the model (too noisy) "
                           "| | | | | | |")
                continue
            def t(k, c=c, rate=rate):
                return (1 + k) * c + (DISK + k * NIGHTLY) * SCALE / rate
            out.append(f"| {label} | {c:.2f} | {lab.mib(rate)}/s | {b:.2f} | "
                       f"{t(0) / 60:.0f} min | {t(29) / 60:.0f} min ({t(29) / t(0):.2f} x) | "
                       f"{t(89) / 60:.0f} min ({t(89) / t(0):.2f} x) | "
                       f"{t(364) / 60:.0f} min ({t(364) / t(0):.2f} x) |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
