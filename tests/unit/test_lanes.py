"""make test's lanes (tests/lanes.py) run every tier, each once."""

import importlib.util
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("lanes", TESTS / "lanes.py")
lanes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lanes)


def test_the_lanes_hold_every_tier_once():
    tiers = sorted(d.name for d in TESTS.iterdir() if d.is_dir() and any(d.glob("test_*.py")))
    in_lanes = [t for lane in lanes.LANES for t in lane]
    assert sorted(in_lanes) == tiers and len(set(in_lanes)) == len(in_lanes)


def test_the_lanes_leave_out_what_runs_alone_and_the_last_run_takes_only_it():
    beside = lanes.pytest_argv("pytest", ["unit"], f"not {lanes.ALONE}", ["-x"])
    alone = lanes.pytest_argv("pytest", ["."], lanes.ALONE, [])
    assert beside[:3] == ["pytest", "-m", "not alone"] and beside[-1] == "-x"
    assert alone[:3] == ["pytest", "-m", "alone"]
    assert Path(alone[3]).resolve() == TESTS
