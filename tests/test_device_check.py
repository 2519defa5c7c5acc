"""benchmarks/device_check.sh's dry run (DRY_RUN=1: CPU, a tiny net, one epoch): the GPU check
trains, predicts and reports with the current run layout, so it works the first time a GPU is lent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_checks_dry_run_trains_predicts_and_reports(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/device_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()[-3:]
    assert [line.split(":")[0] for line in lines] == ["float32", "bfloat16", "predict.py"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for dtype in ("float32", "bfloat16"):
        figures = summary[dtype]
        assert len(figures["members_images_per_s"]) == 2 and figures["images_per_s"] > 0
        assert figures["epochs"] == 1 and math.isfinite(figures["val_rmse_px"])
        assert json.loads((tmp_path / dtype / "config.json").read_text())["model"][
            "compute_dtype"] == dtype
        assert not (tmp_path / dtype / "member0.log").exists()  # members in one process
    assert summary["predict"]["photos"] == 2 and summary["predict"]["photos_per_s"] > 0
