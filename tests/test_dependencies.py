"""Dependencies are declared where they are imported, and `make install` pins each of them:
every third-party module the packages import belongs to a distribution pyproject.toml
declares (mdp_core's in the core dependencies, unless it is one of the optional features),
and requirements/constraints.txt pins every declared distribution to a version its
specifier allows (so a new dependency without `make lock` is caught here)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
# mdp_core imports these only inside the feature that needs them, with an error naming the
# extra when it is missing.
OPTIONAL_IN_CORE = {"pgpq": "import"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(group: str | None = None) -> dict[str, Requirement]:
    """The requirements of the core dependencies (``None``) or of one extra."""
    if group is None:
        lines = PYPROJECT["dependencies"]
    else:
        lines = PYPROJECT["optional-dependencies"][group]
    return {normalize(r.name): r for r in map(Requirement, lines)}


def all_declared() -> dict[str, Requirement]:
    found = declared()
    for extra in PYPROJECT["optional-dependencies"]:
        found.update(declared(extra))
    return found


@cache
def imported_distributions(package: str) -> dict[str, set[str]]:
    """Distribution -> the files of ``package`` that import one of its modules."""
    own = {"mdp_core", "mdp_dagster", "tests", "benchmarks"}
    dists = _module_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in own or top in sys.stdlib_module_names:
                    continue
                assert top in dists, f"{path.relative_to(REPO)} imports {top}: not installed"
                for dist in dists[top]:
                    found.setdefault(normalize(dist), set()).add(str(path.relative_to(REPO)))
    return found


@cache
def _module_distributions() -> dict[str, list[str]]:
    return dict(packages_distributions())


def pins() -> dict[str, Version]:
    found = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            found[normalize(match.group(1))] = Version(match.group(2))
    return found


def test_what_mdp_core_imports_is_a_core_dependency() -> None:
    core = declared()
    for dist, files in imported_distributions("mdp_core").items():
        extra = OPTIONAL_IN_CORE.get(dist)
        if extra is not None:
            assert dist in declared(extra), f"{dist} (imported by {files}) not in [{extra}]"
        else:
            assert dist in core, f"{dist} is imported by {sorted(files)}: not a core dependency"


def test_what_mdp_dagster_imports_is_declared_for_it() -> None:
    allowed = declared() | declared("dagster")
    for dist, files in imported_distributions("mdp_dagster").items():
        assert dist in allowed, f"{dist} is imported by {sorted(files)}: not in core or [dagster]"


def test_what_tests_and_benchmarks_import_is_declared() -> None:
    everything = all_declared()
    for package in ("tests", "benchmarks"):
        for dist, files in imported_distributions(package).items():
            assert dist in everything, f"{dist} is imported by {sorted(files)}: not declared"


def test_every_declared_dependency_is_pinned_by_the_lock() -> None:
    pinned = pins()
    for name, requirement in all_declared().items():
        assert name in pinned, f"{name} is not in {CONSTRAINTS.name}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{CONSTRAINTS.name} pins {name}=={pinned[name]}, outside {requirement}: "
            "run `make lock`"
        )
