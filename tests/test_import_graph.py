"""The package's import graph, read from the source with `ast` (every import, also those inside
functions): no cycle, no import that runs up a floor, no private name imported from another room.

A room is a top-level module or subpackage of labo_fairseq (labo_fairseq.evaluation, .textfiles);
a floor is a set of rooms. A module may import from its own room, from a lower floor, and the
public names of another room on its own floor; never from a higher floor."""
import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

from tests.toy import REPO_ROOT

PACKAGE = "labo_fairseq"
# bottom first; "" is the package itself (labo_fairseq/__init__.py, what fairseq's --user-dir loads)
FLOORS: List[Tuple[str, Set[str]]] = [
    ("foundation", {"errors", "procs", "labo_scalars", "functional", "online_label_smoothing", "sam"}),
    ("helpers", {"arguments", "textfiles", "locks", "checkpoints", "install", "nn", "fairseq_utils"}),
    ("fairseq and Transformers adapters", {"criterions", "optim", "tasks", "hf"}),
    ("tools", {"data_prep", "evaluation", "benchmarks"}),
    ("pipeline", {"experiment"}),
    ("doors", {"cli", ""}),
]
FLOOR = {room: level for level, (_, rooms) in enumerate(FLOORS) for room in rooms}


def module_files(root: Path = REPO_ROOT / PACKAGE) -> Dict[str, Path]:
    """{dotted module name: file} of every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Dict[str, Path]) -> str:
    """The module that importing `name` runs last: `name` itself, or its longest module prefix."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str, path: Path, modules: Dict[str, Path]) -> List[Tuple[str, List[str]]]:
    """[(imported module of the package, [names imported from it])] of one module."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(_resolve(a.name, modules), []) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:len(module.split(".")) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:  # from package import module
                    out.append((submodule, []))
                else:
                    out.append((_resolve(source, modules), [alias.name]))
    return out


def import_graph() -> Dict[str, List[Tuple[str, List[str]]]]:
    modules = module_files()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _shown(room_name: str) -> str:
    return f"{PACKAGE}.{room_name}" if room_name else PACKAGE


def upward_and_private_imports(graph) -> List[str]:
    problems = []
    for module, edges in graph.items():
        for target, names in edges:
            here, there = room(module), room(target)
            if here == there or here not in FLOOR or there not in FLOOR:  # unknown: test_every_room_has_a_floor
                continue
            if FLOOR[there] > FLOOR[here]:
                problems.append(f"{module} imports {target}: up from floor {FLOORS[FLOOR[here]][0]!r} to "
                                f"{FLOORS[FLOOR[there]][0]!r}")
            private = [p for p in target.split(".")[1:] if p.startswith("_")] + [n for n in names if n.startswith("_")]
            if private:
                problems.append(f"{module} imports private {', '.join(private)} of {_shown(there)}")
    return sorted(set(problems))


def cycles(graph) -> List[List[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or any(t == node for t, _ in graph.get(node, [])):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_of_every_kind():
    """The reader finds absolute, from-package, relative and in-function imports (else the
    checks below would pass on an empty graph)."""
    graph = import_graph()
    targets = {module: {t for t, _ in edges} for module, edges in graph.items()}
    assert "labo_fairseq.experiment" in targets["labo_fairseq.cli"]  # inside a function
    assert "labo_fairseq.evaluation.score" in targets["labo_fairseq.evaluation.evaluate"]  # from package import module
    assert "labo_fairseq.data_prep.common" in targets["labo_fairseq.data_prep.moses"]  # relative
    assert "labo_fairseq.errors" in targets["labo_fairseq.textfiles"]
    assert sum(len(edges) for edges in graph.values()) > 100


def test_the_checks_catch_what_they_look_for():
    graph = {"labo_fairseq.textfiles": [("labo_fairseq.cli", [])],
             "labo_fairseq.optim.a": [("labo_fairseq.criterions.b", ["_helper"])],
             "labo_fairseq.evaluation.x": [("labo_fairseq.evaluation.y", [])],
             "labo_fairseq.evaluation.y": [("labo_fairseq.evaluation.x", [])]}
    assert upward_and_private_imports(graph) == [
        "labo_fairseq.optim.a imports private _helper of labo_fairseq.criterions",
        "labo_fairseq.textfiles imports labo_fairseq.cli: up from floor 'helpers' to 'doors'"]
    assert cycles(graph) == [["labo_fairseq.evaluation.x", "labo_fairseq.evaluation.y"]]


def test_every_room_has_a_floor():
    rooms = {room(module) for module in module_files()}
    assert not rooms - set(FLOOR), f"rooms without a floor in FLOORS: {sorted(rooms - set(FLOOR))}"


def test_no_import_runs_up_a_floor_or_takes_a_private_name_from_another_room():
    problems = upward_and_private_imports(import_graph())
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "\n".join(" <-> ".join(c) for c in found)
