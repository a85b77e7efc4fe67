"""Where make setup puts the stack's programs, for tests and their tools."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# contrib/setup-host.sh installs Borg 2 into its own environment beside the venv,
# and beside its borg the one that also has borgstore's sftp, rclone and s3 backends.
SET_UP_BORG2 = Path(sys.executable).parent.parent / "borg2" / "bin" / "borg"
SET_UP_BORG2_STORES = SET_UP_BORG2.with_name("borg-stores")


def borg2() -> str:
    """Return the Borg 2 the tests run: $BORG_VM_TEST_BORG2, else the set-up one."""
    return os.environ.get("BORG_VM_TEST_BORG2", str(SET_UP_BORG2))


def borg2_stores() -> str:
    """Return the Borg 2 the tests run at sftp://, rclone: and s3: locations:
    $BORG_VM_TEST_BORG2_STORES, else the set-up one."""
    return os.environ.get("BORG_VM_TEST_BORG2_STORES", str(SET_UP_BORG2_STORES))
