"""The module graph of d3fmt, read from the source (every import, also inside functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import d3fmt

ROOT = Path(d3fmt.__file__).parent
TOOLS = ROOT.parent / "tools"
UNSAFE = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}  # never, anywhere
# The distiller's one-way chain: a module may import only modules before it.
DISTILL_CHAIN = ["presets", "settings", "assemble", "job", "subtask", "labels", "merge", "launch"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """d3fmt module -> the d3fmt modules it imports explicitly (parent packages that Python
    imports implicitly are not edges)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "d3fmt.packing" in graph["d3fmt.cli.pack"]  # imported inside pack_cmd
    assert "d3fmt.distill.launch" in graph["d3fmt.packing"]  # imported inside pack()
    assert "d3fmt.distill.merge" in graph["d3fmt.distill.launch"]


def test_no_import_cycle_in_d3fmt():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_distill_is_a_one_way_chain():
    graph = import_graph()
    chain = [f"d3fmt.distill.{m}" for m in DISTILL_CHAIN]
    for i, module in enumerate(chain):
        later = [m for m in chain[i + 1:] if m in graph[module]]
        assert later == [], f"{module} imports {later}, which come after it in the chain"


def test_only_the_cli_pack_and_the_distiller_import_the_distiller():
    graph = import_graph()
    outside = {m for m, edges in graph.items()
               if not m.startswith(("d3fmt.distill", "d3fmt.cli")) and m != "d3fmt.packing"
               and any(e.startswith("d3fmt.distill") for e in edges)}
    assert outside == set()
    assert not any(m.startswith("d3fmt.distill") for m in graph["d3fmt.device"])


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement of ``path`` names (absolute imports)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out


def test_the_format_core_is_torch_free():
    for path in (ROOT / "format").rglob("*.py"):
        assert not any(n.split(".")[0] == "torch" for n in imported_names(path)), path
    # ... also through what it imports: load the format core and its tools in a fresh interpreter
    code = ("import sys, d3fmt.format, d3fmt.format.inspect, d3fmt.format.example, d3fmt.format.budget;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_module_imports_pickle():
    paths = [*ROOT.rglob("*.py"), *TOOLS.rglob("*.py")]
    unsafe = {str(p.relative_to(ROOT.parent)): sorted(n for n in imported_names(p) if n.split(".")[0] in UNSAFE)
              for p in paths}
    assert {p: names for p, names in unsafe.items() if names} == {}


def tools_graph() -> dict[str, set[str]]:
    """tools/ script -> the tools/ scripts it imports (they import each other by bare name)."""
    scripts = {p.stem: p for p in TOOLS.glob("*.py")}
    return {name: {n.split(".")[0] for n in imported_names(path)} & set(scripts) - {name}
            for name, path in scripts.items()}


def test_no_import_cycle_in_tools():
    assert cycles(tools_graph()) == []
