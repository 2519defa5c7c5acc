"""train.py and eval.py end to end on tiny runs (subprocesses, as a user runs them)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/default.py", "--config.data.synthetic_n=96",
        "--config.train.batch_size=16", "--config.model.name=simple_cnn",
        "--config.model.widths=(4,8,8)"]  # 0.15M parameters: 8x fewer than the default


def run(script, *args, check=True, **kw):
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train(workdir, *extra, **kw):
    return run("train.py", *TINY, "--workdir", str(workdir), *extra, **kw)


def metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def latest_params(workdir):
    """The newest checkpoint's training state and metadata, restored per the run's config."""
    from fkd_jax.training import checkpoints
    from fkd_jax.training import restore
    from fkd_jax.training import steps

    _, abstract = steps.abstract_state(restore.read_run_config(Path(workdir)))
    with checkpoints.Checkpoints(workdir, read_only=True) as ckpt:
        return ckpt.restore_latest(abstract)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 3-epoch run shared by the tests that only read its outputs."""
    workdir = tmp_path_factory.mktemp("run")
    proc = train(workdir, "--config.train.epochs=3")
    return workdir, proc


def test_training_writes_metrics_config_split_and_checkpoints(trained):
    workdir, proc = trained
    records = metrics(workdir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"epoch", "step", "train_loss", "val_rmse_px"} <= set(r)
        assert any("time" in k for k in r) and any("per_s" in k for k in r)
    assert records[-1]["step"] == 3 * ((96 - 19) // 16)  # 77 training rows, batches of 16
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["model"]["name"] == "simple_cnn"
    split = json.loads((workdir / "split.json").read_text())
    assert len(split["train_row_ids"]) + len(split["val_row_ids"]) == 96
    assert "val_rmse" in proc.stdout and "img/s" in proc.stdout
    _, meta = latest_params(workdir)
    assert meta["epoch"] == 3


def test_same_command_twice_gives_identical_metrics(trained, tmp_path):
    workdir, _ = trained
    train(tmp_path / "again", "--config.train.epochs=3")
    strip = lambda rs: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}
                        for r in rs]
    assert strip(metrics(tmp_path / "again")) == strip(metrics(workdir))


def test_interrupted_then_resumed_equals_uninterrupted(trained, tmp_path):
    workdir, _ = trained
    resumed = tmp_path / "resumed"
    # Ctrl-C as soon as the first epoch is reported: the run saves and exits with 130.
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--workdir", str(resumed),
                             "--config.train.epochs=3"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and len(metrics(resumed)) < 3
    second = train(resumed, "--config.train.epochs=3")
    assert "resuming" in second.stdout
    assert metrics(resumed)[-1]["val_rmse_px"] == metrics(workdir)[-1]["val_rmse_px"]
    a, _ = latest_params(workdir)
    b, _ = latest_params(resumed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_restore_into_another_architecture_fails_clearly(trained):
    workdir, _ = trained
    proc = train(workdir, "--config.train.epochs=4", "--config.model.name=nouri", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "does not match the configured model" in line and "checkpoints" in line


def test_eval_writes_metrics_and_figures(trained, tmp_path, training_csv):
    workdir, _ = trained
    out = tmp_path / "eval"
    proc = run("eval.py", "--workdir", str(workdir), "--out", str(out))
    report = json.loads((out / "metrics.json").read_text())
    assert report["rmse_px"] > 0 and report["checkpoint"] == "best"
    assert 0 < report["nme"] < 10 and report["nme_faces"] > 0  # synthetic faces are complete
    assert {"left_eye_center", "nose_tip", "group/mouth"} <= set(report)
    for png in ("predictions.png", "worst.png", "learning_curves.png", "per_keypoint_rmse.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "overall" in proc.stdout
    # any Kaggle-format file, masked where labels are missing
    run("eval.py", "--workdir", str(workdir), "--out", str(tmp_path / "eval2"),
        "--data", str(training_csv), "--tta")
    report2 = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert report2["n_images"] == 6 and report2["tta"] is True


def test_eval_writes_a_kaggle_submission(trained, tmp_path, test_csv, lookup_csv):
    workdir, _ = trained
    out = tmp_path / "sub"
    run("eval.py", "--workdir", str(workdir), "--out", str(out), "--test", str(test_csv),
        "--lookup", str(lookup_csv))
    import pandas as pd

    sub = pd.read_csv(out / "submission.csv")
    lookup = pd.read_csv(lookup_csv)
    assert list(sub.columns) == ["RowId", "Location"]
    assert sub["RowId"].tolist() == lookup["RowId"].tolist()
    assert sub["Location"].between(0, 96).all()


def test_eval_predicts_on_image_files_and_same_names_do_not_collide(trained, tmp_path):
    from PIL import Image

    workdir, _ = trained
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "face.png", tmp_path / "b" / "face.png"
    Image.new("RGB", (200, 120), (120, 90, 60)).save(first)
    Image.new("RGB", (80, 160), (20, 190, 60)).save(second)
    out = tmp_path / "imgs"
    run("eval.py", "--workdir", str(workdir), "--out", str(out), "--images",
        f"{first},{second}")
    a = json.loads((out / "images" / "a" / "face.png.json").read_text())
    b = json.loads((out / "images" / "b" / "face.png.json").read_text())
    assert (a["width"], a["height"], b["width"], b["height"]) == (200, 120, 80, 160)
    assert a["file"] == str(first) and b["file"] == str(second)
    assert len(a["keypoints"]) == 15
    xs = [p[0] for p in a["keypoints"].values()]
    assert all(-40 <= x <= 240 for x in xs)
    for sub in ("a", "b"):
        assert (out / "images" / sub / "face.png_keypoints.png").stat().st_size > 1000


def test_relative_workdir_trains(tmp_path):
    """The README's command uses a relative run directory (runs/<config>); orbax needs absolute
    paths, so this must work from any current directory."""
    args = [sys.executable, str(ROOT / "train.py"), *TINY[:1], str(ROOT / TINY[1]), *TINY[2:],
            "--workdir", "rel/run", "--config.train.epochs=1"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rel/run/checkpoints/1").is_dir()
    assert len(metrics(tmp_path / "rel/run")) == 1


def test_a_config_key_given_twice_takes_its_last_value_tuples_included(tmp_path):
    """TINY sets widths (4, 8, 8) and batch 16; ml_collections alone would build (4, 8, 8, 8, 8).
    The second override is given in the two-word form, `--config.key value`."""
    train(tmp_path, "--config.model.widths", "(8,8)", "--config.train.batch_size=8",
          "--config.train.epochs=1")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["widths"] == [8, 8] and config["train"]["batch_size"] == 8


def test_a_config_file_without_get_config_is_named_in_one_line(tmp_path):
    config = tmp_path / "no_getter.py"
    config.write_text("EPOCHS = 3\n")
    proc = run("train.py", "--config", str(config), "--workdir", str(tmp_path / "run"),
               check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and "no get_config()" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("run_file, found", [(None, 1), ('{"run_format": 99}', 99)])
def test_a_run_directory_of_another_version_is_refused_in_one_line(trained, tmp_path, run_file,
                                                                    found):
    """eval.py and a resume (train.py) read only the run format this version writes."""
    import shutil

    workdir, _ = trained
    other = tmp_path / "x"
    shutil.copytree(workdir, other)
    if run_file is None:
        (other / "run.json").unlink()  # as written before run.json existed
    else:
        (other / "run.json").write_text(run_file)
    expected = (f"error: {other}: written by another version of fkd-jax (run format {found}; "
                "this version reads 2): train it again")
    before = sorted(p.name for p in other.iterdir())
    for proc in (run("eval.py", "--workdir", str(other), "--out", str(tmp_path / "eval"),
                     check=False),
                 train(other, "--config.train.epochs=4", check=False)):
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [expected], proc.stderr
    assert sorted(p.name for p in other.iterdir()) == before
    assert not (tmp_path / "eval").exists() and len(metrics(other)) == 3
