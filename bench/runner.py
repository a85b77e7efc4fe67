"""The main of every benchmark script: `--quick`, SIGTERM taken as Ctrl-C,
the benchmark's domains and work files removed on every way out, and its
report written where it belongs (the committed bench/NAME.md, or with
`--quick` bench/work/quick/NAME.md)."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import lab
import report
from lab import WORK, say


class Benchmark(Protocol):
    r: dict        # the measurements; the report is rendered from them
    env: dict      # borg's environment, for the versions in the report

    def run(self) -> None: ...
    def close(self) -> None: ...


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _close(bench: Benchmark) -> None:
    """Clean up with SIGTERM ignored: a second one must not leave half of it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    bench.close()


def arguments(doc: str, quick_help: str | None = None) -> argparse.Namespace:
    """Parse the command line of a benchmark script: --help (doc's first paragraph
    is the description) and, given quick_help, --quick."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if quick_help:
        parser.add_argument("--quick", action="store_true",
                            help=f"{quick_help}; report under {lab.QUICK}, not committed")
    return parser.parse_args()


def main(doc: str, quick_help: str, make: Callable[[bool], Benchmark],
         render: Callable[[dict], str], name: str,
         summary: Callable[[dict], str] | None = None) -> int:
    """Parse the command line (doc's first paragraph is the description), run
    make(quick), write its measurements as name.json (lower case, in the work directory)
    and render(them) as NAME.md; print summary(them) if given. Return the
    exit code: 0, or 130 if interrupted (Ctrl-C or SIGTERM)."""
    args = arguments(doc, quick_help)
    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.now(UTC)
    say(f"{name}: work files under {WORK}")
    bench = make(args.quick)
    try:
        bench.run()
    except KeyboardInterrupt:
        _close(bench)
        say("interrupted: the benchmark's domains and work files are removed")
        return 130
    except BaseException:
        _close(bench)
        raise
    _close(bench)
    r = bench.r
    r["started"] = started.strftime("%Y-%m-%d %H:%M UTC")
    r["total_seconds"] = lab.elapsed()
    r["machine"] = report.machine(bench.env)
    if "source" in r:
        r["machine"]["commit"] = r["source"]
    out_dir = lab.QUICK if args.quick else lab.BENCH
    out_dir.mkdir(parents=True, exist_ok=True)
    (lab.QUICK if args.quick else WORK).joinpath(f"{name.lower()}.json").write_text(
        json.dumps(r, indent=1))
    out = out_dir / f"{name}.md"
    out.write_text(render(r))
    if summary is not None:
        print(summary(r))
    say(f"done in {lab.elapsed() / 60:.1f} min: {out}")
    return 0
