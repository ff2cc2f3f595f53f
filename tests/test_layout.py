"""The package's layout holds: the library imports neither Hydra nor Lightning, commands import the library and
never each other, no module is over 400 lines, and the wheel lists every package."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hrn"
COMMANDS = ("train", "evaluate", "predict", "inspect", "export", "gradcam", "calibrate", "report", "bench")
COMMAND_LAYER = ("hrn.cli",)  # what the commands share: the Hydra layer
TRAINING = ("hrn.training",)  # the only part on Lightning


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
COMMAND_MODULES = {f"hrn.{c}" for c in COMMANDS}


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


LIBRARY = sorted(m for m in MODULES if m not in COMMAND_MODULES and not within(m, COMMAND_LAYER + TRAINING))


def imported(path: Path) -> set[str]:
    """Every module a file imports (absolute names; ``from hrn.x import y`` gives hrn.x and hrn.x.y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_every_command_exists_and_the_library_is_not_empty():
    assert COMMAND_MODULES <= set(MODULES)
    assert {"hrn.tree", "hrn.nets", "hrn.losses", "hrn.metrics", "hrn.checkpoints", "hrn.deploy"} <= set(
        LIBRARY
    )


def test_importing_the_library_loads_neither_hydra_nor_lightning():
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('hydra', 'omegaconf', 'lightning', 'pytorch_lightning') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", LIBRARY)
def test_the_library_never_imports_a_command_hydra_or_lightning(name):
    names = imported(MODULES[name])
    assert not {n for n in names if n in COMMAND_MODULES or within(n, COMMAND_LAYER)}
    assert not {n for n in names if within(n, ("hydra", "omegaconf", "lightning", "pytorch_lightning"))}
    if not within(name, TRAINING):
        assert not {n for n in names if within(n, TRAINING)}


@pytest.mark.parametrize("name", sorted(COMMAND_MODULES))
def test_commands_never_import_each_other(name):
    others = COMMAND_MODULES - {name}
    assert not (imported(MODULES[name]) & others)


def test_only_the_training_package_and_the_command_layer_name_lightning():
    for name, path in MODULES.items():
        if within(name, TRAINING + COMMAND_LAYER) or name in COMMAND_MODULES:
            continue
        assert not any(within(n, ("lightning",)) for n in imported(path)), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_400_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= 400


def test_no_module_name_shadows_the_standard_library_outside_the_commands():
    for name in MODULES:
        if (
            name in COMMAND_MODULES
        ):  # `python -m hrn.inspect` is a command's name, reached only as hrn.inspect
            continue
        assert name.rsplit(".", 1)[-1] not in sys.stdlib_module_names, name


def test_the_wheel_lists_every_package_and_ships_the_configs():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert set(config["packages"]) == packages | {"hrn.conf"}
    assert config["package-dir"] == {"hrn.conf": "conf"} and (ROOT / "conf" / "train.yaml").is_file()
