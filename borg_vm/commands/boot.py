"""borg-vm boot: run a domain straight from the repository; --finish makes it
independent of the repository, --resume restarts what serves it."""

from __future__ import annotations

import argparse
import logging

from borg_vm.adapters import libvirt as virt
from borg_vm.commands import options
from borg_vm.core import libvirt_uri
from borg_vm.core.text import printable
from borg_vm.core.vmstate import LABELS
from borg_vm.errors import EXIT_OK, RemoteUnsupported, UsageError
from borg_vm.progress import human
from borg_vm.services.serving.boot import (
    Booted,
    BootOptions,
    Finished,
    Resumed,
    boot,
    finish,
    resume,
)

log = logging.getLogger(__name__)


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    bo = sub.add_parser(
        "boot", parents=parents,
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
    bo.add_argument("--to", type=options.type_of(options.path), metavar="DIR",
                    help="directory for the disks' overlays (NEW.TARGET.qcow2); required to boot")
    bo.add_argument("--name", metavar="NEW", help="name of the new domain "
                    "(default: DOMAIN-restored)")
    bo.add_argument("--checkpoint", metavar="NAME", help="checkpoint to boot (default: newest)")
    options.add_keep_host_resources_option(bo)
    options.add_allow_unauthenticated_option(bo)
    options.add_repository_options(bo, libvirt=True)
    options.add_progress_option(bo, " (--finish)")
    bo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    booting = not (args.finish or args.resume)
    if booting != bool(args.to) or (not booting and (
            args.name or args.checkpoint or args.keep_host_resources
            or args.allow_unauthenticated)):
        raise UsageError(detail="boot DOMAIN needs --to DIR; --finish NEW and --resume NEW "
                                "take none of --to, --name, --checkpoint, --keep-host-resources, "
                                "--allow-unauthenticated")
    if libvirt_uri.is_remote(args.connect):
        raise RemoteUnsupported(what="boot", where=args.connect,
                                hint="run borg-vm boot on the hypervisor")
    result: Finished | Resumed | Booted
    with virt.connect(args.connect) as hv:
        if args.finish:
            result = finish(hv, args.domain, progress=options.progress(args))
        elif args.resume:
            result = resume(hv, lambda recorded: options.repository(args, default_repo=recorded),
                            args.domain)
        else:
            result = boot(hv, options.repository(args), args.domain, BootOptions(
                args.to, args.name, args.checkpoint, args.keep_host_resources,
                args.allow_unauthenticated))
    if args.json:
        options.emit(result.to_json())
        return EXIT_OK
    if isinstance(result, Finished):
        for target, d in result.disks.items():
            print(printable(f"{target}: {d['image']}"))
        if result.nothing_to_do:
            log.info("%s: nothing to finish: it reads nothing from a repository (its boot "
                     "was finished already, or borg-vm did not boot it)", result.name)
        else:
            log.info("%s: pulled %s in %.1f s; it no longer needs the repository",
                     result.name, human(result.pulled), result.duration)
    elif isinstance(result, Resumed):
        log.info("%s: %s; the domain is %s", result.name,
                 f"server started again, pid {result.server['pid']}" if result.server_started
                 else "its server was running", result.state)
    else:
        for target, d in result.disks.items():
            print(printable(f"{target}: {d['image']} (backed by {d['uri']})"))
        for name, path in result.vm_state.items():
            print(printable(f"{LABELS[name]}: {path}"))
        log.info("%s runs %s as of %s, its disks read from the repository by a server: "
                 "pid %s, log %s", result.name, result.domain, result.checkpoint,
                 result.server["pid"], result.server["log"])
        log.info("'borg-vm boot --finish %s' makes it independent of the repository",
                 result.name)
    return EXIT_OK
