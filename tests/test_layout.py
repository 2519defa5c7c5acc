"""The package's shape: subpackages by role, imported top-down, never in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fkd_jax"
# Layers, lowest first: a module may import its own layer and those below it, never above.
LAYERS = ["errors", "files", "geometry", "data", "models", "inference", "evaluation", "training",
          "pictures", "api", "cli"]
MAX_LINES = 460


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """fkd_jax modules that `path` imports anywhere (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fkd_jax"):
            for a in node.names:  # `from fkd_jax.x import y`: y may be a module or a name
                names.add(f"{node.module}.{a.name}")
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("fkd_jax")}
    return names


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p) & (set(modules) - {m}) for m, p in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if n == "fkd_jax" or m.startswith(n + "."):  # a package's own __init__
                continue
            assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_modules_import_only_their_own_layer_or_below():
    for m, deps in _graph().items():
        if m == "fkd_jax":  # the package's front door re-exports the API
            continue
        for d in deps:
            if d == "fkd_jax":
                continue
            assert _layer(d) <= _layer(m), f"{m} imports {d}, a layer above it ({LAYERS})"


def test_every_module_belongs_to_a_layer_and_stays_short():
    for path in PACKAGE.rglob("*.py"):
        m = _module_name(path)
        if m != "fkd_jax":
            assert m.split(".")[1] in LAYERS, f"{m}: not in a known layer {LAYERS}"
        n = len(path.read_text().splitlines())
        assert n <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)}: {n} lines > {MAX_LINES}"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    from fkd_jax import files

    path = files.write_text(tmp_path / "out" / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_text() == "x" and (path.stat().st_mode & 0o777) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temporary left
