"""Shared by all test tiers: hermetic Borg environment, no silent skips in CI."""

import os

import installed
import pytest
import sshd

KEYS_DIR_ENV = "BORG_VM_KEYS_DIR"


@pytest.fixture(scope="session")
def borg2_executable():
    """The Borg 2 the tests run ($BORG_VM_TEST_BORG2, else the one make setup installs)."""
    path = installed.borg2()
    if not os.access(path, os.X_OK):
        pytest.skip(f"no Borg 2 at {path} (make setup installs it)")
    return os.path.realpath(path)


@pytest.fixture(scope="session")
def borg2_stores_executable():
    """The Borg 2 the tests run at sftp://, rclone: and s3: locations (with
    borgstore's backends: $BORG_VM_TEST_BORG2_STORES, else make setup's)."""
    path = installed.borg2_stores()
    if not os.access(path, os.X_OK):
        pytest.skip(f"no Borg 2 with store backends at {path} (make setup installs it)")
    return path


@pytest.fixture
def ssh_server(tmp_path):
    """Return a running sshd.Sshd on 127.0.0.1, stopped by its PID at teardown."""
    if not os.access(sshd.SSHD, os.X_OK):
        pytest.skip(f"{sshd.SSHD} is missing (contrib/setup-host.sh installs openssh-server)")
    with sshd.Sshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _session_keys_dir(tmp_path_factory):
    """borg-vm's authentication keyrings, one directory for the whole session
    (never the user's): module-scoped fixtures back up before a test's own
    environment exists, and the test must authenticate what they wrote."""
    path = str(tmp_path_factory.mktemp("borg-vm-keys"))
    before = os.environ.get(KEYS_DIR_ENV)
    os.environ[KEYS_DIR_ENV] = path
    yield path
    if before is None:
        del os.environ[KEYS_DIR_ENV]
    else:
        os.environ[KEYS_DIR_ENV] = before


@pytest.fixture(autouse=True)
def _hermetic_borg_env(monkeypatch, tmp_path_factory, _session_keys_dir):
    """Remove every BORG_* variable and point BORG_BASE_DIR at a private
    temp dir, so no test sees the user's Borg config, keys, cache or security
    dir, and borg-vm's keyrings at the session's; later monkeypatch/setenv
    calls in a test override this.

    Borg's start-up self-test is off: it checks Borg, not borg-vm, and Borg 1.4
    imports its own test suite for it, and with it the pytest of this
    environment: 0.1 to 0.17 s of CPU of a short Borg 1.4 command of 0.7 s, thousands of
    times a run on a 2-core machine (BORG_SELFTEST, Borg's "Environment")."""
    for name in list(os.environ):
        if name.startswith("BORG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path_factory.mktemp("borg-base")))
    monkeypatch.setenv("BORG_SELFTEST", "disabled")
    monkeypatch.setenv(KEYS_DIR_ENV, _session_keys_dir)


def _skip_reason(report) -> str:
    """Given a skipped report, return the skip reason as text."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip_under_ci(report) -> None:
    """Given a test or collection report, turn a plain skip (not an xfail)
    into a failure when $CI is non-empty."""
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped test fails: the real stack must always run there."""
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Under CI, a module skipped at collection (importorskip, module-level
    pytest.skip) is a collection error too."""
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())
