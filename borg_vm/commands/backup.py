"""borg-vm backup: back up domains, running or shut off, one archive each."""

from __future__ import annotations

import argparse
import fnmatch
import logging

from borg_vm.adapters import libvirt as virt
from borg_vm.adapters.borg import Repository
from borg_vm.commands import options
from borg_vm.core import plan
from borg_vm.core.compression import parse_compression
from borg_vm.errors import Interrupted, UsageError, describe, report
from borg_vm.format import names as fmt
from borg_vm.services import hosts
from borg_vm.services.backup import parallel, quiesce
from borg_vm.services.backup.run import BackupOptions, backup

log = logging.getLogger(__name__)
FULL_EVERY_ENV = "BORG_VM_FULL_EVERY"


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    b = sub.add_parser("backup", parents=parents,
                       help="back up domains (running or shut off), one archive each",
                       description="Back up domains, running or shut off: a full backup the first "
                       "time, then incrementals of what changed since the last checkpoint.")
    b.add_argument("domains", nargs="*", metavar="DOMAIN")
    b.add_argument("--all", action="store_true",
                   help="back up every domain libvirt knows, running or shut off "
                   "(with --match: those whose name matches)")
    b.add_argument("--match", metavar="GLOB",
                   help="with --all, only domains whose name matches GLOB (fnmatch)")
    b.add_argument("--jobs", type=options.type_of(options.count), default=1, metavar="N",
                   help="back up up to N domains at once, each in a borg-vm process of its "
                   "own (a Borg 2 repository only: a Borg 1.4 repository takes one writer "
                   "at a time; default: 1). With N > 1 there is no progress bar")
    # One domain of a --jobs run: the child's argv is its parent's with this added.
    b.add_argument(parallel.ONLY, metavar="DOMAIN", help=argparse.SUPPRESS)
    options.add_repository_options(b, libvirt=True)
    b.add_argument("--level", choices=plan.REQUESTS, default=plan.AUTO,
                   help="auto: incremental when possible, else full (default); "
                   "full; inc: incremental or fail")
    b.add_argument("--full-every", type=options.type_of(plan.FullEvery.parse),
                   metavar="AGE|COUNT|never",
                   help="with --level auto, start a new chain (a full backup) when the "
                   "current one's full is older than AGE (as borg: e.g. 30d, 2w, 12H, 1m = "
                   "a month) or it has COUNT incrementals, so that prune can free old chains "
                   "and restores stay fast; never: one chain for ever "
                   f"(default: ${FULL_EVERY_ENV}, else {plan.DEFAULT_FULL_EVERY})")
    b.add_argument("--exclude-disk", action="append", default=[], metavar="TARGET",
                   help="leave this disk (e.g. vdb) out; repeatable")
    b.add_argument("--scratch-dir", type=options.type_of(options.path), metavar="DIR",
                   help="where the backup job keeps its scratch (fleecing) files "
                   "(default: the private run directory under /run/borg-vm)")
    b.add_argument("--compression", default="lz4", metavar="SPEC",
                   help="borg compression spec: none, lz4, zstd[,1-22], zlib[,0-9], "
                   "lzma[,0-9], auto,SPEC or obfuscate,N,SPEC (default: lz4; "
                   "see 'borg help compression')")
    b.add_argument("--chunk-size", type=options.type_of(options.power_of_two_size),
                   metavar="SIZE",
                   help="Borg's fixed chunk size, which data members are aligned to "
                   "(power of two, 64K..16M; default: 256K, and 64K for the complete "
                   "images of a Borg 2 repository)")
    b.add_argument("--read-alignment", type=options.type_of(options.power_of_two_size),
                   default=0, metavar="SIZE",
                   help="widen dirty data extents to SIZE boundaries: more reads, more "
                   "whole-chunk dedup (power of two >= 64K, or 0 for none: the default)")
    b.add_argument("--quiesce", action="store_const", const=quiesce.ON,
                   help="freeze a running guest's filesystems through its "
                   "QEMU guest agent (channel org.qemu.guest_agent.0) while the backup "
                   "job starts, for a consistent backup; without an agent it is an "
                   "error; with --quiesce=try a warning, and the backup goes on unfrozen. "
                   f"The guest is thawed after at most ${quiesce.FREEZE_TIMEOUT_ENV} "
                   f"seconds (default {quiesce.FREEZE_TIMEOUT:g}), also if borg-vm dies")
    # GNU-style optional value: "--quiesce=try" is an option of its own, so a
    # DOMAIN after a bare --quiesce is never taken for its value.
    b.add_value_spelling("--quiesce", "try", dest="quiesce", action="store_const",
                         const=quiesce.TRY)
    options.add_progress_option(b)
    b.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UsageError(detail="--jobs must be at least 1")
    chunk = args.chunk_size
    if chunk is not None and not options.MIN_CHUNK <= chunk <= options.MAX_CHUNK:
        raise UsageError(detail=f"--chunk-size must be between 64K and 16M, not {args.chunk_size}")
    problem = _selection_problem(args.domains, args.all, args.match)
    if problem:
        raise UsageError(detail=problem)
    borg = options.repository(args)
    opts = BackupOptions(level=args.level, exclude_disks=tuple(args.exclude_disk),
                         scratch_dir=args.scratch_dir,
                         compression=str(parse_compression(args.compression)),
                         block_size=chunk or (
                             fmt.BLOCK_SIZE if borg.images is None else fmt.IMAGE_BLOCK_SIZE),
                         read_alignment=args.read_alignment,
                         full_every=args.full_every or options.from_env(
                             FULL_EVERY_ENV, plan.FullEvery.parse,
                             plan.FullEvery.parse(plan.DEFAULT_FULL_EVERY)),
                         quiesce=args.quiesce,
                         freeze_timeout=options.from_env(quiesce.FREEZE_TIMEOUT_ENV,
                                                         options.positive_seconds,
                                                         quiesce.FREEZE_TIMEOUT),
                         progress=options.progress(args))
    with virt.connect(args.connect) as hv:
        names = ([args.only] if args.only is not None else args.domains
                 or [n for n in hv.domain_names() if fnmatch.fnmatchcase(n, args.match or "*")])
        if not names:
            raise UsageError(detail=f"no domain matches {args.match!r}")
        if args.jobs > 1 and len(names) > 1:   # each child logs in to the hypervisor itself
            return parallel.run(args.argv, args.jobs, borg, names)
        with hosts.connect(args.connect) as host:
            failed = _back_up_each(hv, host, borg, names, opts, args)
    return parallel.summary(failed, names)


def _back_up_each(hv: virt.Hypervisor, host: hosts.Host, borg: Repository, names: list[str],
                  opts: BackupOptions, args: argparse.Namespace) -> dict[str, int]:
    """Back up the domains one after the other, each reported as it ends; return
    the exit code of each that failed, by name."""
    failed: dict[str, int] = {}
    for name in names:
        try:
            result = backup(hv, borg, name, opts, host)
        except Interrupted:
            raise
        except Exception as e:  # one domain's failure, even a bug, never stops the next
            failed[name] = report(e, args.debug, prefix=f"{name}: ")
            if args.json:
                message, _code = describe(e, args.debug)
                options.emit({"domain": name, "error": message, "exit_code": failed[name]})
            continue
        if args.json:
            options.emit(result.to_json())
        else:
            log.info("%s: %s backup done in %.1f s: %s", name, result.level,
                     result.duration, result.archive)
    return failed


def _selection_problem(domains: list[str], every: bool, match: str | None) -> str | None:
    """Return what is wrong with the domains named, --all and --match, or None."""
    if domains and every:
        return "name the domains to back up or use --all, not both"
    if domains and match:
        return ("--match narrows --all, not named domains: name the domains to back up, "
                "or use --all --match GLOB")
    if match and not every:
        return "--match narrows --all: use --all --match GLOB"
    if not (domains or every):
        return "name the domains to back up, or use --all (optionally with --match GLOB)"
    return None
