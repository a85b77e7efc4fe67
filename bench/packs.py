"""Read amplification of aged Borg 2 (2.0.0b23) image archives: whole-pack loads
in get_many (issue 22), run by `make bench-packs`, written to bench/PACKS.md.
Why borg-vm's Borg 2 borgs write packs of 2 MB (adapters/borg/borg2.py
PACK_SIZE). Borg alone, no borg-vm, no libvirt.

Run with the Borg 2 venv's python (it doubles as the borg wrapper that records
/proc/self/io and counts pack loads):

    .venv/borg2/bin/python bench/packs.py [--nights 30] [--size-mib 1024]
        [--configs a,b,c,d,e] [--ranged] [--keep]

Per config: fresh repo (repokey-aes-ocb), a 1 GiB random file (deterministic RNG), night 0 full image,
nights 1..N rewrite 2% in place (half 64 KiB writes, half 1 MiB runs, 64 KiB aligned, seeded RNG) and
`borg create --map ... --reuse-from aid:<prev>`. Then extract night 0 and night N cold/warm, count packs.
Results go to bench/work/packs/results.json (per run) and bench/PACKS.md.
"""
import argparse
import atexit
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BORG_PY = os.path.join(ROOT, ".venv", "borg2", "bin", "python")
BORG = os.path.join(ROOT, ".venv", "borg2", "bin", "borg")
WORK = os.path.join(ROOT, "bench", "work", "packs")
KiB, MiB = 1024, 1024 * 1024


# ---------------------------------------------------------------- wrapper mode (runs inside borg's process)
def borg_wrapper(argv):
    """`exp.py _borg ARGS`: run borg in this process; at exit dump /proc/self/io + pack-load counters.

    PACKEXP_IO_OUT=path   where to write the JSON
    PACKEXP_RANGED=1      monkeypatch Repository.get_many to use ranged reads (self.get) per chunk
    The whole-pack path is re-implemented 1:1 (same logic as b23's _cached_pack_reader) only to count
    pack loads; per chunk it adds one python call, i.e. tens of ms for 16k chunks.
    """
    from borg import repository as R
    from borg.helpers import bin_to_hex

    st = {"pack_loads": 0, "pack_load_bytes": 0, "distinct": set(), "ranged_gets": 0}

    def _cached_pack_reader(self, pack_id):
        reader = self._pack_cache.get(pack_id)
        if reader is None:
            data = self.store.load("packs/" + bin_to_hex(pack_id))
            st["pack_loads"] += 1
            st["pack_load_bytes"] += len(data)
            st["distinct"].add(pack_id)
            reader = R.PackReader(pack_id=pack_id, pack_contents=data)
            self._pack_cache[pack_id] = reader
        return reader

    R.Repository._cached_pack_reader = _cached_pack_reader

    if os.environ.get("PACKEXP_RANGED") == "1":

        def get_many(self, ids, read_data=True, raise_missing=True):
            for id_ in ids:
                e = self.chunks.get(id_)
                if e is not None:
                    st["distinct"].add(e.pack_id)
                st["ranged_gets"] += 1
                yield self.get(id_, read_data=read_data, raise_missing=raise_missing)

        R.Repository.get_many = get_many

    out = os.environ.get("PACKEXP_IO_OUT")

    def dump():
        if not out:
            return
        with open("/proc/self/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        res = {k: int(v) for k, v in io.items()}
        res.update(
            pack_loads=st["pack_loads"],
            pack_load_bytes=st["pack_load_bytes"],
            distinct_packs=len(st["distinct"]),
            ranged_gets=st["ranged_gets"],
        )
        with open(out, "w") as f:
            json.dump(res, f)

    atexit.register(dump)
    sys.argv = ["borg"] + argv
    from borg.archiver import main

    main()


# ---------------------------------------------------------------- helpers
def env_for(cfg):
    e = dict(os.environ)
    e["BORG_PASSPHRASE"] = "packexp"
    e["BORG_BASE_DIR"] = os.path.join(WORK, "borgbase")  # isolate borg's cache/config from ~root
    e["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
    e["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
    for k in ("BORG_PACK_MAX_SIZE", "BORG_PACK_MAX_COUNT"):
        e.pop(k, None)
    e.update(cfg.get("env", {}))
    return e


def run(cmd, env, **kw):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"FAILED ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def gen_file(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    os.sync()


def night_writes(size, night, seed):
    """Deterministic list of (offset, length) writes for a night: 2% of size, half 64 KiB, half 1 MiB runs."""
    rng = random.Random(seed * 1000003 + night)
    half = size * 0.02 / 2
    n_small = max(1, round(half / (64 * KiB)))
    n_big = max(1, round(half / MiB))
    blocks = size // (64 * KiB)
    w = [(rng.randrange(blocks) * 64 * KiB, 64 * KiB) for _ in range(n_small)]
    big_blocks = (size - MiB) // (64 * KiB) + 1
    w += [(rng.randrange(big_blocks) * 64 * KiB, MiB) for _ in range(n_big)]
    return w, rng


def apply_writes(path, writes, rng):
    with open(path, "r+b") as f:
        for off, ln in writes:
            f.seek(off)
            f.write(rng.randbytes(ln))
    os.sync()


def map_lines(size, writes, align):
    rs = []
    for off, ln in writes:
        s = off // align * align
        e = min(size, -(-(off + ln) // align) * align)
        rs.append([s, e])
    rs.sort()
    merged = []
    for s, e in rs:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    lines, pos = [], 0
    for s, e in merged:
        if s > pos:
            lines.append(f"{pos} {s - pos} same")
        lines.append(f"{s} {e - s} data")
        pos = e
    if pos < size:
        lines.append(f"{pos} {size - pos} same")
    data_bytes = sum(e - s for s, e in merged)
    return "\n".join(lines) + "\n", data_bytes


def packs_stats(repo):
    sizes = []
    for root, _, files in os.walk(os.path.join(repo, "packs")):
        for fn in files:
            sizes.append(os.path.getsize(os.path.join(root, fn)))
    sizes.sort()
    return {
        "count": len(sizes),
        "min": sizes[0] if sizes else 0,
        "median": int(statistics.median(sizes)) if sizes else 0,
        "max": sizes[-1] if sizes else 0,
        "total": sum(sizes),
    }


def du(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])


def extract(repo, aid, env, cold, ranged=False, sha=False):
    """One `borg extract --stdout aid:X`, stdout to /dev/null (or hashed); returns timing + io counters."""
    if cold:
        drop_caches()
    io_out = os.path.join(WORK, "io.json")
    if os.path.exists(io_out):
        os.unlink(io_out)
    e = dict(env)
    e["PACKEXP_IO_OUT"] = io_out
    if ranged:
        e["PACKEXP_RANGED"] = "1"
    cmd = [BORG_PY, os.path.abspath(__file__), "_borg", "-r", repo, "extract", "--stdout", f"aid:{aid}"]
    t0 = time.monotonic()
    if sha:
        h = hashlib.sha256()
        p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while True:
            b = p.stdout.read(4 * MiB)
            if not b:
                break
            h.update(b)
        err = p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
    else:
        with open(os.devnull, "wb") as dn:
            p = subprocess.Popen(cmd, env=e, stdout=dn, stderr=subprocess.PIPE)
            err = p.stderr.read()
            _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"extract failed rc={p.returncode}: {err[-3000:]}")
    with open(io_out) as f:
        io = json.load(f)
    res = {
        "wall": round(wall, 2),
        "user": round(ru.ru_utime, 2),
        "sys": round(ru.ru_stime, 2),
        "rchar": io["rchar"],
        "read_bytes": io["read_bytes"],
        "ru_inblock_bytes": ru.ru_inblock * 512,
        "maxrss_mb": round(ru.ru_maxrss / 1024),
        "pack_loads": io["pack_loads"],
        "pack_load_bytes": io["pack_load_bytes"],
        "distinct_packs": io["distinct_packs"],
    }
    if sha:
        res["sha256"] = h.hexdigest()
    return res


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest()


CONFIGS = {
    "a": {"desc": "default packs (50 MB)", "cs": 65536},
    "b": {"desc": "BORG_PACK_MAX_SIZE=8000000", "cs": 65536, "env": {"BORG_PACK_MAX_SIZE": "8000000"}},
    "c": {"desc": "BORG_PACK_MAX_SIZE=2000000", "cs": 65536, "env": {"BORG_PACK_MAX_SIZE": "2000000"}, "compact": True},
    "d": {"desc": "BORG_PACK_MAX_COUNT=1", "cs": 65536, "env": {"BORG_PACK_MAX_COUNT": "1"}, "compact": True},
    "e": {"desc": "default packs, fixed,262144 chunks", "cs": 262144},
}


def run_config(name, args, log):
    cfg = CONFIGS[name]
    cs = cfg["cs"]
    size = args.size_mib * MiB
    env = env_for(cfg)
    cdir = os.path.join(WORK, name)
    shutil.rmtree(cdir, ignore_errors=True)
    os.makedirs(cdir)
    repo = os.path.join(cdir, "repo")
    img = os.path.join(cdir, "disk.img")
    res = {"config": name, "desc": cfg["desc"], "chunk": cs, "nights": args.nights, "size": size}
    t_cfg = time.monotonic()
    run([BORG, "-r", repo, "repo-create", "-e", "aes256-ocb", "--key-location", "repokey"], env)
    gen_file(img, size, args.seed)
    ids, create_times, data_bytes = [], [], []
    for night in range(args.nights + 1):
        if night == 0:
            mp, db = f"0 {size} data\n", size
        else:
            writes, rng = night_writes(size, night, args.seed)
            apply_writes(img, writes, rng)
            mp, db = map_lines(size, writes, cs)
        mpath = os.path.join(cdir, "map.txt")
        with open(mpath, "w") as f:
            f.write(mp)
        cmd = [BORG, "-r", repo, "create", "--json", "--map", mpath]
        if night:
            cmd += ["--reuse-from", f"aid:{ids[-1]}"]
        cmd += ["--chunker-params", f"fixed,{cs}", "--files-cache", "disabled", "--compression", "lz4", f"img-{night}", "disk.img"]
        t0 = time.monotonic()
        r = run(cmd, env, cwd=cdir)
        dt = time.monotonic() - t0
        ids.append(json.loads(r.stdout)["archive"]["id"])
        create_times.append(round(dt, 2))
        data_bytes.append(db)
        log(f"[{name}] night {night}: create {dt:.2f}s, data {db / MiB:.1f} MiB")
    res["create_s_night0"] = create_times[0]
    res["create_s_nightly_median"] = statistics.median(create_times[1:]) if len(create_times) > 1 else None
    res["create_s_total"] = round(sum(create_times), 1)
    res["map_data_mib_per_night_median"] = round(statistics.median(data_bytes[1:]) / MiB, 2) if args.nights else None

    # verify newest
    v = extract(repo, ids[-1], env, cold=False, sha=True)
    fsha = sha_file(img)
    res["verify_ok"] = v["sha256"] == fsha
    log(f"[{name}] verify newest: {'OK' if res['verify_ok'] else 'MISMATCH'}")
    if not res["verify_ok"]:
        raise SystemExit("verify failed")
    os.unlink(img)  # not needed any more; keeps the page cache / disk clean

    res["packs"] = packs_stats(repo)
    res["repo_du"] = du(repo)
    for label, aid in (("n0", ids[0]), ("nN", ids[-1])):
        res[f"{label}_cold"] = extract(repo, aid, env, cold=True)
        res[f"{label}_warm"] = extract(repo, aid, env, cold=False)
        log(f"[{name}] {label}: cold {res[f'{label}_cold']} warm {res[f'{label}_warm']}")
    if cfg.get("compact"):
        t0 = time.monotonic()
        run([BORG, "-r", repo, "compact"], env)
        res["compact_s"] = round(time.monotonic() - t0, 1)
        res["packs_after_compact"] = packs_stats(repo)
        res["repo_du_after_compact"] = du(repo)
        res["nN_cold_after_compact"] = extract(repo, ids[-1], env, cold=True)
        res["nN_warm_after_compact"] = extract(repo, ids[-1], env, cold=False)
        log(f"[{name}] after compact: packs {res['packs_after_compact']} cold {res['nN_cold_after_compact']}")
    if args.ranged and name in args.ranged_configs.split(","):
        res["nN_cold_ranged"] = extract(repo, ids[-1], env, cold=True, ranged=True)
        res["nN_warm_ranged"] = extract(repo, ids[-1], env, cold=False, ranged=True)
        res["n0_cold_ranged"] = extract(repo, ids[0], env, cold=True, ranged=True)
        log(f"[{name}] ranged: nN cold {res['nN_cold_ranged']} n0 cold {res['n0_cold_ranged']}")
    res["config_wall_s"] = round(time.monotonic() - t_cfg, 1)
    if not args.keep:
        shutil.rmtree(cdir, ignore_errors=True)
    return res


def fmt_mb(b):
    return f"{b / 1e6:.0f}" if b >= 1e6 else f"{b / 1e6:.2f}"


def write_report(results, args, path, baseline):
    def ex(r):
        return f"{r['wall']:.1f}"

    L = []
    L.append("# Borg 2 (2.0.0b23) image extract read amplification vs pack size\n")
    L.append("Rerun (as root; took 27 min on this 2-core VM; needs ~4 GB free in bench/work; configs run one after another, each repo deleted when done):\n")
    L.append("```\n" + " ".join(["make bench-packs  #", ".venv/borg2/bin/python", "bench/packs.py"] + sys.argv[1:]) + "\n```\n")
    n = args.nights
    L.append(
        f"Setup: {args.size_mib} MiB random file, night 0 full image, nights 1..{n} rewrite 2% in place "
        "(half 64 KiB writes, half 1 MiB runs, 64 KiB aligned, seeded), `borg create --map --reuse-from aid:<prev> "
        "--chunker-params fixed,CHUNK --files-cache disabled --compression lz4`, aes256-ocb (repokey; b23 name of repokey-aes-ocb). "
        "Extract = `borg extract --stdout aid:X > /dev/null`; cold = `sync; echo 3 > /proc/sys/vm/drop_caches` "
        "first, warm = repeated right after. rchar/read_bytes from the borg process's /proc/self/io at exit "
        "(MB = 10^6 bytes). 'loads' = whole-pack loads by Repository.get_many (cache misses of the 3-pack LRU), "
        "'packs used' = distinct packs the archive's chunks live in. 2 cores, Debian 12, ext4 on virtio disk.\n"
    )
    L.append(
        f"| config | packs: count (min/median/max MB) | repo du MB | night 0 cold / warm s | night 0 rchar MB, read_bytes MB, loads (packs used) "
        f"| night {n} cold / warm s | night {n} rchar MB, read_bytes MB, loads (packs used) | night {n}/night 0 cold | after compact |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["packs"]
        c0, w0, cN, wN = r["n0_cold"], r["n0_warm"], r["nN_cold"], r["nN_warm"]
        ac = "-"
        if "nN_cold_after_compact" in r:
            pa = r["packs_after_compact"]
            a = r["nN_cold_after_compact"]
            ac = (
                f"{pa['count']} packs ({fmt_mb(pa['min'])}/{fmt_mb(pa['median'])}/{fmt_mb(pa['max'])}), du {fmt_mb(r['repo_du_after_compact'])}; "
                f"night {n} cold {ex(a)} s / warm {ex(r['nN_warm_after_compact'])} s, rchar {fmt_mb(a['rchar'])}, loads {a['pack_loads']} ({a['distinct_packs']})"
            )
        L.append(
            f"| {r['config']}: {r['desc']}, chunk {r['chunk'] // 1024} KiB | {p['count']} ({fmt_mb(p['min'])}/{fmt_mb(p['median'])}/{fmt_mb(p['max'])}) "
            f"| {fmt_mb(r['repo_du'])} | {ex(c0)} / {ex(w0)} | {fmt_mb(c0['rchar'])}, {fmt_mb(c0['read_bytes'])}, {c0['pack_loads']} ({c0['distinct_packs']}) "
            f"| {ex(cN)} / {ex(wN)} | {fmt_mb(cN['rchar'])}, {fmt_mb(cN['read_bytes'])}, {cN['pack_loads']} ({cN['distinct_packs']}) "
            f"| {cN['wall'] / c0['wall']:.2f}x | {ac} |"
        )
    rr = [r for r in results if "nN_cold_ranged" in r]
    if rr:
        L.append("\nRanged reads (get_many monkeypatched to call self.get per chunk; no whole-pack loads):\n")
        L.append("| config | night 0 cold s, rchar MB | night N cold s, rchar MB | night N warm s | vs whole-pack night 0 cold |")
        L.append("|---|---|---|---|---|")
        for r in rr:
            a, b, w = r["n0_cold_ranged"], r["nN_cold_ranged"], r["nN_warm_ranged"]
            L.append(
                f"| {r['config']} | {ex(a)}, {fmt_mb(a['rchar'])} | {ex(b)}, {fmt_mb(b['rchar'])} | {ex(w)} | {b['wall'] / r['n0_cold']['wall']:.2f}x |"
            )
    L.append("\nCreate times (s): " + ", ".join(
        f"{r['config']}: night0 {r['create_s_night0']}, nightly median {r['create_s_nightly_median']}" for r in results))
    L.append("\nUser/sys CPU s of the extracts (cold n0 / cold nN): " + ", ".join(
        f"{r['config']}: {r['n0_cold']['user']}+{r['n0_cold']['sys']} / {r['nN_cold']['user']}+{r['nN_cold']['sys']}" for r in results))
    L.append(f"\nBaseline, cold `borg --version` through the same wrapper: {baseline['wall']} s, rchar {fmt_mb(baseline['rchar'])} MB, "
             f"read_bytes {fmt_mb(baseline['read_bytes'])} MB (interpreter + imports; included in every cold extract's numbers).")
    L.append("\nRaw numbers: bench/work/packs/results.json\n")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--configs", default="a,b,c,d,e")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--ranged", action="store_true", help="also measure ranged-read get_many (monkeypatched)")
    ap.add_argument("--ranged-configs", default="a")
    ap.add_argument("--keep", action="store_true", help="keep repos")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "PACKS.md"))
    ap.add_argument("--json", default=os.path.join(WORK, "results.json"))
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    logf = open(os.path.join(WORK, "packs.log"), "a")

    def log(msg):
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    log(f"start {sys.argv}")
    results = []
    t0 = time.monotonic()
    # baseline: what starting the interpreter + importing borg reads (cold), to subtract mentally
    drop_caches()
    bio = os.path.join(WORK, "io.json")
    e = env_for({})
    e["PACKEXP_IO_OUT"] = bio
    tb = time.monotonic()
    subprocess.run([BORG_PY, os.path.abspath(__file__), "_borg", "--version"], env=e, capture_output=True)
    with open(bio) as f:
        b = json.load(f)
    baseline = {"wall": round(time.monotonic() - tb, 2), "rchar": b["rchar"], "read_bytes": b["read_bytes"]}
    log(f"baseline cold `borg --version`: {baseline}")
    for name in args.configs.split(","):
        results.append(run_config(name, args, log))
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "baseline": baseline, "results": results}, f, indent=1)
        log(f"config {name} done, elapsed {time.monotonic() - t0:.0f}s")
    print(write_report(results, args, args.out, baseline))
    shutil.rmtree(os.path.join(WORK, "borgbase"), ignore_errors=True)
    log(f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_borg":
        borg_wrapper(sys.argv[2:])
    else:
        main()
