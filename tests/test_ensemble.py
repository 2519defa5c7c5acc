"""Ensembles (`train.members` > 1): members trained by train.py on one split, as pinned
processes or in one process (`train.members_mode`), restored as one run that predicts their
mean (eval.py, export.py, predict.py)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import default
from fkd_jax.training import ensemble
from fkd_jax.training import run_dir
from fkd_jax.inference import exported
from fkd_jax.training import restore
from fkd_jax.inference import predictor
from fkd_jax.training import steps

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/default.py", "--config.data.synthetic_n=96",
        "--config.train.batch_size=16", "--config.model.name=simple_cnn",
        "--config.model.widths=(4,8,8)"]


def run(script, *args, check=True):
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


PAIR = [*TINY, "--config.train.epochs=2", "--config.train.members=2", "--config.seed=1"]
PROCESSES, ONE_PROCESS = ("--config.train.members_mode=processes",
                          "--config.train.members_mode=one_process")


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ensemble") / "run"
    proc = run("train.py", *PAIR, PROCESSES, "--workdir", str(workdir))
    return workdir, proc


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The same ensemble as `ensemble_run`, its members trained in one process."""
    workdir = tmp_path_factory.mktemp("one_process") / "run"
    proc = run("train.py", *PAIR, ONE_PROCESS, "--workdir", str(workdir))
    return workdir, proc


def metrics(workdir, i):
    """Member i's metrics.jsonl, without the timings (which differ from run to run)."""
    lines = (workdir / f"member{i}" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k}
            for line in lines]


def latest_states(workdir):
    """Each member's newest checkpoint: (state, meta)."""
    from fkd_jax.training import checkpoints

    out = []
    for i in (0, 1):
        _, abstract = steps.abstract_state(restore.read_run_config(workdir / f"member{i}"))
        with checkpoints.Checkpoints(workdir / f"member{i}", read_only=True) as ckpt:
            out.append(ckpt.restore_latest(abstract))
    return out


def assert_same_states(a, b):
    for (sa, ma), (sb, mb) in zip(a, b):
        assert ma == mb
        for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
            np.testing.assert_array_equal(x, y)


def _validation(workdir):
    run_ = restore.load_run(workdir)
    data = run_dir.read_run_data(run_.config, workdir)
    run_dir.discard_run_data(data)
    return run_, data.val


def test_member_configs_are_single_runs_of_consecutive_seeds_on_the_ensembles_split():
    c = default.get_config()
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
               "--config.train.members=2", "--config.train.learning_rate=1e6", PROCESSES,
               check=False)
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


# --- members in one process -----------------------------------------------------------------


def test_one_process_trains_each_member_as_its_own_process_would(ensemble_run,
                                                                  one_process_run):
    (pinned, _), (together, proc) = ensemble_run, one_process_run
    assert "for each of 2 members" in proc.stdout and "member1 epoch   2/2" in proc.stdout
    for i in (0, 1):
        a, b = metrics(pinned, i), metrics(together, i)
        assert [r["epoch"] for r in b] == [1, 2] and [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):  # one vmapped program: the same numbers up to float rounding
            for key in ("train_loss", "train_rmse_px", "val_rmse_px"):
                assert rb[key] == pytest.approx(ra[key], rel=1e-5), (i, key)
        for name in ("split.json", "run.json"):
            assert ((pinned / f"member{i}" / name).read_text()
                    == (together / f"member{i}" / name).read_text()), name
        configs = [json.loads((d / f"member{i}" / "config.json").read_text())
                   for d in (pinned, together)]
        assert [c["train"].pop("members_mode") for c in configs] == ["processes", "one_process"]
        assert configs[0] == configs[1]
    assert not (together / "member0.log").exists()
    scores = [json.loads((d / "ensemble_metrics.json").read_text()) for d in (pinned, together)]
    assert scores[1]["val_rmse_px"] == pytest.approx(scores[0]["val_rmse_px"], rel=1e-4)
    assert scores[1]["members_best_epoch"] == [2, 2]


def test_a_one_process_ensemble_restores_evaluates_and_exports(one_process_run, tmp_path):
    workdir, _ = one_process_run
    run_, val = _validation(workdir)
    assert run_.members == 2 and run_.meta["epoch"] == [2, 2]
    mean = predictor.Predictor.from_run(run_)(val.images)
    model = tmp_path / "model.jaxexport"
    run("export.py", "--workdir", str(workdir), "--out", str(model))
    np.testing.assert_allclose(exported.load_predictor(model)(val.images), mean, atol=1e-3)


def test_one_process_interrupted_then_resumed_equals_uninterrupted(one_process_run, tmp_path):
    workdir, _ = one_process_run
    resumed = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *PAIR, ONE_PROCESS, "--workdir",
                             str(resumed)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("member0 epoch"):
            proc.send_signal(signal.SIGINT)  # member1's epoch is finished and saved too
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: saved epoch 1 in ")
    assert [len(metrics(resumed, i)) for i in (0, 1)] == [1, 1]
    second = run("train.py", *PAIR, ONE_PROCESS, "--workdir", str(resumed))
    assert "member1 resuming" in second.stdout
    for i in (0, 1):
        assert metrics(resumed, i) == metrics(workdir, i)
    assert_same_states(latest_states(resumed), latest_states(workdir))


def test_a_member_behind_the_other_catches_up_alone(one_process_run, tmp_path):
    """A resume finds member1 an epoch behind (its newest checkpoint lost): only member1
    trains epoch 2 again, as it did the first time; member0 is left as it was."""
    workdir, _ = one_process_run
    behind = tmp_path / "run"
    shutil.copytree(workdir, behind)
    shutil.rmtree(behind / "member1" / "checkpoints" / "2")
    member0 = (behind / "member0" / "metrics.jsonl").read_text()
    proc = run("train.py", *PAIR, ONE_PROCESS, "--workdir", str(behind))
    assert "member1 resuming" in proc.stdout and "member0 epoch" not in proc.stdout
    assert (behind / "member0" / "metrics.jsonl").read_text() == member0
    assert metrics(behind, 1) == metrics(workdir, 1)
    assert_same_states(latest_states(behind), latest_states(workdir))


def test_a_member_in_one_process_with_a_non_finite_loss_stops_naming_it(tmp_path):
    workdir = tmp_path / "run"
    proc = run("train.py", *PAIR, ONE_PROCESS, "--workdir", str(workdir),
               "--config.train.learning_rate=1e6", check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(("error: member0: training loss became",
                            "error: member0: the parameters became non-finite")), line
    assert f"is in {workdir / 'member0'}/checkpoints" in line
    assert not (workdir / "ensemble_metrics.json").exists()
