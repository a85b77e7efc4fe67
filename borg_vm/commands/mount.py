"""borg-vm mount: serve a domain's disks as of a checkpoint over NBD, read-only,
straight from the repository."""

from __future__ import annotations

import argparse
import logging
import sys

from borg_vm.commands import options
from borg_vm.core.text import printable
from borg_vm.errors import EXIT_OK
from borg_vm.services.serving.mount import MountOptions, Served, mount

log = logging.getLogger(__name__)


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    m = sub.add_parser("mount", parents=parents,
                       help="serve a domain's disks as of a checkpoint over NBD, read-only, "
                       "straight from the repository",
                       description="Serve the disks of DOMAIN as of a checkpoint as read-only "
                       "NBD exports (one unix socket each) for qemu-img, nbdinfo, nbdcopy or "
                       "QEMU, reading from the repository only the data that is "
                       "read (borg mount and nbdkit). Runs until Ctrl-C or SIGTERM.")
    m.add_argument("domain", metavar="DOMAIN")
    m.add_argument("--socket", required=True, type=options.type_of(options.path),
                   metavar="PATH",
                   help="the unix socket to serve on; with several disks (or if PATH is a "
                   "directory) the directory of sockets PATH/TARGET.sock")
    m.add_argument("--checkpoint", metavar="NAME", help="checkpoint to serve (default: newest)")
    options.add_disk_option(m, "serve")
    m.add_argument("--socket-owner", type=options.type_of(options.owner), metavar="USER[:GROUP]",
                   help="hand the sockets to this user (and group), e.g. the one QEMU runs "
                   "as, so that it may connect (default: the user borg-vm runs as)")
    options.add_allow_unauthenticated_option(m)
    options.add_repository_options(m)
    m.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    def ready(served: Served) -> None:
        if args.json:
            options.emit(served.to_json())
        else:
            for target, d in served.disks.items():
                print(printable(f"{target}: {d['uri']}"))
        sys.stdout.flush()
        log.info("serving %s as of %s; Ctrl-C or SIGTERM stops", served.domain,
                 served.checkpoint)

    mount(options.repository(args), args.domain,
          MountOptions(args.socket, args.checkpoint, tuple(args.disk), args.socket_owner,
                       args.allow_unauthenticated), ready)
    return EXIT_OK
