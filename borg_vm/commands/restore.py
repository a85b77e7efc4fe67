"""borg-vm restore: rebuild a domain's disks as of a checkpoint."""

from __future__ import annotations

import argparse

from borg_vm.commands import options
from borg_vm.core.text import printable
from borg_vm.core.vmstate import LABELS
from borg_vm.errors import EXIT_OK, FormatError, IntegrityError, NothingRestored
from borg_vm.services.restore.run import RestoreOptions, restore


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    r = sub.add_parser("restore", parents=parents,
                       help="rebuild a domain's disks as of a checkpoint",
                       description="Rebuild the disks of DOMAIN as of a checkpoint: a base "
                       "image and qcow2 overlays (or one flattened image), plus domain XML "
                       "to 'virsh define'.")
    r.add_argument("domain", metavar="DOMAIN")
    r.add_argument("--to", required=True, type=options.type_of(options.path), metavar="DIR",
                   help="directory for the images")
    options.add_repository_options(r)
    r.add_argument("--checkpoint", metavar="NAME", help="checkpoint to restore (default: newest)")
    shape = r.add_mutually_exclusive_group()
    shape.add_argument("--flatten", action="store_true",
                       help="write one image per disk, no chain")
    shape.add_argument("--layers", action="store_true",
                       help="write one image per snapshot layer, as the disk's chain was "
                       "(sealed layers complete, the top one partial)")
    options.add_disk_option(r, "restore")
    r.add_argument("--format", choices=("qcow2", "raw"), default="qcow2",
                   help="format of the base (or flattened) image (default: qcow2); "
                   "overlays are always qcow2")
    r.add_argument("--force", action="store_true", help="overwrite existing files")
    options.add_keep_host_resources_option(r)
    options.add_allow_unauthenticated_option(r)
    options.add_progress_option(r)
    r.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    opts = RestoreOptions(to=args.to, checkpoint=args.checkpoint, flatten=args.flatten,
                          disks=tuple(args.disk), format=args.format, force=args.force,
                          progress=options.progress(args),
                          keep_host_resources=args.keep_host_resources, layers=args.layers,
                          allow_unauthenticated=args.allow_unauthenticated)
    try:
        result = restore(options.repository(args), args.domain, opts)
    except (IntegrityError, FormatError) as e:   # a damaged archive, found before any move
        raise NothingRestored(detail=e.message.rstrip(".")) from e
    if args.json:
        options.emit(result.to_json())
    else:
        for target, d in result.disks.items():
            print(printable(f"{target}: {d['image']}"))
        for name, path in result.vm_state.items():
            print(printable(f"{LABELS[name]}: {path}"))
        print(printable(f"domain XML: {result.domain_xml}"))
    return EXIT_OK
