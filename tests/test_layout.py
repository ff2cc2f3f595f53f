"""The package's layout holds: the library imports neither Hydra nor Lightning, commands import the library and
never each other, each command lives in one file, no import circle (function-level imports included), no module is
over 400 lines, and the wheel lists every package."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hrn"
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "inspect",
    "export",
    "gradcam",
    "calibrate",
    "report",
    "bench",
    "demo",
    "shard",
)
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


def imported_modules(path: Path) -> set[str]:
    """The package's modules that importing ``path`` and calling its functions can import (function-level imports
    included): ``from hrn.x import y`` imports the module hrn.x.y when there is one, hrn.x otherwise; and importing
    hrn.x.y first imports its packages (hrn.x), all but the top one, whose ``__init__`` loads its names lazily."""
    out = set()
    own = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            out.add(target)
            # the packages above the target, but those above the importer itself: already initialising when it runs
            out.update(
                p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if not own.startswith(p + ".")
            )
    return {m for m in out if m in MODULES}


def test_no_import_circle_lazy_imports_included():
    import networkx as nx

    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_edges_from((name, target) for target in imported_modules(path) if target != name)
    circles = sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)
    assert not circles, f"import circles: {circles}"


def test_the_top_package_loads_its_names_lazily_and_no_module_imports_it():
    """``hrn/__init__.py`` imports only the version at import time; no module of the package imports ``hrn`` itself
    (which would see it half-initialised)."""
    assert imported(PACKAGE / "__init__.py") <= {
        "__future__",
        "__future__.annotations",
        "importlib",
        "hrn.version",
        "hrn.version.__version__",
    }
    for name, path in MODULES.items():
        assert "hrn" not in imported(path), name
    code = "import sys, hrn.reports; print('torch' in sys.modules, 'networkx' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_each_command_lives_in_one_file():
    """``hrn/<verb>.py`` holds its command's Hydra layer: only command modules carry ``@hydra.main``, and every
    module of the command layer is shared by two commands or more (no ``hrn/cli/<verb-noun>.py`` twin)."""
    for name, path in MODULES.items():
        if "hydra.main" in path.read_text():
            assert name in COMMAND_MODULES, f"{name} defines a Hydra entry point; only hrn/<verb>.py may"
    for name in (m for m in MODULES if within(m, COMMAND_LAYER) and m != "hrn.cli"):
        users = [c for c in COMMAND_MODULES if name in imported_modules(MODULES[c])]
        assert len(users) >= 2, f"{name} serves only {users}: it belongs in that command's file"
        assert not any(name.rsplit(".", 1)[-1].startswith(c[:5]) for c in COMMANDS), name


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
