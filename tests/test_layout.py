"""The layout is the pipeline: every module sits in a ring and imports only from its own ring
or the rings below it, no two modules import each other (function-level imports included),
and what serves a published model (`artifact/`, `predict/`, `serving/`) never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "onnxport"

# Ring of each top-level module or package (docs: DESIGN.md, "Where the code lives").
RINGS = {
    "onnxport": 0,
    "errors": 0,
    "progress": 0,
    "process": 0,
    "interrupts": 0,
    "isolation": 0,
    "tasks": 0,
    "samples": 0,
    "names": 0,
    "request": 0,
    "sources": 1,
    "export": 1,
    "passes": 1,
    "verify": 1,
    "testing": 1,
    "artifact": 1,
    "pipeline": 2,
    "preparation": 2,
    # Tools on top of the pipeline (rings 0-2). The demo's model and data need ring 1 only;
    # `onnxport demo` (commands/, ring 4) runs `execute_conversion` on them.
    "benchmark": 2,
    "predict": 2,
    "serving": 2,
    "coverage": 2,
    "demo": 2,
    "tracking": 3,
    "execution": 3,
    "orchestration": 3,
    "azureml": 3,
    "cli": 4,
    "commands": 4,
}
TORCH_FREE = ("artifact", "predict", "serving")
# Imported without torch: the passes and the gate run in a process torch never entered
# when the export ran in a child (`onnxport.preparation`); `onnxport cache` lists and prunes
# the export cache without it.
TORCH_FREE_ENTRY_POINTS = (
    "onnxport.pipeline",
    "onnxport.passes.search",
    "onnxport.verify.gate",
    "onnxport.commands.cache",
)


def _module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(f): f for f in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The onnxport modules `name` imports anywhere in its file, functions included."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{name} uses a relative import"
            targets = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


# Inside ring 1, the order of the pipeline (DESIGN.md): a package imports only the ones
# before it or beside it.
RING_1_ORDER = {"artifact": 0, "sources": 1, "export": 2, "verify": 3, "testing": 3, "passes": 4}


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else name


def _ring(name: str) -> int:
    top = _top(name)
    assert top in RINGS, f"{name} is in no ring: add it to RINGS (and to DESIGN.md)"
    return RINGS[top]


def test_every_module_imports_only_its_own_ring_and_below() -> None:
    upward = sorted(
        f"{name} (ring {_ring(name)}) imports {target} (ring {_ring(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if _ring(target) > _ring(name)
    )
    assert upward == []


def test_ring_1_imports_follow_the_pipelines_order() -> None:
    assert set(RING_1_ORDER) == {top for top, ring in RINGS.items() if ring == 1}
    backward = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if _ring(name) == _ring(target) == 1
        and RING_1_ORDER[_top(target)] > RING_1_ORDER[_top(name)]
    )
    assert backward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _modules_of(package: str) -> list[str]:
    return sorted(
        n for n in MODULES if n == f"onnxport.{package}" or n.startswith(f"onnxport.{package}.")
    )


@pytest.mark.parametrize(
    "names",
    [_modules_of(p) for p in TORCH_FREE] + [[m] for m in TORCH_FREE_ENTRY_POINTS],
    ids=[*TORCH_FREE, *TORCH_FREE_ENTRY_POINTS],
)
def test_serving_and_post_export_code_never_loads_torch(names: list[str]) -> None:
    """Checked in a fresh interpreter: a module imported earlier in this one would hide it."""
    package = names[0]
    code = "; ".join(f"import {n}" for n in names)
    code += "; import sys; heavy = ('torch', 'transformers')"
    code += "; print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", f"{package}/ loads {done.stdout.strip()[:200]}"
