"""borg-vm list: borg-vm archives grouped by domain and chain."""

from __future__ import annotations

import argparse

from borg_vm.adapters.borg import Repository
from borg_vm.commands import options
from borg_vm.core import chain
from borg_vm.core.text import printable
from borg_vm.errors import EXIT_OK
from borg_vm.format.summary import ArchiveInfo
from borg_vm.progress import human
from borg_vm.services import catalog


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    ls = sub.add_parser("list", parents=parents, help="list archives by domain and snapshot",
                        description="List borg-vm archives grouped by domain and snapshot "
                        "layer, oldest first.")
    ls.add_argument("domain", nargs="?", metavar="DOMAIN")
    options.add_repository_options(ls)
    ls.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    archives = list_archives(options.repository(args), args.domain)  # raises if DOMAIN has none
    if args.json:
        options.emit(to_json(archives))
    elif archives:
        print(to_text(archives))
    return EXIT_OK


def list_archives(borg: Repository, domain: str | None) -> list[ArchiveInfo]:
    """Return the complete borg-vm archives (of domain, or all), oldest first per domain.

    Raise ArchiveNotFound if a domain is given and the repository holds none of it
    (NoAuthenticArchive if none this host can authenticate).
    """
    found = catalog.archives(borg, domain)
    archives = found.archives
    if domain is not None:
        found.of_known_domain(domain)
    return [a for chains in chain.group(archives).values()
            for arcs in chains.values() for a in arcs]


def to_json(archives: list[ArchiveInfo]) -> dict:
    return {"archives": [
        {"name": a.archive, "domain": a.name.domain, "snapshot": a.name.snapshot_name,
         "checkpoint": a.name.checkpoint, "parent": a.summary.parent, "level": a.level,
         "time": a.time, "vm_state": list(a.summary.state),
         "data": sum(d.data_bytes for d in a.summary.disks.values()),
         "zero": sum(d.zero_bytes for d in a.summary.disks.values())}
        for a in archives]}


def to_text(archives: list[ArchiveInfo]) -> str:
    """Return the archives as an indented table: domain, then chain, then archives.

    Names and times come from the repository: control characters in them are
    shown escaped (one archive is one line, and a terminal obeys no escape).
    """
    lines = []
    for domain, chains in chain.group(archives).items():
        lines.append(printable(domain))
        for arcs in chains.values():
            lines.append(printable(f"  snapshot {arcs[0].name.snapshot_name}"))
            for a in arcs:
                data = sum(d.data_bytes for d in a.summary.disks.values())
                parent = a.summary.parent.rsplit(".", 1)[-1] if a.summary.parent else "-"
                state = "".join(f"  +{n}" for n in a.summary.state)
                lines.append(printable(f"    {a.name.checkpoint:<28} {a.level:<4} {a.time}  "
                                       f"data {human(data):>10}  parent {parent}{state}"))
    return "\n".join(lines)
