"""Command line: the top-level parser, dispatch to a command (commands/, each of
which builds its own parser and handles its arguments), and errors turned into
messages and exit codes (0 ok, 1 warning, 2 error, as borg)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import NoReturn

from borg_vm import __version__
from borg_vm.commands import backup, boot, delete, key, mount, options, prune, restore, verify
from borg_vm.commands import list as list_command
from borg_vm.core.text import printable
from borg_vm.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNING, Interrupted, report

# In the order `borg-vm --help` lists them.
COMMANDS = (backup, list_command, prune, delete, verify, restore, mount, boot, key)

EPILOG = """\
The repository comes from --repo or BORG_REPO; its passphrase from borg's own
BORG_PASSPHRASE, BORG_PASSCOMMAND or BORG_PASSPHRASE_FD, else it is asked for
on a terminal; ssh:// repositories use BORG_RSH like borg. Exit codes: 0 ok,
1 warning, 2 error."""


def build_parser() -> argparse.ArgumentParser:
    # Logging options work before or after the command; a command's copy must
    # not reset what was given before it, hence SUPPRESS there.
    logging_opts = argparse.ArgumentParser(add_help=False)
    options.add_logging_options(logging_opts, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="borg-vm", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Incremental backups of libvirt/QEMU virtual machines into Borg.")
    parser.add_argument("--version", action="version", version=f"borg-vm {__version__}")
    options.add_logging_options(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=options.CommandParser)
    for command in COMMANDS:
        command.build_parser(sub, [logging_opts])
    return parser


def _raise_interrupted(signum: int, _frame: object) -> NoReturn:
    raise Interrupted(signal=signal.Signals(signum).name)


class _PrintableFormatter(logging.Formatter):
    """Log messages carry names and text from archives and libvirt: show their
    control characters as escapes (a traceback under --debug is left as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class _Warned(logging.Handler):
    """Notes that a warning was logged: the run then exits 1 at least (borg's
    rule: the exit code is the worst of the run, so monitoring sees an unfrozen
    backup or an ignored archive)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True


class _StderrHandler(logging.StreamHandler):
    """The log on stderr. SIGINT or SIGTERM raises Interrupted wherever the main
    thread is; if that is in here, it goes on up, where logging would print it as
    a '--- Logging error ---' and carry on (borg-vm mount then served on)."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, Interrupted):
            raise error
        super().handleError(record)


def _setup_logging(debug: bool, quiet: bool) -> _Warned:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter(
        "borg-vm: %(relativeCreated)6.0f ms %(name)s: %(message)s" if debug
        else "borg-vm: %(message)s"))
    root = logging.getLogger("borg_vm")
    warned = _Warned()
    root.handlers = [handler, warned]  # a second main() in one process (tests) replaces
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    return warned


def main(argv: list[str] | None = None) -> None:
    """The one exit point: run the command, map errors to messages and exit codes."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv   # backup --jobs runs it again
    warned = _setup_logging(args.debug, args.quiet)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        code = args.run(args)
    except BrokenPipeError:  # stdout closed by a reader such as `head`
        code = EXIT_ERROR
    except Exception as e:  # the one exit point: every error is one line and a code
        code = report(e, args.debug)
    sys.exit(EXIT_WARNING if code == EXIT_OK and warned.seen else code)
