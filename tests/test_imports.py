"""The import graph of the tree: no circles, no imports up the layers.

Every import counts, at module level or inside a function (a lazy import still ties two modules),
except those under `if TYPE_CHECKING:` (annotations only: nothing runs them).
Layers, lowest first: pipeline, hls, gateway, deployments, then tools and cli on top."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "hls", "gateway", "deployments", "tools")
LAYER = {"pipeline": 0, "hls": 1, "gateway": 2, "deployments": 3, "tools": 4, "cli": 4}

# Circles not untied yet, each with why; a new circle fails, and so does one of these once it is gone.
# (The last, through the TensorRT engine builder's accuracy gate, went when backends came to be found by
# registry: the package that picks a backend no longer imports any backend module by name.)
KNOWN_CIRCLES: set[frozenset[str]] = set()


def modules() -> dict[str, Path]:
    out = {"cli": ROOT / "cli.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name)
                if target is not None and target != mod:
                    graph[mod].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
    return found


def test_the_graph_sees_real_imports():
    graph = import_graph()
    assert "pipeline.config" in graph["pipeline.detector"]  # a module-level import
    assert "pipeline.config_file" in graph["cli"]  # a lazy one, inside a function
    assert "pipeline.sources.base" in graph["pipeline.sources.factory"]  # a relative one
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_no_import_circles_but_the_known_ones():
    found = circles(import_graph())
    new = [sorted(c) for c in found - KNOWN_CIRCLES]
    untied = [sorted(c) for c in KNOWN_CIRCLES - found]
    assert not new, f"import circles: {new}"
    assert not untied, f"these circles are gone: take them off KNOWN_CIRCLES: {untied}"


def test_no_imports_up_the_layers():
    graph = import_graph()
    up = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]
    )
    assert not up, up


def _builds_a_key(node: ast.AST) -> bool:
    """A string starting "lookout:", or an f-string starting with `{keys.…}` (a key extended by hand)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("lookout:")
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.FormattedValue):
        head = node.values[0].value
        head = head.func if isinstance(head, ast.Call) else head
        return isinstance(head, ast.Attribute) and isinstance(head.value, ast.Name) and head.value.id == "keys"
    return False


def test_every_redis_key_comes_from_keys_py():
    """No Redis key built outside pipeline/keys.py: neither "lookout:..." nor f"{keys.something}:more"."""
    built = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:50]}"
        for mod, path in modules().items()
        if mod != "pipeline.keys" and not mod.startswith("tools")
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if _builds_a_key(node)
    ]
    assert not built, built
    assert _builds_a_key(ast.parse('f"{keys.PREFIX}:x"').body[0].value)
    assert _builds_a_key(ast.parse('f"{keys.frames(c)}:y"').body[0].value)
    assert _builds_a_key(ast.parse('"lookout:z"').body[0].value)


# ---- core and adapters in pipeline/ (docs/architecture.md) -------------------------------------------
DOC = ROOT / "docs" / "architecture.md"
IO_LIBRARIES = (
    "redis", "sqlite3", "socket", "subprocess", "http", "urllib.request", "requests", "httpx", "aiohttp",
    "ray", "starlette", "boto3", "botocore", "ffmpeg", "selenium", "gi",
)  # fmt: skip


def kinds() -> dict[str, list[str]]:
    """{"Core": [...], "Adapters": [...], "Stage services": [...]}: the modules each list of the doc names."""
    text = DOC.read_text().split("## Core and adapters in `pipeline/`", 1)[1].split("\n## ", 1)[0]
    out: dict[str, list[str]] = {}
    for item in re.split(r"\n- ", text)[1:]:
        kind = re.match(r"\*\*([^*]+)\*\*", item)
        assert kind, item
        out[kind.group(1)] = re.findall(r"`(pipeline(?:\.\w+)*)`", item)
    return out


def external_imports(path: Path) -> set[str]:
    """Dotted names of the modules outside the tree that `path` imports at run time."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {n for n in found if n.split(".")[0] not in (*PACKAGES, "cli")}


def kind_of(module: str, lists: dict[str, list[str]]) -> list[str]:
    """The lists that claim `module`: by its own name, or the nearest package named (the core's
    `pipeline.models` claims its modules but `pipeline.models.fetch`, which the adapters name)."""
    best, claim = -1, []
    for kind, names in lists.items():
        for name in names:
            if module == name or module.startswith(name + "."):
                depth = name.count(".")
                if depth > best:
                    best, claim = depth, [kind]
                elif depth == best:
                    claim.append(kind)
    return claim


def test_every_pipeline_module_is_core_adapter_or_service():
    lists = kinds()
    assert set(lists) == {"Core", "Adapters", "Stage services"}, list(lists)
    mods = [m for m in modules() if m.startswith("pipeline.")]
    unclaimed = [m for m in mods if not kind_of(m, lists)]
    twice = [(m, kind_of(m, lists)) for m in mods if len(kind_of(m, lists)) > 1]
    assert not unclaimed and not twice, (unclaimed, twice)
    assert kind_of("pipeline.models.fetch", lists) == ["Adapters"]
    assert kind_of("pipeline.models.yolo", lists) == ["Core"]


def test_the_core_reaches_no_io():
    """A core module imports no I/O library and no adapter or service, directly or through the tree."""
    lists, graph, mods = kinds(), import_graph(), modules()
    core = [m for m in mods if m.startswith("pipeline.") and kind_of(m, lists) == ["Core"]]
    assert len(core) >= 20
    bad = []
    for start in core:
        seen, todo = {start}, [start]
        while todo:
            mod = todo.pop()
            io = [
                n
                for n in external_imports(mods[mod])
                if any(n == lib or n.startswith(lib + ".") for lib in IO_LIBRARIES)
            ]
            if io:
                bad.append(f"{start} reaches {io} in {mod}")
            for nxt in graph[mod] - seen:
                if nxt.startswith("pipeline") and kind_of(nxt, lists) != ["Core"] and nxt != "pipeline":
                    bad.append(f"{start} imports {nxt} ({kind_of(nxt, lists)}) via {mod}")
                seen.add(nxt)
                todo.append(nxt)
    assert not bad, bad


def test_the_io_check_sees_io():
    """The rule above can fail: an adapter reaches Redis, and a service reaches an adapter."""
    mods, graph, lists = modules(), import_graph(), kinds()
    assert "redis" in external_imports(mods["pipeline.bus"])
    assert "sqlite3" in external_imports(mods["pipeline.history"])
    assert kind_of("pipeline.bus", lists) == ["Adapters"] and "pipeline.bus" in graph["pipeline.detector_service"]
