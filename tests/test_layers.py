"""The package reads as layers that only look down (the README's map): every import of a module of ours,
at the top of a file or inside a function, names a module of its own layer or of one below, and no
two modules import each other, even through others."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reproduce"
LAYERS = [
    ("foundations", ["progress", "stats", "devices", "data", "loader", "models", "losses", "attacks"]),
    ("store", ["store"]),
    ("experiments", ["config", "protocol", "defenses", "training", "evaluation"]),
    ("reports", ["report", "tables", "claims", "figures", "curves", "geometry", "masking", "indicators",
                 "audits", "controls", "abcl", "compare"]),
    ("run context and export", ["context", "export"]),
    ("face", ["cli", "runner", "executors", "plan", "bench", "colab", "__main__", "__init__"]),
]
RANK = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def imports() -> dict:
    found = {}
    for path in PACKAGE.glob("*.py"):
        found[path.stem] = {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    return found


def test_every_module_has_a_layer():
    assert set(imports()) == set(RANK), "add the new module to LAYERS here and to the README's map"


def test_imports_only_look_down():
    upward = [f"{m} ({LAYERS[RANK[m]][0]}) imports {d} ({LAYERS[RANK[d]][0]})"
              for m, deps in imports().items() for d in deps if RANK[d] > RANK[m]]
    assert not upward, upward


def test_no_import_cycles():
    graph = imports()

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph[start])

    assert not [(a, b) for a in graph for b in graph[a] if reaches(b, a, {b})]
