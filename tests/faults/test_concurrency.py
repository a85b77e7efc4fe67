"""Runs that overlap: two backups of one domain, a backup and a prune of one
repository, and `backup --all` over ten domains of which one fails midway. The
first two under both Borg generations (Borg 2 takes a prune beside a backup
without a lock wait)."""

import json
import os
import secrets
import signal

import pytest
from borgvm import repo_lock_waiters, run, start, wrapper_env
from guest import MIB, poll
from harness import STOP_TIMEOUT, Target

from borg_vm import runtime

DOMAINS = 10
SMALL_DISK = (("vda", 16 * MIB, "qcow2"),)
KILL_AFTER = 64 * 1024
# A waiting borg looks again every tenth of its lock wait (at most every minute).
PRUNE_LOCK_WAIT = "20"
QUICK_LOCK_WAIT = "10"   # the killed borg's stale lock costs a tenth of it (test_parts.py)


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_two_backups_of_one_domain_at_once(target, record):
    t = target()
    first = t.start(stop_at=runtime.STREAMING)
    record["injected"] = "a second backup of the domain while the first streams"
    t.failed(run("backup", t.name, "--repo", t.repo, code=2), "another borg-vm run",
             "try again when it has finished")
    first.send_signal(signal.SIGCONT)
    t.succeeded(t.finish(first, 0))
    record["did"] = "the second: exit 2, another borg-vm run is backing up; the first: exit 0"
    t.next_run()
    t.check()


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_backup_and_prune_at_once(target, record, generation):
    t = target()
    t.backup()
    t.write()
    t.backup("--level", "full")
    t.write()
    proc = t.start(stop_at=runtime.STREAMING)
    prune = start("prune", "--repo", t.repo, "--keep-last", "1", "--json",
                  env=dict(os.environ, BORG_VM_LOCK_WAIT=PRUNE_LOCK_WAIT))
    if generation == "borg1":
        record["injected"] = ("prune --keep-last 1 while a backup streams (prune waits for "
                              "its lock)")
        poll(lambda: repo_lock_waiters(t.repo) or prune.poll() is not None, STOP_TIMEOUT,
             "prune to wait for the repository lock")
    else:
        record["injected"] = ("prune --keep-last 1 while a backup writes its record (Borg 2: "
                              "no lock to wait for)")
        prune.wait(timeout=STOP_TIMEOUT)
    proc.send_signal(signal.SIGCONT)
    t.succeeded(t.finish(proc, 0))
    out, err = prune.communicate(timeout=STOP_TIMEOUT)
    assert prune.returncode == 0, err
    # The new full's chain is kept, whichever of the two took the lock first.
    deleted = set(json.loads(out)["deleted"])
    assert deleted == {g["archive"] for g in t.good[:2]}, deleted
    t.good, t.views = t.good[2:], t.views[2:]
    record["did"] = (f"both exit 0; prune deleted the {len(deleted)} archives of the older "
                     "chain, kept the new full and the incremental made meanwhile"
                     if generation == "borg1" else
                     f"both exit 0; prune deleted the {len(deleted)} older points, kept the "
                     "newest and the one made meanwhile")
    t.next_run()
    t.check()


def test_backup_all_with_one_domain_failing_midway(make_domain, repo, tmp_path, record):
    tag = secrets.token_hex(3)
    targets = {t.name: t for t in (Target(make_domain(disks=SMALL_DISK,
                                                      name_suffix=f"{tag}-{i}"),
                                          repo, tmp_path, record) for i in range(DOMAINS))}
    victim = list(targets.values())[DOMAINS // 2]
    env = dict(wrapper_env(tmp_path, "kill", kill_after=str(KILL_AFTER),
                           kill_match=victim.name + "."), BORG_VM_LOCK_WAIT=QUICK_LOCK_WAIT)
    record["injected"] = (f"backup --all of {DOMAINS} domains; borg killed mid-stream "
                          "in one of them")
    for t in targets.values():
        t.write(1 * MIB)
    views = {name: t.d.views() for name, t in targets.items()}
    result = run("backup", "--all", "--match", f"*-{tag}-*", "--repo", repo, "--json",
                 env=env, code=2)
    done = [doc for doc in result.json_lines() if "error" not in doc]
    for doc in done:
        targets[doc["domain"]].took(doc, views[doc["domain"]])
    assert sorted(d["domain"] for d in done) == sorted(n for n in targets if n != victim.name)
    (failure,) = [doc for doc in result.json_lines() if "error" in doc]
    assert failure["domain"] == victim.name and failure["exit_code"] == 2, failure
    assert "borg import-tar failed" in failure["error"], failure
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"borg-vm: 1 of {DOMAINS} domains failed: {victim.name}", result.stderr
    record["did"] = (f"exit 2; the other {DOMAINS - 1} backed up; its last line: "
                     f"{last.removeprefix('borg-vm: ')}")
    victim.next_run("full", "no earlier archive")
    victim.check()
    for t in targets.values():
        if t is not victim:
            t.check(every=False)
    run("verify", "--repo", repo)
