"""What `pip install onnxport` brings: every package `src/` imports is declared, and pinned.

A package that is only installed because something else pulls it in (`packaging` through
pip's tools, `click` through typer) works until that other package changes its mind.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# Namespace packages whose top-level name says nothing: the module decides the distribution.
NAMESPACES = {"azure.ai.ml": "azure-ai-ml", "azure.identity": "azure-identity"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_normalize(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def _imported_modules() -> set[str]:
    modules = set()
    for file in (REPO / "src" / "onnxport").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return modules


_PROVIDERS = functools.cache(packages_distributions)  # reads every installed distribution


def _distribution(module: str) -> str | None:
    for namespace, distribution in NAMESPACES.items():
        if module == namespace or module.startswith(namespace + "."):
            return distribution
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("onnxport", "azure"):
        return None
    found = _PROVIDERS().get(top)
    assert found, f"src imports {module}, which no installed distribution provides"
    # mlflow's modules are provided by mlflow and its -skinny/-tracing parts: the main one.
    return _normalize(min(found, key=len))


def test_every_imported_package_is_a_declared_dependency() -> None:
    runtime = _declared(PYPROJECT["project"]["dependencies"])
    extras = _declared(PYPROJECT["project"]["optional-dependencies"]["azureml"])
    missing = {}
    for module in sorted(_imported_modules()):
        distribution = _distribution(module)
        if distribution is None:
            continue
        allowed = runtime | extras if module.startswith("azure") else runtime
        if distribution not in allowed:
            missing[module] = distribution
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_dependency_is_pinned_in_constraints() -> None:
    pins = {
        _normalize(line.split("==")[0])
        for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    optional = PYPROJECT["project"]["optional-dependencies"]
    declared = _declared(PYPROJECT["project"]["dependencies"])
    for group in optional.values():
        declared |= _declared(group)
    assert declared - pins == set(), "declared but not pinned in constraints.txt"
