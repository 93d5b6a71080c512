"""The package's shape: folders by concern that import one way only, no import cycle between modules
or between folders (an import counts wherever it is: module level, a function, TYPE_CHECKING, a
folder's lazy re-export), no module over 400 lines, tests that share code through tests/helpers/
only, and every imported name found where its import looks. Each rule is shown to catch a planted
violation."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifar10_levels"
TESTS = ROOT / "tests"
MAX_LINES = 400
# Which folders each folder may import. Every folder may import the top-level modules (errors, files,
# lazy, offline, recipes, the package's __init__); they import no folder. cli may import anything.
ALLOWED = {
    "data": set(),
    "models": set(),
    "optim": set(),
    "evaluation": {"data", "models", "checkpoint"},   # a checkpoint's metadata says how to evaluate it
    "checkpoint": {"models"},
    "tracking": {"evaluation", "checkpoint", "data"},
    "runtime": {"data", "models", "optim", "tracking"},
    "hub": {"checkpoint", "models", "tracking", "evaluation"},
    "ensemble": {"checkpoint", "data", "evaluation", "models", "tracking"},
    "train": {"data", "models", "optim", "evaluation", "checkpoint", "tracking", "runtime", "hub",
              "ensemble"},
    "cli": {"data", "models", "optim", "evaluation", "checkpoint", "tracking", "runtime", "hub",
            "ensemble", "train"},
}


# ---- reading the package -------------------------------------------------------------------------

def module_names(package: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a folder is its __init__)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def folders(package: Path) -> set[str]:
    return {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}


def group(module: str) -> str:
    """The folder or top-level module a module belongs to ('__init__' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def lazy_exports(init: Path) -> dict[str, str]:
    """Name -> the submodule that defines it, from a folder's `lazy_exports(__name__, {...})`."""
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            exports = ast.literal_eval(node.args[1])
            return {name: submodule for submodule, names in exports.items() for name in names}
    return {}


def import_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from X import ...` in `module` reads from."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        if node.level - 1 >= len(parts):
            raise AssertionError(f"{module}: relative import beyond the package (level {node.level})")
        parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imported_modules(path: Path, module: str, known: dict[str, Path], package: str) -> set[str]:
    """The package's modules `path` imports anywhere in its source: `from .a import b` reaches a (or
    the submodule a.b), a name a folder re-exports lazily reaches the submodule that defines it."""
    def nearest(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    exports: dict[str, dict[str, str]] = {}
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {nearest(a.name) for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom):
            base = import_base(node, module, path.name == "__init__.py")
            if base.split(".")[0] != package:
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    targets.add(f"{base}.{alias.name}")
                    continue
                if base in known and known[base].name == "__init__.py":
                    exports.setdefault(base, lazy_exports(known[base]))
                    if alias.name in exports[base]:
                        targets.add(f"{base}.{exports[base][alias.name]}")
                        continue
                targets.add(nearest(base))
    return targets - {None, module}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any depth)."""
    known = module_names(package)
    return {module: imported_modules(path, module, known, package.name) for module, path in known.items()}


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder (or top-level module) -> the folders and top-level modules its modules import."""
    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folded.setdefault(group(module), set()).update(group(t) for t in targets)
    return {name: targets - {name} for name, targets in folded.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}   # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def direction_violations(graph: dict[str, set[str]], folder_names: set[str],
                         allowed: dict[str, set[str]]) -> list[str]:
    """Every import of a folder that its importer may not make, as 'importer -> imported'."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source, reached = group(module), group(target)
            if reached == source or reached not in folder_names:
                continue  # inside one folder, or a top-level module: always allowed
            if source not in folder_names or reached not in allowed[source]:
                wrong.append(f"{module} -> {target}")
    return wrong


def long_modules(package: Path, max_lines: int = MAX_LINES) -> dict[str, int]:
    sizes = {str(p.relative_to(package)): len(p.read_text().splitlines()) for p in package.rglob("*.py")}
    return {name: lines for name, lines in sorted(sizes.items()) if lines > max_lines}


def imports_of_test_modules(tests: Path) -> list[str]:
    """Imports of a test module (or of conftest, pytest's own) anywhere under tests/."""
    test_modules = {p.stem for p in tests.rglob("test_*.py")} | {"conftest"}
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + ([a.name for a in node.names] if node.level else [])
            else:
                continue
            found += [f"{path.relative_to(tests)}:{node.lineno} imports {name}" for name in names
                      if name.split(".")[0] in test_modules]
    return found


def missing_imports(files: list[Path], package: Path) -> list[str]:
    """`from X import name` (and `import X`) of the package that would fail when run: lazy imports
    inside functions run only when their path does. A name a folder re-exports counts when its lazy
    `__getattr__` finds it."""
    known = module_names(package)
    missing = []

    def exists(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent is a module, not a package
            return False

    def finds(module: str, name: str) -> str | None:
        try:
            getattr(importlib.import_module(module), name)
            return None
        except AttributeError:
            return None if exists(f"{module}.{name}") else "not found"
        except ImportError as error:
            return str(error)

    for path in files:
        inside = path.is_relative_to(package)
        own = next((m for m, p in known.items() if p == path), None) if inside else None
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                missing += [f"{where} {a.name}" for a in node.names if a.name.split(".")[0] == package.name
                            and not exists(a.name)]
            elif isinstance(node, ast.ImportFrom) and (node.level == 0 or own):
                module = import_base(node, own or "", path.name == "__init__.py")
                if module.split(".")[0] != package.name:
                    continue
                missing += [f"{where} {module}.{a.name}: {problem}" for a in node.names
                            if (problem := finds(module, a.name))]
    return missing


def broken_lazy_exports(package: Path) -> list[str]:
    """Names a folder's __init__ re-exports from a submodule that does not define them."""
    broken = []
    for module, path in module_names(package).items():
        for name, submodule in (lazy_exports(path) if path.name == "__init__.py" else {}).items():
            try:
                getattr(importlib.import_module(f"{module}.{submodule}"), name)
            except (AttributeError, ImportError) as error:
                broken.append(f"{module}.{name} (from .{submodule}): {error}")
    return broken


def write_package(root: Path, files: dict[str, str], name: str = "cifar10_levels") -> Path:
    """A package on disk from {relative path: source}; every folder gets an __init__.py."""
    package = root / name
    for relative, source in {"__init__.py": "", **files}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in path.relative_to(package).parents:
            (package / folder / "__init__.py").touch()
        path.write_text(source)
    return package


# ---- the real package --------------------------------------------------------------------------

def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_folders():
    cycle = find_cycle(folder_graph(import_graph(PACKAGE)))
    assert cycle is None, "folders import each other: " + " -> ".join(cycle)


def test_folders_import_only_in_the_allowed_direction():
    assert set(ALLOWED) == folders(PACKAGE), "place every folder in ALLOWED"
    wrong = direction_violations(import_graph(PACKAGE), folders(PACKAGE), ALLOWED)
    assert wrong == [], "imports against the folders' direction:\n" + "\n".join(wrong)


def test_the_allowed_map_is_one_direction():
    assert find_cycle(ALLOWED) is None
    assert all("train" not in ALLOWED[name] for name in ("ensemble", "hub", "evaluation"))
    assert all("cli" not in imported for imported in ALLOWED.values())


def test_no_module_is_over_400_lines():
    assert long_modules(PACKAGE) == {}


def test_no_test_module_imports_another():
    assert imports_of_test_modules(TESTS) == []


def test_every_import_of_a_package_name_finds_it():
    """A name moved to another module must not leave an import of it behind (a predict run once
    failed on `from .loop import evaluate`): imports inside functions run only when their path does."""
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "bench").glob("*.py"), *TESTS.rglob("*.py"),
             ROOT / "train.py", ROOT / "ensemble.py"]
    assert missing_imports(files, PACKAGE) == []


def test_every_lazy_export_names_a_real_name():
    assert broken_lazy_exports(PACKAGE) == []


# ---- each rule catches a planted violation ------------------------------------------------------

def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = write_package(tmp_path, {
        "a/first.py": "from .second import helper\n",
        "a/second.py": "def helper():\n    from . import first\n    return first\n",
        "a/third.py": "import cifar10_levels.a.first\n"})
    cycle = find_cycle(import_graph(package))
    assert cycle in (["cifar10_levels.a.first", "cifar10_levels.a.second", "cifar10_levels.a.first"],
                     ["cifar10_levels.a.second", "cifar10_levels.a.first", "cifar10_levels.a.second"])
    (package / "a" / "second.py").write_text("def helper():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None


def test_a_cycle_through_a_lazy_export_or_type_checking_is_found(tmp_path):
    package = write_package(tmp_path, {
        "a/__init__.py": "from ..lazy import lazy_exports\n\n__getattr__, __dir__, __all__ = "
                         "lazy_exports(__name__, {'x': ('thing',)})\n",
        "a/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..b.y import Other\n"
                  "thing = 1\n",
        "b/y.py": "def other():\n    from ..a import thing\n    return thing\n",
        "lazy.py": ""})
    graph = import_graph(package)
    assert graph["cifar10_levels.b.y"] == {"cifar10_levels.a.x"}  # through a's lazy re-export
    assert graph["cifar10_levels.a"] == {"cifar10_levels.lazy"}
    assert find_cycle(graph) in (["cifar10_levels.a.x", "cifar10_levels.b.y", "cifar10_levels.a.x"],
                                 ["cifar10_levels.b.y", "cifar10_levels.a.x", "cifar10_levels.b.y"])


def test_a_cycle_between_folders_is_found_when_their_modules_have_none(tmp_path):
    package = write_package(tmp_path, {"a/x.py": "from ..b.y import f\n", "a/w.py": "",
                                       "b/y.py": "def f():\n    pass\n", "b/z.py": "from ..a import w\n",
                                       "errors.py": "", "c/v.py": "from .. import errors\n"})
    graph = import_graph(package)
    assert find_cycle(graph) is None
    assert folder_graph(graph)["c"] == {"errors"}
    assert find_cycle(folder_graph(graph)) == ["a", "b", "a"]


def test_a_wrong_way_import_is_found(tmp_path):
    package = write_package(tmp_path, {
        "data/loader.py": "def load():\n    from ..train.loop import step\n",
        "train/loop.py": "from ..data.loader import load\nfrom ..errors import UserError\nstep = 1\n",
        "errors.py": "class UserError(Exception):\n    pass\n",
        "files.py": "from .data import loader\nfrom . import errors\n"})
    allowed = {"data": set(), "train": {"data"}}
    assert direction_violations(import_graph(package), folders(package), allowed) == [
        "cifar10_levels.data.loader -> cifar10_levels.train.loop",   # a lower folder imports a higher
        "cifar10_levels.files -> cifar10_levels.data.loader"]        # a top-level module imports a folder


def test_a_module_over_the_limit_is_found(tmp_path):
    package = write_package(tmp_path, {"a/big.py": "x = 1\n" * (MAX_LINES + 1),
                                       "a/fits.py": "x = 1\n" * MAX_LINES})
    assert long_modules(package) == {"a/big.py": MAX_LINES + 1}


def test_a_test_module_imported_by_another_is_found(tmp_path):
    tests = tmp_path / "tests"
    (tests / "helpers").mkdir(parents=True)
    (tests / "test_a.py").write_text("def helper():\n    pass\n")
    (tests / "test_b.py").write_text("from helpers.runs import f\nfrom test_a import helper\n")
    (tests / "test_c.py").write_text("import os\n\n\ndef test_x():\n    from conftest import ROOT\n")
    (tests / "helpers" / "runs.py").write_text("def f():\n    import test_a\n    from . import test_b\n")
    assert sorted(imports_of_test_modules(tests)) == ["helpers/runs.py:2 imports test_a",
                                                    "helpers/runs.py:3 imports test_b",
                                                    "test_b.py:2 imports test_a",
                                                    "test_c.py:5 imports conftest"]


@pytest.fixture
def planted_package(tmp_path, monkeypatch):
    """An importable package `planted` whose names moved: a.py lost `gone`, its __init__ still
    re-exports `moved` from a."""
    package = write_package(tmp_path, {
        "__init__.py": "from cifar10_levels.lazy import lazy_exports\n\n__getattr__, __dir__, __all__ = "
                       "lazy_exports(__name__, {'a': ('present', 'moved')})\n",
        "a.py": "present = 1\n",
        "b.py": "from .a import present\n\n\ndef f():\n    from .a import gone\n"
                "    from . import present, moved, a\n    import planted.nowhere\n"}, name="planted")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "planted" or m.startswith("planted.")]:
        del sys.modules[name]


def test_an_import_of_a_name_that_moved_is_found(planted_package):
    assert missing_imports([planted_package / "b.py"], planted_package) == [
        "planted/b.py:5 planted.a.gone: not found",
        "planted/b.py:6 planted.moved: not found",
        "planted/b.py:7 planted.nowhere"]
    assert broken_lazy_exports(planted_package) == [
        "planted.moved (from .a): module 'planted.a' has no attribute 'moved'"]
