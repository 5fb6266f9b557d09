"""The shape of the code base, checked so that it stays one a newcomer can own: no import
cycles, production code never imports the simulated gateway, every ``MDP_*`` variable is
read in ``mdp_core/settings.py``, no oversized class or function, and no file cites a
document or a directory that is not in the repository."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mdp_core", "mdp_dagster")
SKIP_DIRS = {
    ".git",
    ".venv",
    ".venv-ib-insync",
    ".mdp",
    ".hypothesis",
    ".ruff_cache",
    ".mypy_cache",
    "__pycache__",
}
MAX_CLASS_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (a function body and
    ``if TYPE_CHECKING:`` included: each is a dependency a reader has to follow)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_package_of(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components; a package's ``__init__`` importing its own
    submodules (re-exports) is not a cycle of concerns, so those edges are left out."""
    graph = {
        name: {t for t in targets if not _is_package_of(name, t)} for name, targets in GRAPH.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert cycles == []


def test_production_code_never_imports_the_simulated_gateway() -> None:
    allowed = ("mdp_core.gateway", "mdp_core.cli.gateway")  # the tool and its own command
    offenders = {
        name: sorted(
            t for t in targets if t == "mdp_core.gateway" or t.startswith("mdp_core.gateway.")
        )
        for name, targets in GRAPH.items()
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_production_code_imports_no_private_dagster_module() -> None:
    """``dagster._*`` is Dagster's private API (it changes in patch releases): mdp_core,
    mdp_dagster and scripts/ use only what ``import dagster`` exports."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += [p for p in (ROOT / "scripts").iterdir() if p.is_file()]
    private = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    assert [str(p.relative_to(ROOT)) for p in files if private.search(p.read_text())] == []


_MDP_NAME = re.compile(r"MDP_[A-Z0-9_]+")


def _variable_reads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``x.get("MDP_...")``, ``getenv("MDP_...")`` and ``x["MDP_..."]`` read as a value:
    the ways code reads a variable by name (writing one for a child process is not a read;
    Dagster's ``EnvVar("MDP_...")`` is Dagster reading its own configuration)."""
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("get", "getenv", "pop", "setdefault"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice
        value = key.value if isinstance(key, ast.Constant) else None
        if isinstance(value, str) and _MDP_NAME.fullmatch(value):
            yield node.lineno, value


def test_every_mdp_variable_is_read_in_the_settings_module() -> None:
    readers = [
        f"{path.relative_to(ROOT)}:{line}: {variable}"
        for name, path in MODULES.items()
        if name != "mdp_core.settings"
        for line, variable in _variable_reads(ast.parse(path.read_text()))
    ]
    assert readers == []


def _sized(tree: ast.AST) -> Iterator[tuple[str, str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            assert node.end_lineno is not None
            yield kind, node.name, node.end_lineno - node.lineno + 1


def test_no_oversized_class_or_function() -> None:
    limits = {"class": MAX_CLASS_LINES, "function": MAX_FUNCTION_LINES}
    too_big = [
        f"{path.relative_to(ROOT)}: {kind} {name} has {lines} lines (at most {limits[kind]})"
        for path in MODULES.values()
        for kind, name, lines in _sized(ast.parse(path.read_text()))
        if lines > limits[kind]
    ]
    assert too_big == []


def _text_files() -> Iterator[Path]:
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in {
            ".py",
            ".md",
            ".toml",
            ".yaml",
            ".yml",
            ".json",
            ".cfg",
            ".txt",
            ".sh",
            "",
        }:
            yield path


# The development machine's paths and the notes that stayed outside the repository. Spelled
# in pieces, so that this file does not contain what it looks for and is checked like the rest.
CITATIONS = [
    "/" + "work/",
    ".." + "/shared",
    "DESIGN" + ".md",
    "reliability" + ".md",
    "tws-protocol" + ".md",
    "dagster-notes" + ".md",
]


@pytest.mark.parametrize("citation", CITATIONS)
def test_nothing_cites_what_is_not_in_the_repository(citation: str) -> None:
    citing = []
    for path in _text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if citation in text:
            citing.append(str(path.relative_to(ROOT)))
    assert citing == []
