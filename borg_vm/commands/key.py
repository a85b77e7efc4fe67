"""borg-vm key: export, import and show the keyring that authenticates a
repository's restore points (services/keyring.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, replace

from borg_vm.adapters.borg import Repository
from borg_vm.commands import options
from borg_vm.errors import EXIT_OK, KeyringError, UsageError
from borg_vm.services import catalog
from borg_vm.services import keyring as keyring_
from borg_vm.services.keyring import Keyring

log = logging.getLogger(__name__)

ACTIONS = ("show", "export", "import")


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    k = sub.add_parser(
        "key", parents=parents, help="export, import or show the repository's "
        "authentication keys",
        description="borg-vm signs every archive with a key kept on this host, outside the "
        "repository, one keyring per repository (made on first use). 'show' names its keys "
        "and where it is; 'export' writes it to FILE (default: stdout): keep that copy with "
        "your borg key, it is as secret; 'import' adds the keys of FILE to this host's "
        "keyring of the repository (a new host after a disaster, a domain moved from "
        "another host, a repository transferred to a new one).")
    k.add_argument("action", choices=ACTIONS, metavar="ACTION", help="show, export or import")
    k.add_argument("file", nargs="?", metavar="FILE",
                   help="export: where to write (default: stdout); import: the file to read "
                   "('-': stdin)")
    options.add_repository_options(k)
    k.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    borg = options.repository(args)
    if args.action == "import":
        if not args.file:
            raise UsageError(detail="key import needs the FILE an export wrote ('-': stdin)")
        result = import_keyring(borg, _read(args.file), args.file)
    else:
        if args.file and args.action == "show":
            raise UsageError(detail="key show takes no FILE")
        result = Shown(catalog.keyring_of(borg))
        if args.action == "export":
            _write(args.file, result.keyring.to_json())
            return EXIT_OK
    if args.json:
        options.emit(result.to_json())
    else:
        print(result.to_text())
    return EXIT_OK


@dataclass(frozen=True)
class Shown:
    keyring: Keyring

    def to_json(self) -> dict:
        k = self.keyring
        return {"repository": k.repository, "path": k.path, "created": k.created,
                "signing_key": k.key_ids()[0], "keys": k.key_ids(),
                "adopted_archives": len(k.adopted)}

    def to_text(self) -> str:
        k = self.keyring
        ids = k.key_ids()
        return "\n".join([f"keyring      {k.path}", f"repository   {k.repository}",
                          f"created      {k.created}", f"signs with   {ids[0]}",
                          f"also accepts {', '.join(ids[1:]) or '-'}",
                          f"adopted      {len(k.adopted)} archives of formats 1-3"])


def import_keyring(borg: Repository, raw: bytes, where: str) -> Shown:
    """Merge the keyring in raw into this host's keyring of borg's repository (made
    from it if there is none); return the result."""
    imported = Keyring.from_json(raw, where)
    repository = borg.repository_id()
    if imported.repository != repository:
        log.info("%s is the keyring of repository %s: its keys will also authenticate "
                 "archives of repository %s (a transferred repository)", where,
                 imported.repository, repository)
    own = keyring_.load(repository)
    merged = own.merged(imported) if own else replace(imported, repository=repository)
    keyring_.save(merged)
    added = len(merged.keys) - (len(own.keys) if own else 0)
    log.info("%d new key(s) in %s", added, merged.path)
    return Shown(merged)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read(keyring_.MAX_KEYRING_BYTES + 1)
    try:
        with open(path, "rb") as f:
            return f.read(keyring_.MAX_KEYRING_BYTES + 1)
    except OSError as e:
        raise KeyringError(path=path, detail=e.strerror or str(e)) from e


def _write(path: str | None, raw: bytes) -> None:
    """Write raw to path (None or '-': stdout), a new file 0600 (never over one)."""
    if path in (None, "-"):
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise KeyringError(path=path, detail=e.strerror or str(e)) from e
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
