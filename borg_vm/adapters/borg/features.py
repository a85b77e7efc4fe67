"""Every difference between Borg versions, decided in one place.

The generation of the borg program is read once (``borg --version``, cached by
the executable's identity: a borg start costs ~0.4 s, a nightly run should not
pay it twice) and turned into a ``Dialect``: how a repository and an archive
are named on the command line, which command lists archives, how archives are
matched by a pattern. Callers never spell a version-dependent flag.

    generation  archive on argv       list archives      match archives
    1 (1.2-1.4) REPO::ARCHIVE         list REPO          --glob-archives GLOB
    2 (2.0 b)   -r REPO ARCHIVE       repo-list -r REPO  -a sh:GLOB

The version is the second word of what ``borg --version`` prints ("borg
1.4.5", "borg2 2.0.0b23": the first is the program's name, whatever it was
installed as), compared as Python versions are (packaging: 2.0.0b23 <
2.0.0b24.dev3+g1234 < 2.0.0).

Borg 1.2 to 1.4 are what borg-vm reads and writes today; a Borg 2 repository
needs an implementation of its own (its archives are series plus IDs), which
``open_repository`` refuses until there is one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from borg_vm.errors import BorgNotFound, BorgUnsupported

# What the 1.x implementation was written and tested against (borg import-tar
# and --log-json msgids as of 1.2; 1.4 is what set-up installs).
BORG1_OLDEST = (1, 2)
# Borg 2's store locations written as SCHEME:REST, not as a URL (borgstore's
# rclone backend; s3 and b2 take "s3:[profile|key:secret@][scheme://host[:port]]/bucket/path").
STORE_SCHEMES = ("rclone", "s3", "b2")
CACHE_ENV = "BORG_VM_CACHE_DIR"
CACHE_FILE = "borg-versions.json"
# "PROGRAM VERSION" on a line of its own (borg may log warnings before it).
_VERSION_RE = re.compile(r"^\S+ (\d+\.\d+\.\d+\S*)$", re.M)


@dataclass(frozen=True, order=True)
class BorgVersion:
    """A borg program's version, ordered as PEP 440 orders versions."""

    version: Version

    @classmethod
    def of(cls, text: str) -> BorgVersion:
        """Return the version a version string names ("1.4.5", "2.0.0b23")."""
        return cls(Version(text))

    @classmethod
    def parse(cls, text: str) -> BorgVersion:
        """Parse what 'borg --version' prints ("borg 1.4.5", "borg2 2.0.0b23");
        raise ValueError otherwise."""
        m = _VERSION_RE.search(text)
        try:
            if not m:
                raise InvalidVersion(text)
            return cls.of(m[1])
        except InvalidVersion:
            raise ValueError(f"not a borg version: {text.strip()[:80]!r}") from None

    @property
    def major(self) -> int:
        return self.version.major

    @property
    def minor(self) -> int:
        return self.version.minor

    def __str__(self) -> str:
        return str(self.version)


# The first Borg 2 with create --map/--reuse-from, which its repositories of
# complete images need (adapters/borg/borg2.py).
BORG2_OLDEST = BorgVersion.of("2.0.0b23")


@dataclass(frozen=True)
class Dialect:
    """How one Borg generation spells what borg-vm asks of it."""

    version: BorgVersion

    @property
    def generation(self) -> int:
        return self.version.major

    def repository_args(self, repo: str) -> list[str]:
        """The argv naming the repository alone."""
        return [repo] if self.generation == 1 else ["-r", repo]

    def archive_args(self, repo: str, archive: str) -> list[str]:
        """The argv naming one archive of the repository."""
        return [f"{repo}::{archive}"] if self.generation == 1 else ["-r", repo, archive]

    def list_archives_command(self) -> str:
        return "list" if self.generation == 1 else "repo-list"

    def checkpoint_args(self) -> list[str]:
        """The flags that list what interrupted runs left (borg 1's checkpoint archives)."""
        return ["--consider-checkpoints"] if self.generation == 1 else []

    def match_archives_args(self, glob: str) -> list[str]:
        """The flags selecting archives by a shell-style pattern."""
        return ["--glob-archives", glob] if self.generation == 1 else ["-a", f"sh:{glob}"]

    def comment_arg(self, comment: str) -> str:
        """The --comment argument that sets comment as it is: Borg 2 replaces
        {placeholders} in comments (a doubled brace is a brace), Borg 1 does not."""
        return comment if self.generation == 1 else comment.replace("{", "{{").replace("}", "}}")

    def absolute_location(self, repo: str) -> str:
        """Return the location with a local path made absolute; others as they
        are: URLs (ssh://, file://, and Borg 2's sftp://, rest://, http(s)://),
        borg 1's scp-style host:path, and Borg 2's store locations that are a
        scheme and what it takes (rclone:remote:path, s3:..., b2:...)."""
        if "://" in repo:
            return repo
        head = repo.split("/", 1)[0]
        if self.generation == 1 and ":" in head:
            return repo
        if self.generation >= 2 and head.split(":", 1)[0] in STORE_SCHEMES and ":" in head:
            return repo
        return os.path.abspath(repo)


def glob_literal(text: str) -> str:
    """Return a shell-style archive pattern that matches text literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def check_supported(version: BorgVersion, executable: str) -> None:
    """Raise BorgUnsupported unless borg-vm has an implementation for version."""
    if version.major == 1 and (version.major, version.minor) >= BORG1_OLDEST:
        return
    if version.major == 2 and version >= BORG2_OLDEST:
        return
    raise BorgUnsupported(executable=executable, version=str(version),
                          supported=f"{BORG1_OLDEST[0]}.{BORG1_OLDEST[1]} to 1.4, "
                                    f"and {BORG2_OLDEST} and later 2.0 betas")


def detect(executable: str, ask: Callable[[list[str]], str]) -> BorgVersion:
    """Return the version of the borg at executable: from the cache if that file
    is unchanged since, else by ask([executable, '--version']) (its stdout).

    Raise BorgNotFound if the executable is missing or does not say a version.
    """
    try:
        st = os.stat(executable)
    except OSError as e:
        raise BorgNotFound(detail=f"{executable}: {e.strerror}") from e
    key = f"{os.path.realpath(executable)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cached = _load_cache()
    if key in cached:
        with contextlib.suppress(ValueError):
            return BorgVersion.parse(cached[key])
    out = ask([executable, "--version"])
    try:
        version = BorgVersion.parse(out)
    except ValueError as e:
        raise BorgNotFound(detail=f"{executable} --version: {e}") from e
    cached[key] = out.strip()
    _save_cache(cached)
    return version


def cache_dir() -> str:
    """Return borg-vm's cache directory: $BORG_VM_CACHE_DIR, else beside borg's own
    ($BORG_BASE_DIR/.cache, $XDG_CACHE_HOME, ~/.cache) in borg-vm/."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return explicit
    base = os.environ.get("BORG_BASE_DIR")
    root = (os.path.join(base, ".cache") if base
            else os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    return os.path.join(root, "borg-vm")


def _load_cache() -> dict[str, str]:
    raw = read_cache_file(CACHE_FILE)
    try:
        doc = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(doc, dict) else {}


def _save_cache(doc: dict[str, str]) -> None:
    write_cache_file(CACHE_FILE, json.dumps(doc).encode())


def read_cache_file(name: str, limit: int = 1 << 20) -> bytes | None:
    """Return the contents of the file name in cache_dir(), None if it is missing,
    unreadable or bigger than limit bytes (a cache is only ever a shortcut)."""
    try:
        with open(os.path.join(cache_dir(), name), "rb") as f:
            raw = f.read(limit + 1)
    except OSError:
        return None
    return raw if len(raw) <= limit else None


def write_cache_file(name: str, data: bytes) -> None:
    """Write data as the file name in cache_dir() (0700), atomically: a file
    beside it, renamed over it. A cache that cannot be written is only slower:
    failures are ignored."""
    directory = cache_dir()
    with contextlib.suppress(OSError):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(directory, name))
        except OSError:
            os.unlink(tmp)
            raise
