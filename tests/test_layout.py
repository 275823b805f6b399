"""The folder tree is the data flow, and the layers hold: each package imports only those below it.

Layers, top to bottom (a package may import itself and anything in a lower layer; packages in
one layer are independent of each other):

    engine.cli
    engine.local                        laptop tools; the service path never imports them
    engine.service | engine.subscribe
    engine.evaluate | engine.sinks
    engine.decode
    engine.sources | engine.registry | engine.formats
    engine.alerts
    engine.config | engine.progress
    engine.errors

``sandbox`` may import only ``engine.errors`` and ``engine.alerts.fields`` (plain constants) of
the engine. Every import counts, the ones inside functions and under TYPE_CHECKING too, and no
two modules may import each other, directly or through others.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[list[str]] = [
    ["engine.cli"],
    ["engine.local"],
    ["engine.service", "engine.subscribe"],
    ["engine.evaluate", "engine.sinks"],
    ["engine.decode"],
    ["engine.sources", "engine.registry", "engine.formats"],
    ["engine.alerts"],
    ["engine.config", "engine.progress"],
    ["engine.errors"],
]
SANDBOX_MAY_IMPORT = ("engine.errors", "engine.alerts.fields")


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("engine", "sandbox"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every engine/sandbox module ``name`` imports, resolved to the longest known module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        for package in layer:
            if module == package or module.startswith(package + "."):
                return i
    return None


def _package_of(module: str) -> str | None:
    for layer in LAYERS:
        for package in layer:
            if module == package or module.startswith(package + "."):
                return package
    return None


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_engine_module_has_a_layer() -> None:
    """No engine module sits outside the layers (a new package must be placed in one)."""
    loose = [m for m in MODULES if m.startswith("engine.") and _layer_of(m) is None]
    assert not loose, f"place these in a layer of tests/test_layout.py: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("engine.")))
def test_engine_imports_only_lower_layers(module: str) -> None:
    """An engine module imports only its own package and lower layers (never sideways or up)."""
    mine, package = _layer_of(module), _package_of(module)
    assert mine is not None
    bad = []
    for target in sorted(GRAPH[module]):
        if target.startswith("sandbox") or target == "engine":
            continue
        other = _layer_of(target)
        if _package_of(target) == package:
            continue
        if other is None or other <= mine:
            bad.append(target)
    assert not bad, f"{module} imports {bad}, which are not below it"


def test_sandbox_imports_only_errors_and_constants() -> None:
    """The sandbox depends on no engine stage: only the error root and plain constants."""
    bad = {
        m: sorted(
            t
            for t in targets
            if t.startswith("engine") and t != "engine" and t not in SANDBOX_MAY_IMPORT
        )
        for m, targets in GRAPH.items()
        if m.startswith("sandbox")
    }
    assert not {m: t for m, t in bad.items() if t}


def test_service_path_never_imports_local_tools() -> None:
    """Nothing below the CLI imports engine.local, so a service install needs no laptop tools."""
    users = sorted(
        m
        for m, targets in GRAPH.items()
        if not m.startswith(("engine.local", "engine.cli"))
        and any(t.startswith("engine.local") for t in targets)
    )
    assert not users


def test_no_import_circles() -> None:
    """No module reaches itself through its imports (package __init__ re-exports aside)."""

    def edges(m: str) -> set[str]:
        # A package's __init__ re-exporting its own submodules is not a circle of concerns.
        return {
            t
            for t in GRAPH[m]
            if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))
            and not (MODULES.get(t) and MODULES[t].name == "__init__.py" and m.startswith(t + "."))
        }

    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t] if t in stack else [m, t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_every_package_ships_in_the_wheel() -> None:
    """pyproject lists every package directory, so an install is not missing one."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages - listed == set()
