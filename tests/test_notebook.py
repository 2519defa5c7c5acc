"""notebooks/quickstart.ipynb runs end to end (a fresh kernel, every cell) and is committed
without outputs (they would go stale and bloat every diff)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "no code cells"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_quickstart_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's run directory goes here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "validation RMSE after 4 epochs" in text and "RMSE on 16 unseen faces" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # learning curves, predictions, the detector's scene
    assert any(name.startswith("fkd-quickstart-") for name in
               (p.name for p in tmp_path.iterdir()))
    run = next(tmp_path.glob("fkd-quickstart-*"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
