"""The house rules, checked from the source: imports run one way, modules and functions stay small.

A module imports satunet modules of its own layer or below, never above; no import cycles,
including imports hidden inside functions. See docs/architecture.md for the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "satunet"

# Lowest layer first. A module's layer is that of its longest matching prefix.
LAYERS: dict[str, int] = {
    "satunet.errors": 0,
    "satunet.files": 0,
    "satunet.config": 0,
    "satunet.runtime": 1,
    "satunet.models": 2,
    "satunet.data": 2,
    "satunet.metrics": 2,
    "satunet.losses": 2,
    "satunet.checkpoint": 3,
    "satunet.report": 3,
    "satunet.profile": 3,
    "satunet.speed": 3,
    "satunet.tracking": 3,
    "satunet.evaluate": 4,
    "satunet.train": 4,
    "satunet.infer": 4,
    "satunet.benchmark": 4,
    "satunet.quantize": 5,
    "satunet.deepness": 5,
    "satunet.reproduce": 5,
    "satunet.search": 5,
    "satunet.race": 5,
    "satunet.serve": 5,
    "satunet.cli": 6,
    "satunet.__main__": 6,
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int | None:
    best = None
    for prefix in LAYERS:
        if (name == prefix or name.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return LAYERS[best] if best else None


def satunet_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every satunet import, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("satunet")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("satunet"):
                found.append((node.lineno, base, [a.name for a in node.names]))
    return found


def in_type_checking_block(path: Path) -> set[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def upward_imports(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        me = module_name(path)
        mine = layer_of(me)
        if me == "satunet":
            continue  # the package facade re-exports lazily from every layer
        if mine is None:
            problems.append(f"{path}: module {me} has no layer in tests/test_layers.py LAYERS")
            continue
        typing_only = in_type_checking_block(path)
        for line, target, _ in satunet_imports(path):
            theirs = layer_of(target)
            if line in typing_only or target == "satunet":
                continue
            if theirs is not None and theirs > mine:
                problems.append(
                    f"{path}:{line}: {me} (layer {mine}) imports {target} (layer {theirs})"
                )
    return problems


def test_every_import_points_down() -> None:
    assert upward_imports(sources()) == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The check is live: a models module importing the trainer is reported."""
    bad = SRC / "models" / "_upward_probe.py"
    bad.write_text("from satunet.train import fit\n", encoding="utf-8")
    try:
        problems = upward_imports([bad])
    finally:
        bad.unlink()
    assert len(problems) == 1 and "imports satunet.train" in problems[0]


def _graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in sources()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for me, path in modules.items():
        typing_only = in_type_checking_block(path)
        for line, target, names in satunet_imports(path):
            if line in typing_only:
                continue
            # "from satunet.data import folder" names a module; else the target itself.
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            for t in targets:
                if t in modules and t != me and not me.startswith(t + ".") and t != "satunet":
                    graph[me].add(t)
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_no_private_names_across_modules() -> None:
    problems = []
    for path in sources():
        for line, target, names in satunet_imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"{path}:{line}: imports {', '.join(private)} from {target}")
    assert problems == []


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, (
        f"{path} has more than {MAX_MODULE_LINES} lines"
    )
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{path}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
