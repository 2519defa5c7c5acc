"""The package's shape: modules import each other top-down, never in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fkd_jax"


def _imports(path: Path) -> set[str]:
    """fkd_jax modules that `path` imports anywhere (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "fkd_jax":
                names |= {a.name for a in node.names}
            elif node.module.startswith("fkd_jax."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fkd_jax.")}
    return names


def test_no_import_cycle_inside_the_package():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {m: _imports(PACKAGE / f"{m}.py") & modules for m in modules}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [])


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    from fkd_jax import files

    path = files.write_text(tmp_path / "out" / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_text() == "x" and (path.stat().st_mode & 0o777) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temporary left
