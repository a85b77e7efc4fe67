"""borg-vm backup: back up domains, running or shut off, one archive each."""

from __future__ import annotations

import argparse
import contextlib
import logging

from borg_vm.adapters import libvirt as virt
from borg_vm.adapters.borg import Repository
from borg_vm.commands import options
from borg_vm.core import fleet, libvirt_uri, plan
from borg_vm.core.compression import parse_compression
from borg_vm.errors import (
    DomainNotPlaced,
    Interrupted,
    LibvirtConnectError,
    SshError,
    UsageError,
    describe,
    report,
)
from borg_vm.format import names as fmt
from borg_vm.services import hosts
from borg_vm.services.backup import parallel, quiesce
from borg_vm.services.backup.run import BackupOptions, BackupResult, backup

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
                   help="back up every domain libvirt knows (of each --connect), running or "
                   "shut off (with --match: those whose name matches)")
    b.add_argument("--match", metavar="GLOB",
                   help="with --all, only domains whose name matches GLOB (fnmatch)")
    b.add_argument("--jobs", type=options.type_of(options.count), default=1, metavar="N",
                   help="back up up to N domains at once, each in a borg-vm process of its "
                   "own (a Borg 2 repository only: a Borg 1.4 repository takes one writer "
                   "at a time; default: 1). With N > 1 there is no progress bar")
    # One domain of a --jobs run: the child's argv is its parent's with this added.
    b.add_argument(parallel.ONLY, metavar="DOMAIN", help=argparse.SUPPRESS)
    b.add_argument(parallel.ONLY_AT, metavar="URI", help=argparse.SUPPRESS)
    options.add_repository_options(b, hypervisors=True)
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
    opts = _options(args, borg)
    hypervisors = ([args.only_at] if args.only_at is not None
                   else list(dict.fromkeys(args.connect or [virt.DEFAULT_URI])))
    for uri in hypervisors:   # one that borg-vm cannot reach is refused before anything
        libvirt_uri.ssh_target(uri)
    out = _Out(args, labelled=len(hypervisors) > 1 or args.only_at is not None)
    with contextlib.ExitStack() as stack:
        reached = _reach(hypervisors, stack, out)
        placement = _placement(reached, hypervisors, args)
        names = [n for ns in placement.domains.values() for n in ns] + list(placement.problems)
        if not names and not out.codes:
            raise UsageError(detail=f"no domain matches {args.match!r}")
        for name, problem in placement.problems.items():
            out.failed(DomainNotPlaced(detail=problem), domain=name)
        if args.jobs > 1 and len(names) > 1:   # each child logs in to its hypervisor itself
            at = {name: uri if out.labelled else None
                  for uri, ns in placement.domains.items() for name in ns}
            out.codes.update(parallel.run(args.argv, args.jobs, borg, at))
        else:
            for uri, domains in placement.domains.items():
                if domains:
                    _back_up_each(uri, reached[uri], borg, domains, opts, out)
    return parallel.summary(out.codes, names, hypervisors)


def _options(args: argparse.Namespace, borg: Repository) -> BackupOptions:
    """The backup's options, from the command line and the environment."""
    return BackupOptions(level=args.level, exclude_disks=tuple(args.exclude_disk),
                         scratch_dir=args.scratch_dir,
                         compression=str(parse_compression(args.compression)),
                         block_size=args.chunk_size or (
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


def _reach(hypervisors: list[str], stack: contextlib.ExitStack, out: _Out
           ) -> dict[str, virt.Hypervisor]:
    """Connect to each hypervisor, the connection closed with stack; return those
    reached, by URI. One that cannot be reached fails the run when it is the
    only one, and is reported when there are others."""
    reached: dict[str, virt.Hypervisor] = {}
    for uri in hypervisors:
        try:
            reached[uri] = stack.enter_context(virt.connect(uri))
        except LibvirtConnectError as e:
            if len(hypervisors) == 1:
                raise
            out.failed(e, hypervisor=uri)   # the others go on
    return reached


def _placement(reached: dict[str, virt.Hypervisor], hypervisors: list[str],
               args: argparse.Namespace) -> fleet.Placement:
    """Where each domain of the run is backed up from: the domains named, on
    their one hypervisor, or every domain (matching --match) of each."""
    named = [args.only] if args.only is not None else args.domains
    if len(hypervisors) == 1 and named:   # not looked for: the backup says if it is not there
        return fleet.Placement({uri: list(dict.fromkeys(named)) for uri in reached})
    return fleet.place({uri: hv.domains() for uri, hv in reached.items()}, named, args.match,
                       [uri for uri in hypervisors if uri not in reached])


class _Out:
    """What a backup run reports of each domain (and of each hypervisor it could
    not reach), and the exit codes of those that failed. labelled: each --json
    line of a domain names its hypervisor (a run over several)."""

    def __init__(self, args: argparse.Namespace, labelled: bool):
        self.args = args
        self.labelled = labelled
        self.codes: dict[str, int] = {}

    def failed(self, e: BaseException, *, domain: str | None = None,
               hypervisor: str | None = None) -> None:
        """Report that a domain (of hypervisor, if known), or else a hypervisor,
        failed with e."""
        what = domain if domain is not None else hypervisor
        assert what is not None
        self.codes[what] = report(e, self.args.debug, prefix=f"{what}: ")
        if self.args.json:
            message, _code = describe(e, self.args.debug)
            options.emit({**({"domain": domain} if domain is not None else {}),
                          **self._at(hypervisor), "error": message,
                          "exit_code": self.codes[what]})

    def done(self, result: BackupResult, hypervisor: str) -> None:
        if self.args.json:
            options.emit({**result.to_json(), **self._at(hypervisor)})
        else:
            log.info("%s: %s backup done in %.1f s: %s", result.domain, result.level,
                     result.duration, result.archive)

    def _at(self, hypervisor: str | None) -> dict[str, str]:
        return {"hypervisor": hypervisor} if self.labelled and hypervisor is not None else {}


def _back_up_each(uri: str, hv: virt.Hypervisor, borg: Repository, names: list[str],
                  opts: BackupOptions, out: _Out) -> None:
    """Back up the domains of one hypervisor (uri, connected as hv) one after the
    other, each reported as it ends."""
    with contextlib.ExitStack() as stack:
        try:
            host = stack.enter_context(hosts.connect(uri))
        except SshError as e:
            if not out.labelled:
                raise
            for name in names:   # none of them can be backed up; the others' can
                out.failed(e, domain=name, hypervisor=uri)
            return
        for name in names:
            try:
                result = backup(hv, borg, name, opts, host)
            except Interrupted:
                raise
            except Exception as e:  # one domain's failure, even a bug, never stops the next
                out.failed(e, domain=name, hypervisor=uri)
                continue
            out.done(result, uri)


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
