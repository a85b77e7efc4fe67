"""Borg 2 repositories (2.0.0b23 and later betas): every restore point a set of
complete images, each built by ``borg create --map --reuse-from`` from the
ranges that changed, and several writers at once (see cli.py for what all
generations share).

What differs from Borg 1 here, beyond the spellings features.Dialect holds:

- An archive name is a series name; one archive is ``aid:<id>``. A name given
  where one archive is meant must match exactly one, so borg-vm names single
  archives by ID (``ref``) and deletes by an anchored pattern of names.
- ``create --map MAPFILE`` reads only the ``data`` ranges of its one input
  file, stores ``zero`` ranges unread and takes ``same`` ranges from the
  ``--reuse-from`` archive's chunks unread. The map is trusted: nothing checks
  that a ``same`` range did not change.
- A create that could not read its input (an NBD server gone mid-read) still
  commits an archive, without the file, and exits non-zero: ``create_image``
  deletes what a failed create committed, and checks that what it keeps
  holds the one file.
- Reading, Borg 2 checks each object's MAC under the repository key but, by
  default, not that a chunk's content hashes to its ID: a client holding the
  key could store other content under an ID. Every Borg 2 borg-vm runs has
  ``BORG_ASSERT_ID`` naming reads too (``ASSERT_ID``), so an image archive's ID,
  which borg-vm's record authenticates, binds every byte extracted or mounted.
- Some failures borg only logs: a missing chunk is extracted as zeros with an
  error record and exit code 0. ``finish`` fails on any error record.
- 2.0.0b23 compares the manifest it loaded with the newest this host saw (its
  security directory) only later, as it opens its cache: a borg of this host
  committing in between (another domain's backup) makes it refuse with
  RepositoryReplay, before it did anything. Borg dropped that check later (it
  protects nothing in Borg 2: borg pull request 10371); until then such a
  command runs again (``again_if_raced``). A repository that really went
  back in time keeps being refused, and the error says so.
- A writer commits an archive by naming it in the archive directory, and
  makes the index that locates its metadata readable to others only as it
  closes: a repo-list in between fails (Archive.DoesNotExist) for the archive
  it finds named but cannot read. Seen beside an image create over sftp; the
  listing runs again too. An entry that stays unreadable (an unfinished or
  planted one) makes every listing fail, until ``borg check --repair
  --archives-only`` removes it: ArchiveUnreadable says so.
- delete and prune only mark archives deleted; ``compact`` frees their space
  and takes the repository's exclusive lock (every other command a shared one).
- Objects are stored in packs, and 2.0.0b23 reads an object by loading its
  whole pack (keeping the last three loaded). An image built night after night
  takes its chunks from the packs of many nights, in no order a pack load
  serves twice: with Borg's 50 MB packs, extracting the newest of 30 nightly
  images of a 1 GiB disk loaded 95 GB of packs (11 x the first image's time;
  borg issue 10018 is about reading ranges of packs instead). borg-vm's
  borgs write packs of about PACK_SIZE bytes (``BORG_PACK_MAX_SIZE``, unless
  set already: a pack is written with the object that takes it to the
  size), which bounds that. Smaller packs would be merged again:
  ``compact`` merges packs below 1 MB, in no order of the image.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

from borg_vm.adapters import subproc
from borg_vm.adapters.borg.cli import BorgCli, logged_errors
from borg_vm.adapters.borg.protocol import Created, ImageStore, Listed
from borg_vm.errors import ArchiveUnreadable, BorgError, RepositoryReplay

log = logging.getLogger(__name__)
T = TypeVar("T")

# The places where Borg 2 checks that an object's content hashes to its ID: its
# default ones and "read" (everything extract reads).
ASSERT_ID = "read,repair,transfer,rechunk"
# The size of the packs borg-vm's borgs write (see the module's docstring): 1.6 x the
# first image's extract time for the newest of 30 (9 GB of packs loaded), the
# smallest size well clear of the 1 MB below which compact merges packs.
PACK_SIZE = 2_000_000
# How many names one 'borg delete -a re:...' takes (argv stays far below the
# kernel's limit whatever the names).
DELETE_BATCH = 100
# Runs of a command refused for another writer's commit (see again_if_raced),
# and the pause before the next, times the run's number, jittered.
REPLAY_TRIES = 5
REPLAY_PAUSE = 0.2


class Borg2Repository(BorgCli):
    """One Borg 2 repository."""

    @property
    def images(self) -> ImageStore:
        return self

    def again_if_raced(self, call: Callable[[], T]) -> T:
        """Return call() (a borg command, or what runs one and can run again);
        run it again, up to REPLAY_TRIES times in all, while borg refuses it with
        RepositoryReplay, or a listing fails on an archive being committed
        (ArchiveUnreadable; see the module's docstring)."""
        for attempt in range(1, REPLAY_TRIES + 1):
            try:
                return call()
            except (RepositoryReplay, ArchiveUnreadable) as e:
                if attempt == REPLAY_TRIES:
                    raise
                log.info("borg %s: another borg committed into %s as it ran; running it "
                         "again", e.kwargs["action"], self.repo)
                time.sleep(REPLAY_PAUSE * attempt * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def _run(self, action: str, argv: Sequence[str], cwd: str | None = None,
             on_stderr_line: Callable[[str], None] | None = None) -> bytes:
        return self.again_if_raced(functools.partial(BorgCli._run, self, action, argv, cwd,
                                                     on_stderr_line))

    @staticmethod
    def ref(archive_id: str) -> str:
        """How one archive is named on the command line: by its ID."""
        return f"aid:{archive_id}"

    def list_archives(self, *, checkpoints: bool = False, pattern: str | None = None
                      ) -> list[Listed]:
        """Return the archives (those whose whole names match the regular
        expression pattern, if given) with comment, time and ID. Borg 2 has no checkpoint
        archives: checkpoints changes nothing."""
        return self._list(*(["-a", f"re:{pattern}"] if pattern is not None else []))

    def create_image(self, name: str, path: str, ranges: Sequence[tuple[int, int, str]], *,
                     reuse_from: str | None, comment: str, timestamp: str, compression: str,
                     block_size: int, progress: Callable[[int], None] | None = None
                     ) -> Created:
        """Archive the file at path (a regular file: an image, or an NBD export a
        FUSE mount shows as one) as archive name, holding the one item
        basename(path), reading only what ranges (core.extent.input_map) say is
        data; the same ranges come from the archive with ID reuse_from. Chunks
        are block_size bytes, fixed, so that unchanged blocks stay chunks of their
        own. timestamp: ISO 8601 with its UTC offset.

        progress, if given, is called with the bytes of the file Borg has been
        through (read or taken from reuse_from), as Borg reports them.

        Raise BorgError if borg fails or commits an archive without the whole
        file (that archive is deleted first).
        """
        with tempfile.TemporaryDirectory(prefix="borg-vm-map.") as tmp:
            map_file = os.path.join(tmp, "map")
            with open(map_file, "w", encoding="ascii") as f:
                f.writelines(f"{start} {length} {state}\n" for start, length, state in ranges)
            argv = self._argv("create", "--json", *(["--progress"] if progress else []),
                              "--map", map_file,
                              *(["--reuse-from", self.ref(reuse_from)] if reuse_from else []),
                              "--chunker-params", f"fixed,{block_size}",
                              "--files-cache", "disabled", "--compression", compression,
                              "--comment", self.dialect.comment_arg(comment),
                              "--timestamp", timestamp,
                              *self.location(name), os.path.basename(path))
            try:
                out = self._run("create", argv, cwd=os.path.dirname(path) or ".",
                                on_stderr_line=_progress_of(progress) if progress else None)
            except RepositoryReplay:
                raise   # refused before it started: nothing committed
            except BorgError:
                # A read error is not fatal to borg: it commits the archive without
                # the file, then exits non-zero.
                self.delete_ids([a.id for a in self.list_archives(pattern=re.escape(name))])
                raise
        archive = json.loads(out)["archive"]
        created = Created(archive["name"], archive["id"], os.stat(path).st_size)
        if archive["stats"]["nfiles"] != 1:
            self.delete_ids([created.id])
            raise BorgError(action="create", detail=f"{name} was committed without "
                            f"{os.path.basename(path)} (it could not be read)")
        return created

    @contextlib.contextmanager
    def child_env(self) -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
        """As BorgCli's, and every object a Borg 2 child reads checked against its
        ID (ASSERT_ID): extract, mount, verify alike; packs written of PACK_SIZE
        bytes, unless the environment sets a size."""
        with super().child_env() as (env, fds):
            yield {"BORG_PACK_MAX_SIZE": str(PACK_SIZE), **env, "BORG_ASSERT_ID": ASSERT_ID}, fds

    @contextlib.contextmanager
    def extract_image(self, archive_id: str) -> Iterator[subproc.Stream]:
        """Yield a running 'borg extract --stdout' of the archive with this ID (its
        one file) to stdout."""
        argv = self._argv("extract", "--stdout", *self.location(self.ref(archive_id)))
        with self.child_env() as (env, fds), subproc.stream(
                argv, stdout=True, env=env, pass_fds=fds) as s:
            yield s

    def mount_image(self, archive_id: str, mountpoint: str
                    ) -> AbstractContextManager[subproc.Stream]:
        """Mount the archive with this ID alone at mountpoint (MOUNTPOINT/NAME/FILE),
        as mount does archives by name."""
        return self._mount(mountpoint, ["-a", self.ref(archive_id)])

    def finish(self, action: str, stream: subproc.Stream) -> None:
        """Wait for a streaming borg command; raise the matching error if it failed
        or logged an error (Borg 2 extracts a missing chunk as zeros, exit code 0)."""
        super().finish(action, stream)
        errors = logged_errors("".join(stream.stderr_lines()))
        if errors:
            raise BorgError(action=action, detail="; ".join(errors))

    def delete(self, archives: Sequence[str]) -> None:
        """Mark the archives with these names deleted (their space is freed by
        compact), a batch of names per borg."""
        for i in range(0, len(archives), DELETE_BATCH):
            batch = archives[i:i + DELETE_BATCH]
            pattern = "^(?:" + "|".join(re.escape(a) for a in batch) + ")$"
            self._run("delete", self._argv("delete", "-a", f"re:{pattern}", *self.location()))

    def delete_ids(self, ids: Sequence[str]) -> None:
        """Mark the archives with these IDs deleted."""
        for archive_id in ids:
            self._run("delete", self._argv("delete", *self.location(self.ref(archive_id))))

    def compact(self) -> None:
        """Free the space of deleted archives ('borg compact': the exclusive lock)."""
        self._run("compact", self._argv("compact", *self.location()))


def _progress_of(progress: Callable[[int], None]) -> Callable[[str], None]:
    """Return what hands borg create's archive_progress records (--progress
    --log-json) to progress, as the bytes of its input it has been through."""
    def line(text: str) -> None:
        if '"archive_progress"' not in text:
            return
        with contextlib.suppress(ValueError):
            rec = json.loads(text)
            if isinstance(rec, dict) and isinstance(rec.get("original_size"), int):
                progress(rec["original_size"])
    return line
