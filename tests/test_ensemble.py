"""Ensembles (`train.members` > 1): members trained side by side by train.py, on one split,
restored as one run that predicts their mean (eval.py, export.py, predict.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import base
from fkd_jax.training import ensemble
from fkd_jax.training import run_dir
from fkd_jax.inference import exported
from fkd_jax.training import restore
from fkd_jax.inference import predictor
from fkd_jax.training import steps

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/base.py", "--config.data.synthetic_n=96",
        "--config.train.batch_size=16", "--config.model.name=simple_cnn",
        "--config.model.widths=(4,8,8)"]


def run(script, *args, check=True):
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ensemble") / "run"
    proc = run("train.py", *TINY, "--workdir", str(workdir), "--config.train.epochs=2",
               "--config.train.members=2", "--config.seed=1")
    return workdir, proc


def _validation(workdir):
    run_ = restore.load_run(workdir)
    data = run_dir.read_run_data(run_.config, workdir)
    run_dir.discard_run_data(data)
    return run_, data.val


def test_member_configs_are_single_runs_of_consecutive_seeds_on_the_ensembles_split():
    c = base.get_config()
    c.seed, c.train.members = 3, 2
    m0, m1 = ensemble.member_config(c, 0), ensemble.member_config(c, 1)
    assert (m0.seed, m1.seed) == (6, 7)
    assert m0.data.split_seed == m1.data.split_seed == 3  # None -> the ensemble's seed
    assert m0.train.members == m1.train.members == 1
    assert (c.seed, c.train.members, c.data.split_seed) == (3, 2, None)  # not modified
    c.data.split_seed = 0
    assert ensemble.member_config(c, 1).data.split_seed == 0
    assert ensemble.member_overrides(c, 1) == ["--config.seed=7", "--config.data.split_seed=0",
                                               "--config.train.members=1"]
    with pytest.raises(ValueError):
        ensemble.member_config(c, 2)


def test_train_py_trains_the_members_on_one_split_and_scores_their_mean(ensemble_run):
    workdir, proc = ensemble_run
    assert json.loads((workdir / "config.json").read_text())["train"]["members"] == 2
    configs = [json.loads((workdir / f"member{i}" / "config.json").read_text()) for i in (0, 1)]
    assert [c["seed"] for c in configs] == [2, 3]
    assert [c["data"]["split_seed"] for c in configs] == [1, 1]
    assert [c["train"]["members"] for c in configs] == [1, 1]
    splits = [(workdir / f"member{i}" / "split.json").read_text() for i in (0, 1)]
    assert splits[0] == splits[1]
    assert run_dir.split_path(workdir) == workdir / "member0" / "split.json"
    for i in (0, 1):
        assert len((workdir / f"member{i}" / "metrics.jsonl").read_text().splitlines()) == 2
        assert "epoch   2/2" in (workdir / f"member{i}.log").read_text()

    # The restored ensemble predicts the mean of its members' predictions.
    run_, val = _validation(workdir)
    assert run_.members == 2 and len(run_.params) == 2
    mean = predictor.Predictor.from_run(run_)(val.images)
    alone = [predictor.Predictor.from_run(restore.load_run(workdir / f"member{i}"))(val.images)
             for i in (0, 1)]
    assert np.abs(alone[0] - alone[1]).max() > 0.1  # two different models
    np.testing.assert_allclose(mean, (alone[0] + alone[1]) / 2, atol=1e-3)
    scores = json.loads((workdir / "ensemble_metrics.json").read_text())
    rmse = steps.rmse_report(mean, val.keypoints, val.mask, val.keypoint_set)["rmse_px"]
    assert scores["val_rmse_px"] == pytest.approx(rmse, abs=1e-4)
    assert len(scores["members_val_rmse_px"]) == 2 and scores["members_best_epoch"] == [2, 2]
    assert "ensemble of 2: val_rmse" in proc.stdout


def test_eval_and_export_use_the_ensembles_mean(ensemble_run, tmp_path):
    workdir, _ = ensemble_run
    scores = json.loads((workdir / "ensemble_metrics.json").read_text())
    run("eval.py", "--workdir", str(workdir), "--out", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["rmse_px"] == pytest.approx(scores["val_rmse_px"], abs=1e-4)
    assert report["checkpoint_epoch"] == [2, 2]

    model = tmp_path / "model.jaxexport"
    run("export.py", "--workdir", str(workdir), "--out", str(model))
    run_, val = _validation(workdir)
    np.testing.assert_allclose(exported.load_predictor(model)(val.images),
                               predictor.Predictor.from_run(run_)(val.images), atol=1e-3)


def test_a_failing_member_stops_the_ensemble_naming_it_and_its_log(tmp_path):
    workdir = tmp_path / "run"
    proc = run("train.py", *TINY, "--workdir", str(workdir), "--config.train.epochs=2",
               "--config.train.members=2", "--config.train.learning_rate=1e6", check=False)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)  # a member's non-finite loss
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: member0 exit 3: error: training loss became")
    assert str(workdir / "member0.log") in line
    assert not (workdir / "ensemble_metrics.json").exists()


def test_ensembles_refuse_options_that_cannot_work(tmp_path):
    proc = run("train.py", *TINY, "--workdir", str(tmp_path / "a"), "--config.train.members=2",
               "--num_processes=2", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--num_processes" in proc.stderr.strip().splitlines()[-1]
    proc = run("scripts/seeds.py", *TINY, "--workdir", str(tmp_path / "b"),
               "--config.train.members=2", "--seeds=0,1", "--jobs=2", check=False)
    assert proc.returncode == 2 and "--jobs=2" in proc.stderr.strip().splitlines()[-1]
    proc = run("train.py", *TINY, "--workdir", str(tmp_path / "c"), "--config.train.members=0",
               check=False)
    assert proc.returncode == 2 and "train.members" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
