"""K hypervisors each writing one Borg 1.4 repository themselves, against one
backup host writing it for them (issue 24), written to bench/FLEET.md by
`make bench-fleet` (`--quick`: bench/work/quick/FLEET.md). Not a test: nothing
here asserts a timing.

A Borg 1.4 repository takes one writer at a time, and each client keeps a
cache of what the repository holds: a client that finds archives it did not
write (another hypervisor's, since its own last run) first fetches their
indexes and merges them into its cache ("re-sync"), and a client's borg-vm
finds the domain's latest archive among archives it did not see written.
With one backup host, every archive is its own.

For K = 2 and 4: K paused domains without OS, each on its own disk of
incompressible data (512 MiB; --quick: 128 MiB), one night a full of each,
then nights of 2% rewritten on every disk (lab.nightly) and an incremental
of each (6 nights; --quick: 3), both ways, into a fresh encrypted Borg 1.4
repository each. A domain's checkpoints follow one repository, so each way
has its own K domains: the same data, the same writes. The ways:

- "each hypervisor": K borg-vm runs a night, one after another (the lock
  allows no more), each as a host of its own: its own BORG_BASE_DIR, so its
  own Borg cache and security directory, borg-vm's cache of what it saw, and
  its authentication key;
- "one backup host": one `borg-vm backup D1..DK` a night, one host for all.

The same domains and writes serve both ways, which take turns going first
each night. Wall time of each command; a night's total is what the
repository is busy for.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
import report  # noqa: E402
import repos  # noqa: E402
from generations import disk_image  # noqa: E402
from lab import MIB, say  # noqa: E402
from report import med, table  # noqa: E402

SEED = 24
HOSTS = (2, 4)
EACH, ONE = "each hypervisor", "one backup host"
GEN = repos.BORG1


@dataclass(frozen=True)
class Setup:
    disk: int
    nights: int
    quick: bool


FULL = Setup(disk=512 * MIB, nights=6, quick=False)
QUICK = Setup(disk=128 * MIB, nights=3, quick=True)


def main() -> int:
    args, out = lab.report_args(__doc__, "FLEET.md",
                                "smaller disks, 3 nights, into bench/work/quick/")
    if args.render:
        out.write_text(render(json.loads(args.render.read_text())))
        return 0
    setup = QUICK if args.quick else FULL
    work = lab.fresh_work(setup.quick, "fleet")
    env = lab.borg_env(work / "base")
    r = {"setup": asdict(setup), "machine": report.machine(env),
         "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    bench = lab.Lab()
    try:
        # A domain's checkpoints follow one repository: each way has its own
        # domains, on the same data, given the same writes.
        guests = {way: [bench.guest([disk_image(work, f"{tag}{i}", setup.disk, f"fleet-{i}")])
                        for i in range(max(HOSTS))]
                  for way, tag in ((EACH, "each"), (ONE, "one"))}
        r["rows"] = [row for k in HOSTS
                     for row in fleet(work, {way: gs[:k] for way, gs in guests.items()}, setup)]
    finally:
        bench.close()
    r["total_seconds"] = lab.elapsed()
    (work / "results.json").write_text(json.dumps(r, indent=1))
    out.write_text(render(r))
    say(f"wrote {out}")
    return 0


def host_env(work: Path, name: str) -> dict:
    """The environment of a host of its own: Borg's and borg-vm's state under
    work/name (BORG_BASE_DIR), borg-vm running Borg 1.4."""
    return GEN.env(lab.borg_env(work / name))


def fleet(work: Path, guests: dict[str, list[lab.Guest]], setup: Setup) -> list[dict]:
    """The nights of K domains (guests: K for each way) both ways; return one row
    per (night, way) with each command's seconds."""
    k = len(guests[EACH])
    say(f"{k} hypervisors: {lab.mib(setup.disk)} disks, {setup.nights} nights")
    envs = {EACH: [host_env(work / f"k{k}", f"hv{i}") for i in range(k)],
            ONE: [host_env(work / f"k{k}", "backup-host")]}
    repo = {way: GEN.init(work / f"k{k}-{i}.repo", envs[way][0])
            for i, way in enumerate((EACH, ONE))}
    rngs = {way: [random.Random(SEED + i) for i in range(k)] for way in guests}
    rows = []
    for n in range(setup.nights):
        for way in guests if n else ():
            for g, rng in zip(guests[way], rngs[way]):
                g.write_many(lab.nightly(rng, setup.disk), rng, work / "scratch")
                g.flush()
        level = "inc" if n else "full"
        for way in ((EACH, ONE) if n % 2 == 0 else (ONE, EACH)):
            if way == EACH:
                runs = [backup(env, [g.name], repo[way], level)
                        for g, env in zip(guests[way], envs[way])]
            else:
                runs = [backup(envs[way][0], [g.name for g in guests[way]], repo[way], level)]
            rows.append({"hosts": k, "night": n, "way": way, "seconds": runs})
            say(f"{k} hypervisors, night {n}, {way}: "
                f"{' + '.join(f'{s:.2f}' for s in runs)} s")
    return rows


def backup(env: dict, names: list[str], repo: Path, level: str) -> float:
    """Seconds of one `borg-vm backup NAMES`; raise RuntimeError if a domain's
    backup was not at level."""
    t = lab.timed([lab.BORG_VM, "backup", *names, "--repo", repo, "--json", "--no-progress",
                   "--chunk-size", str(GEN.chunk), "--full-every", "never"], env)
    levels = [json.loads(line)["level"] for line in t.stdout.decode().splitlines()
              if line.strip()]
    if levels != [level] * len(names):
        raise RuntimeError(f"expected {len(names)} x {level}, got {levels}")
    return t.seconds


# -- the report -----------------------------------------------------------------

def totals(r: dict, k: int, way: str, incremental: bool) -> list[float]:
    """A night's total seconds, per night, for k hosts the one way."""
    return [sum(row["seconds"]) for row in r["rows"]
            if row["hosts"] == k and row["way"] == way and (row["night"] > 0) == incremental]


def render(r: dict) -> str:
    s = Setup(**r["setup"])
    rows = []
    for k in HOSTS:
        for way in (EACH, ONE):
            full, inc = totals(r, k, way, False), totals(r, k, way, True)
            rows.append([k, way, f"{med(full):.2f}", f"{med(inc):.2f}",
                         f"{min(inc):.2f} - {max(inc):.2f}", f"{med(inc) / k:.2f}"])
    ratio = {k: med(totals(r, k, EACH, True)) / med(totals(r, k, ONE, True)) for k in HOSTS}
    return f"""# K hypervisors writing one Borg 1.4 repository, or one backup host for them

Generated by `make bench-fleet` (`bench/fleet.py`{' --quick' if s.quick else ''}) on
{r['started']}; {r['total_seconds'] / 60:.0f} minutes. What is measured and how:
the docstring of `bench/fleet.py`. {lab.mib(s.disk)} disks, {s.nights} nights (the
first a full of each domain, then 2% of each disk rewritten a night).

## A night's time the repository is busy

Seconds; "each hypervisor": the sum of its K runs, one after another (the
repository's lock takes one writer at a time); "one backup host": its one
command. Incremental nights: the median and the range over {s.nights - 1} nights.

{table(["K", "who writes", "night of fulls", "incremental night (median)",
        "range", "per domain"], rows)}
Incremental nights, each hypervisor against one backup host:
{", ".join(f"K = {k}: **{ratio[k]:.2f} x**" for k in HOSTS)}.

{report.machine_table(r['machine'])}
"""


if __name__ == "__main__":
    sys.exit(main())
