"""Errors that own their user message and exit code.

Every failure borg-vm reports to a person is one of these classes. The class
docstring is the message template (``str.format`` over the constructor's
keyword arguments); ``exit_code`` follows borg: 0 ok, 1 warning, 2 error.
``report`` turns one into a log line and its exit code; ``cli.main`` is the
one exit point.
"""

import logging

log = logging.getLogger("borg_vm")

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 2


class BorgVmError(Exception):
    """{detail}"""

    exit_code = EXIT_ERROR

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = " ".join((self.__doc__ or "").split())
        return template.format(**self.kwargs)


class UsageError(BorgVmError):
    """{detail}"""


class Interrupted(BorgVmError):
    """Interrupted by {signal}; everything this run started was undone."""

    exit_code = EXIT_INTERRUPTED


# --- libvirt ---------------------------------------------------------------

class LibvirtConnectError(BorgVmError):
    """Cannot connect to libvirt at {uri}: {detail}. Is libvirtd running, and
    may this user use it? (choose another URI with -c/--connect)"""


class DomainNotPlaced(BorgVmError):
    """{detail}"""


class DomainNotFound(BorgVmError):
    """Domain {name!r} not found at {uri} ('virsh -c {uri} list --all' lists
    the domains)."""


class NoDisksToBackUp(BorgVmError):
    """Domain {name!r} has no disk borg-vm can back up ({detail})."""


class UnknownDisk(BorgVmError):
    """Domain {name!r} has no disk {target!r} (its disks: {known})."""


class LibvirtError(BorgVmError):
    """libvirt failed to {action} for domain {name!r}: {detail}"""


class DomainStopped(BorgVmError):
    """Domain {name!r} stopped while it was being backed up ({detail}); nothing was
    recorded. Start it and back it up again (a full backup, if QEMU was killed: its
    checkpoints went with it)."""


class CheckpointInconsistent(LibvirtError):
    """Checkpoint {checkpoint!r} of domain {name!r} is unusable: {detail}"""


class RemoteUnsupported(UsageError):
    """borg-vm does not support {what} on a remote hypervisor ({where}) yet:
    {hint}."""


class SshError(BorgVmError):
    """ssh to hypervisor {host} failed to {action}: {detail}. Check that 'ssh'
    with the URI's user, port and keyfile logs in there without a prompt."""


# --- the guest agent (--quiesce) ---------------------------------------------

class QuiesceError(BorgVmError):
    """{detail}"""


class GuestAgentMissing(QuiesceError):
    """Domain {name!r} has no guest agent channel {channel}, so its filesystems
    cannot be frozen: add <channel type='unix'><target type='virtio'
    name='{channel}'/></channel> to the domain and run qemu-guest-agent in the
    guest."""


class QuiesceFailed(QuiesceError):
    """Cannot freeze the filesystems of domain {name!r} through its guest agent:
    {detail}. Is qemu-guest-agent running in the guest?"""


class FreezeExpired(QuiesceError):
    """The filesystems of domain {name!r} were thawed after {timeout} s, before
    the backup job began (borg-vm never keeps a guest frozen longer than
    {variable} seconds), so this backup would not be consistent."""


class StateUnreadable(BorgVmError):
    """Cannot read the {what} of domain {name!r} ({path}): {detail}."""


# --- NBD -------------------------------------------------------------------

class NbdError(BorgVmError):
    """NBD {action} failed on {where}: {detail}"""


# --- qemu-img / qemu-nbd ---------------------------------------------------

class QemuImgError(BorgVmError):
    """qemu-img {action} failed: {detail}"""


# --- Borg ------------------------------------------------------------------

class BorgNotFound(BorgVmError):
    """The borg command was not found ({detail}). Install BorgBackup >= 1.2,
    or point BORG_VM_BORG at it."""


class BorgUnsupported(BorgVmError):
    """{executable} is borg {version}; this borg-vm works with borg {supported}.
    Point BORG_VM_BORG at a borg it supports."""


class BorgError(BorgVmError):
    """borg {action} failed: {detail}"""


class LayersNotRecorded(BorgVmError):
    """{archive} holds no images of its disks' snapshot layers ({detail}): restore it
    without --layers"""


class CommittedThenFailed(BorgError):
    """{detail}; but borg had committed archive {archive} before that: it is complete and
    kept, the next run builds on it (`borg check` the repository)"""


class RepositoryNotFound(BorgError):
    """Borg repository {repo} does not exist or cannot be reached: {detail}"""


class RepositoryMissing(RepositoryNotFound):
    """Borg repository {repo} does not exist: create it with 'borg init
    --encryption=repokey-blake2 {repo}', or name another with --repo or BORG_REPO."""


class RepositoryFull(BorgError):
    """The file system of Borg repository {repo} is full ({detail}); Borg rolled its
    transaction back. Free space there (after deleting archives, 'borg compact'
    frees theirs) and run again."""


class PassphraseWrong(BorgError):
    """The passphrase for repository {repo} is wrong (borg-vm uses Borg's own
    BORG_PASSPHRASE, BORG_PASSCOMMAND or BORG_PASSPHRASE_FD)."""


class PassphraseFdUnusable(UsageError):
    """BORG_PASSPHRASE_FD={fd!r} {detail}: it must be the number of a file
    descriptor open for reading, e.g. BORG_PASSPHRASE_FD=3 borg-vm ... 3<FILE."""


class PassphraseMissing(BorgError):
    """Repository {repo} needs a passphrase and none was given: set
    BORG_PASSPHRASE or BORG_PASSCOMMAND (or BORG_PASSPHRASE_FD), or run borg-vm
    on a terminal to be asked for it."""


class PasscommandFailed(BorgError):
    """BORG_PASSCOMMAND failed to give the passphrase for repository {repo}
    ({detail}); it must print the passphrase and exit 0."""


class BorgQuestion(BorgError):
    """borg {action} stopped at a question it cannot be asked: {question} If
    the answer is yes, set {variable}=yes for this run."""


class RepositoryLocked(BorgError):
    """Repository {repo} is locked by another borg or borg-vm run; gave up after
    waiting {wait} s: {detail}. Wait longer with --lock-wait SECONDS or
    BORG_VM_LOCK_WAIT; if nothing uses the repository, 'borg break-lock {repo}'
    removes a stale lock."""


class RepositoryReplay(BorgError):
    """borg {action} refused repository {repo}: {detail}. Either it is an older
    copy of the repository than this host last saw (restored from a backup, or
    served by an attacker), or another borg of this host committed into it at
    that moment and borg-vm gave up retrying."""


class ArchiveUnreadable(BorgError):
    """borg {action} found archive {archive_id} in the archive directory of
    repository {repo} but not its metadata. Either another writer was committing
    it at that moment and borg-vm gave up retrying, or it is an unfinished or
    planted entry: 'borg check --repair --archives-only' removes such entries."""


class NoRepository(UsageError):
    """No repository given: use --repo or set BORG_REPO."""


class BadCompression(UsageError):
    """Invalid --compression {spec!r}: {detail}. Use none, lz4, zstd[,1-22],
    zlib[,0-9], lzma[,0-9], auto,SPEC or obfuscate,N,SPEC (see 'borg help
    compression')."""


class RuntimeDirUnsafe(BorgVmError):
    """borg-vm's runtime directory {path} {detail}: it must be a directory of
    this user (uid {uid}) that no one else can write to. Remove it, or point
    BORG_VM_RUNTIME_DIR elsewhere."""


class RemoteRuntimeDirUnsafe(BorgVmError):
    """borg-vm's runtime directory {path} on the hypervisor {detail}: it must be a
    directory of the ssh user there (uid {uid}) that no one else can write to.
    Remove it there."""


# --- archives and chains ---------------------------------------------------

class FormatError(BorgVmError):
    """Archive {archive} is not a borg-vm archive this version can read:
    {detail}"""


class NoUsableParent(BorgVmError):
    """An incremental backup of {domain!r} was asked for, but there is no
    usable parent: {reason}. Run with --level auto or --level full."""


class ArchiveNotFound(BorgVmError):
    """{detail}"""


class HasDependents(BorgVmError):
    """Archive {archive} is needed to restore {dependents}: delete those first, or
    use --with-dependents to delete them too (--dry-run lists them)."""


class BrokenChain(BorgVmError):
    """Cannot restore {archive}: the chain back to its full backup is broken,
    {missing} is missing from the repository."""


class Unauthenticated(BorgVmError):
    """Archive {archive} is not authenticated: {reason}. It may have been planted
    by whoever can write the repository; --allow-unauthenticated uses it anyway
    ('borg-vm key import' adds the key of the host that wrote it)."""


class NoAuthenticArchive(BorgVmError):
    """The repository holds {count} archive(s) of {domain!r}, none of which this host
    can authenticate (e.g. {archive}: {reason}). 'borg-vm verify {domain}' names each;
    'borg-vm key import' adds the key of the host that wrote them; restore, mount
    and boot use them anyway with --allow-unauthenticated."""


class KeyringError(BorgVmError):
    """Authentication keyring {path}: {detail}"""


class RestoreTargetExists(BorgVmError):
    """Refusing to overwrite {paths}: remove them or use --force."""


class IntegrityError(BorgVmError):
    """Data of disk {target} in archive {archive} does not match its manifest
    ({detail}): the archive is damaged."""


class NothingRestored(BorgVmError):
    """{detail}; nothing was restored."""


class RestoreTargetFull(BorgVmError):
    """The file system of {path} filled up during the restore ({detail}); nothing
    was moved into it. Free space there, or choose another --to directory."""


class RestoreTargetUnusable(BorgVmError):
    """Cannot restore into {path}: {detail}. Choose another --to directory."""


class ImageWriteError(BorgVmError):
    """Cannot {action} the restored image {path}: {detail}"""
    # kwargs: errno, the OSError's, where there is one (a full file system: ENOSPC)


# --- mount -----------------------------------------------------------------

class NbdkitError(BorgVmError):
    """nbdkit failed to {action}: {detail}"""


class SocketInUse(UsageError):
    """{path} {detail}: choose another --socket, or remove it if nothing uses it."""


class SocketPathUnusable(UsageError):
    """Cannot serve on {path}: {detail}; choose another --socket."""


# --- boot ------------------------------------------------------------------

class DomainExists(UsageError):
    """A domain named {name!r} exists already at {uri}: choose another name with --name."""


class NotBooted(BorgVmError):
    """Domain {name!r} has no borg-vm boot record: it was not started by 'borg-vm boot',
    or 'borg-vm boot --finish' completed already."""


class ServerNotRunning(BorgVmError):
    """Domain {name!r} reads its disks from the repository through a server that is not
    running ({detail}): QEMU pauses the guest when it reads what is still in the
    repository. 'borg-vm boot --resume {name}' starts the server again and resumes
    the guest (server log: {log})."""


class ServerFailed(BorgVmError):
    """The server of the disks of {name!r} (borg-vm mount) {detail} (server log: {log})"""


class PullFailed(BorgVmError):
    """Pulling disk {target} of {name!r} out of the repository stopped before the end:
    {detail}. Its image is intact; run 'borg-vm boot --finish {name}' again."""


class NotRunning(BorgVmError):
    """Domain {name!r} is {state}: {detail}"""


def report(e: BaseException, debug: bool, prefix: str = "") -> int:
    """Log one line for an error (with the traceback under --debug); return its exit code.

    borg-vm's own errors say what happened and what to do; anything else is a
    bug, reported as such, never as a bare traceback.
    """
    message, code = describe(e, debug)
    log.error("%s%s", prefix, message)
    if debug:
        log.error("traceback", exc_info=e)
    return code


def describe(e: BaseException, debug: bool) -> tuple[str, int]:
    """Return (the one line report logs for an error, its exit code)."""
    if isinstance(e, BorgVmError):
        return e.message, e.exit_code
    return (f"unexpected error (a bug in borg-vm, please report it): {type(e).__name__}: {e}"
            f"{'' if debug else '; --debug shows the traceback'}", EXIT_ERROR)
