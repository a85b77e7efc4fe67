# The two commands README promises on a fresh Debian 12 machine (as root):
#   make demo   a throwaway VM running a tiny Linux: backups while it writes,
#               restores that boot with their files, a boot from the repository
#   make test   the whole test suite (unit, integration, e2e with a real VM, faults)
# and for reliability:
#   make faults the fault matrix and the hostile-repository cases, tabulated in
#               tests/faults/RESULTS.md
#   make soak   30 nightly rounds with random faults (under 10 minutes; not in CI)
VENV   ?= .venv
PYTEST ?= $(VENV)/bin/pytest

# The hostile-repository cases `make faults` tabulates with the fault matrix.
HOSTILE = tests/integration/test_restore_hostile.py \
          tests/integration/test_hostile_members.py \
          tests/integration/test_planted_archives.py \
          tests/integration/test_authentication.py \
          tests/integration/test_vm_state_members.py \
          tests/e2e/test_planted_archive.py \
          tests/integration/test_verify.py \
          tests/integration/test_hostile_extents.py \
          tests/unit/test_archive.py::test_fuzzed_comment_parses_or_raises_format_error \
          tests/unit/test_archive.py::test_fuzzed_manifest_parses_or_raises_format_error \
          tests/unit/test_archive.py::test_arbitrary_bytes_never_crash_the_parsers \
          tests/unit/test_tarstream.py::test_a_damaged_stream_yields_members_or_raises_tar_format_error \
          tests/unit/test_chain.py::test_disk_chain_parent_cycle_is_broken_not_endless

.PHONY: setup demo test lint typecheck unit integration e2e faults soak bench bench-quick \
        bench-setup bench-retention bench-scale bench-boot bench-borg2 bench-generations \
        bench-packs bench-fleet

setup:
	bash contrib/setup-host.sh $(VENV)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash contrib/demo.sh

# Two lanes at once, then what must run by itself (tests/lanes.py says why).
test: setup lint typecheck
	$(VENV)/bin/python tests/lanes.py $(PYTEST)

# ruff over everything (rules in pyproject.toml); part of make test.
lint: setup
	$(VENV)/bin/ruff check borg_vm tests bench contrib

# mypy (strict on core/ and format/, checked bodies elsewhere: pyproject.toml);
# part of make test.
typecheck: setup
	$(VENV)/bin/mypy

unit:
	$(PYTEST) tests/unit

integration:
	$(PYTEST) tests/integration

e2e:
	$(PYTEST) tests/e2e

faults: setup
	PYTHONPATH=tests/faults:tests $(PYTEST) -p results --results tests/faults/RESULTS.md \
		tests/faults $(HOSTILE)

soak: setup
	$(VENV)/bin/python tests/faults/soak.py

# The benchmarks of issues 4 and 11, each regenerating its committed report:
# bench/bench.py (RESULTS.md, 15 minutes on a quiet 2-core machine),
# bench/nightly.py (NIGHTLY.md, 8), bench/boot.py (BOOT.md, 3): at most
# 35 minutes in all. bench-quick runs each with --quick (one run, smaller
# disks; reports under bench/work/quick/, nothing committed changes), under
# 10 minutes in all. bench-setup is setup plus what only the benchmarks use
# (virtnbdbackup, from Debian: PyPI does not have it).
BENCH_SCRIPTS = bench/bench.py bench/nightly.py bench/boot.py

bench-setup:
	bash contrib/setup-host.sh $(VENV) bench

bench: bench-setup
	set -e; for script in $(BENCH_SCRIPTS); do $(VENV)/bin/python $$script; done

bench-quick: bench-setup
	set -e; for script in $(BENCH_SCRIPTS); do $(VENV)/bin/python $$script --quick; done

# 90 nightly backups + prune on a fake clock under Borg 1.4 and Borg 2 side by
# side, each repository against the floor (the distinct data of the points
# kept), restores of the oldest and newest kept point, Borg 1.4's restore time
# against chain length (bench/RETENTION.md, issues #9 and #22; 23 minutes
# on a quiet 2-core machine; `.venv/bin/python
# bench/retention.py --quick` for a 10-night try-out into bench/work/quick/,
# --generation 1 or 2 for one generation alone).
bench-retention: setup
	$(VENV)/bin/python bench/retention.py

# A 1 TiB qcow2 with 100,000 separate 64 KiB extents beside the same bytes in
# one range (bench/SCALE.md, issue #11; roughly 15 minutes and 40 GB of
# scratch space on a quiet 2-core machine, estimated from a reduced run).
# SCALE_DISK_GIB, SCALE_EXTENTS and SCALE_RUNS shrink it for a try-out.
bench-scale: setup
	$(VENV)/bin/python bench/scale.py

# Booting from the repository (bench/BOOT.md, issue #12): borg-vm boot to the
# real guest's workload for two disk sizes, a mounted disk's sequential read
# against borg extract, boot --finish of 2 GiB against restore --flatten (about
# 3 minutes on an idle 2-core machine; `.venv/bin/python bench/boot.py --quick` for a
# one-run try-out into bench/work/quick/BOOT.md).
bench-boot: setup
	$(VENV)/bin/python bench/boot.py

# Borg 2's complete images before borg-vm builds on them (bench/BORG2.md, issue
# #22): a disk's NBD export read through nbdfuse against a local file, full
# and incremental `borg create --map` images by chunk size (a few minutes on
# an idle 2-core machine; `.venv/bin/python bench/borg2.py --quick` for a
# one-run try-out into bench/work/quick/BORG2.md).
bench-borg2: setup
	$(VENV)/bin/python bench/borg2.py

# Borg 1.4 chains against Borg 2 complete images, side by side in one run
# (bench/GENERATIONS.md, issue #22): 30 nights of 2% changes (an incremental's
# bytes read and time), restore of the first and the newest point against
# borg extract of its archives, N = 1, 2, 4 domains into one repository at once
# and one after another (16 minutes on a quiet 2-core machine;
# `.venv/bin/python bench/generations.py --quick` for a
# one-round try-out into bench/work/quick/GENERATIONS.md).
bench-generations: setup
	$(VENV)/bin/python bench/generations.py

# K hypervisors each writing one Borg 1.4 repository themselves against one
# backup host writing it for them (bench/FLEET.md, issue #24): K = 2 and 4
# paused domains of 512 MiB, 6 nights each way (`.venv/bin/python bench/fleet.py
# --quick` for a 3-night try-out into bench/work/quick/FLEET.md).
bench-fleet: setup
	$(VENV)/bin/python bench/fleet.py

# Borg 2 alone: how the size of its packs decides how fast an image built over
# 30 nights extracts (bench/packs.py -> bench/PACKS.md; ~27 min, ~4 GB in bench/work).
bench-packs: setup
	$(VENV)/borg2/bin/python bench/packs.py --nights 30 --configs a,b,c,d,e --ranged --ranged-configs a
