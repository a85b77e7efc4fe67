"""A bounded soak of borg-vm (`make soak`; not part of `make test`, not in CI).

ROUNDS nightly rounds against one throw-away domain and repository: each round
the guest writes, zeroes and discards at random, then borg-vm backs it up; in
about a third of the rounds a random fault from the fault matrix strikes the
backup first (borg-vm killed at a random phase, borg killed mid-stream or in its
commit, QEMU killed mid-stream, SIGTERM), and the next backup must go on from
the last good archive (a full only where QEMU took the bitmaps with it). At the
end every archive is verified and every restore point restored and compared
with what the guest saw, byte for byte. Prints rounds, faults, restore points
checked and bytes lost (which must be 0); exits 1 if anything was lost or failed.

    .venv/bin/python tests/faults/soak.py [--rounds N] [--seed S]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "e2e")]

import guest  # noqa: E402
import libvirt  # noqa: E402
from borgvm import init_repo, run, wrapper_env  # noqa: E402
from harness import Target, children  # noqa: E402

from borg_vm import runtime  # noqa: E402

ROUNDS = 30
FAULT_SHARE = 1 / 3
DISK = 64 * guest.MIB
KIB = 1024
# borg's stale lock costs a tenth of the lock wait after a kill (see test_parts.py)
QUICK_LOCK_WAIT = {"BORG_VM_LOCK_WAIT": "10"}
PHASES = [runtime.PLANNED, runtime.JOB_STARTED, runtime.STREAMING, runtime.ENDING,
          runtime.BORG_FINISHED, runtime.DONE]


def guest_writes(t: Target, rng: random.Random) -> None:
    """A night's random guest I/O: writes, zeroes and discards anywhere on the disk."""
    for _ in range(rng.randint(1, 6)):
        length = rng.choice([4 * KIB, 64 * KIB, 1 * guest.MIB, 3 * guest.MIB + 512])
        offset = rng.randrange(0, DISK - length, 512)
        op = rng.random()
        if op < 0.7:
            t.d.write("vda", offset, length, rng.randint(1, 255))
        elif op < 0.85:
            t.d.write_zeroes("vda", offset, length)
        else:
            t.d.discard("vda", offset, length)


def borg_vm_killed(t: Target, rng: random.Random) -> tuple[str, str | None]:
    phase = rng.choice(PHASES)
    t.kill(t.start(stop_at=phase))
    return f"borg-vm killed at {phase}", None


def borg_killed(t: Target, _rng) -> tuple[str, str | None]:
    proc = t.start(stop_at=runtime.STREAMING, env=dict(os.environ, **QUICK_LOCK_WAIT))
    (borg,) = children(proc.pid)
    os.kill(borg, signal.SIGKILL)
    proc.send_signal(signal.SIGCONT)
    t.failed(t.finish(proc, 2), "killed by SIGKILL")
    return "borg killed mid-stream", None


def borg_killed_in_commit(t: Target, _rng) -> tuple[str, str | None]:
    wrapper = t.tmp / f"wrapper-{time.monotonic_ns()}"
    wrapper.mkdir()
    env = dict(wrapper_env(wrapper, "commit"), **QUICK_LOCK_WAIT)
    t.failed(t.finish(t.start(env=env), 2), "killed by SIGKILL")
    return "borg killed in its commit", None


def qemu_killed(t: Target, _rng) -> tuple[str, str | None]:
    proc = t.start(stop_at=runtime.STREAMING)
    t.d.kill_qemu()
    proc.send_signal(signal.SIGCONT)
    t.failed(t.finish(proc, 2), "stopped while it was being backed up")
    t.d.start_paused()
    return "QEMU killed mid-stream", "inconsistent"


def sigterm(t: Target, _rng) -> tuple[str, str | None]:
    proc = t.start(stop_at=runtime.STREAMING)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    t.failed(t.finish(proc, 2), "Interrupted by SIGTERM")
    return "SIGTERM mid-stream", None


FAULTS = [borg_vm_killed, borg_killed, borg_killed_in_commit, qemu_killed, sigterm]


def soak(rounds: int, seed: int, workdir: Path, conn) -> int:
    rng = random.Random(seed)
    virt_type = "kvm" if guest.kvm_usable(conn) else "qemu"
    vms = workdir / "vms"
    vms.mkdir()
    guest.allow_traverse(vms, workdir.parent)   # QEMU may run as another user
    domain = guest.create_domain(conn, vms, virt_type, [("vda", DISK, "qcow2")],
                                 name_suffix="soak")
    faults: collections.Counter = collections.Counter()
    started = time.monotonic()
    try:
        t = Target(domain, init_repo(workdir / "repo"), workdir, {})
        guest_writes(t, rng)
        t.backup()
        for n in range(1, rounds):
            guest_writes(t, rng)
            if rng.random() < FAULT_SHARE:
                what, full_because = rng.choice(FAULTS)(t, rng)
                faults[what] += 1
                # A full because the checkpoint proved inconsistent warns: exit 1.
                t.next_run("full" if full_because else "inc", full_because,
                           code=1 if full_because == "inconsistent" else 0)
                print(f"round {n + 1}: {what}; then {t.record['next']}", flush=True)
            else:
                t.backup()
                print(f"round {n + 1}: {t.good[-1]['level']} backup", flush=True)
        assert t.leftovers() == [], t.leftovers()
        run("verify", t.name, "--all", "--repo", t.repo)
        points, lost = t.restore_points(workdir / "restored")
    finally:
        guest.destroy_test_domain(domain)
    print(f"\nsoak (seed {seed}): {rounds} rounds in {time.monotonic() - started:.0f} s, "
          f"{sum(faults.values())} faults injected"
          + "".join(f"\n  {n} x {what}" for what, n in sorted(faults.items()))
          + f"\n{points} of {len(t.good)} restore points verified and restored, "
          f"{sum(n for n, _at in lost.values())} bytes lost"
          + "".join(f"\n  {where}: {n} bytes differ, the first at {at}"
                    for where, (n, at) in sorted(lost.items())))
    return 0 if not lost and points == len(t.good) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    # The leftovers probe expects libvirt errors; libvirt would print each one.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    for name in [n for n in os.environ if n.startswith("BORG_")]:
        del os.environ[name]
    workdir = Path(tempfile.mkdtemp(prefix="borg-vm-soak-"))
    os.environ["BORG_BASE_DIR"] = str(workdir / "borg-base")
    conn = libvirt.open("qemu:///system")
    try:
        return soak(args.rounds, args.seed, workdir, conn)
    finally:
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
