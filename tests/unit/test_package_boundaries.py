"""The import boundaries between the packages, read from the source with ``ast`` (nothing is imported).

The router and the expert share code only through ``service_base``; neither imports the other, so
each can be deployed, read and changed alone. The serving code never imports the offline tools
(training, load generation, benchmarks, engine builds), which bring heavy dependencies and no
serving value. Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Offline tools: never imported by the code that serves requests.
TOOLS = ("router_svc.training", "router_svc.loadgen", "router_svc.commands", "router_svc.cli",
         "expert_svc.bench", "expert_svc.build_engines", "benchmarks")
# Modules that are tools themselves (they may import other tools).
TOOL_MODULES = TOOLS


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import submodule` imports pkg.submodule.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def package_modules(package: str) -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted((ROOT / package).rglob("*.py"))]


def serving_modules(package: str) -> list[tuple[str, Path]]:
    return [(name, path) for name, path in package_modules(package) if not within(name, TOOL_MODULES)]


def violations(modules: list[tuple[str, Path]], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{name} imports {imported}" for name, path in modules
                  for imported in imported_modules(path) if within(imported, forbidden))


def test_the_shared_base_imports_neither_service() -> None:
    modules = package_modules("service_base")
    assert modules, "service_base has no modules"
    assert violations(modules, ("router_svc", "expert_svc", *TOOLS)) == []


def test_the_expert_never_imports_the_router() -> None:
    assert violations(package_modules("expert_svc"), ("router_svc",)) == []


def test_the_router_never_imports_the_expert() -> None:
    assert violations(package_modules("router_svc"), ("expert_svc",)) == []


@pytest.mark.parametrize("package", ["router_svc", "expert_svc"])
def test_serving_code_never_imports_training_loadgen_or_benchmarks(package: str) -> None:
    modules = serving_modules(package)
    assert len(modules) > 5
    assert violations(modules, TOOLS) == []


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    """The rules above could pass by reading nothing: the checker must find imports that exist."""
    imported = imported_modules(ROOT / "expert_svc" / "engines" / "__init__.py")
    assert "expert_svc.engines.synthetic" in imported  # relative, inside a function
    assert "expert_svc.config" in imported  # `from ..config import`
    # The train command (a tool) imports training lazily: a known import the checker must see.
    assert "router_svc.commands.train imports router_svc.training.data" in violations(
        package_modules("router_svc"), ("router_svc.training",))
