"""The borg command line, as every Borg generation borg-vm runs is driven
(the Repository implementations, borg1.py and borg2.py, build on BorgCli;
spellings from features.Dialect).

Borg is driven through its CLI with ``--log-json`` so its
errors arrive as JSON lines with a ``msgid`` that maps to borg-vm errors.
The repository, passphrase and ssh settings are borg's own: BORG_PASSPHRASE,
BORG_PASSCOMMAND and BORG_RSH pass through the environment untouched;
BORG_PASSPHRASE_FD can be read only once, so it is read here once and handed
to each borg child through a fresh pipe.

A borg child never asks for a passphrase itself: it has no terminal, and
its stdin is empty or, for import-tar, the tar stream. When no passphrase
is given it gets an empty one (what borg tries first anyway), so a
repository that needs one fails at once, at the first call, with
PassphraseMissing; given someone to ask (borg-vm on a terminal), that
first call asks once and hands the answer to every later child through the
same pipe as BORG_PASSPHRASE_FD. The first call is a listing: a backup or
restore finds a missing or wrong passphrase before it writes anything (and,
while someone may still be asked (``may_ask``), before it starts anything).

Every call waits up to ``lock_wait`` seconds (``borg --lock-wait``) for a
lock another borg holds on the repository or its cache, so runs into one
repository queue instead of failing.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager

from borg_vm.adapters import subproc
from borg_vm.adapters.borg import prestart
from borg_vm.adapters.borg.features import BorgVersion, Dialect, glob_literal
from borg_vm.adapters.borg.protocol import Item, Listed
from borg_vm.errors import (
    ArchiveUnreadable,
    BorgError,
    BorgNotFound,
    BorgQuestion,
    PasscommandFailed,
    PassphraseFdUnusable,
    PassphraseMissing,
    PassphraseWrong,
    RepositoryFull,
    RepositoryLocked,
    RepositoryMissing,
    RepositoryNotFound,
    RepositoryReplay,
)

log = logging.getLogger(__name__)

# How long each borg call waits for a lock another borg holds on the
# repository or its cache. Borg's own default is 1 s, so two domains backed
# up into one repository at once (borg-vm@.timer starts every domain at 02:00)
# failed. Another domain's backup holds the lock for its whole import-tar: at
# the rate borg ingests encrypted data (bench/RESULTS.md section 1,
# repokey-blake2 ceiling) 6 h is a full backup of terabytes of allocated disk
# data, and a run stuck behind a forgotten
# lock still gives up before the next night's runs start.
DEFAULT_LOCK_WAIT = 6 * 60 * 60

# Borg polls a lock it waits for every tenth of --lock-wait, at most every
# minute, and even a shared lock takes the repository's exclusive roster lock
# for a moment: two borgs reading the repository that start (or end) within a
# few milliseconds of each other made one of them sleep a whole minute (3 of 20
# restores here ran list and extract side by side into it). Listings, and the
# borgs that borg-vm runs beside each other, get this wait instead (polled every
# 0.1 s), and are run again with the full wait if the repository stayed locked.
BRIEF_LOCK_WAIT = 1

# borg mount: how long it may take to mount once it holds the repository lock
# (it reads the manifest and lists the archives; ~1 s here), how often we look,
# and how long it may take to unmount after SIGINT.
MOUNT_START_SECONDS = 120
MOUNT_POLL_SECONDS = 0.05
UNMOUNT_GRACE_SECONDS = 30

_REPO_DOES_NOT_EXIST = "Repository.DoesNotExist"   # the one 'borg init' answers
_REPO_MISSING = {"Repository.InvalidRepository",
                 "Repository.ParentPathDoesNotExist", "ConnectionClosed",
                 "ConnectionClosedWithHint", "RemoteRepository.RPCServerOutdated"}
# Borg refuses a commit it has no room for with this msgid; a write that hits a full
# file system first ends in a traceback of OSError ENOSPC.
_NO_SPACE = "Repository.InsufficientFreeSpaceError"
_ENOSPC = ("[Errno 28]", "No space left on device")
# The first record of a borg that crashed on an exception: its traceback follows.
_EXCEPTION = "Exception"
_PASSPHRASE_REFUSED = {"PassphraseWrong", "PasswordRetriesExceeded", "NoPassphraseFailure"}
_PASSCOMMAND_FAILED = "PasscommandFailure"
_PASSCOMMAND_PREFIX = "Passcommand supplied in BORG_PASSCOMMAND failed: "  # borg's, then why
_LOCK_TIMEOUT = "LockTimeout"
# Borg's manifest replay check: RepositoryIDNotUnique in a repository without a key.
_REPLAY = {"RepositoryReplay", "Cache.RepositoryReplay", "RepositoryIDNotUnique",
           "Cache.RepositoryIDNotUnique"}
# Borg 2's repo-list: an archive in the archive directory whose metadata it did not find.
_ARCHIVE_MISSING = "Archive.DoesNotExist"
PASSPHRASE_VARIABLES = ("BORG_PASSPHRASE", "BORG_PASSCOMMAND")
PASSPHRASE_TRIES = 3   # as many as borg itself asks for


def find_borg() -> str:
    """Return the borg executable: $BORG_VM_BORG, else next to this Python, else on PATH."""
    explicit = os.environ.get("BORG_VM_BORG")
    beside = os.path.join(os.path.dirname(sys.executable), "borg")
    found = explicit or (beside if os.access(beside, os.X_OK) else shutil.which("borg"))
    if not found:
        raise BorgNotFound(detail="not on PATH")
    return found


class BorgCli:
    """One Borg repository reached through the borg command line: what every
    generation does alike (passphrases, errors, streams, mounts)."""

    def __init__(self, repo: str, *, executable: str | None = None,
                 lock_wait: int = DEFAULT_LOCK_WAIT,
                 ask_passphrase: Callable[[str], str] | None = None,
                 version: BorgVersion):
        """ask_passphrase(prompt) -> passphrase is called when the repository
        needs a passphrase and none was given (None: fail instead)."""
        self.repo = repo
        self.executable = executable or find_borg()
        self.lock_wait = lock_wait
        self.dialect = Dialect(version)
        self._ask = ask_passphrase
        self._asked = 0
        self._passphrase = self._take_passphrase_fd()
        self._repository_id: str | None = None

    @staticmethod
    def _take_passphrase_fd() -> bytes | None:
        """Return what $BORG_PASSPHRASE_FD names (read whole, then closed), None if it
        is unset or empty; raise PassphraseFdUnusable if it is no open descriptor."""
        fd = os.environ.get("BORG_PASSPHRASE_FD")
        if not fd:
            return None
        if not (fd.isascii() and fd.isdigit()):
            raise PassphraseFdUnusable(fd=fd, detail="is not a file descriptor number")
        try:
            with open(int(fd), "rb", closefd=True) as f:
                return f.read()
        except OSError as e:
            raise PassphraseFdUnusable(fd=fd, detail=f"cannot be read ({e.strerror})") from e

    @property
    def may_ask(self) -> bool:
        """True while a borg of this repository may have to ask for the passphrase:
        none was given, and there is someone to ask."""
        return self._ask is not None and not self._passphrase_given()

    def _passphrase_given(self) -> bool:
        return self._passphrase is not None or any(v in os.environ
                                                   for v in PASSPHRASE_VARIABLES)

    @contextlib.contextmanager
    def child_env(self) -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
        """Yield (environment, file descriptors to pass) that give a child the
        repository's passphrase as borg takes it: BORG_PASSPHRASE and BORG_PASSCOMMAND
        pass through, a passphrase borg-vm holds goes through a fresh pipe as
        BORG_PASSPHRASE_FD (a borg-vm child reads it once, as this one did)."""
        env = dict(os.environ)
        secret = b"" if not self._passphrase_given() else self._passphrase
        if secret is None:
            yield env, ()
            return
        r, w = os.pipe()
        try:
            os.write(w, secret)
            os.close(w)
            env["BORG_PASSPHRASE_FD"] = str(r)
            yield env, (r,)
        finally:
            os.close(r)

    def _argv(self, command: str, *args: str, brief: bool = False) -> list[str]:
        """Return borg's argv; brief: with BRIEF_LOCK_WAIT instead of lock_wait."""
        wait = BRIEF_LOCK_WAIT if brief else self.lock_wait
        return [self.executable, "--log-json", "--lock-wait", str(wait), command, *args]

    def location(self, archive: str | None = None) -> list[str]:
        """The argv naming the repository, or one of its archives."""
        return (self.dialect.archive_args(self.repo, archive) if archive
                else self.dialect.repository_args(self.repo))

    def absolute_location(self) -> str:
        return self.dialect.absolute_location(self.repo)

    def archive_glob(self, prefix: str) -> str:
        return glob_literal(prefix) + "*"

    def _list(self, *selection: str) -> list[Listed]:
        """Return the archives borg lists with the selection flags, with comment,
        time and ID (and note the repository's ID).

        A listing may run beside other borgs of ours (a restore reads while the
        repository is listed again), so it waits BRIEF_LOCK_WAIT first, and the
        full wait if the repository stayed locked."""
        command = self.dialect.list_archives_command()

        def listing(brief: bool) -> bytes:
            return self._run(command, self._argv(command, "--json", "--format", "{comment}",
                                                 *selection, *self.location(), brief=brief))
        try:
            out = listing(brief=True)
        except RepositoryLocked:
            out = listing(brief=False)
        doc = json.loads(out)
        self._repository_id = doc["repository"]["id"]
        return [Listed(a["name"], a.get("comment", ""), a.get("time", ""), a.get("id", ""))
                for a in doc["archives"]]

    def repository_id(self) -> str:
        """The repository's ID (hex), as the last listing read it (one more if none ran)."""
        if self._repository_id is None:
            self._list()
        assert self._repository_id is not None
        return self._repository_id

    def _error(self, action: str, e: subproc.CommandFailed) -> BorgError:
        """Turn a failed borg run into the borg-vm error its msgid means."""
        msgids, messages = _parse_log_json(e.stderr)
        question = _question(e.stderr)
        if question:
            return BorgQuestion(action=action, question=question["message"].splitlines()[0],
                                variable=question["msgid"])
        if _PASSCOMMAND_FAILED in msgids:
            why = "; ".join(m.removeprefix(_PASSCOMMAND_PREFIX) for m in messages).rstrip(".")
            return PasscommandFailed(repo=self.repo, detail=why)
        if msgids & _PASSPHRASE_REFUSED:
            if self._passphrase_given():
                return PassphraseWrong(repo=self.repo)
            return PassphraseMissing(repo=self.repo)
        if _LOCK_TIMEOUT in msgids:
            return RepositoryLocked(repo=self.repo, wait=self.lock_wait,
                                    detail="; ".join(messages).rstrip("."))
        if msgids & _REPLAY:
            return RepositoryReplay(action=action, repo=self.repo,
                                    detail="; ".join(messages).rstrip("."))
        if _ARCHIVE_MISSING in msgids and action == "repo-list":
            return ArchiveUnreadable(action=action, repo=self.repo,
                                     archive_id=_archive_id(messages))
        if _NO_SPACE in msgids or any(t in m for m in messages for t in _ENOSPC):
            return RepositoryFull(repo=self.repo, detail="; ".join(messages).rstrip("."))
        if _REPO_DOES_NOT_EXIST in msgids:
            return RepositoryMissing(repo=self.repo)
        if msgids & _REPO_MISSING:
            return RepositoryNotFound(repo=self.repo, detail="; ".join(messages) or e.stderr)
        detail = "; ".join(messages) or e.stderr.strip() or _exit_status(e.returncode)
        return BorgError(action=action, detail=detail)

    def _run(self, action: str, argv: Sequence[str], cwd: str | None = None,
             on_stderr_line: Callable[[str], None] | None = None) -> bytes:
        """Run a borg command (in directory cwd) to completion; return its stdout
        (on_stderr_line sees its log lines as they come). If the repository
        wants a passphrase that was not given (or was asked for and is wrong), ask
        for it and run again, up to PASSPHRASE_TRIES answers."""
        while True:
            try:
                with self.child_env() as (env, fds):
                    try:
                        return subproc.run(argv, env=env, pass_fds=fds, cwd=cwd,
                                           on_stderr_line=on_stderr_line).stdout
                    except subproc.CommandFailed as e:
                        raise self._error(action, e) from e
            except (PassphraseMissing, PassphraseWrong) as e:
                may_ask = isinstance(e, PassphraseMissing) or self._asked
                if not (self._ask and may_ask and self._asked < PASSPHRASE_TRIES):
                    raise
                self._asked += 1
                self._passphrase = self._ask(f"Enter passphrase for {self.repo}: ").encode()

    def list_items(self, archive: str, paths: Sequence[str], *, brief: bool = False
                   ) -> AbstractContextManager[subproc.Stream]:
        """Return a context manager yielding a running 'borg list' printing the
        archive's items under paths (all if none) to its stdout, one JSON line each
        (read them with ``items``), in archive order: the order 'borg extract
        --stdout' of the same paths writes them in.
        brief: wait BRIEF_LOCK_WAIT for the repository lock."""
        argv = self._argv("list", "--json-lines", "--format", "{type}{size}{path}",
                          *self.location(archive), *paths, brief=brief)
        return self._output(argv)

    @contextlib.contextmanager
    def _output(self, argv: list[str]) -> Iterator[subproc.Stream]:
        """Yield borg running argv, its stdout a pipe for the caller to read."""
        with self.child_env() as (env, fds), subproc.stream(argv, stdout=True, env=env,
                                                            pass_fds=fds) as s:
            yield s

    @contextlib.contextmanager
    def import_tar(self, archive: str, *, comment: str, timestamp: str,
                   compression: str, chunker_params: str,
                   first: Callable[[], None] | None = None) -> Iterator[subproc.Stream]:
        """Yield a running 'borg import-tar' reading a tar stream from its stdin.

        first, if given, is called while borg starts up (prestart.py), before
        borg touches the repository; what it raises ends borg there, the
        repository untouched. (A borg that cannot be held starts after first.)

        The caller writes the stream, then calls ``finish_import(stream)``. borg commits
        the archive when it reads the stream's end marker and at no other time:
        it holds its stdin open itself (subproc hold_stdin), so no end of file,
        not even our death by SIGKILL at a member boundary, passes for the end
        of the archive. If we die, the kernel sends borg SIGTERM and borg rolls
        its transaction back; leaving the block by an exception does the same.
        What borg commits on the way, its own checkpoint archives
        (``{archive}.checkpoint``, every --checkpoint-interval), it deletes
        when it commits the archive; after a failure they stay (list them with
        ``list_archives(checkpoints=True)``) and keep their chunks for the retry.
        """
        argv = self._argv("import-tar", "--json", "--comment", self.dialect.comment_arg(comment),
                          "--timestamp", timestamp,
                          "--compression", compression, "--chunker-params", chunker_params,
                          *self.location(archive), "-")
        with contextlib.ExitStack() as stack:
            hold = stack.enter_context(prestart.held(argv)) if first is not None else None
            if first is not None and hold is None:
                first()
            env, fds = stack.enter_context(self.child_env())
            s = stack.enter_context(subproc.stream(
                hold.argv if hold else argv, stdin=True, stdout=True, env=env,
                pass_fds=(*fds, hold.fd) if hold else fds, hold_stdin=True,
                parent_death_signal=signal.SIGTERM))
            if hold is not None and first is not None:
                first()
                hold.go()
            yield s

    def finish_import(self, stream: subproc.Stream) -> str | None:
        """Wait for an import_tar whose stream was written (``finish``); return the
        ID of the archive it committed (None if its --json did not say)."""
        out = stream.stdout.read()   # borg writes it as it ends
        self.finish("import-tar", stream)
        try:
            archive_id = json.loads(out)["archive"]["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("borg import-tar did not say which archive ID it committed")
            return None
        return archive_id if isinstance(archive_id, str) else None

    def export_tar(self, archive: str, paths: Sequence[str], *, brief: bool = False
                   ) -> AbstractContextManager[subproc.Stream]:
        """Return a context manager yielding a running 'borg export-tar' writing the
        archive's paths to its stdout.
        brief: wait BRIEF_LOCK_WAIT for the repository lock."""
        argv = self._argv("export-tar", *self.location(archive), "-", *paths, brief=brief)
        return self._output(argv)

    def extract_stdout(self, archive: str, paths: Sequence[str], *, brief: bool = False
                       ) -> AbstractContextManager[subproc.Stream]:
        """Return a context manager yielding a running 'borg extract --stdout' writing
        the contents of the archive's regular files under paths, one after the other, to its stdout.
        brief: wait BRIEF_LOCK_WAIT for the repository lock."""
        argv = self._argv("extract", "--stdout", *self.location(archive), *paths, brief=brief)
        return self._output(argv)

    def mount(self, mountpoint: str, archive_glob: str
              ) -> AbstractContextManager[subproc.Stream]:
        """Mount the repository's archives that match archive_glob (see
        archive_glob) read-only at mountpoint with 'borg mount', one
        directory per archive, each read from the repository as it is used; yield
        the running borg (its exit means the mount is gone); unmount when the block
        ends.

        borg runs in the foreground as our child and unmounts when it gets SIGINT,
        which the kernel also sends it if borg-vm dies. It holds the repository's
        shared lock meanwhile: writers (borg create, delete) wait for it. Raise the
        matching BorgError if borg fails to mount.
        """
        return self._mount(mountpoint, self.dialect.match_archives_args(archive_glob))

    @contextlib.contextmanager
    def _mount(self, mountpoint: str, selection: Sequence[str]) -> Iterator[subproc.Stream]:
        """mount, of the archives borg's flags selection select."""
        argv = self._argv("mount", "--foreground", *selection, *self.location(), mountpoint)
        with self.child_env() as (env, fds), subproc.stream(
                argv, env=env, pass_fds=fds, parent_death_signal=signal.SIGINT) as proc:
            self._wait_mounted(proc, mountpoint)
            try:
                yield proc
            finally:
                self._unmount(proc, mountpoint)

    def _wait_mounted(self, proc: subproc.Stream, mountpoint: str) -> None:
        """Return when mountpoint is mounted; raise borg's error if it exits first."""
        deadline = time.monotonic() + self.lock_wait + MOUNT_START_SECONDS
        while not os.path.ismount(mountpoint):
            if proc.exited(MOUNT_POLL_SECONDS) or time.monotonic() > deadline:
                proc.terminate()
                code = proc.proc.returncode
                raise self._error("mount", subproc.CommandFailed(
                    proc.argv, code, "".join(proc.stderr_lines())
                    or f"not mounted after {self.lock_wait + MOUNT_START_SECONDS} s"))

    def _unmount(self, proc: subproc.Stream, mountpoint: str) -> None:
        """Stop borg mount (SIGINT: it unmounts); if it does not, kill it and unmount."""
        if not proc.stop(signal.SIGINT, UNMOUNT_GRACE_SECONDS):
            log.warning("borg mount did not stop within %d s of SIGINT; killing it",
                        UNMOUNT_GRACE_SECONDS)
            proc.terminate()
        if mounted(mountpoint):
            self.umount(mountpoint)

    def umount(self, mountpoint: str) -> None:
        """Unmount a borg mount whose borg is gone ('borg umount')."""
        self._run("umount", self._argv("umount", mountpoint))

    def finish(self, action: str, stream: subproc.Stream) -> None:
        """Wait for a streaming borg command; raise the matching error if it failed."""
        try:
            stream.finish()
        except subproc.CommandFailed as e:
            raise self._error(action, e) from e


def items(lines: Iterable[bytes]) -> Iterator[Item]:
    """Yield the items of 'borg list --json-lines' output (see Borg.list_items)."""
    for line in lines:
        doc = json.loads(line)
        yield Item(doc["path"], doc["type"], doc.get("size", 0))


def mounted(path: str) -> bool:
    """Return True if path is a mount point, also of a FUSE file system whose server
    is gone (it answers ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return os.path.ismount(path)


def _exit_status(returncode: int) -> str:
    """Say how a process that left no message ended: its exit code, or its signal."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _archive_id(messages: Iterable[str]) -> str:
    """The ID (hex) of the archive Borg 2 says does not exist ("Archive b'...' does
    not exist"), or "(unknown)" if no message names one."""
    for message in messages:
        m = re.match(r"Archive (b.*) does not exist", message)
        if m:
            with contextlib.suppress(ValueError, SyntaxError):
                raw = ast.literal_eval(m.group(1))
                if isinstance(raw, bytes):
                    return raw.hex()
    return "(unknown)"


def _parse_log_json(stderr: str) -> tuple[set[str], list[str]]:
    """Return (msgids, messages) from borg --log-json stderr lines.

    The messages are the errors and any text that is not a JSON record (ssh's,
    Python's), also when borg relays it as a warning (``Remote: ...``: what ssh
    or the remote shell said, such as why the connection failed, before borg's
    "Connection closed by remote host"), or the warnings if there is none of
    these (a run that exits 1 with a warning, e.g. a path that never matched).
    """
    msgids, messages, warnings = set(), [], []
    for text, rec in _records(stderr):
        if text:
            messages.append(text)
        if rec is None:
            continue
        if rec.get("msgid"):
            msgids.add(rec["msgid"])
        if rec.get("msgid") == _EXCEPTION:
            continue   # "Local Exception": the traceback record after it says which
        if rec.get("levelname") in ("ERROR", "CRITICAL") and rec.get("message") or (
                _relayed(rec)):
            messages.append(_one_line(rec["message"]))
        elif rec.get("levelname") == "WARNING" and rec.get("message"):
            warnings.append(_one_line(rec["message"]))
    return msgids, messages or warnings


def logged_errors(stderr: str) -> list[str]:
    """Return the messages of the error records in borg --log-json stderr."""
    return [_one_line(rec["message"]) for _text, rec in _records(stderr)
            if rec is not None and rec.get("levelname") in ("ERROR", "CRITICAL")
            and isinstance(rec.get("message"), str) and rec.get("msgid") != _EXCEPTION]


# borg logs a line the remote side wrote outside borg's logging (ssh's stderr,
# the remote shell's) as a warning of the root logger with this prefix.
_RELAYED_PREFIX = "Remote: "


def _relayed(rec: dict) -> bool:
    """Return True if a log record is such a line relayed by borg."""
    message = rec.get("message")
    return (rec.get("levelname") == "WARNING" and rec.get("name") == "root"
            and isinstance(message, str) and message.startswith(_RELAYED_PREFIX))


def _one_line(message: str) -> str:
    """Return a borg log message in one line: a traceback's exception, else the first line.

    borg ends a traceback with the exception line, a blank line and its platform details.
    """
    text = message.strip()
    if text.startswith("Traceback"):
        return text.split("\n\n", 1)[0].splitlines()[-1].strip()
    return text.splitlines()[0]


def _question(stderr: str) -> dict | None:
    """Return the question record borg asked and answered 'no' itself (its stdin
    is empty: no one can answer), or None. Its msgid is the variable that says yes."""
    asked = [rec for _text, rec in _records(stderr)
             if rec and rec.get("type") == "question_prompt" and rec.get("msgid")]
    return asked[-1] if asked else None


def _records(stderr: str) -> Iterator[tuple[str, dict | None]]:
    """Yield (the text, the JSON record or None) of each line of borg's stderr.

    A prompt borg printed without a newline may precede a record on its line.
    """
    for line in stderr.splitlines():
        start = line.find('{"')
        rec = None
        if start >= 0:
            try:
                rec = json.loads(line[start:])
            except ValueError:
                pass
        if isinstance(rec, dict):
            yield line[:start].strip(), rec
        else:
            yield line.strip(), None
