"""The one place where borg-vm starts other programs.

argv lists only (never a shell); every command is logged at debug level;
stderr is always captured, kept (its tail) and handed to the caller in
``CommandFailed`` so adapters can turn it into a message for people.
Secrets never reach argv: borg reads its passphrase from its environment
or a file descriptor, which this module passes through untouched. No child
has a controlling terminal (each starts a new session) or our stdin.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 200
# Streams move gigabytes through pipes: a 1 MiB pipe (Linux's default cap,
# /proc/sys/fs/pipe-max-size) instead of 64 KiB means 16x fewer wake-ups of
# the reader; measured ~10% faster borg import-tar ingest.
PIPE_SIZE = 1024 * 1024
TERMINATE_GRACE_SECONDS = 10
EOF_GRACE_SECONDS = 2
DRAIN_READ = 64 * 1024
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


@dataclass
class CommandFailed(Exception):
    """A command exited non-zero (or could not be started)."""

    argv: Sequence[str]
    returncode: int
    stderr: str

    def __str__(self) -> str:
        return f"{shlex.join(self.argv)} exited {self.returncode}: {self.stderr.strip()}"


def _check_argv(argv: Sequence[str]) -> list[str]:
    assert not isinstance(argv, (str, bytes)), "argv must be a list, never a shell string"
    argv = [os.fspath(a) for a in argv]
    log.debug("run: %s", shlex.join(argv))
    return argv


def run(argv: Sequence[str], *, input: bytes | None = None,
        env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,),
        pass_fds: tuple[int, ...] = (), cwd: str | None = None,
        on_stderr_line: Callable[[str], None] | None = None
        ) -> subprocess.CompletedProcess[bytes]:
    """Run argv (in directory cwd) to completion; return the CompletedProcess
    (stdout/stderr as bytes). on_stderr_line, if given, sees each line of its
    stderr as it comes (a progress report), on the calling thread.

    The command gets `input` or an empty stdin, and no controlling terminal: it
    can neither prompt on ours nor read keystrokes meant for us (borg would ask
    for a passphrase there). Raise CommandFailed if it exits with a code
    outside ok_codes or cannot start.
    """
    argv = _check_argv(argv)
    try:
        if on_stderr_line is None:
            proc = subprocess.run(argv, input=input, capture_output=True, env=env, cwd=cwd,
                                  stdin=subprocess.DEVNULL if input is None else None,
                                  pass_fds=pass_fds, check=False, start_new_session=True)
        else:
            assert input is None, "a command whose stderr is followed gets no input"
            proc = _run_following(argv, env, pass_fds, cwd, on_stderr_line)
    except OSError as e:
        raise CommandFailed(argv, 127, str(e)) from e
    if proc.returncode not in ok_codes:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _run_following(argv: list[str], env: dict[str, str] | None, pass_fds: tuple[int, ...],
                   cwd: str | None, on_stderr_line: Callable[[str], None]
                   ) -> subprocess.CompletedProcess[bytes]:
    """run's way with on_stderr_line: stdout read whole by a thread (the command
    never blocks on it), stderr line by line here."""
    with subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
                          start_new_session=True) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(stdout.read()), daemon=True)
        reader.start()
        err = []
        for line in stderr:
            err.append(line)
            on_stderr_line(line.decode(errors="replace"))
        reader.join()
        code = proc.wait()
    return subprocess.CompletedProcess(argv, code, b"".join(out), b"".join(err))


class Stream:
    """A running command whose stdin or stdout is a pipe borg-vm streams through.

    stderr is drained by a thread into a bounded tail so the child can never
    block on a full stderr pipe.
    """

    def __init__(self, proc: subprocess.Popen[bytes], argv: list[str], *,
                 eof_stops: bool = True) -> None:
        self.proc = proc
        self.argv = argv
        self._eof_stops = eof_stops
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None, "started without a pipe to its stdin"
        return self.proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None, "started without a pipe from its stdout"
        return self.proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None, "stream() always pipes stderr"
        for line in self.proc.stderr:
            self._stderr.append(line.decode(errors="replace"))

    def stderr_lines(self) -> list[str]:
        return list(self._stderr)

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()

    def wait(self) -> int:
        """Close our pipe ends, wait for exit; return the exit code."""
        self._close_pipes()
        code = self.proc.wait()
        self._drain.join()
        return code

    def finish(self, ok_codes: tuple[int, ...] = (0,)) -> int:
        """Wait for a clean exit; raise CommandFailed if the exit code is not in ok_codes.

        Output the caller did not read (e.g. the padding after a tar stream's end)
        is read and dropped first: closing the pipe while the command still writes
        would kill it with EPIPE, a failure the caller did not cause.
        """
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            while self.proc.stdout.read(DRAIN_READ):
                pass
        code = self.wait()
        if code not in ok_codes:
            raise CommandFailed(self.argv, code, "".join(self._stderr))
        return code

    def stop(self, sig: int, timeout: float) -> bool:
        """Send sig (unless it exited already) and wait up to timeout seconds for the
        command to exit; return True if it did (it is reaped), False if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.exited(timeout)

    def exited(self, timeout: float) -> bool:
        """Wait up to timeout seconds for the command to exit; return True if it did
        (it is reaped), False if it still runs."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.wait()
        return True

    def terminate(self) -> None:
        """Stop the command (SIGINT first, as a user's Ctrl-C, then SIGKILL; a command
        that holds its own stdin open gets SIGTERM instead); reap it."""
        if self.proc.poll() is None and not self._eof_stops:
            # It cannot see the end of its input: what it read so far is unfinished.
            self._close_pipes()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if self.stop(sig, TERMINATE_GRACE_SECONDS):
                    return
        if self.proc.poll() is None:
            # Our pipe ends close first: borg's first SIGINT only asks for a
            # checkpoint, and a borg blocked on its stdin or stdout would
            # otherwise sit out the grace time and be killed, leaving its lock.
            self._close_pipes()
            # A stream cut short usually makes the command fail by itself
            # (borg: "unexpected end of data"), cleanly, within a moment.
            for nudge in (None, signal.SIGINT, signal.SIGKILL):
                if nudge is not None:
                    self.proc.send_signal(nudge)
                try:
                    self.proc.wait(EOF_GRACE_SECONDS if nudge is None
                                   else TERMINATE_GRACE_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.wait()


def _death_signal(sig: int) -> Callable[[], None]:
    """Return a function that, run in a child before exec, makes the kernel send it
    sig when its parent dies (Linux prctl PR_SET_PDEATHSIG), and that ends the
    child at once if the parent died before that took effect."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:   # gone already: no signal will come
            os._exit(1)
    return arm


def _enlarge(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as e:  # a lower pipe-max-size only costs speed
        log.debug("cannot enlarge pipe to %d bytes: %s", PIPE_SIZE, e)


@contextlib.contextmanager
def stream(argv: Sequence[str], *, stdin: bool = False, stdout: bool = False,
           env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
           parent_death_signal: int | None = None,
           hold_stdin: bool = False) -> Iterator[Stream]:
    """Start argv with a pipe to its stdin and/or from its stdout; yield a Stream.

    The caller must call ``finish()`` inside the block; leaving the block any
    other way (an exception) terminates the command, so no child outlives us.
    With parent_death_signal, the kernel sends the command that signal if we die
    without that (SIGKILL), so a long-running server does not outlive us either.

    hold_stdin (with stdin and parent_death_signal): the command holds the write
    end of its stdin pipe too, so it never reads an end of file, only the data,
    and must stop at an end the data marks itself. Our death, even by SIGKILL,
    then never looks like the end of what we were writing (a tar stream cut at a
    member boundary reads as a complete archive); the death signal ends it
    instead, and terminate() sends SIGTERM.
    Raise CommandFailed if it cannot start.
    """
    argv = _check_argv(argv)
    assert not hold_stdin or (stdin and parent_death_signal), \
        "a command holding its stdin open must die with us"
    held = os.pipe() if hold_stdin else None
    try:
        proc = subprocess.Popen(argv, env=env, bufsize=0,
                                pass_fds=pass_fds + ((held[1],) if held else ()),
                                stdin=(held[0] if held else subprocess.PIPE) if stdin
                                else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                # Our own SIGINT handling decides when the child stops.
                                start_new_session=True,
                                preexec_fn=(_death_signal(parent_death_signal)
                                            if parent_death_signal else None))
    except OSError as e:
        if held:
            os.close(held[0])
            os.close(held[1])
        raise CommandFailed(argv, 127, str(e)) from e
    if held:
        os.close(held[0])
        proc.stdin = open(held[1], "wb", buffering=0)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            _enlarge(pipe.fileno())
    s = Stream(proc, argv, eof_stops=not hold_stdin)
    try:
        yield s
    finally:
        if proc.returncode is None:
            s.terminate()


class Detached:
    """A command started to outlive borg-vm (see detach); while we run, we can see
    whether it exited."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    def exit_code(self) -> int | None:
        """Return its exit code if it exited (reaping it), else None."""
        return self._proc.poll()


def detach(argv: Sequence[str], *, stdout: int, stderr: int, env: dict[str, str] | None = None,
           pass_fds: tuple[int, ...] = ()) -> Detached:
    """Start argv to run on after borg-vm exits: in a session of its own (no terminal,
    no signal from ours), stdin /dev/null, stdout and stderr the given open files,
    and no death signal. Return a Detached; raise CommandFailed if it cannot start."""
    argv = _check_argv(argv)
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, pass_fds=pass_fds, start_new_session=True)
    except OSError as e:
        raise CommandFailed(argv, 127, str(e)) from e
    return Detached(proc)


class Child:
    """A command that runs beside borg-vm, as part of its work (see start_child)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: IO[bytes]) -> None:
        self._proc, self._out = proc, out
        self.pid = proc.pid

    def exit_code(self) -> int | None:
        """Return its exit code (negative: the signal that ended it) if it exited
        (reaping it), else None."""
        return self._proc.poll()

    def output(self) -> bytes:
        """Return what it wrote to its stdout (once it exited)."""
        self._out.seek(0)
        return self._out.read()

    def send(self, sig: int) -> None:
        """Send it sig unless it exited."""
        if self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self) -> int:
        """Wait for it to exit; return its exit code."""
        return self._proc.wait()

    def close(self) -> None:
        self._out.close()


def start_child(argv: Sequence[str], *, env: dict[str, str] | None = None,
                pass_fds: tuple[int, ...] = ()) -> Child:
    """Start argv with stdin /dev/null, its stdout into a temporary file (it can
    never block on a pipe nobody reads; Child.output), our stderr, in a session
    of its own (a terminal's Ctrl-C reaches borg-vm, which decides), and SIGTERM
    from the kernel if borg-vm dies. Return a Child; raise CommandFailed if it
    cannot start."""
    argv = _check_argv(argv)
    out = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                pass_fds=pass_fds, start_new_session=True,
                                preexec_fn=_death_signal(signal.SIGTERM))
    except OSError as e:
        out.close()
        raise CommandFailed(argv, 127, str(e)) from e
    return Child(proc, out)
