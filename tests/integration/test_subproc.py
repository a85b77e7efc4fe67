"""borg_vm.adapters.subproc with real child processes."""

import os
import pty
import select
import signal
import time

import pytest

from borg_vm.adapters import subproc

STDERR_FLOOD_LINES = 20_000  # ~200 KB, several times a pipe's buffer
TERMINAL_TEST_SECONDS = 30
HAS_TTY = "if (: </dev/tty) 2>/dev/null; then echo tty; else echo no-tty; fi"


def gone(pid: int) -> bool:
    """Return True if no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_run_returns_output():
    assert subproc.run(["printf", "a b"]).stdout == b"a b"


def test_run_failure_carries_exit_code_and_stderr():
    with pytest.raises(subproc.CommandFailed) as e:
        subproc.run(["sh", "-c", "echo out; echo 'it broke' >&2; exit 3"])
    assert (e.value.returncode, e.value.stderr) == (3, "it broke\n")
    assert str(e.value).startswith("sh -c ")
    assert str(e.value).endswith(" exited 3: it broke")


def test_run_accepts_listed_exit_codes():
    assert subproc.run(["sh", "-c", "exit 1"], ok_codes=(0, 1)).returncode == 1


def test_run_of_missing_program_fails_with_127(tmp_path):
    with pytest.raises(subproc.CommandFailed) as e:
        subproc.run([str(tmp_path / "no-such-program")])
    assert e.value.returncode == 127
    assert "No such file or directory" in e.value.stderr


@pytest.mark.parametrize("call", [lambda: subproc.run("ls -l"),
                                  lambda: subproc.run(b"ls"),
                                  lambda: subproc.stream("ls -l").__enter__()])
def test_argv_as_a_string_is_rejected(call):
    with pytest.raises(AssertionError, match="argv must be a list"):
        call()


def test_stream_pipes_stdin_to_stdout():
    with subproc.stream(["cat"], stdin=True, stdout=True) as s:
        s.stdin.write(b"hello")
        s.stdin.close()
        assert s.stdout.read() == b"hello"
        assert s.finish() == 0


def test_stream_finish_reads_what_the_caller_left_unread():
    # The command writes again after the caller has what it wanted (as borg
    # export-tar writes its tar padding): finishing must not make that write fail.
    argv = ["sh", "-c", "printf x; sleep 0.3; head -c 200000 /dev/zero; printf end"]
    with subproc.stream(argv, stdout=True) as s:
        assert s.stdout.read(1) == b"x"
        assert s.finish() == 0


def test_stream_finish_raises_with_stderr_tail():
    with subproc.stream(["sh", "-c", "echo first >&2; echo last >&2; exit 4"]) as s:
        with pytest.raises(subproc.CommandFailed) as e:
            s.finish()
    assert (e.value.returncode, e.value.stderr) == (4, "first\nlast\n")


def test_stream_drains_a_stderr_flood_without_blocking():
    script = f"i=0; while [ $i -lt {STDERR_FLOOD_LINES} ]; do echo line $i; i=$((i+1)); done >&2"
    with subproc.stream(["sh", "-c", script]) as s:
        assert s.finish() == 0
    lines = s.stderr_lines()
    assert len(lines) == subproc.STDERR_TAIL_LINES
    assert lines[-1] == f"line {STDERR_FLOOD_LINES - 1}\n"


def test_stream_stops_the_child_when_the_block_raises():
    with pytest.raises(RuntimeError, match="caller failed"):
        with subproc.stream(["sleep", "60"], stdin=True) as s:
            pid = s.pid
            raise RuntimeError("caller failed")
    assert s.proc.returncode == -signal.SIGINT
    assert gone(pid)


def test_stream_kills_a_child_that_ignores_sigint(monkeypatch):
    monkeypatch.setattr(subproc, "TERMINATE_GRACE_SECONDS", 0.2)
    # An ignored signal stays ignored across exec, so sleep itself ignores SIGINT.
    with pytest.raises(RuntimeError):
        with subproc.stream(["sh", "-c", "trap '' INT; echo ready; exec sleep 60"],
                            stdout=True) as s:
            pid = s.pid
            assert s.stdout.readline() == b"ready\n"  # SIGINT is ignored from here on
            raise RuntimeError("caller failed")
    assert s.proc.returncode == -signal.SIGKILL
    assert gone(pid)


def test_stream_of_missing_program_fails_with_127(tmp_path):
    with pytest.raises(subproc.CommandFailed) as e:
        with subproc.stream([str(tmp_path / "no-such-program")]):
            pass
    assert e.value.returncode == 127


def on_terminal(code, typed: bytes) -> str:
    """Run code() in a child process whose controlling terminal, stdin and
    stdout are a new pseudo-terminal; type `typed` once it has written a line;
    return everything that appeared on the terminal."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            code()
        finally:
            os._exit(0)
    out, deadline = b"", time.monotonic() + TERMINAL_TEST_SECONDS
    try:
        while select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:   # EIO: the child is gone
                break
            if not data:
                break
            if not out and data:
                os.write(fd, typed)
            out += data
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return out.decode().replace("\r\n", "\n")


def test_run_gives_children_no_terminal_and_an_empty_stdin():
    """Even when borg-vm runs on a terminal, a child can neither prompt on it
    nor read keystrokes: borg would ask there for a passphrase, or take its
    stdin for one."""
    def code():
        os.close(os.open("/dev/tty", os.O_RDWR))   # raises unless we have a terminal
        os.write(1, b"on a terminal\n")
        os.write(1, b"child read [" + subproc.run(["sh", "-c", f"cat; {HAS_TTY}"]).stdout
                 + b"]\n")

    out = on_terminal(code, typed=b"keystrokes\n\x04")
    assert out.startswith("on a terminal\n"), out
    assert "child read [no-tty\n]" in out, out


def test_run_hands_each_stderr_line_over_as_it_comes():
    """What backup's progress bar for a Borg 2 image is built on."""
    seen = []
    done = subproc.run(["sh", "-c", "echo one >&2; echo out; echo two >&2; exit 3"],
                       ok_codes=(3,), on_stderr_line=seen.append)
    assert seen == ["one\n", "two\n"]
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"one\ntwo\n")
    with pytest.raises(subproc.CommandFailed, match="two"):
        subproc.run(["sh", "-c", "echo two >&2; exit 1"], on_stderr_line=seen.append)
