"""Every error class formats its own message and carries a borg exit code."""

import inspect
import logging
import string

import pytest

from borg_vm import errors
from borg_vm.errors import EXIT_ERROR, EXIT_WARNING, BorgVmError

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, BorgVmError) and c.__module__ == errors.__name__]


def fields(cls) -> set[str]:
    """Return the keyword names the class's message template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(cls.__doc__ or "")
            if name is not None}


def test_module_has_error_classes():
    assert len(CLASSES) > 20
    assert BorgVmError in CLASSES


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_message_formats_from_kwargs(cls):
    assert "__doc__" in vars(cls), "each error class needs its own message template"
    kwargs = {name: f"<{name}>" for name in fields(cls)}
    err = cls(**kwargs)
    msg = err.message
    assert msg and str(err) == msg
    assert "{" not in msg and "}" not in msg
    assert "\n" not in msg and "  " not in msg
    for name in kwargs:
        assert f"<{name}>" in msg
    assert err.kwargs == kwargs


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_report_logs_the_message_and_returns_a_borg_exit_code(cls, caplog):
    """report() gives cli.main its exit code: borg's meaning of 1 (warning) or 2
    (error), never 0 for a failure, with the message as the one line logged."""
    err = cls(**{name: f"<{name}>" for name in fields(cls)})
    with caplog.at_level(logging.DEBUG, logger="borg_vm"):
        code = errors.report(err, debug=False, prefix="web: ")
    assert code == cls.exit_code
    assert code in (EXIT_WARNING, EXIT_ERROR)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"web: {err.message}")]


def test_report_of_any_other_exception_is_an_error_called_a_bug(caplog):
    with caplog.at_level(logging.DEBUG, logger="borg_vm"):
        code = errors.report(KeyError("disk"), debug=False)
    assert code == EXIT_ERROR
    [record] = caplog.records
    assert "a bug in borg-vm" in record.getMessage() and "--debug" in record.getMessage()
    assert record.exc_info is None


@pytest.mark.parametrize("cls", [c for c in CLASSES if fields(c)], ids=lambda c: c.__name__)
def test_missing_kwarg_fails_loudly(cls):
    with pytest.raises(KeyError):
        cls()


def test_repr_conversion_in_template():
    e = errors.DomainNotFound(name="web 01", uri="qemu:///system")
    assert e.message.startswith("Domain 'web 01' not found at qemu:///system")


def test_hierarchy_used_by_callers():
    assert issubclass(errors.CheckpointInconsistent, errors.LibvirtError)
    assert issubclass(errors.RepositoryNotFound, errors.BorgError)
    assert issubclass(errors.PassphraseWrong, errors.BorgError)
    assert issubclass(errors.NoRepository, errors.UsageError)


def test_detail_with_braces_is_not_reformatted():
    e = errors.BorgError(action="list", detail="unexpected {json} output")
    assert e.message == "borg list failed: unexpected {json} output"
