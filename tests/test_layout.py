"""The structure: no import loop among fastssl's modules (imports inside functions count), and
the kernels never import the engine."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    """Module name -> file, with kernels/ installed as fastssl.kernels."""
    out = {}
    for base, pkg in ((ROOT / "fastssl", "fastssl"), (ROOT / "kernels", "fastssl.kernels")):
        for f in base.rglob("*.py"):
            rel = f.relative_to(base).with_suffix("")
            parts = [] if rel.name == "__init__" else [rel.name]
            name = ".".join([pkg, *rel.parent.parts, *parts])
            out[name] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The fastssl modules ``name`` imports, anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = node.module or ""
            mod = f"{base}.{mod}".strip(".") if node.level else mod
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a name imported from a module: that module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) for m, p in mods.items()}


def loops(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_graph_finds_a_loop_when_there_is_one():
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert loops({"a": {"b"}, "b": set()}) == []


def test_no_import_loop_among_fastssl_modules():
    g = graph()
    assert "fastssl.config" in g and "fastssl.kernels.numba_warp" in g
    assert "fastssl.methods" in g["fastssl.config"]  # the graph sees real edges
    assert loops(g) == []


def test_the_kernels_never_import_the_engine():
    g = graph()
    for mod, deps in g.items():
        if mod.startswith("fastssl.kernels"):
            engine = {d for d in deps if not d.startswith("fastssl.kernels")}
            assert not engine, (mod, engine)
