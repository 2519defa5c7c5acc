"""benchmarks/time_to_accuracy.py: the first epoch at a target RMSE, with the images and the
wall time it took, from a run's metrics.jsonl."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

from fkd_jax.errors import UserError


@pytest.fixture(scope="module")
def tta():
    return load_benchmark("time_to_accuracy")


def _records(rmse, compile_s=(5.0, 5.0, 5.0)):
    # 100 images/s for 10 s (1000 images) an epoch, 2 s validation.
    return [{"epoch": i + 1, "val_rmse_px": v, "epoch_time_s": 10.0, "eval_time_s": 2.0,
             "images_per_s": 100.0, "compile_time_s": c}
            for i, (v, c) in enumerate(zip(rmse, compile_s))]


def test_first_epoch_at_the_target_with_images_and_wall_time(tta):
    hit = tta.time_to_target(_records([1.6, 1.34, 1.30]), "val_rmse_px", 1.35)
    assert hit["epoch"] == 2 and hit["images_seen"] == 2000
    assert hit["wall_s"] == pytest.approx(5.0 + 2 * (10.0 + 2.0))
    assert hit["images_per_s"] == pytest.approx(100.0)
    assert tta.time_to_target(_records([1.6, 1.5, 1.4]), "val_rmse_px", 1.35) is None
    # A resumed run compiled again: both compiles count.
    resumed = tta.time_to_target(_records([1.6, 1.5, 1.3], (5.0, 5.0, 7.0)), "val_rmse_px",
                                 1.35)
    assert resumed["wall_s"] == pytest.approx(5.0 + 7.0 + 3 * 12.0)


def test_runs_are_summarised_over_those_that_reached_the_target(tta, tmp_path):
    runs = [{"workdir": f"r{i}", "records": _records(v)}
            for i, v in enumerate([[1.6, 1.34, 1.3], [1.34, 1.3, 1.3], [2.0, 2.0, 2.0]])]
    s = tta.summarise(runs, "val_rmse_px", 1.35)
    assert (s["reached"], s["of"]) == (2, 3) and s["runs"]["r2"] is None
    assert s["epoch"]["mean"] == pytest.approx(1.5) and s["epoch"]["std"] == pytest.approx(0.5 ** 0.5)


def test_a_record_without_timings_is_a_one_line_error(tta, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_rmse_px": 1.0}) + "\n")
    with pytest.raises(UserError, match="epoch 1: no epoch_time_s, images_per_s"):
        tta.read_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        tta.run_dirs([str(empty)])
