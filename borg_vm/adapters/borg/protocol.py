"""The Repository protocol: all that borg-vm asks of a Borg repository.

Commands and services are typed against ``Repository``; which Borg generation
answers (and how its command line is spelled) is the business of this package
alone (``open_repository`` picks the implementation, features.py the spellings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from borg_vm.adapters import subproc

T = TypeVar("T")


@dataclass(frozen=True)
class Listed:
    """One archive as the repository lists it."""

    name: str
    comment: str
    time: str
    id: str = ""       # Borg's archive ID (hex): a hash over the archive's contents


@dataclass(frozen=True)
class Item:
    """One item of an archive as 'borg list' shows it (type "-": a regular file)."""

    path: str
    type: str
    size: int


@dataclass(frozen=True)
class Created:
    """An image archive ImageStore.create_image committed."""

    name: str
    id: str          # Borg's archive ID (hex)
    size: int        # the size of the file it holds


class ImageStore(Protocol):
    """What a repository of complete images (Borg 2) adds: an archive per disk,
    built from the ranges that changed, named by its ID."""

    def create_image(self, name: str, path: str, ranges: Sequence[tuple[int, int, str]], *,
                     reuse_from: str | None, comment: str, timestamp: str, compression: str,
                     block_size: int, progress: Callable[[int], None] | None = None
                     ) -> Created:
        """Archive the file at path as archive name, reading only its ranges marked
        data (core.extent.input_map), the same ranges taken from the archive with
        ID reuse_from."""
        ...

    def extract_image(self, archive_id: str) -> AbstractContextManager[subproc.Stream]:
        """A running extract writing the one file of the archive with this ID to stdout."""
        ...

    def mount_image(self, archive_id: str, mountpoint: str
                    ) -> AbstractContextManager[subproc.Stream]:
        """Mount the image archive with this ID alone read-only at mountpoint: its
        one file is MOUNTPOINT/ARCHIVE NAME/FILE. Yield the running borg (its
        exit means the mount is gone); unmount when the block ends."""
        ...

    def again_if_raced(self, call: Callable[[], T]) -> T:
        """Return call() (what runs a borg command and can run again), run again
        while borg refuses it for another writer's commit at its start."""
        ...

    def delete_ids(self, ids: Sequence[str]) -> None:
        """Delete the archives with these IDs."""
        ...

    def finish(self, action: str, stream: subproc.Stream) -> None:
        """Wait for a streaming command; raise the matching BorgError if it failed."""
        ...


class Repository(Protocol):
    """One Borg repository. Every call raises a BorgError subclass on failure
    (RepositoryNotFound, PassphraseMissing, RepositoryLocked, ...)."""

    repo: str          # the location, as the user gave it
    lock_wait: int     # seconds each call waits for another borg's lock

    @property
    def images(self) -> ImageStore | None:
        """Where the repository keeps every restore point as complete images (Borg
        2); None: it keeps chains (Borg 1)."""
        ...

    def absolute_location(self) -> str:
        """The location valid from any working directory (a local path made absolute)."""
        ...

    def list_archives(self, *, checkpoints: bool = False) -> list[Listed]:
        """Every archive (checkpoints: also what interrupted runs left)."""
        ...

    def repository_id(self) -> str:
        """The repository's ID (hex), as the last list_archives read it (one more
        list if none has run)."""
        ...

    @property
    def may_ask(self) -> bool:
        """True while a borg of this repository may have to ask for the passphrase
        (on a terminal): run no borg beside the first listing then."""
        ...

    def list_items(self, archive: str, paths: Sequence[str], *, brief: bool = False
                   ) -> AbstractContextManager[subproc.Stream]:
        """A running listing of the archive's items under paths, one JSON line each,
        in the order extract_stdout writes them (read them with ``items``)."""
        ...

    def export_tar(self, archive: str, paths: Sequence[str], *, brief: bool = False
                   ) -> AbstractContextManager[subproc.Stream]:
        """A running export of the archive's paths as a tar stream on stdout."""
        ...

    def extract_stdout(self, archive: str, paths: Sequence[str], *, brief: bool = False
                       ) -> AbstractContextManager[subproc.Stream]:
        """A running extract writing the contents of the paths' regular files to stdout."""
        ...

    def import_tar(self, archive: str, *, comment: str, timestamp: str, compression: str,
                   chunker_params: str, first: Callable[[], None] | None = None
                   ) -> AbstractContextManager[subproc.Stream]:
        """A running import of a tar stream written to its stdin, committed only
        when the stream's end marker arrives (then ``finish_import``). first, if
        given, is called while borg starts up, before it touches the repository:
        what it raises ends borg, the repository untouched."""
        ...

    def finish_import(self, stream: subproc.Stream) -> str | None:
        """Wait for an import_tar whose stream was written; return the ID of the
        archive it committed (None if borg did not say)."""
        ...

    def delete(self, archives: Sequence[str]) -> None:
        """Delete archives in one transaction."""
        ...

    def compact(self) -> None:
        """Free the space deleted archives held."""
        ...

    def mount(self, mountpoint: str, archive_glob: str) -> AbstractContextManager[subproc.Stream]:
        """Mount the archives matching archive_glob read-only at mountpoint."""
        ...

    def umount(self, mountpoint: str) -> None:
        """Unmount a mount whose borg is gone."""
        ...

    def finish(self, action: str, stream: subproc.Stream) -> None:
        """Wait for a streaming command; raise the matching BorgError if it failed."""
        ...

    def child_env(self) -> AbstractContextManager[tuple[dict[str, str], tuple[int, ...]]]:
        """(environment, descriptors) giving a child process the passphrase as borg
        takes it (for a borg-vm started in the background)."""
        ...

    def archive_glob(self, prefix: str) -> str:
        """A pattern for mount that matches the archives whose names start with prefix."""
        ...
