"""contrib/borgmatic/config.yaml run by the real borgmatic (issue #9): borgmatic
backs up files and its hooks run borg-vm against the same repository; each
side's prune deletes its own archives and never the other's."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from borgvm import BORG, RUN_TIMEOUT, archive_names, init_repo, restore_and_compare, run
from guest import MIB
from ruamel.yaml import YAML

CONFIG = Path(__file__).resolve().parents[2] / "contrib" / "borgmatic" / "config.yaml"
BORGMATIC = str(Path(sys.executable).with_name("borgmatic"))
BACKUP_HOOK = "borg-vm backup --no-progress --repo {repository} --all"
PRUNE_HOOK = "borg-vm prune --repo {repository} --keep-daily 7 --keep-weekly 4 --keep-monthly 6"


def config_for_test(repo: str, sources: Path, domains: str, between: Path) -> dict:
    """Return the shipped configuration pointed at `repo` and `sources`, its
    backup hook narrowed to the domains matching `domains`, and retention
    tightened on both sides to --keep-daily 1 (the newest archive only); an
    extra hook writes the archive names to `between` after borgmatic's own
    prune and before borg-vm's."""
    config = YAML(typ="safe").load(CONFIG)
    assert [hook["run"] for hook in config["commands"]] == [[BACKUP_HOOK], [PRUNE_HOOK]]
    config["repositories"][0]["path"] = repo
    config["source_directories"] = [str(sources)]
    for rule in ("keep_weekly", "keep_monthly"):
        del config[rule]
    config["keep_daily"] = 1
    backup_hook, prune_hook = config["commands"]
    backup_hook["run"] = [BACKUP_HOOK + f" --match {shlex.quote(domains)}"]
    prune_hook["run"] = [PRUNE_HOOK.replace("--keep-daily 7 --keep-weekly 4 --keep-monthly 6",
                                            "--keep-daily 1")]
    record = {"after": "action", "when": ["prune"],
              "run": [f"{BORG} list --short {{repository}} > {shlex.quote(str(between))}"]}
    config["commands"] = [backup_hook, record, prune_hook]
    return config


def borgmatic(config: Path, *actions: str, env: dict) -> str:
    """Run borgmatic ACTIONS with this configuration; return what it logged."""
    proc = subprocess.run([BORGMATIC, "-c", str(config), "--verbosity", "1", *actions],
                          capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"borgmatic {' '.join(actions)}: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def test_borgmatic_and_borg_vm_prune_only_their_own(make_domain, tmp_path):
    tag = "bm" + os.urandom(3).hex()
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=tag)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("borgmatic and borg-vm\n")
    # As the configuration says: the passphrase command in the environment,
    # for borgmatic's borg and for borg-vm alike.
    env = dict(os.environ, BORG_PASSCOMMAND=f"cat {passphrase}",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               XDG_RUNTIME_DIR=str(tmp_path / "run"), XDG_STATE_HOME=str(tmp_path / "state"),
               BORG_VM_FULL_EVERY="1")      # full, inc, full: two chains to prune from
    repo = init_repo(tmp_path / "repo", "repokey-blake2", env=env)
    sources = tmp_path / "files"
    sources.mkdir()
    between = tmp_path / "after-borgmatic-prune"
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(config_for_test(repo, sources, f"borgvm-test-*-{tag}",
                                                 between)))

    for night in range(3):
        (sources / "notes").write_text(f"night {night}\n")
        d.write("vda", night * MIB, MIB, 0xD0 + night)
        borgmatic(config, "create", env=env)
    newest = d.read_disk("vda")
    names = archive_names(repo, env=env)
    files = [n for n in names if "-files-" in n]
    vms = run("list", d.name, "--repo", repo, "--json", env=env).json()["archives"]
    assert len(files) == 3 and len(vms) == 3 and len(names) == 6
    assert [a["level"] for a in vms] == ["full", "inc", "full"]
    vms = [a["name"] for a in vms]

    log = borgmatic(config, "prune", "compact", env=env)
    # borgmatic's prune deleted its two older archives and no borg-vm archive ...
    assert sorted(between.read_text().split()) == sorted([files[2], *vms])
    # ... and borg-vm's prune the older chain, and no archive of borgmatic's.
    assert sorted(archive_names(repo, env=env)) == sorted([files[2], vms[2]])
    assert "borg-vm: deleted 2 of 3 archives" in log
    listing = subprocess.run([BORG, "list", "--short", f"{repo}::{files[2]}"],
                             capture_output=True, text=True, env=env, check=True).stdout
    assert str(sources / "notes").lstrip("/") in listing.split()
    checkpoint = vms[2].rsplit(".", 1)[1]
    restore_and_compare(d.name, repo, checkpoint, {"vda": newest}, tmp_path, "kept",
                        env=env)
