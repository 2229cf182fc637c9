"""What the tree promises: a small core with no import cycles, no model stack and no Docker inside it."""

from __future__ import annotations

import ast
from pathlib import Path

import being_core

CORE = Path(being_core.__file__).parent
HEAVY = {"torch", "mediapipe", "onnxruntime", "transformers", "librosa", "cv2", "docker", "gsplat", "PIL"}


def runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(core modules imported at run time anywhere in ``path``, top-level third-party packages imported)."""
    internal, external = set(), set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                internal |= {(n or "__init__").split(".")[0] for n in names}
                if node.module is None and "__version__" in [a.name for a in node.names]:
                    internal.add("__init__")
            elif node.module:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external |= {a.name.split(".")[0] for a in node.names}
    modules = {p.stem for p in CORE.glob("*.py")}
    return {m for m in internal if m in modules}, external


def test_the_core_imports_no_model_stack_and_no_docker():
    for path in sorted(CORE.glob("*.py")):
        _, external = imports(path)
        assert not external & HEAVY, f"{path.name} imports {sorted(external & HEAVY)}"


def test_the_core_has_no_import_cycles():
    graph = {path.stem: imports(path)[0] - {path.stem} for path in CORE.glob("*.py")}
    graph["__init__"].discard("__version__")
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        assert module not in trail, "import cycle: " + " -> ".join([*trail[trail.index(module):], module])
        if module in done:
            return
        for other in sorted(graph.get(module, ())):
            visit(other, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
