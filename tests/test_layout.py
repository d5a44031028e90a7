"""The floors of the repository: entry points -> evaluation -> segmentation -> models, datasets; no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

# A package may import only from the floors below it (and from itself).
FLOORS = {
    "tools": {"evaluation", "segmentation", "models", "datasets"},
    "main_eval": {"evaluation", "segmentation", "models", "datasets"},
    "evaluation": {"segmentation", "models", "datasets"},
    "segmentation": {"models", "datasets"},
    "models": set(),
    "datasets": set(),
}
PACKAGES = ("segmentation", "evaluation", "models", "datasets")


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every first-party module outside tests."""
    files = {"main_eval": REPO_ROOT / "main_eval.py"}
    for top in (*PACKAGES, "tools"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _imports(module: str, path: Path) -> set[str]:
    """First-party modules that ``module`` imports, at any depth of its code (lazy imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    first_party = {*PACKAGES, "tools", "main_eval"}
    return {name for name in found if name.split(".")[0] in first_party}


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    return {
        module: {name for name in _imports(module, path) if name in files} - {module} for module, path in files.items()
    }


def test_imports_only_go_down():
    offenders = []
    for module, imported in _graph().items():
        floor = module.split(".")[0]
        allowed = FLOORS[floor] | {floor}
        offenders += [f"{module} imports {name}" for name in imported if name.split(".")[0] not in allowed]
    assert not offenders, "imports that go up or sideways:\n" + "\n".join(sorted(offenders))


def test_no_import_circle():
    graph = _graph()
    # A package's __init__ importing its own modules is the package's face, not a circle through it.
    edges = {
        m: {n for n in targets if not (n == m.rpartition(".")[0] and m.startswith(n + "."))}
        for m, targets in graph.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_layout_checks_can_fail():
    """The checkers see an upward import and a circle when there is one (guards against a vacuous pass)."""
    assert "evaluation.loop" in _graph()["evaluation.runner"]
    assert "segmentation.label_propagation" in _graph()["segmentation.segmentor"]
    assert "evaluation" not in FLOORS["segmentation"]


def test_no_package_holds_more_than_35_percent_of_the_code():
    def lines(path: Path) -> int:
        return sum(1 for line in path.read_text().splitlines() if line.strip())

    files = [p for p in REPO_ROOT.rglob("*.py") if p.relative_to(REPO_ROOT).parts[0] not in ("tests", ".venv")]
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(REPO_ROOT).parts)]
    total = sum(lines(p) for p in files)
    for top in (*PACKAGES, "tools"):
        share = sum(lines(p) for p in files if p.relative_to(REPO_ROOT).parts[0] == top) / total
        assert share <= 0.35, f"{top}/ holds {share:.0%} of the non-test Python lines"
