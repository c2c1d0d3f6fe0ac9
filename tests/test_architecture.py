"""The package's structure, checked from its source: imports flow one way (no cycle, function-level imports
included), only optional heavy dependencies are imported inside functions, and the redesign's rules hold (no
stage-name checks in methods, no dict lookups of the parsed method options, a short runner)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cilearn"
# Imported where they are used, because they are optional extras (Ray, W&B, MLflow, TensorBoard) or slow to import
# and needed by few commands or methods (scikit-learn, its threadpoolctl, matplotlib; scipy.optimize, ~0.9 s, for
# GEM's QP only).
LAZY_ALLOWED = ("sklearn", "threadpoolctl", "matplotlib", "scipy", "ray", "wandb", "mlflow", "tensorboard",
                "torch.utils.tensorboard")


def modules() -> dict[str, tuple[ast.Module, list[str]]]:
    """Dotted module name → (syntax tree, its package as a list of names)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = package = parts[:-1]
        found[".".join(parts)] = (ast.parse(path.read_text(encoding="utf-8")), package)
    return found


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """Imports under ``if TYPE_CHECKING:`` are for annotations only and never run."""
    return {id(node) for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}


def imported(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    """The modules an import statement may load (``from a import b`` may load the module ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
        if node.level else node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    found = modules()
    graph = {}
    for name, (tree, package) in found.items():
        skip = type_checking_nodes(tree)
        graph[name] = {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       and id(node) not in skip for target in imported(node, package)
                       if target in found and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_imports_have_no_cycle():
    graph = import_graph()
    assert len(graph) > 80 and graph["cilearn.engine.runner"]  # the graph is read from the code
    assert cycles(graph) == []


def test_only_optional_heavy_dependencies_are_imported_inside_functions():
    late = []
    for name, (tree, package) in modules().items():
        skip = type_checking_nodes(tree)
        for block in ast.walk(tree):
            if isinstance(block, ast.Try):  # a version fallback: try numpy 2's name, except ImportError numpy 1's
                skip |= {id(node) for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset and id(node) not in skip:
                target = imported(node, package)[0]
                if not any(target == lazy or target.startswith(f"{lazy}.") for lazy in LAZY_ALLOWED):
                    late.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert late == []


def test_methods_declare_stages_instead_of_checking_their_names():
    for path in (PACKAGE / "methods").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "stage.name ==" not in source and "stage.name !=" not in source, path


def test_the_parsed_method_options_are_read_as_attributes():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert 'cfg.method["' not in source and "cfg.method.get(" not in source, path


def test_the_runner_only_runs():
    lines = (PACKAGE / "engine" / "runner.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"runner.py has {lines} lines: move what is not the task loop out of it"
