"""The architecture, checked: no import cycles in the gateway, export and service meet only in
contracts/, and the gateway never imports torch."""

from __future__ import annotations

from export.vendor import import_graph

PACKAGES = ("service", "export", "contracts", "cli")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_service_modules() -> None:
    """Every import counts, also those inside functions: a lazy import hides a cycle, not removes it."""
    graph = import_graph(["service"])
    assert len(graph) > 40  # the walk saw the package
    assert cycles(graph) == []


def test_export_and_service_share_only_the_contracts() -> None:
    graph = import_graph(PACKAGES)
    for module, imports in graph.items():
        top = module.split(".")[0]
        used = {m.split(".")[0] for m in imports} - {top}
        allowed = {"service": {"contracts"}, "export": {"contracts"}, "contracts": set(), "cli": set(PACKAGES)}
        assert used <= allowed[top], f"{module} imports {sorted(used - allowed[top])}"


def test_contracts_import_nothing_heavy() -> None:
    """contracts/ is vendored into Triton's python stub and read by the gateway: numpy and Pillow only."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "contracts"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"torch", "fastapi", "onnxruntime", "onnx", "service", "export"}, (
                    f"{path.name} imports {name}"
                )
