"""The package's shape: no import cycles (at module level or inside functions), and the modules split
out of ensemble.py, tracking.py, checkpoint.py, trainer.py and loop.py stay small."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifar10_levels"
MAX_LINES = 250
SPLIT_MODULES = ("arguments", "hardware", "checkpoint", "checkpoint_meta", "ensemble", "ensemble_members",
                 "ensemble_cache", "ensemble_evaluation", "ensemble_votes", "ensemble_tracking",
                 "tracking", "trackers", "wandb_account", "environment", "trainer", "loop", "step_hooks",
                 "train_state", "run_setup", "persistence", "results", "console", "options", "optim",
                 "evaluation")


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source ('__init__' for the package
    itself), from `import`/`from` statements at any depth: module level, functions, TYPE_CHECKING."""
    name = package.name
    modules = {p.stem for p in package.glob("*.py")}

    def targets(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name.split(".")[1] if "." in alias.name else "__init__"
                    for alias in node.names if alias.name.split(".")[0] == name}
        if not isinstance(node, ast.ImportFrom):
            return set()
        if node.level == 0 and (node.module or "").split(".")[0] != name:
            return set()
        if node.level > 1:
            raise AssertionError(f"{package}: relative import beyond the package ({node.module})")
        inside = (node.module or "").split(".")[1:] if node.level == 0 else \
            (node.module or "").split(".")[:1] if node.module else []
        if inside:
            return {inside[0]}
        return {a.name if a.name in modules else "__init__" for a in node.names}  # from . import x

    graph = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        graph[path.stem] = {t for node in ast.walk(tree) for t in targets(node)} - {path.stem}
    return graph


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


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_imports_inside_functions_and_the_known_edges():
    graph = import_graph(PACKAGE)
    assert "models" in graph["checkpoint"] and "checkpoint_meta" in graph["models"]
    assert "ensemble_evaluation" in graph["ensemble"]  # imports inside main
    assert "__init__" in graph["environment"]        # from . import __version__


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "cifar10_levels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("from .second import helper\n")
    (package / "second.py").write_text("def helper():\n    from . import first\n    return first\n")
    (package / "third.py").write_text("import cifar10_levels.first\n")
    assert find_cycle(import_graph(package)) in (["first", "second", "first"],
                                                  ["second", "first", "second"])
    (package / "second.py").write_text("def helper():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None


def test_every_module_stays_small():
    sizes = {path.stem: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert set(SPLIT_MODULES) <= set(sizes)
    assert all(lines <= MAX_LINES for lines in sizes.values()), sizes


def test_ensemble_help_and_report_answer_without_importing_torch():
    code = ("import sys; from cifar10_levels.cli.ensemble import ensemble_parser; "
            "import cifar10_levels.cli.report; ensemble_parser().format_help(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_every_import_of_a_package_name_finds_it():
    """Lazy imports inside functions run only when their path does: a name moved to another module
    must not leave one behind (a predict run once failed on `from .loop import evaluate`)."""
    import importlib

    missing = []
    for path in [*PACKAGE.glob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 and path.parent == PACKAGE:
                module = f"{PACKAGE.name}.{node.module}" if node.module else PACKAGE.name
            elif node.level == 0 and (node.module or "").startswith(PACKAGE.name):
                module = node.module
            else:
                continue
            loaded = importlib.import_module(module)
            missing += [f"{path.relative_to(ROOT)}:{node.lineno} {module}.{alias.name}"
                        for alias in node.names if not hasattr(loaded, alias.name)
                        and importlib.util.find_spec(f"{module}.{alias.name}") is None]
    assert not missing, missing
