"""One backup run's context, and the interface both kinds of session implement.

``BackupRun`` is built once per domain and run: the domain, the options, its
live XML parsed once, the disks to back up and the repository's archives of
the domain. ``Plan``s, layers and sessions are derived from it.

A session is the run's way to the disks (``Session``): for a running domain a
libvirt pull-backup job (``running.session``), for a shut-off one its images
and persistent bitmaps (``offline.session``). Each is a context manager that
yields a Session and, on normal exit, keeps the run's checkpoint and drops the
domain's older ones; on an exception it removes what the run made. What each
needs beyond the run and the plan, it takes by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from borg_vm.adapters.libvirt import Domain
from borg_vm.core import plan
from borg_vm.core.disk_source import DiskSource
from borg_vm.core.domxml import LiveDomain
from borg_vm.format import names as fmt
from borg_vm.format.names import ArchiveName
from borg_vm.format.summary import ArchiveInfo
from borg_vm.services.backup.quiesce import FREEZE_TIMEOUT
from borg_vm.services.hosts import LOCAL, Host


@dataclass(frozen=True)
class BackupOptions:
    level: str = plan.AUTO
    exclude_disks: tuple[str, ...] = ()
    scratch_dir: str | None = None
    compression: str = "lz4"
    progress: bool = True
    block_size: int = fmt.BLOCK_SIZE
    read_alignment: int = 0
    full_every: plan.FullEvery | None = None
    quiesce: str | None = None            # quiesce.ON, quiesce.TRY or None
    freeze_timeout: float = FREEZE_TIMEOUT


@dataclass(frozen=True)
class BackupRun:
    """What one backup run of one domain knows before it plans."""

    dom: Domain
    opts: BackupOptions
    live: LiveDomain
    disks: tuple[plan.Disk, ...]
    archives: tuple[ArchiveInfo, ...]   # the domain's complete, authentic archives
    key: bytes = field(repr=False)      # signs the archive (services/keyring.py)
    # The checkpoints of every archive of the domain the repository holds, those
    # this host cannot authenticate too: a new archive takes none of their names.
    taken: frozenset[str] = frozenset()
    # Given when archives are what this host last saw (services/catalog_cache.py):
    # called with the new archive's name before anything is written that would
    # record it; raises if the repository's listing does not confirm them.
    confirm: Callable[[ArchiveName], None] | None = None
    # The hypervisor's machine (services/hosts.py): this one, or one reached by ssh.
    host: Host = LOCAL
    by_target: dict[str, plan.Disk] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_target", {d.target: d for d in self.disks})


@dataclass(frozen=True)
class Session:
    """One backup run's way to the disks: the source to read them from, the
    XML of the checkpoint the run records (asked for once the run has begun),
    how long the guest was frozen while it began (None: it was not), and the
    domain's state as of the disks' point in time (services/backup/vmstate.py)."""

    source: DiskSource
    checkpoint_xml: Callable[[], str]
    frozen_ms: float | None = None
    state: dict[str, bytes] = field(default_factory=dict, repr=False)
