"""Shared by all test tiers: hermetic Borg environment, no silent skips in CI."""

import os

import pytest


@pytest.fixture(autouse=True)
def _hermetic_borg_env(monkeypatch, tmp_path_factory):
    """Remove every BORG_* variable and point BORG_BASE_DIR at a private
    temp dir, so no test sees the user's Borg config, keys, cache or security
    dir; later monkeypatch/setenv calls in a test override this."""
    for name in list(os.environ):
        if name.startswith("BORG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path_factory.mktemp("borg-base")))


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
