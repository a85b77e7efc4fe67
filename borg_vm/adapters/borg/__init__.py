"""Borg behind one seam: the only package that runs borg.

    protocol.py   Repository: what commands and services ask of a repository
    features.py   the borg program's version, read once, and every spelling
                  that depends on it (Dialect)
    cli.py        the borg command line as every generation is driven: passphrases,
                  errors by msgid, streams, mounts (BorgCli)
    borg1.py      Borg 1.2-1.4 repositories (chains of archives)
    borg2.py      Borg 2 repositories (2.0.0b23 and later betas: complete images)

``open_repository`` reads the version of the borg it will run and returns the
implementation for it. Callers tell the generations apart by what a
repository offers (``Repository.images``), never by its version.
"""

from __future__ import annotations

from collections.abc import Callable

from borg_vm.adapters import subproc
from borg_vm.adapters.borg import features
from borg_vm.adapters.borg.borg1 import Borg1Repository
from borg_vm.adapters.borg.borg2 import Borg2Repository
from borg_vm.adapters.borg.cli import BRIEF_LOCK_WAIT, DEFAULT_LOCK_WAIT, find_borg, items, mounted
from borg_vm.adapters.borg.protocol import Created, ImageStore, Item, Listed, Repository
from borg_vm.errors import BorgNotFound

__all__ = ["BRIEF_LOCK_WAIT", "DEFAULT_LOCK_WAIT", "Borg1Repository", "Borg2Repository",
           "Created", "ImageStore", "Item", "Listed", "Repository", "find_borg", "items",
           "mounted", "open_repository"]


def open_repository(location: str, *, lock_wait: int = DEFAULT_LOCK_WAIT,
                    ask_passphrase: Callable[[str], str] | None = None,
                    executable: str | None = None) -> Repository:
    """Return the repository at location, reached through the borg program found
    (find_borg) or given. Raise BorgNotFound if there is none, BorgUnsupported if
    borg-vm has no implementation for its version."""
    executable = executable or find_borg()
    version = features.detect(executable, _version_output)
    features.check_supported(version, executable)
    kind = Borg1Repository if version.major == 1 else Borg2Repository
    return kind(location, executable=executable, lock_wait=lock_wait,
                ask_passphrase=ask_passphrase, version=version)


def _version_output(argv: list[str]) -> str:
    try:
        return subproc.run(argv).stdout.decode(errors="replace")
    except subproc.CommandFailed as e:
        raise BorgNotFound(detail=f"{' '.join(argv)}: {e.stderr.strip() or e.returncode}") \
            from e
