"""Command line: parse arguments into typed options, call an action, and turn
errors into messages and exit codes (0 ok, 1 warning, 2 error, as borg)."""

from __future__ import annotations

import argparse
import fnmatch
import getpass
import grp
import json
import logging
import os
import pwd
import signal
import sys

from borg_vm import __version__
from borg_vm.commands import list as listing
from borg_vm.services.backup import quiesce
from borg_vm.services.backup.run import BackupOptions, backup
from borg_vm.adapters import libvirt as virt
from borg_vm.adapters.borg import DEFAULT_LOCK_WAIT, Borg
from borg_vm.core import plan, retention
from borg_vm.format import manifest as archive
from borg_vm.core.compression import parse_compression
from borg_vm.core.text import printable
from borg_vm.progress import human
from borg_vm.errors import EXIT_ERROR, EXIT_OK, BorgVmError, Interrupted, NoRepository, UsageError
from borg_vm.commands.delete import delete
from borg_vm.commands.prune import PruneOptions, prune
from borg_vm.services.serving.boot import BootOptions, boot, finish, resume
from borg_vm.services.serving.mount import MountOptions, Served, mount
from borg_vm.services.restore.run import RestoreOptions, restore
from borg_vm.commands.verify import verify

log = logging.getLogger("borg_vm")
FULL_EVERY_ENV = "BORG_VM_FULL_EVERY"

EPILOG = """\
The repository comes from --repo or BORG_REPO; its passphrase from borg's own
BORG_PASSPHRASE, BORG_PASSCOMMAND or BORG_PASSPHRASE_FD, else it is asked for
on a terminal; ssh:// repositories use BORG_RSH like borg. Exit codes: 0 ok,
1 warning, 2 error."""


def _common(p: argparse.ArgumentParser, libvirt: bool = False) -> None:
    p.add_argument("--repo", metavar="REPO", help="Borg repository (default: $BORG_REPO)")
    p.add_argument("--lock-wait", type=_seconds, metavar="SECONDS",
                   help="wait this long for another borg or borg-vm run to release "
                   f"the repository lock (default: ${LOCK_WAIT_ENV}, else "
                   f"{DEFAULT_LOCK_WAIT} = {DEFAULT_LOCK_WAIT // 3600} h)")
    if libvirt:
        p.add_argument("-c", "--connect", metavar="URI", default=virt.DEFAULT_URI,
                       help=f"libvirt URI, as for virsh -c (default: {virt.DEFAULT_URI})")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _logging_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="log warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    # Logging options work before or after the command; a subcommand's copy
    # must not reset what was given before it, hence SUPPRESS there.
    logging_opts = argparse.ArgumentParser(add_help=False)
    _logging_options(logging_opts, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="borg-vm", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Incremental backups of libvirt/QEMU virtual machines into Borg.")
    parser.add_argument("--version", action="version", version=f"borg-vm {__version__}")
    _logging_options(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser("backup", parents=[logging_opts],
                       help="back up domains (running or shut off), one archive each",
                       description="Back up domains, running or shut off: a full backup the first "
                       "time, then incrementals of what changed since the last checkpoint.")
    b.add_argument("domains", nargs="*", metavar="DOMAIN")
    b.add_argument("--all", action="store_true",
                   help="back up every domain libvirt knows, running or shut off "
                   "(with --match: those whose name matches)")
    b.add_argument("--match", metavar="GLOB",
                   help="with --all, only domains whose name matches GLOB (fnmatch)")
    _common(b, libvirt=True)
    b.add_argument("--level", choices=plan.REQUESTS, default=plan.AUTO,
                   help="auto: incremental when possible, else full (default); "
                   "full; inc: incremental or fail")
    b.add_argument("--full-every", type=_full_every, metavar="AGE|COUNT|never",
                   help="with --level auto, start a new chain (a full backup) when the "
                   "current one's full is older than AGE (e.g. 30d, 2w, 12h) or it has "
                   "COUNT incrementals, so that prune can free old chains and restores "
                   "stay fast; never: one chain for ever "
                   f"(default: ${FULL_EVERY_ENV}, else {plan.DEFAULT_FULL_EVERY})")
    b.add_argument("--exclude-disk", action="append", default=[], metavar="TARGET",
                   help="leave this disk (e.g. vdb) out; repeatable")
    b.add_argument("--scratch-dir", metavar="DIR",
                   help="where the backup job keeps its scratch (fleecing) files "
                   "(default: the private run directory under /run/borg-vm)")
    b.add_argument("--compression", default="lz4", metavar="SPEC",
                   help="borg compression spec: none, lz4, zstd[,1-22], zlib[,0-9], "
                   "lzma[,0-9], auto,SPEC or obfuscate,N,SPEC (default: lz4; "
                   "see 'borg help compression')")
    b.add_argument("--chunk-size", type=_size, default=archive.BLOCK_SIZE, metavar="SIZE",
                   help="Borg's fixed chunk size, which data members are aligned to "
                   "(power of two, 64K..16M; default: 256K)")
    b.add_argument("--read-alignment", type=_size, default=0, metavar="SIZE",
                   help="widen dirty data extents to SIZE boundaries: more reads, more "
                   "whole-chunk dedup (power of two >= 64K, or 0 for none: the default)")
    q = b.add_argument("--quiesce", action="store_const", const=quiesce.ON,
                       help="freeze a running guest's filesystems through its "
                       "QEMU guest agent (channel org.qemu.guest_agent.0) while the backup "
                       "job starts, for a consistent backup; without an agent it is an "
                       "error, with =try a warning and the backup goes on unfrozen. The "
                       f"guest is thawed after at most ${quiesce.FREEZE_TIMEOUT_ENV} "
                       f"seconds (default {quiesce.FREEZE_TIMEOUT:g}), also if borg-vm dies")
    # GNU-style optional value: "--quiesce=try" is an option of its own, so a
    # DOMAIN after a bare --quiesce is never taken for its value. Parsing goes
    # by the registered strings; help and errors show the one spelling.
    b.add_argument("--quiesce=try", dest="quiesce", action="store_const", const=quiesce.TRY,
                   help=argparse.SUPPRESS)
    q.option_strings = ["--quiesce[=try]"]
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(run=_cmd_backup)

    ls = sub.add_parser("list", parents=[logging_opts],
                        help="list archives by domain and snapshot",
                        description="List borg-vm archives grouped by domain and snapshot "
                        "layer, oldest first.")
    ls.add_argument("domain", nargs="?", metavar="DOMAIN")
    _common(ls)
    ls.set_defaults(run=_cmd_list)

    pr = sub.add_parser("prune", parents=[logging_opts],
                        help="delete archives by borg's retention rules, keeping whole chains",
                        description="Select restore points with borg prune's rules, keep "
                        "every archive a kept point needs (its chain back to the full, per "
                        "disk) and delete the other borg-vm archives of the domains, in one "
                        "borg delete. Other archives in the repository are never touched.")
    pr.add_argument("domains", nargs="*", metavar="DOMAIN",
                    help="domains to prune (default: every domain in the repository)")
    _common(pr)
    pr.add_argument("--keep-within", type=_interval, default=0, metavar="INTERVAL",
                    help="keep every restore point younger than INTERVAL (e.g. 7d; units "
                    "H, d, w, m, y as borg)")
    for rule, what in (("last", "the last N restore points"),
                       ("hourly", "the last of each of N hours"),
                       ("daily", "the last of each of N days"),
                       ("weekly", "the last of each of N ISO weeks"),
                       ("monthly", "the last of each of N months"),
                       ("yearly", "the last of each of N years")):
        pr.add_argument(f"--keep-{rule}", type=_count, default=0, metavar="N",
                        help=f"keep {what}")
    pr.add_argument("-n", "--dry-run", action="store_true", help="delete nothing")
    pr.add_argument("--list", action="store_true",
                    help="show for each archive: keep (why) or prune")
    pr.add_argument("--compact", action="store_true",
                    help="run borg compact afterwards, to free the space (on an "
                         "append-only repository it frees nothing)")
    pr.set_defaults(run=_cmd_prune)

    de = sub.add_parser("delete", parents=[logging_opts],
                        help="delete one restore point, if nothing depends on it",
                        description="Delete DOMAIN's archive at a checkpoint. Archives that "
                        "need it to restore (later incrementals of its chain) are named and "
                        "nothing is deleted, unless --with-dependents deletes them too.")
    de.add_argument("domain", metavar="DOMAIN")
    de.add_argument("--checkpoint", required=True, metavar="NAME",
                    help="the checkpoint whose archive to delete")
    _common(de)
    de.add_argument("--with-dependents", action="store_true",
                    help="delete the archives that need it too (newest first)")
    de.add_argument("-n", "--dry-run", action="store_true",
                    help="list what would be deleted, delete nothing")
    de.set_defaults(run=_cmd_delete)

    ve = sub.add_parser("verify", parents=[logging_opts],
                        help="read archives back and check them, writing nothing",
                        description="Read archives back from Borg and check each: its data "
                        "covers exactly its manifest's extents and matches their SHA-256, "
                        "its manifest agrees with its name and comment, and its chain back "
                        "to the full exists. Exit 0 if all are good, 2 if any is damaged.")
    ve.add_argument("domain", nargs="?", metavar="DOMAIN",
                    help="the domain (default: every domain, all archives)")
    which = ve.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="NAME",
                       help="this restore point and its chain (default: the newest)")
    which.add_argument("--all", action="store_true", help="every archive of DOMAIN")
    _common(ve)
    ve.set_defaults(run=_cmd_verify)

    r = sub.add_parser("restore", parents=[logging_opts], help="rebuild a domain's disks as of a checkpoint",
                       description="Rebuild the disks of DOMAIN as of a checkpoint: a base "
                       "image and qcow2 overlays (or one flattened image), plus domain XML "
                       "to 'virsh define'.")
    r.add_argument("domain", metavar="DOMAIN")
    r.add_argument("--to", required=True, metavar="DIR", help="directory for the images")
    _common(r)
    r.add_argument("--checkpoint", metavar="NAME", help="checkpoint to restore (default: newest)")
    shape = r.add_mutually_exclusive_group()
    shape.add_argument("--flatten", action="store_true", help="write one image per disk, no chain")
    shape.add_argument("--layers", action="store_true",
                       help="write one image per snapshot layer, as the disk's chain was "
                       "(frozen layers complete, the top one partial)")
    r.add_argument("--disk", action="append", default=[], metavar="TARGET",
                   help="restore only this disk; repeatable")
    r.add_argument("--format", choices=("qcow2", "raw"), default="qcow2",
                   help="format of the base (or flattened) image (default: qcow2); "
                   "overlays are always qcow2")
    r.add_argument("--force", action="store_true", help="overwrite existing files")
    r.add_argument("--keep-host-resources", action="store_true",
                   help="keep the host devices, host files and QEMU arguments the domain XML "
                   "names (default: remove them, with a warning)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(run=_cmd_restore)

    m = sub.add_parser("mount", parents=[logging_opts],
                       help="serve a domain's disks as of a checkpoint over NBD, read-only, "
                       "straight from the repository",
                       description="Serve the disks of DOMAIN as of a checkpoint as read-only "
                       "NBD exports (one unix socket each) for qemu-img, nbdinfo, nbdcopy or "
                       "QEMU, reading from the repository only the data that is "
                       "read (borg mount and nbdkit). Runs until Ctrl-C or SIGTERM.")
    m.add_argument("domain", metavar="DOMAIN")
    m.add_argument("--socket", required=True, metavar="PATH",
                   help="the unix socket to serve on; with several disks (or if PATH is a "
                   "directory) the directory of sockets PATH/TARGET.sock")
    m.add_argument("--checkpoint", metavar="NAME", help="checkpoint to serve (default: newest)")
    m.add_argument("--disk", action="append", default=[], metavar="TARGET",
                   help="serve only this disk; repeatable")
    m.add_argument("--socket-owner", type=_owner, metavar="USER[:GROUP]",
                   help="hand the sockets to this user (and group), e.g. the one QEMU runs "
                   "as, so that it may connect (default: the user borg-vm runs as)")
    _common(m)
    m.set_defaults(run=_cmd_mount)

    bo = sub.add_parser(
        "boot", parents=[logging_opts],
        help="run a domain straight from the repository; --finish makes it independent of it",
        usage="%(prog)s DOMAIN --to DIR [--checkpoint NAME] [--name NEW] [options]\n"
              "       %(prog)s --finish NEW [options]\n"
              "       %(prog)s --resume NEW [options]",
        description="Define and start a copy of DOMAIN as of a checkpoint (named "
        "DOMAIN-restored, new UUID and MAC addresses) whose disks are qcow2 overlays in DIR "
        "backed by borg-vm mount's exports: it runs at once, reading from the repository "
        "what it has not written, while a server started in the background serves them. "
        "--finish NEW pulls the rest into the overlays and stops the server; --resume NEW "
        "starts a server that died again and resumes the domain.")
    bo.add_argument("domain", metavar="DOMAIN|NEW",
                    help="the backed-up domain to boot; with --finish or --resume, the "
                    "booted domain")
    step = bo.add_mutually_exclusive_group()
    step.add_argument("--finish", action="store_true",
                      help="pull what NEW still reads from the repository into its images "
                      "(virsh blockpull, NEW running), then stop its server")
    step.add_argument("--resume", action="store_true",
                      help="start NEW's server again if it is not running, and resume NEW "
                      "if QEMU paused it on a failed read (or start it if it is shut off)")
    bo.add_argument("--to", metavar="DIR",
                    help="directory for the disks' overlays (NEW.TARGET.qcow2); required to boot")
    bo.add_argument("--name", metavar="NEW", help="name of the new domain "
                    "(default: DOMAIN-restored)")
    bo.add_argument("--checkpoint", metavar="NAME", help="checkpoint to boot (default: newest)")
    bo.add_argument("--keep-host-resources", action="store_true",
                    help="keep the host devices, host files and QEMU arguments the domain XML "
                    "names (default: remove them, with a warning)")
    _common(bo, libvirt=True)
    bo.add_argument("--no-progress", action="store_true", help="no progress bar (--finish)")
    bo.set_defaults(run=_cmd_boot)
    return parser


LOCK_WAIT_ENV = "BORG_VM_LOCK_WAIT"


def _seconds(text: str) -> int:
    """Parse a whole number of seconds (0 or more)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}")
    return int(text)


def _lock_wait(args: argparse.Namespace) -> int:
    """Return --lock-wait, else $BORG_VM_LOCK_WAIT, else the default; raise UsageError
    for a bad $BORG_VM_LOCK_WAIT."""
    if args.lock_wait is not None:
        return args.lock_wait
    text = os.environ.get(LOCK_WAIT_ENV)
    if text is None:
        return DEFAULT_LOCK_WAIT
    try:
        return _seconds(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(detail=f"{LOCK_WAIT_ENV}: {e}") from e


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 16 * 1024 * 1024


def _size(text: str) -> int:
    """Parse SIZE (bytes, or with a K/M/G suffix: powers of 1024)."""
    number, unit = text.rstrip("KMGkmg"), text[len(text.rstrip("KMGkmg")):].upper()
    if not number.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4M, 65536)")
    value = int(number) * _UNITS[unit]
    if value and (value & (value - 1) or value < MIN_CHUNK):
        raise argparse.ArgumentTypeError(f"{text} is not a power of two >= 64K")
    return value


def _borg(args: argparse.Namespace, default_repo: str | None = None) -> Borg:
    """Return the repository of --repo, else default_repo, else $BORG_REPO."""
    repo = args.repo or default_repo or os.environ.get("BORG_REPO")
    if not repo:
        raise NoRepository()
    # On a terminal, a passphrase nobody gave is asked for (once, by borg-vm:
    # borg itself never sees the terminal).
    ask = getpass.getpass if sys.stdin.isatty() else None
    return Borg(repo, lock_wait=_lock_wait(args), ask_passphrase=ask)


def _emit(doc: dict) -> None:
    print(json.dumps(doc, indent=None if "archives" not in doc else 1))


def _cmd_backup(args: argparse.Namespace) -> int:
    if not MIN_CHUNK <= args.chunk_size <= MAX_CHUNK:
        raise UsageError(detail=f"--chunk-size must be between 64K and 16M, not {args.chunk_size}")
    opts = BackupOptions(level=args.level, exclude_disks=tuple(args.exclude_disk),
                         scratch_dir=args.scratch_dir,
                         compression=str(parse_compression(args.compression)),
                         block_size=args.chunk_size, read_alignment=args.read_alignment,
                         full_every=args.full_every or _full_every_from_env(),
                         quiesce=args.quiesce, freeze_timeout=_freeze_timeout_from_env(),
                         progress=not (args.no_progress or args.json))
    if bool(args.all) == bool(args.domains) or (args.match and not args.all):
        raise UsageError(detail="name the domains to back up, or use --all "
                                "(optionally with --match GLOB)")
    borg = _borg(args)
    failed: dict[str, int] = {}
    with virt.connect(args.connect) as hv:
        names = args.domains or [n for n in hv.domain_names()
                                 if fnmatch.fnmatchcase(n, args.match or "*")]
        if not names:
            raise UsageError(detail=f"no domain matches {args.match!r}")
        for name in names:
            try:
                result = backup(hv, borg, name, opts)
            except Interrupted:
                raise
            except Exception as e:  # one domain's failure, even a bug, never stops the next
                failed[name] = _report(e, args.debug, prefix=f"{name}: ")
                continue
            if args.json:
                _emit(result.to_json())
            else:
                log.info("%s: %s backup done in %.1f s: %s", name, result.level,
                         result.duration, result.archive)
    if failed and len(names) > 1:
        log.error("%d of %d domains failed: %s", len(failed), len(names), ", ".join(failed))
    return max(failed.values(), default=EXIT_OK)


def _cmd_list(args: argparse.Namespace) -> int:
    archives = listing.list_archives(_borg(args), args.domain)  # raises if DOMAIN has none
    if args.json:
        _emit(listing.to_json(archives))
    elif archives:
        print(listing.to_text(archives))
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace) -> int:
    rules = retention.Rules(within_hours=args.keep_within, last=args.keep_last,
                            hourly=args.keep_hourly, daily=args.keep_daily,
                            weekly=args.keep_weekly, monthly=args.keep_monthly,
                            yearly=args.keep_yearly)
    if not rules.any():
        raise UsageError(detail="prune needs at least one rule: --keep-within, --keep-last, "
                                "--keep-hourly, --keep-daily, --keep-weekly, --keep-monthly "
                                "or --keep-yearly")
    result = prune(_borg(args), PruneOptions(rules, tuple(args.domains), args.dry_run,
                                             args.compact))
    if args.json:
        _emit(result.to_json())
    elif args.list:
        print(result.to_text())
    if not args.json:
        log.info("%s %d of %d archives", "would delete" if args.dry_run else "deleted",
                 sum(v == retention.PRUNE for _n, _d, v, _w in result.decisions),
                 len(result.decisions))
    return EXIT_OK


def _cmd_delete(args: argparse.Namespace) -> int:
    result = delete(_borg(args), args.domain, args.checkpoint, args.with_dependents,
                    args.dry_run)
    if args.json:
        _emit(result.to_json())
    else:
        for name in result.deleted:
            print(printable(f"{'would delete' if args.dry_run else 'deleted'} {name}"))
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    result = verify(_borg(args), args.domain, args.checkpoint, args.all)
    if args.json:
        _emit(result.to_json())
    else:
        for name, verdict in result.checked:
            print(printable(f"{'ok' if verdict == 'ok' else 'DAMAGED':<8} {name}"
                            + ("" if verdict == "ok" else f": {verdict}")))
    return EXIT_OK if result.ok else EXIT_ERROR


def _full_every_from_env() -> plan.FullEvery:
    text = os.environ.get(FULL_EVERY_ENV) or plan.DEFAULT_FULL_EVERY
    try:
        return plan.FullEvery.parse(text)
    except ValueError as e:
        raise UsageError(detail=f"{FULL_EVERY_ENV}: {e}") from e


def _freeze_timeout_from_env() -> float:
    text = os.environ.get(quiesce.FREEZE_TIMEOUT_ENV)
    if not text:
        return quiesce.FREEZE_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not 0 < seconds < float("inf"):
        raise UsageError(detail=f"{quiesce.FREEZE_TIMEOUT_ENV}: not a positive number of "
                                f"seconds: {text!r}")
    return seconds


def _full_every(text: str) -> plan.FullEvery:
    try:
        return plan.FullEvery.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _interval(text: str) -> int:
    try:
        return retention.interval_hours(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def _cmd_restore(args: argparse.Namespace) -> int:
    opts = RestoreOptions(to=args.to, checkpoint=args.checkpoint, flatten=args.flatten,
                          disks=tuple(args.disk), format=args.format, force=args.force,
                          progress=not (args.no_progress or args.json),
                          keep_host_resources=args.keep_host_resources, layers=args.layers)
    result = restore(_borg(args), args.domain, opts)
    if args.json:
        _emit(result.to_json())
    else:
        for target, d in result.disks.items():
            print(printable(f"{target}: {d['image']}"))
        print(printable(f"domain XML: {result.domain_xml}"))
    return EXIT_OK


def _cmd_mount(args: argparse.Namespace) -> int:
    def ready(served: Served) -> None:
        if args.json:
            _emit(served.to_json())
        else:
            for target, d in served.disks.items():
                print(printable(f"{target}: {d['uri']}"))
        sys.stdout.flush()
        log.info("serving %s as of %s; Ctrl-C or SIGTERM stops", served.domain,
                 served.checkpoint)

    mount(_borg(args), args.domain, MountOptions(args.socket, args.checkpoint,
                                                 tuple(args.disk), args.socket_owner), ready)
    return EXIT_OK


def _owner(text: str) -> tuple[int, int]:
    """Parse USER[:GROUP] (names or numbers) into (uid, gid); GROUP defaults to the
    user's own."""
    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        gid = entry.pw_gid if not group else (
            int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    except KeyError as e:
        raise argparse.ArgumentTypeError(f"no such user or group in {text!r}") from e
    return entry.pw_uid, gid


def _cmd_boot(args: argparse.Namespace) -> int:
    booting = not (args.finish or args.resume)
    if booting != bool(args.to) or (not booting and (
            args.name or args.checkpoint or args.keep_host_resources)):
        raise UsageError(detail="boot DOMAIN needs --to DIR; --finish NEW and --resume NEW "
                                "take none of --to, --name, --checkpoint, --keep-host-resources")
    with virt.connect(args.connect) as hv:
        if args.finish:
            result = finish(hv, args.domain, progress=not (args.no_progress or args.json))
        elif args.resume:
            result = resume(hv, lambda recorded: _borg(args, default_repo=recorded),
                            args.domain)
        else:
            result = boot(hv, _borg(args), args.domain, BootOptions(
                args.to, args.name, args.checkpoint, args.keep_host_resources))
    if args.json:
        _emit(result.to_json())
        return EXIT_OK
    if args.finish:
        for target, d in result.disks.items():
            print(printable(f"{target}: {d['image']}"))
        log.info("%s: pulled %s in %.1f s; it no longer needs the repository", result.name,
                 human(result.pulled), result.duration)
    elif args.resume:
        log.info("%s: %s; the domain is %s", result.name,
                 f"server started again, pid {result.server['pid']}" if result.server_started
                 else "its server was running", result.state)
    else:
        for target, d in result.disks.items():
            print(printable(f"{target}: {d['image']} (backed by {d['uri']})"))
        log.info("%s runs %s as of %s, its disks read from the repository by a server: "
                 "pid %s, log %s", result.name, result.domain, result.checkpoint,
                 result.server["pid"], result.server["log"])
        log.info("'borg-vm boot --finish %s' makes it independent of the repository",
                 result.name)
    return EXIT_OK


def _raise_interrupted(signum, _frame):
    raise Interrupted(signal=signal.Signals(signum).name)


class _PrintableFormatter(logging.Formatter):
    """Log messages carry names and text from archives and libvirt: show their
    control characters as escapes (a traceback under --debug is left as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def _report(e: Exception, debug: bool, prefix: str = "") -> int:
    """Log one line for an error (with the traceback under --debug); return its exit code.

    borg-vm's own errors say what happened and what to do; anything else is a
    bug, reported as such, never as a bare traceback.
    """
    if isinstance(e, BorgVmError):
        log.error("%s%s", prefix, e.message)
        code = e.exit_code
    else:
        log.error("%sunexpected error (a bug in borg-vm, please report it): %s: %s%s", prefix,
                  type(e).__name__, e, "" if debug else "; --debug shows the traceback")
        code = EXIT_ERROR
    if debug:
        log.error("traceback", exc_info=e)
    return code


def _setup_logging(debug: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter(
        "borg-vm: %(relativeCreated)6.0f ms %(name)s: %(message)s" if debug
        else "borg-vm: %(message)s"))
    root = logging.getLogger("borg_vm")
    root.handlers = [handler]  # a second main() in one process (tests) replaces, not adds
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> None:
    """The one exit point: run the command, map errors to messages and exit codes."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        code = args.run(args)
    except BrokenPipeError:  # stdout closed by a reader such as `head`
        code = EXIT_ERROR
    except Exception as e:  # the one exit point: every error is one line and a code
        code = _report(e, args.debug)
    sys.exit(code)
