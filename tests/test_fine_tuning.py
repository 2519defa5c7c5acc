"""Starting a run from a trained one (`train.init_from`): fine-tuning a pretrained model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import default
from fkd_jax.errors import UserError
from fkd_jax.training import config_check, loop, restore


def _config(epochs=1, **train):
    """default.py with a small simple_cnn (fast to compile) on 64 embedded faces."""
    c = default.get_config()
    c.model.name = "simple_cnn"
    c.model.widths, c.model.hidden = (4, 8), (16,)
    c.data.synthetic_n = 64
    c.train.batch_size = 16
    c.train.epochs = epochs
    for k, v in train.items():
        c.train[k] = v
    config_check.check_config(c)
    return c


def _train(config, workdir):
    workdir.mkdir(parents=True, exist_ok=True)
    return loop.train_and_evaluate(config, workdir)


def _max_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 2-epoch run: (its directory, its last metrics record)."""
    workdir = tmp_path_factory.mktemp("pre") / "run"
    return workdir, _train(_config(epochs=2), workdir)


def test_a_run_starts_from_the_given_runs_parameters(tmp_path, pretrained):
    pretrained, _ = pretrained
    before = restore.load_run(pretrained).params
    # A learning rate too small to move anything: the run ends where it started.
    _train(_config(learning_rate=1e-12, init_from=str(pretrained)),
                            tmp_path / "tuned")
    tuned = restore.load_run(tmp_path / "tuned", "latest").params
    assert _max_difference(tuned, before) < 1e-6
    _train(_config(learning_rate=1e-12), tmp_path / "scratch")
    scratch = restore.load_run(tmp_path / "scratch", "latest").params
    assert _max_difference(scratch, before) > 1e-3  # its initialisation: 2 epochs short


def test_fine_tuning_continues_from_the_pretrained_accuracy(tmp_path, pretrained):
    pretrained, record = pretrained
    tuned = _train(_config(init_from=str(pretrained)), tmp_path / "tuned")
    scratch = _train(_config(), tmp_path / "scratch")
    assert tuned["val_rmse_px"] < scratch["val_rmse_px"]
    # Where the pretrained run ended (2 epochs), not where a fresh one starts.
    assert tuned["val_rmse_px"] < record["val_rmse_px"] + 0.5


def test_another_model_or_no_run_is_refused_before_anything_is_written(tmp_path, pretrained):
    pretrained, _ = pretrained
    wider = _config(init_from=str(pretrained))
    wider.model.widths = (8, 8)
    with pytest.raises(UserError, match=r"init_from .*its model differs"):
        _train(wider, tmp_path / "wider")
    workdir = tmp_path / "nothing"
    with pytest.raises(UserError, match=r"init_from .*not a run directory"):
        _train(_config(init_from=str(tmp_path / "missing")), workdir)
    assert not workdir.exists() or not any(workdir.iterdir())
