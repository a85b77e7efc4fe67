"""The two Borg generations a benchmark backs up into, side by side (issue 22):
Borg 1.4, whose restore points are chains (a full and the incrementals after
it), and Borg 2, whose every restore point is a record archive and, per disk,
a complete image archive `RECORD~TARGET` (docs/borg2.md). Each knows its
borg, how a repository of it is made, compacted and measured, borg-vm's
default chunk size for it, and how Borg alone hands out a restore point's
archives.

borg-vm picks the generation from the borg it runs (BORG_VM_BORG); a Borg 2
repository is one that Borg 2's `repo-create` made.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import lab

from borg_vm.format.names import BLOCK_SIZE, IMAGE_BLOCK_SIZE, IMAGE_SEPARATOR


@dataclass(frozen=True)
class Generation:
    key: str          # "1" or "2": on the command line and in file names
    label: str
    borg: Path
    # Encrypted, with the same id hash (HMAC-SHA256) in both: what a user's
    # repository is, and the same hashing cost on both sides.
    encryption: str
    chunk: int        # borg-vm's default --chunk-size for this generation

    def env(self, env: dict) -> dict:
        """env in which borg-vm runs this generation's borg."""
        return {**env, "BORG_VM_BORG": str(self.borg)}

    def _argv(self, repo: Path, command: str, *args) -> list:
        if self.key == "2":
            return [self.borg, "-r", repo, command, *args]
        return [self.borg, command, *args, repo]

    def init(self, repo: Path, env: dict) -> Path:
        """Make a fresh empty repository at repo (one there is removed first)."""
        if repo.exists():
            lab.clear_work(repo)
            repo.rmdir()
        command = "repo-create" if self.key == "2" else "init"
        lab.run(self._argv(repo, command, "--encryption", self.encryption), env=env)
        return repo

    def size(self, repo: Path, env: dict) -> tuple[int, int]:
        """Compact the repository (Borg 2's prune and delete only mark archives
        deleted); return (bytes its files take on disk, their apparent size:
        what an object store would bill)."""
        lab.run(self._argv(repo, "compact"), env=env)
        files = [f.stat() for f in repo.rglob("*") if f.is_file()]
        return sum(s.st_blocks * 512 for s in files), sum(s.st_size for s in files)

    def point_archives(self, archive: str, targets: list[str]) -> list[str]:
        """The archives of one borg-vm run: its archive, and in a Borg 2 repository
        each disk's image archive beside its record."""
        if self.key == "2":
            return [archive] + [f"{archive}{IMAGE_SEPARATOR}{t}" for t in targets]
        return [archive]

    def _extract_argv(self, repo: Path, archive: str, *options: str) -> list:
        """`borg extract [options]` of one archive, as this generation spells it."""
        if self.key == "2":
            return self._argv(repo, "extract", *options, archive)
        return [self.borg, "extract", *options, f"{repo}::{archive}"]

    def extract_stdout(self, repo: Path, archives: list[str], env: dict) -> float:
        """Seconds Borg alone takes to hand out the archives' contents, one `borg
        extract --stdout` each, into /dev/null."""
        seconds = 0.0
        for a in archives:
            seconds += lab.timed(self._extract_argv(repo, a, "--stdout"), env,
                                 discard_stdout=True).seconds
        return seconds

    def extract_files(self, repo: Path, archives: list[str], env: dict, into: Path) -> float:
        """Seconds Borg alone takes to restore the archives by hand: `borg extract`
        of each into the empty directory into, then `sync` of every file
        extracted (borg-vm's restore makes what it wrote durable too). into is
        removed after."""
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        try:
            seconds = 0.0
            for a in archives:
                seconds += lab.timed(self._extract_argv(repo, a), env, cwd=into).seconds
            files = [f for f in into.rglob("*") if f.is_file()]
            return seconds + lab.timed(["sync", *files]).seconds
        finally:
            shutil.rmtree(into)

    def version(self) -> str:
        out = subprocess.run([str(self.borg), "--version"], capture_output=True, text=True)
        return out.stdout.strip() or "?"


BORG1 = Generation("1", "Borg 1.4", lab.BORG, "repokey", BLOCK_SIZE)
BORG2 = Generation("2", "Borg 2", lab.BORG2, "aes256-ocb", IMAGE_BLOCK_SIZE)
GENERATIONS = {g.key: g for g in (BORG1, BORG2)}


def chosen(which: str) -> list[Generation]:
    """The generations a --generation argument names: 1, 2 or both."""
    return list(GENERATIONS.values()) if which == "both" else [GENERATIONS[which]]
