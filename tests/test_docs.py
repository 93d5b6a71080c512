"""What README.md, docs/*.md and the model card tell users to type still works: every import of the
package they show finds its names, every `python -m cifar10_levels...` answers --help, and every
`cifar10-*` command they name is a console script (tests/test_help.py runs each one's --help)."""
from __future__ import annotations

import ast
import configparser
import re

import pytest

from helpers.commands import ROOT, command_help, console_scripts

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE = "cifar10_levels"
# the paths the issue names as public beside the docs' own (train.py and the cards use them)
PUBLIC_IMPORTS = ("from cifar10_levels.checkpoint import load_checkpoint",
                  "from cifar10_levels.data import load_cifar10")


def code_texts(markdown: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block ('' when none is named) and inline code span."""
    fenced = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.M | re.S)
    blocks = [(m.group(1), m.group(2)) for m in fenced.finditer(markdown)]
    inline = [("", m.group(1)) for m in re.finditer(r"`([^`]+)`", fenced.sub("", markdown))]
    return blocks + inline


def package_imports(language: str, code: str) -> list[str]:
    """The import statements of the package in a piece of code: all of a Python block's imports
    when it imports the package, else the package's `import`/`from` statements found in shell
    lines, `python -c "..."` strings and inline spans."""
    if language == "python":
        imports = [ast.unparse(node) for node in ast.walk(ast.parse(code))
                   if isinstance(node, (ast.Import, ast.ImportFrom))]
        return imports if any(PACKAGE in statement for statement in imports) else []
    pieces = (piece.strip() for piece in re.split(r"[\n;\"']", code))
    return [piece for piece in pieces if re.match(rf"(from|import)\s+{PACKAGE}\b", piece)]


def python_m_modules(code: str) -> list[str]:
    return re.findall(rf"python\s+-m\s+({PACKAGE}[\w.]*)", code)


def named_commands(code: str) -> set[str]:
    """`cifar10-*` words, not a path's or a repository's part (exports/cifar10-resnet50)."""
    return set(re.findall(r"(?<![\w/.-])cifar10-[a-z]+(?![\w.-])", code))


def documented() -> dict[str, list[tuple[str, str]]]:
    """Per doc file, its code texts."""
    return {str(path.relative_to(ROOT)): code_texts(path.read_text()) for path in DOCS}


def run_imports(statements: list[str]) -> list[str]:
    """Each statement that fails when run, with why."""
    failed = []
    for statement in statements:
        try:
            exec(compile(statement, "<docs>", "exec"), {})
        except (ImportError, AttributeError, SyntaxError) as error:
            failed.append(f"{statement}: {error!r}")
    return failed


def card_snippet(arch: str) -> str:
    """The Python block of the model card an export of `arch` gets."""
    from cifar10_levels.checkpoint.meta import CheckpointMeta
    from cifar10_levels.hub.model_card import card_text

    meta = CheckpointMeta(arch=arch, level="fast", img_size=32, num_classes=2, class_names=["a", "b"],
                          mean=[0.5] * 3, std=[0.25] * 3, seed=0, epoch=3, val_acc=0.5,
                          recipe={"phases": []})
    return re.search(r"```python\n(.*?)```", card_text(meta, None, "me/model", "model", None, None),
                     re.S).group(1)


def test_every_import_the_docs_show_finds_its_names():
    statements = [(where, s) for where, texts in documented().items() for text in texts
                  for s in package_imports(*text)]
    assert statements, "no import of the package found in the docs"
    failed = [f"{where}: {problem}" for where, statement in statements
              for problem in run_imports([statement])]
    assert failed == []


def test_the_public_import_paths_and_the_cards_snippet_import():
    snippet = card_snippet("cifar_speednet")
    assert "import cifar10_levels.models.speednet" in snippet
    assert run_imports([*PUBLIC_IMPORTS, *package_imports("python", snippet)]) == []


MODULES = sorted({m for texts in documented().values() for _, code in texts for m in python_m_modules(code)})


@pytest.mark.parametrize("module", MODULES)
def test_every_python_m_the_docs_show_answers_help(module):
    run = command_help("module", module)
    assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stdout + run.stderr
    assert run.heavy == [], f"python -m {module} --help imported {run.heavy}"


def test_the_docs_show_python_m_paths():
    assert MODULES, "no python -m path found in the docs"


def test_every_command_the_docs_name_is_a_console_script():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    distribution = config["metadata"]["name"]  # cifar10-levels: the project, not a command
    named = {m for texts in documented().values() for _, code in texts
             for m in named_commands(code)} - {distribution}
    assert named >= {"cifar10-export", "cifar10-predict", "cifar10-evaluate"}
    assert named <= set(console_scripts()), named - set(console_scripts())


def test_the_extraction_finds_what_a_doc_would_show():
    markdown = ("Load it:\n\n```python\nimport torch\nfrom cifar10_levels.checkpoint import load_checkpoint"
                "\n```\n\nor `python -c \"from cifar10_levels.data import load_cifar10; print(1)\"`, "
                "then `import cifar10_levels.models.speednet` and `python -m\ncifar10_levels.cli.report`.\n"
                "```bash\ncifar10-export a b\npython -c 'import timm'\n```\n")
    statements = [s for text in code_texts(markdown) for s in package_imports(*text)]
    assert statements == ["import torch", "from cifar10_levels.checkpoint import load_checkpoint",
                          "from cifar10_levels.data import load_cifar10",
                          "import cifar10_levels.models.speednet"]
    codes = [code for _, code in code_texts(markdown)]
    assert [m for code in codes for m in python_m_modules(code)] == ["cifar10_levels.cli.report"]
    assert set().union(*map(named_commands, codes)) == {"cifar10-export"}
    assert named_commands("exports/cifar10-resnet50 you/cifar10-x cifar10-levels") == {"cifar10-levels"}
    assert run_imports(["from cifar10_levels.checkpoint import no_such_name"]) != []
    assert run_imports(["import cifar10_levels.no_such_module"]) != []
