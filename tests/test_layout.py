"""The code's shape, read from the source: no import cycle among the project's modules (imports inside
functions included), and no module reaching into another's private names."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("charsdk", "train", "bench", "tests")
# private names of other projects that have no public spelling (each one documented where it is used)
FOREIGN_PRIVATES = {"model.optimizer._learning_rate",
                    "last.optimizer._model_variables_moving_average"}


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def imported(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The project's modules that `name` imports, anywhere in it (`from . import x` resolved)."""
    package = name.split(".") if name in packages(known) else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            base = ".".join(p for p in (base, node.module or "") if p)
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    return {t for t in targets if t in known and t != name}


def packages(known: set[str]) -> set[str]:
    """The modules that are packages (an __init__.py): those other modules' names start with."""
    return {m for m in known if any(k.startswith(m + ".") for k in known)}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def test_no_module_imports_itself_through_others():
    trees = modules()
    graph = {name: imported(name, tree, set(trees)) for name, tree in trees.items()}
    # a module importing its own package's __init__ (which imports the modules it re-exports) is not a cycle
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    assert len(graph) > 60 and sum(map(len, graph.values())) > 100  # the walk sees the imports
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_reaches_into_another_s_private_names():
    reaches = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not own and ast.unparse(node) not in FOREIGN_PRIVATES:
                    reaches.append(f"{name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom):
                reaches += [f"{name}:{node.lineno} import {a.name}" for a in node.names
                            if private(a.name)]
    assert not reaches
