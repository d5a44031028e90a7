"""Which tests start processes, read from the test code (tests/conftest.py marks them ``slow`` at collection).

A test starts processes when its body, a helper function or class of the tests it uses (in its module or imported
from another test module), or a fixture it requests does: ``subprocess``, ``os.fork``, ``multiprocessing``, or a
``torchrun`` command line. Processes that the package itself starts inside a test's call (the C++ kernel build, a
``git`` query for the environment record) are not the tests' own and are not counted.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# (module, attribute) pairs whose use starts processes; None: any attribute of that module
_STARTERS = {("subprocess", None), ("multiprocessing", None), ("mp", None), ("os", "fork"), ("os", "posix_spawn")}


@cache
def _modules() -> dict[str, ast.Module]:
    # this module and its test name the starters without using them
    skip = {"process_starts", "test_markers"}
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(TESTS.glob("*.py")) if p.stem not in skip}


@cache
def _definitions(module: str) -> dict[str, ast.AST]:
    """Top-level functions and classes of a test module, and the names it imports from other test modules."""
    found: dict[str, ast.AST] = {}
    for node in _modules()[module].body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, ast.ImportFrom) and node.module in _modules():
            for alias in node.names:
                found.setdefault(alias.asname or alias.name, ast.Name(id=f"{node.module}:{alias.name}"))
    return found


def _resolve(module: str, name: str) -> tuple[str, str] | None:
    """Where the test helper or fixture ``name`` used in ``module`` is defined, or None for anything else."""
    node = _definitions(module).get(name)
    if node is None:
        return ("conftest", name) if name in _definitions("conftest") and module != "conftest" else None
    if isinstance(node, ast.Name):  # imported from another test module
        other, original = node.id.split(":")
        return _resolve(other, original)
    return module, name


def _starts_directly(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name):
            if {(child.value.id, None), (child.value.id, child.attr)} & _STARTERS:
                return True
        if isinstance(child, ast.Constant) and child.value in ("torchrun", "torch.distributed.run"):
            return True
    return False


def starts_processes(module: str, name: str, seen: frozenset = frozenset()) -> bool:
    """Whether the test, helper or fixture ``name`` of ``module`` starts processes (see the module docstring)."""
    node = _definitions(module).get(name) if module in _modules() else None
    if node is None:
        return False
    if _starts_directly(node):
        return True
    used = {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}
    if isinstance(node, ast.FunctionDef):  # fixtures it requests
        used |= {arg.arg for arg in node.args.args}
    for other in sorted(used):
        where = _resolve(module, other)
        if where is not None and where != (module, name) and where not in seen:
            if starts_processes(*where, seen | {(module, name)}):
                return True
    return False


def _is_slow(marks: ast.AST | None) -> bool:
    """Whether a decorator or a ``pytestmark`` value is (or lists) ``pytest.mark.slow``."""
    return marks is not None and any(
        isinstance(n, ast.Attribute) and n.attr == "slow" and ast.unparse(n) == "pytest.mark.slow"
        for n in ast.walk(marks)
    )


def marked_tests() -> dict[tuple[str, str], bool]:
    """Every test function of the suite -> whether its code marks it slow (itself or its whole module)."""
    tests = {}
    for module, tree in _modules().items():
        if not module.startswith("test_"):
            continue
        module_marks = next(
            (
                node.value
                for node in tree.body
                if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "pytestmark"
            ),
            None,
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                tests[(module, node.name)] = _is_slow(module_marks) or any(_is_slow(d) for d in node.decorator_list)
    return tests
