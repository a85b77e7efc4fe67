"""Borg 2's complete images (issue 22), measured before borg-vm builds on them:
how fast Borg 2 reads a disk's NBD export shown as a file by nbdfuse
(adapters/nbdfuse.py) against the same bytes from a local file, and what
chunk size an incremental image wants. Written to bench/BORG2.md
(`--quick`: bench/work/quick/BORG2.md). Not a test: nothing here asserts a
timing.

Scenario: a qcow2 disk (4 GiB; --quick 512 MiB), half of it incompressible
data in 4 MiB pieces, half never written, served read-only by qemu-nbd on a
unix socket, the page cache dropped before every timed step:

  1. sequential read of the whole disk, 1 MiB at a time (what Borg's fixed
     chunker does): the raw image file, and the export through nbdfuse;
  2. a full image: `borg create --map` with the data and zero ranges of the
     disk's block status, reading the raw image, then the export through
     nbdfuse (borgbackup 2.0.0b23, aes256-ocb, lz4, fixed 256 KiB chunks);
  3. an incremental image per chunk size (64 KiB, 256 KiB, 1 MiB): a full
     image, then 1% of the data rewritten in scattered 64 KiB ranges (the
     dirty-bitmap granularity), then `create --map --reuse-from` with those
     ranges as data and the rest as same, through nbdfuse. Borg re-reads every
     reference chunk a changed range touches, so it reads more than changed
     (read, below); the repository grows by the new chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
from lab import GIB, KIB, MIB, WORK, say  # noqa: E402
from report import mb, table  # noqa: E402

from borg_vm.adapters import libnbd, nbdfuse  # noqa: E402
from borg_vm.core.disk_source import Endpoint  # noqa: E402
from borg_vm.core.extent import DATA, Extent, input_map, plan_full  # noqa: E402

BORG2 = lab.BORG2
PIECE = 4 * MIB
REWRITE = 64 * KIB
REWRITE_SHARE = 0.01
CHUNKS = (64 * KIB, 256 * KIB, MIB)
FULL_CHUNK = 256 * KIB
SEED = 31


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, a 512 MiB disk")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                    help="only write the report again from a run's results.json")
    args = ap.parse_args()
    if args.render:
        out = lab.QUICK / "BORG2.md" if args.quick else lab.BENCH / "BORG2.md"
        out.write_text(render(json.loads(args.render.read_text()), args))
        return
    size = 512 * MIB if args.quick else 4 * GIB
    rounds = 1 if args.quick else args.rounds
    where = lab.QUICK if args.quick else WORK
    work = where / "borg2"
    lab.clear_work(work)
    work.mkdir(parents=True, exist_ok=True)
    env = lab.borg_env(work / "base")
    os.environ.update({k: v for k, v in env.items() if k.startswith("BORG")})

    raw, image, data = build_disk(work, size)
    sock = str(work / "nbd.sock")
    server = subprocess.Popen(["qemu-nbd", "-r", "--persistent", "--socket", sock, "-x", "vda",
                               "-f", "qcow2", str(image)])
    try:
        wait_listening(sock)
        uri = Endpoint(uri=f"nbd+unix:///vda?socket={sock}")
        results = {"size": size, "data": data, "rounds": rounds,
                   "read": sequential(raw, uri, work, rounds),
                   "full": full_images(raw, uri, sock, work, env, rounds),
                   "incremental": incrementals(image, uri, sock, work, env, size)}
    finally:
        server.terminate()
        server.wait()
    out = where / "BORG2.md" if args.quick else lab.BENCH / "BORG2.md"
    out.write_text(render(results, args))
    (work / "results.json").write_text(json.dumps(results, indent=1))
    say(f"wrote {out}")


def build_disk(work: Path, size: int) -> tuple[Path, Path, int]:
    """Return (raw file, qcow2 image, data bytes): every other 4 MiB piece data."""
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
    data = 0
    with open(raw, "r+b") as f, lab.keystream() as read:
        for at in range(0, size, 2 * PIECE):
            f.seek(at)
            f.write(read(PIECE))
            data += PIECE
    image = work / "disk.qcow2"
    lab.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image])
    return raw, image, data


def wait_listening(sock: str) -> None:
    """Return once qemu-nbd accepts connections on sock."""
    deadline = time.monotonic() + 10
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(sock)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"qemu-nbd did not listen on {sock}") from None
        time.sleep(0.02)


def cold_seconds(argv: list, env: dict | None = None) -> float:
    lab.drop_caches()
    return lab.timed(argv, env=env, discard_stdout=True).seconds


def sequential(raw: Path, uri: str, work: Path, rounds: int) -> dict:
    say("sequential reads")
    out: dict[str, list[float]] = {"raw file": [], "nbdfuse": []}
    for _ in range(rounds):
        out["raw file"].append(cold_seconds(["dd", f"if={raw}", "of=/dev/null", "bs=1M"]))
        with nbdfuse.exposed(uri, str(work / "vda")) as path:
            out["nbdfuse"].append(cold_seconds(["dd", f"if={path}", "of=/dev/null", "bs=1M"]))
    return out


def new_repo(work: Path, name: str, env: dict) -> Path:
    repo = work / name
    shutil.rmtree(repo, ignore_errors=True)
    lab.run([BORG2, "-r", repo, "repo-create", "-e", "aes256-ocb"], env=env)
    return repo


def map_file(path: Path, ranges: list[tuple[int, int, str]]) -> Path:
    path.write_text("".join(f"{s} {n} {k}\n" for s, n, k in ranges))
    return path


def create(repo: Path, name: str, directory: Path, item: str, mapf: Path, chunk: int,
           env: dict, reuse: str | None = None) -> tuple[float, str]:
    argv = [BORG2, "-r", repo, "create", "--json", "--map", mapf, "--chunker-params",
            f"fixed,{chunk}", "--files-cache", "disabled", "--compression", "lz4",
            *(["--reuse-from", f"aid:{reuse}"] if reuse else []), name, item]
    lab.drop_caches()
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        t = lab.timed(argv, env=env)
    finally:
        os.chdir(cwd)
    return t.seconds, json.loads(t.stdout)["archive"]["id"]


def allocation_map(sock: str) -> tuple[int, list[tuple[int, int, str]]]:
    with libnbd.open_unix(sock, "vda", ["base:allocation"]) as export:
        size = export.size
        return size, input_map(size, plan_full(export.block_status("base:allocation")), False)


def full_images(raw: Path, uri: str, sock: str, work: Path, env: dict, rounds: int) -> dict:
    say("full images")
    size, ranges = allocation_map(sock)
    mapf = map_file(work / "full.map", ranges)
    out: dict[str, list[float]] = {"raw file": [], "nbdfuse": []}
    for r in range(rounds):
        repo = new_repo(work, "repo-full", env)
        out["raw file"].append(create(repo, f"raw{r}", raw.parent, raw.name, mapf,
                                      FULL_CHUNK, env)[0])
        repo = new_repo(work, "repo-full", env)
        with nbdfuse.exposed(uri, str(work / "vda")) as path:
            out["nbdfuse"].append(create(repo, f"fuse{r}", work, Path(path).name, mapf,
                                         FULL_CHUNK, env)[0])
    return out


def rewrites(size: int, data: int) -> list[int]:
    """Offsets of the scattered 64 KiB rewrites, in the data pieces, sorted."""
    rng = random.Random(SEED)
    slots = [at + k * REWRITE for at in range(0, size, 2 * PIECE)
             for k in range(PIECE // REWRITE)]
    return sorted(rng.sample(slots, int(data * REWRITE_SHARE) // REWRITE))


def chunks_touched(offsets: list[int], chunk: int) -> int:
    return len({o // chunk for o in offsets} | {(o + REWRITE - 1) // chunk for o in offsets})


def repo_bytes(repo: Path) -> int:
    return sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())


def incrementals(image: Path, uri: str, sock: str, work: Path, env: dict, size: int) -> list:
    say("incremental images")
    _, full_ranges = allocation_map(sock)
    data = sum(n for _, n, k in full_ranges if k == DATA)
    offsets = rewrites(size, data)
    inc_ranges = input_map(size, [Extent(o, REWRITE, DATA) for o in offsets], True)
    rows = []
    for chunk in CHUNKS:
        changed = work / "changed.qcow2"
        lab.run(["cp", "--reflink=auto", image, changed])
        repo = new_repo(work, "repo-inc", env)
        with nbdfuse.exposed(uri, str(work / "vda")) as path:
            _, full_id = create(repo, "full", work, Path(path).name,
                                map_file(work / "full.map", full_ranges), chunk, env)
        before = repo_bytes(repo)
        rng = random.Random(SEED + 1)
        for i in range(0, len(offsets), 200):   # a qemu-io per batch of writes
            lab.run(["qemu-io", "-f", "qcow2", *[a for o in offsets[i:i + 200] for a in (
                "-c", f"write -P {rng.randrange(1, 255)} {o} {REWRITE}")], changed])
        csock = str(work / "changed.sock")
        server = subprocess.Popen(["qemu-nbd", "-r", "--persistent", "--socket", csock,
                                   "-x", "vda", "-f", "qcow2", str(changed)])
        try:
            wait_listening(csock)
            with nbdfuse.exposed(Endpoint(uri=f"nbd+unix:///vda?socket={csock}"), str(work / "vda")) as path:
                seconds, _ = create(repo, "inc", work, Path(path).name,
                                    map_file(work / "inc.map", inc_ranges), chunk, env,
                                    reuse=full_id)
        finally:
            server.terminate()
            server.wait()
        rows.append({"chunk": chunk, "seconds": seconds, "changed": len(offsets) * REWRITE,
                     "read": chunks_touched(offsets, chunk) * chunk,
                     "growth": repo_bytes(repo) - before})
        changed.unlink()
    return rows


def med(v: list[float]) -> str:
    return f"{statistics.median(v):.2f} s"


def render(r: dict, args: argparse.Namespace) -> str:
    size, data = r["size"], r["data"]
    rate = {k: [data / s / MIB for s in v] for k, v in r["full"].items()}
    lines = [
        "# Borg 2 images: nbdfuse and chunk size (issue 22)", "",
        f"Measured by `{'make bench-borg2-quick' if args.quick else 'make bench-borg2'}` "
        f"(bench/borg2.py{' --quick' if args.quick else ''}) on this machine: a "
        f"{size // MIB:,} MiB qcow2 disk with {data // MIB:,} MiB of incompressible data, "
        f"served by qemu-nbd, page cache dropped before each step; medians of "
        f"{r['rounds']} round(s). Borg: {lab.run([BORG2, '--version']).stdout.decode().strip()}.",
        "", "## Sequential read of the whole disk, 1 MiB at a time", "",
        table(["from", "time", "MiB/s"],
              [[k, med(v), f"{size / statistics.median(v) / MIB:,.0f}"]
               for k, v in r["read"].items()]),
        f"## A full image (`borg create --map`, data and zero ranges, fixed "
            f"{FULL_CHUNK // KIB} KiB chunks)", "",
        table(["input", "time", "data MiB/s"],
              [[k, med(v), f"{statistics.median(rate[k]):,.0f}"] for k, v in r["full"].items()]),
        "## An incremental image through nbdfuse, by chunk size", "",
        f"{REWRITE_SHARE:.0%} of the data rewritten in scattered {REWRITE // KIB} KiB ranges "
        "(each with one byte repeated, so lz4 stores the new ranges small); `read` is what "
        "Borg reads: every reference chunk a changed range touches, re-read whole; the "
        "repository grows by the re-stored chunks, mostly the old incompressible bytes "
        "around each change.", "",
        table(["chunk", "time", "changed MiB", "read MiB", "read / changed",
               "repository growth MiB"],
              [[f"{x['chunk'] // KIB} KiB", f"{x['seconds']:.2f} s", mb(x["changed"]),
                mb(x["read"]), f"{x['read'] / x['changed']:.2f}", mb(x["growth"])]
               for x in r["incremental"]]),
        ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
