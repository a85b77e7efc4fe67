"""Borg 1.2 to 1.4 repositories (the Repository protocol's first
implementation): every restore point a chain of archives, written by
import-tar, one writer at a time (see cli.py for what all generations share).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from borg_vm.adapters.borg.cli import DEFAULT_LOCK_WAIT, BorgCli
from borg_vm.adapters.borg.features import BorgVersion
from borg_vm.adapters.borg.protocol import Listed

# The version assumed when the caller does not say (tests that build one directly).
BORG1 = BorgVersion.of("1.4.0")


class Borg1Repository(BorgCli):
    """One Borg 1.x repository."""

    images = None   # chains: no archive per disk image

    def __init__(self, repo: str, *, executable: str | None = None,
                 lock_wait: int = DEFAULT_LOCK_WAIT,
                 ask_passphrase: Callable[[str], str] | None = None,
                 version: BorgVersion = BORG1):
        super().__init__(repo, executable=executable, lock_wait=lock_wait,
                         ask_passphrase=ask_passphrase, version=version)

    def list_archives(self, *, checkpoints: bool = False) -> list[Listed]:
        """Return every archive of the repository with its comment and time
        (checkpoints: borg's checkpoint archives too)."""
        return self._list(*(self.dialect.checkpoint_args() if checkpoints else ()))

    def delete(self, archives: Sequence[str]) -> None:
        """Delete archives, in the order given, in one borg transaction (a borg killed
        midway deletes none); space is freed by a later 'borg compact'."""
        if archives:
            self._run("delete", self._argv("delete", *self.location(archives[0]),
                                           *archives[1:]))

    def compact(self) -> None:
        """Free the space deleted archives held ('borg compact')."""
        self._run("compact", self._argv("compact", *self.location()))
