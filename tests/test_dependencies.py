"""Every third-party package the repository imports is declared in pyproject.toml: the library,
entry points, configs, scripts and benchmarks in `dependencies`; the tests and the notebooks
(run in a Jupyter kernel, which the `test` extra installs) there or in the `test` extra. An undeclared import works only while something else happens to pull
the package in (absl-py came with ml-collections), and breaks when that changes."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".venv", ".torch-venv", ".peers", ".git", "runs", "__pycache__"}
# Imported on purpose without being a dependency, and why.
NOT_DEPENDENCIES = {
    "torch": "benchmarks/torch_reference.py runs in its own venv (benchmarks/setup_torch.sh)",
    "dlib": "benchmarks/peer_landmarks.py runs in a peer's venv (benchmarks/setup_peers.sh)",
    "mediapipe": "benchmarks/peer_landmarks.py runs in a peer's venv (benchmarks/setup_peers.sh)",
}


def normalise(name: str) -> str:
    """PEP 503 name: ml_collections and ML-Collections are ml-collections."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """(core dependencies, those plus every extra's), normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {normalise(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}

    core = names(project["dependencies"])
    extras = set().union(*map(names, project.get("optional-dependencies", {}).values()))
    return core, core | extras


def sources() -> list[tuple[Path, str]]:
    """(file, python source) of every .py file and of the notebooks' code cells."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
            out.append((path, path.read_text()))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        # IPython's magics (%...) and shell lines (!...) are not python.
        out.append((path, "\n".join(line for cell in code for line in cell.splitlines()
                                    if not line.lstrip().startswith(("%", "!")))))
    return out


def top_level_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def is_local(name: str, importer: Path) -> bool:
    """A package or module of this repository: at its root or beside the importing file."""
    return any((folder / name).is_dir() or (folder / f"{name}.py").is_file()
               for folder in (ROOT, importer.parent))


def undeclared() -> list[str]:
    core, everything = declared()
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for path, source in sources():
        in_test_env = path.relative_to(ROOT).parts[0] in ("tests", "notebooks")
        allowed = everything if in_test_env else core
        for name in sorted(top_level_imports(source)):
            if (name in sys.stdlib_module_names or name in NOT_DEPENDENCIES
                    or is_local(name, path)):
                continue
            provided_by = {normalise(d) for d in distributions.get(name, [])}
            if not provided_by & allowed:
                where = "the test extra or dependencies" if in_test_env else "dependencies"
                problems.append(f"{path.relative_to(ROOT)}: import {name} (distribution "
                                f"{', '.join(sorted(provided_by)) or 'unknown'}) is not in "
                                f"pyproject.toml's {where}")
    return problems


def test_every_third_party_import_is_declared():
    assert undeclared() == []


def test_the_check_catches_an_undeclared_import(tmp_path, monkeypatch):
    """The same check on a file importing scipy with scipy left out of the declarations."""
    core, everything = declared()
    monkeypatch.setattr(sys.modules[__name__], "declared",
                        lambda: (core - {"scipy"}, everything - {"scipy"}))
    monkeypatch.setattr(sys.modules[__name__], "sources",
                        lambda: [(ROOT / "fkd_jax" / "x.py", "from scipy import ndimage\n")])
    assert undeclared() == ["fkd_jax/x.py: import scipy (distribution scipy) is not in "
                            "pyproject.toml's dependencies"]
