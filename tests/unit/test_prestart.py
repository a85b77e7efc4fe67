"""Which borg executables can be started ahead and held (adapters/borg/prestart.py)."""

import os

import pytest

from borg_vm.adapters.borg import prestart


@pytest.mark.parametrize("first_line, expected", [
    ("#!/usr/bin/python3\n", ["/usr/bin/python3"]),
    ("#!/opt/venv/bin/python3.11 -s\n", ["/opt/venv/bin/python3.11", "-s"]),
    ("#!/usr/bin/env python3\n", ["python3"]),
    ("#!/bin/sh\n", None),
    ("#!/usr/bin/env bash\n", None),
    ("#!\n", None),
    ("\x7fELF\x02\x01\x01", None),
], ids=["venv", "options", "env", "shell", "env-shell", "empty", "binary"])
def test_python_scripts_are_held_others_not(tmp_path, first_line, expected):
    exe = tmp_path / "borg"
    exe.write_text(first_line + "from borg.archiver import main\n")
    assert prestart.python_of(str(exe)) == expected


def test_a_missing_executable_is_not_held(tmp_path):
    assert prestart.python_of(str(tmp_path / "nothing")) is None


def test_held_closes_its_pipe_and_a_borg_not_told_to_go_reads_the_end(tmp_path):
    exe = tmp_path / "borg"
    exe.write_text("#!/usr/bin/python3\n")
    with prestart.held([str(exe), "list"]) as hold:
        assert hold is not None
        assert hold.argv[:2] == ["/usr/bin/python3", "-c"]
        assert hold.argv[3:] == [str(hold.fd), str(exe), "list"]
        fd = hold.fd
        hold._close_write()
        assert os.read(fd, 1) == b""   # what the held borg reads: it exits unstarted
