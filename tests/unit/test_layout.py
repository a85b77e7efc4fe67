"""The architecture as a rule: which part of borg_vm may import which.

    cli       -> anything
    commands  -> services, format, core, adapters, helpers   (never another command)
    services  -> services, format, core, adapters, helpers   (never a command)
    format    -> format, core, adapters, helpers
    adapters  -> core, format's pure modules, errors, other adapters
    core      -> core, format's pure modules, errors, the package's __version__
    helpers   -> core, errors                  (runtime, progress, prefetch)

Core and the pure part of the format (everything in format/ but the reader and
the writer, which run Borg) do no I/O at all.

Only adapters/libvirt.py imports the libvirt binding, only adapters/libnbd.py
imports nbd, only adapters/subproc.py starts programs (subprocess), and only
adapters/borg/ names the borg program.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "borg_vm"
HELPERS = {"runtime", "progress", "prefetch"}
# What the command modules share: parser pieces and value types, not a command.
SHARED_BY_COMMANDS = {"commands", "commands.options"}
# The format's modules that read or write archives through Borg; the rest is pure.
FORMAT_IO = {"format.reader", "format.writer"}
# Modules that touch the world; the core must not import them.
IO_MODULES = {"os", "subprocess", "socket", "shutil", "threading", "fcntl", "tempfile",
              "glob", "io", "pathlib", "signal", "libvirt", "libvirt_qemu", "nbd"}
ONLY_IN = {"libvirt": "adapters.libvirt", "libvirt_qemu": "adapters.libvirt",
           "nbd": "adapters.libnbd", "subprocess": "adapters.subproc"}


def _modules() -> dict[str, Path]:
    """Return {dotted name below borg_vm: path} of every module of the package (a
    package by its own name, its __init__.py)."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
            .removesuffix("__init__"): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[str]:
    """Return the absolute names a module imports (borg_vm's own without the prefix)."""
    package = name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                up = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = "borg_vm." + ".".join(up + ([node.module] if node.module else []))
                base = base.rstrip(".")
            out.append(base)
            # `from . import x` imports module x of that package
            out += [f"{base}.{a.name}" for a in node.names if (base + "." + a.name)
                    .removeprefix("borg_vm.") in _modules()]
    return [i.removeprefix("borg_vm.") if i.startswith("borg_vm.") else
            ("" if i == "borg_vm" else i) for i in out]


def _layer(name: str) -> str:
    """Return the layer of a module named below borg_vm ("" is the package itself)."""
    top = name.split(".")[0]
    if top == "format":
        return "format" if name in FORMAT_IO else "format-pure"
    if top in ("core", "adapters", "commands", "services", "errors"):
        return top
    if top in ("cli", "__main__"):
        return "cli"
    if top in ("", "__init__"):
        return "package"          # borg_vm itself: __version__
    return "helpers" if top in HELPERS else "outside"


PURE = {"package", "core", "format-pure", "errors"}
ALLOWED = {
    "core": PURE,
    "format-pure": PURE,
    "format": PURE | {"format", "adapters", "helpers"},
    "adapters": PURE | {"adapters"},
    "services": PURE | {"format", "adapters", "helpers", "services"},
    "commands": PURE | {"format", "adapters", "helpers", "services", "commands"},
    "helpers": {"package", "core", "errors", "helpers"},
    "errors": {"package"},
    "package": set(),
    "cli": PURE | {"format", "adapters", "helpers", "services", "commands", "cli"},
}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_imports_follow_the_layers(name):
    layer = _layer(name)
    own = [i for i in _imports(name, _modules()[name]) if _layer(i) != "outside"]
    bad = [i for i in own if _layer(i) not in ALLOWED[layer]]
    assert not bad, f"{name} ({layer}) imports {bad}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_commands_never_import_commands(name):
    """A command owns its parser and handler; what two commands share is a service."""
    if _layer(name) != "commands" or name in SHARED_BY_COMMANDS:
        return
    other = [i for i in _imports(name, _modules()[name])
             if _layer(i) == "commands" and i != name and i not in SHARED_BY_COMMANDS]
    assert not other, f"command {name} imports command {other}: move the shared part to services"


@pytest.mark.parametrize("name", sorted(n for n in _modules()
                                        if _layer(n) in ("core", "format-pure")))
def test_core_does_no_io(name):
    bad = [i for i in _imports(name, _modules()[name]) if i.split(".")[0] in IO_MODULES]
    assert not bad, f"pure module {name} imports {bad}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_outside_systems_have_one_module_each(name):
    for i in _imports(name, _modules()[name]):
        owner = ONLY_IN.get(i.split(".")[0])
        assert owner is None or owner == name, f"{name} imports {i}: only {owner} may"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_only_the_borg_adapter_names_borg(name):
    """Running borg means naming its executable: only the adapters/borg/ package does."""
    if name == "adapters.borg" or name.startswith("adapters.borg."):
        return
    tree = ast.parse(_modules()[name].read_text())
    named = [n.value for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and n.value in ("borg", "BORG_VM_BORG")]
    assert not named, f"{name} names the borg program: only adapters/borg/ may run borg"


def test_the_rules_see_every_layer():
    """Guard against the rule tests passing vacuously after a move."""
    layers = {_layer(n) for n in _modules()}
    assert layers == {"core", "format-pure", "format", "adapters", "services", "commands",
                      "helpers", "errors", "cli", "package"}
    assert "core.extent" in _modules() and "adapters.libvirt" in _modules()
    assert "adapters.libnbd" in _imports("adapters.disk_sources",
                                         _modules()["adapters.disk_sources"])


def test_a_violation_is_caught(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from ..adapters import borg\nfrom .. import runtime\nimport os\n")
    imports = _imports("core.x", bad)
    assert "adapters.borg" in imports and "os" in imports
    assert _layer("adapters.borg") not in ALLOWED["core"]
    assert _layer("runtime") not in ALLOWED["core"]


def test_a_command_importing_a_command_is_caught(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from borg_vm.commands import verify\nfrom . import prune\n")
    imports = _imports("commands.x", bad)
    assert "commands.verify" in imports and "commands.prune" in imports
    assert all(_layer(i) == "commands" for i in ("commands.verify", "commands.prune"))


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by their file name (rootdir-less "prepend"
    mode): two tests/*/test_x.py stop the whole suite at collection."""
    tests = PACKAGE.parent / "tests"
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
