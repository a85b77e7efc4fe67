# The two commands README promises on a fresh Debian 12 machine (as root):
#   make demo   back up a throwaway VM, change it, back up again, restore, verify
#   make test   the whole test suite (unit, integration, e2e with a real VM)
VENV   ?= .venv
PYTEST ?= $(VENV)/bin/pytest

.PHONY: setup demo test unit integration e2e bench bench-retention bench-scale

setup:
	bash contrib/setup-host.sh $(VENV)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash contrib/demo.sh

test: setup
	$(PYTEST) tests

unit:
	$(PYTEST) tests/unit

integration:
	$(PYTEST) tests/integration

e2e:
	$(PYTEST) tests/e2e

bench: setup
	$(VENV)/bin/python bench/bench.py

# 90 nightly backups + prune on a fake clock, restore time against chain length
# (bench/RETENTION.md; about 15 minutes on a quiet 2-core machine).
bench-retention: setup
	$(VENV)/bin/python bench/retention.py

# A 1 TiB qcow2 with 100,000 separate 64 KiB extents beside the same bytes in
# one range (bench/SCALE.md, issue #11; roughly 15 minutes and 40 GB of
# scratch space on a quiet 2-core machine, estimated from a reduced run).
# SCALE_DISK_GIB, SCALE_EXTENTS and SCALE_RUNS shrink it for a try-out.
bench-scale: setup
	$(VENV)/bin/python bench/scale.py
