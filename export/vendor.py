"""Which of Kiln's own modules a self-contained copy needs, found by reading their imports.

The decoupled Triton model runs Kiln's engine inside Triton's python stub, whose environment
has numpy, onnxruntime and tokenizers but not Kiln (nor FastAPI or torch). Export copies the
modules it needs next to it; this walks the imports (statically, with `ast`, including imports
inside functions) from the entry modules, so the list can never fall behind a refactor.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """`service.engine.engine` -> its file under `root` (a module or a package's __init__)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path, module: str) -> set[str]:
    """Every module `path` (the file of `module`) imports, absolute, at any depth in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                prefix = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{prefix}.{base}" if base else prefix
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def import_graph(packages: Iterable[str], root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports, for every module file in those packages."""
    names = tuple(packages)
    graph: dict[str, set[str]] = {}
    for package in names:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
            module = ".".join(parts)
            graph[module] = {
                m for m in imports_of(path, module) if m.split(".")[0] in names and module_file(m, root) is not None
            }
    return graph


def closure(entries: Iterable[str], packages: Iterable[str], root: Path = ROOT) -> list[Path]:
    """The files of `entries` and of every module of `packages` they import, transitively, plus
    the `__init__.py` of each package on the way (relative to `root`, sorted)."""
    graph = import_graph(packages, root)
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(graph.get(module, ()))
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
    files = {module_file(m, root) for m in seen}
    return sorted(f.relative_to(root) for f in files if f is not None)
