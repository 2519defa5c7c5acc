"""Accuracy tooling: parameter averaging (EMA/SWA), coordinate losses, split_seed, seeds.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from fkd_jax.data import preparation
from fkd_jax.training import config_check
from fkd_jax.training import run_dir
from fkd_jax.geometry import keypoints
from fkd_jax.training import steps
from fkd_jax.errors import UserError
from conftest import normal

ROOT = Path(__file__).resolve().parents[1]


def _config(**train):
    """default.py with a small simple_cnn (fast to compile) on 64 embedded faces."""
    c = default.get_config()
    c.model.name = "simple_cnn"
    c.model.widths, c.model.hidden = (4, 8), (16,)
    c.data.synthetic_n = 64
    c.train.batch_size = 16
    for k, v in train.items():
        c.train[k] = v
    return c


def _blob_data(n, seed=0):
    """Images with one bright blob; every keypoint sits at a fixed offset from it; half the
    rows carry only 2 keypoints."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(30, 66, size=(n, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:96, 0:96] + 0.5
    d2 = (xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2
    images = np.exp(-d2 / 40.0)[..., None].astype(np.float32)
    kp = (centre[:, None, :] + rng.uniform(-20, 20, size=(15, 2))[None]).reshape(n, 30)
    mask = np.ones((n, 30), bool)
    mask[: n // 2, 4:] = False
    return {"images": images, "keypoints": kp.astype(np.float32), "mask": mask}


def _train(epochs, averaging=None, loss_fn=steps.masked_loss, n=48):
    c = _config()
    tx = steps.make_optimizer(c.train, n // 16)
    graphdef, state = steps.init_state(c.model, tx, 0, averaging=averaging)
    epoch_fn = steps.make_train_epoch(graphdef, tx, 16, None, seed=0, loss_fn=loss_fn,
                                         averaging=averaging)
    data = jax.device_put(_blob_data(n))
    losses = []
    for e in range(1, epochs + 1):
        state, m = epoch_fn(state, data, steps.epoch_shuffle_key(0, e))
        losses.append(float(m["train_loss"]))
    return state, losses


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- averaging ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_run():
    """Two epochs without averaging, with the default loss."""
    return _train(2)


def test_ema_with_decay_zero_is_exactly_the_raw_params_and_averaging_leaves_training_alone(
        plain_run):
    plain, losses = plain_run
    zero, losses0 = _train(2, steps.Averaging("ema", decay=0.0))
    _assert_trees_equal(zero["avg_params"], zero["params"])
    _assert_trees_equal(zero["params"], plain["params"])
    ema, losses9 = _train(2, steps.Averaging("ema", decay=0.9))
    _assert_trees_equal(ema["params"], plain["params"])  # the average never feeds back
    assert losses == losses0 == losses9
    diff = max(float(jnp.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(ema["avg_params"]), jax.tree.leaves(ema["params"])))
    assert diff > 0  # decay 0.9 does average


def test_ema_update_is_optax_debiased_ema_of_the_parameter_sequence():
    rng = np.random.default_rng(0)
    seq = [{"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4)
            .astype(np.float32)} for _ in range(12)]
    decay = 0.8
    avg = steps.Averaging("ema", decay=decay)
    ours = jax.tree.map(np.zeros_like, seq[0])  # any start: the first update replaces it
    ema = optax.ema(decay, debias=True)
    ema_state = ema.init(seq[0])
    for t, p in enumerate(seq, start=1):
        ours = avg.update(ours, p, jnp.int32(t))
        reference, ema_state = ema.update(p, ema_state)
        for key in p:
            np.testing.assert_allclose(ours[key], reference[key], rtol=2e-5, atol=1e-6)
            weights = (1 - decay) * decay ** np.arange(t - 1, -1, -1)  # p_1 ... p_t
            formula = sum(w * q[key].astype(np.float64) for w, q in zip(weights, seq[:t]))
            np.testing.assert_allclose(ours[key], formula / (1 - decay**t), rtol=2e-5, atol=1e-6)


def test_swa_is_the_raw_params_then_their_plain_mean_from_its_start():
    rng = np.random.default_rng(1)
    seq = [rng.normal(size=5).astype(np.float32) for _ in range(9)]
    avg = steps.Averaging("swa", start_step=4)
    cur = np.zeros(5, np.float32)
    for t, p in enumerate(seq, start=1):
        cur = np.asarray(avg.update(cur, p, jnp.int32(t)))
        if t <= 4:
            np.testing.assert_array_equal(cur, p)
        else:
            np.testing.assert_allclose(cur, np.mean(seq[4:t], axis=0), rtol=1e-5, atol=1e-6)
    c = _config(swa_start_epoch=3)
    assert steps.make_averaging(c.train, 10) == steps.Averaging("swa", start_step=20)
    assert steps.make_averaging(_config().train, 10) is None


def _train_run(workdir, epochs, **train):
    from fkd_jax.training import loop

    c = _config(epochs=epochs, **train)
    config_check.check_config(c)
    return loop.train_and_evaluate(c, workdir)


def _latest_state(workdir, config):
    from fkd_jax.training import checkpoints

    _, abstract = steps.abstract_state(config)
    with checkpoints.Checkpoints(workdir, read_only=True) as ckpt:
        return ckpt.restore_latest(abstract)


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory):
    """A 2-epoch EMA run straight through, and the same run as if killed after its epoch-1
    checkpoint (epoch 2's checkpoint and metrics line removed), then resumed."""
    import shutil

    straight = tmp_path_factory.mktemp("straight")
    _train_run(straight, 2, ema_decay=0.5)
    resumed = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")
    run_dir.truncate_metrics(resumed, 1)
    _train_run(resumed, 2, ema_decay=0.5)
    assert len(run_dir.read_metrics(resumed)) == 2
    return straight, resumed


def test_ema_state_survives_checkpoint_and_resume_bit_identically(ema_runs):
    straight, resumed = ema_runs
    config = _config(epochs=2, ema_decay=0.5)
    a, meta_a = _latest_state(straight, config)
    b, meta_b = _latest_state(resumed, config)
    assert set(a) == {"params", "opt_state", "step", "avg_params"}
    assert meta_a["epoch"] == meta_b["epoch"] == 2
    _assert_trees_equal(a, b)
    ma, mb = run_dir.read_metrics(straight), run_dir.read_metrics(resumed)
    assert [r["val_rmse_px_ema"] for r in ma] == [r["val_rmse_px_ema"] for r in mb]
    assert [r["val_rmse_px"] for r in ma] == [r["val_rmse_px"] for r in mb]
    assert ma[0]["val_rmse_px_ema"] != ma[0]["val_rmse_px"]


def test_run_with_ema_ranks_and_restores_the_averaged_parameters(ema_runs):
    from fkd_jax.training import checkpoints
    from fkd_jax.training import restore

    straight, _ = ema_runs
    records = run_dir.read_metrics(straight)
    run = restore.load_run(straight, "best")
    best = int(np.argmin([r["val_rmse_px_ema"] for r in records])) + 1
    assert run.meta["epoch"] == best
    assert run.meta["best"]["val_rmse_px"] == records[best - 1]["val_rmse_px_ema"]
    _, abstract = steps.abstract_state(run.config)
    with checkpoints.Checkpoints(straight, read_only=True) as ckpt:
        state, _ = ckpt.restore_best(abstract)
    _assert_trees_equal(run.params, state["avg_params"])


# --- losses -------------------------------------------------------------------------------------


def _pred_and_targets():
    pred = normal(0, (4, 30), 0.2)
    kp = np.asarray(keypoints.to_pixels(normal(1, (4, 30), 0.2)), np.float32)
    mask = np.ones((4, 30), bool)
    mask[:, 10:] = False
    garbage = kp.copy()
    garbage[:, 10:] = np.nan  # what sits where a label is missing must not matter
    return pred, kp, garbage, mask


@pytest.mark.parametrize("kind", steps.LOSSES)
def test_every_loss_is_masked_with_zero_gradient_where_unlabelled(kind):
    pred, kp, garbage, mask = _pred_and_targets()
    c = _config(loss=kind)
    loss_fn = steps.make_loss(c.train)
    loss = lambda p, k: loss_fn(p, k, mask, 96)[0]  # noqa: E731
    assert float(loss(pred, kp)) == float(loss(pred, garbage)) and np.isfinite(float(loss(pred, kp)))
    g = np.asarray(jax.grad(loss)(pred, garbage))
    assert np.all(g[:, 10:] == 0.0) and np.all(np.isfinite(g))
    assert np.all(g[:, :10] != 0.0)
    # the reported squared-error sum (for the train RMSE in pixels) is the same for every loss
    _, se_sum, count = loss_fn(pred, garbage, mask, 96)
    _, se_mse, count_mse = steps.masked_loss(pred, garbage, mask, 96)
    assert float(se_sum) == float(se_mse) and int(count) == int(count_mse) == 40


def test_mse_is_unchanged_and_the_default(plain_run):
    pred, _, garbage, mask = _pred_and_targets()
    assert steps.make_loss(_config().train) is steps.masked_loss
    assert steps.make_loss(ml_collections.ConfigDict({"epochs": 1}).lock()) \
        is steps.masked_loss  # a config from before train.loss existed
    target = keypoints.to_normalised(garbage, 96)
    se_sum = (jnp.where(mask, pred - target, 0.0) ** 2).sum()  # the formula before losses
    loss, se, count = steps.masked_loss(pred, garbage, mask, 96)
    assert float(loss) == float(se_sum / jnp.maximum(mask.sum(), 1)) and float(se) == float(se_sum)
    # training with the configured "mse" is training with no loss argument, bit for bit
    explicit = steps.make_loss(_config(loss="mse").train)
    state, losses = _train(2, loss_fn=explicit)
    _assert_trees_equal(state, plain_run[0])
    assert losses == plain_run[1]


def test_l1_and_wing_follow_their_formulas_in_pixels():
    pred, kp, _, mask = _pred_and_targets()
    err_px = np.abs(np.asarray(keypoints.to_pixels(np.asarray(pred))) - kp)[mask]
    half = 48.0
    l1 = steps.make_loss(_config(loss="l1").train)(pred, kp, mask, 96)[0]
    np.testing.assert_allclose(float(l1), err_px.mean() / half, rtol=1e-5)
    w, eps = 3.0, 0.5  # small w so that both regions occur among these errors
    assert (err_px < w).any() and (err_px >= w).any()
    c = w - w * np.log(1 + w / eps)
    wing_px = np.where(err_px < w, w * np.log(1 + err_px / eps), err_px - c)
    fn = steps.make_loss(_config(loss="wing", wing_w=w, wing_epsilon=eps).train)
    np.testing.assert_allclose(float(fn(pred, kp, mask, 96)[0]), wing_px.mean() / half, rtol=1e-5)
    # continuous where the log part meets the linear part; slopes w / (eps + |x|), then 1
    x = jnp.array([w - 1e-3, w + 1e-3]) / half
    per = lambda d: steps.coordinate_loss(d, "wing", 96, w, eps)  # noqa: E731
    v, s = per(x), jax.vmap(jax.grad(per))(x)
    assert abs(float(v[1] - v[0])) < 2e-3 / half * 1.01  # slope <= 1 on both sides
    np.testing.assert_allclose(np.asarray(s), [w / (eps + w - 1e-3), 1.0], rtol=1e-4)


def test_a_non_mse_loss_trains():
    wing = steps.make_loss(_config(loss="wing").train)
    _, losses = _train(4, loss_fn=wing)
    assert losses[-1] < losses[0]


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("train, message", [
    ({"loss": "huber"}, "--config.train.loss='huber' must be one of mse, l1, wing"),
    ({"ema_decay": 1.0}, r"--config.train.ema_decay=1.0 must be in \[0, 1\)"),
    ({"wing_w": 0.0}, "--config.train.wing_w=0.0 must be > 0"),
    ({"swa_start_epoch": 31}, "--config.train.swa_start_epoch=31 must be at most"),
    ({"ema_decay": 0.99, "swa_start_epoch": 5}, "both average the parameters"),
])
def test_bad_accuracy_options_name_the_option(train, message):
    with pytest.raises(UserError, match=message):
        config_check.check_config(_config(**train))


def test_split_seed_is_checked():
    c = _config()
    c.data.split_seed = -1
    with pytest.raises(UserError, match="--config.data.split_seed=-1 must be >= 0"):
        config_check.check_config(c)


def _val_rows(tmp_path, seed, split_seed):

    c = _config()
    c.seed, c.data.split_seed = seed, split_seed
    workdir = tmp_path / f"s{seed}-{split_seed}"
    workdir.mkdir()
    rd = run_dir.read_run_data(c, workdir)
    run_dir.discard_run_data(rd)
    n = len(rd.train) + len(rd.val)
    _, val_idx = preparation.split_indices(n, c.data.val_fraction, seed)
    return rd.val.row_ids, val_idx


def test_split_seed_holds_the_split_fixed_across_seeds(tmp_path):
    fixed = [_val_rows(tmp_path, s, 0)[0] for s in (0, 1, 2)]
    for rows in fixed[1:]:
        np.testing.assert_array_equal(rows, fixed[0])
    # None: the split follows `seed`, as before the key existed
    own0, expected0 = _val_rows(tmp_path, 0, None)
    own1, expected1 = _val_rows(tmp_path, 1, None)
    np.testing.assert_array_equal(own0, expected0)  # synthetic row ids are 0..n-1
    np.testing.assert_array_equal(own1, expected1)
    assert not np.array_equal(own0, own1)


# --- seeds.py -----------------------------------------------------------------------------------


def _seeds_cmd(workdir):
    return [sys.executable, "scripts/seeds.py", "--config", "configs/default.py", "--seeds", "3,5",
            "--workdir", str(workdir), "--config.data.synthetic_n=64",
            "--config.train.batch_size=16", "--config.train.epochs=2",
            "--config.model.widths=(4,8)", "--config.model.hidden=(16,)",
            "--config.train.ema_decay=0.5"]


def _seeds(workdir, *extra):
    return subprocess.run(_seeds_cmd(workdir) + list(extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_seeds_trains_each_seed_aggregates_and_skips_finished_seeds(tmp_path):
    # --jobs 2: the two seeds train side by side, a worker process pinned to a core each
    workdir = tmp_path / "seeds"
    if len(os.sched_getaffinity(0)) < 2:  # nothing to split: refused before anything is written
        proc = _seeds(workdir, "--jobs=2")
        assert proc.returncode == 2 and "--jobs=2 must be between 1 and the 1 CPU" in proc.stderr
        assert not workdir.exists()
        jobs = 1
    else:
        jobs = 2
    proc = _seeds(workdir, f"--jobs={jobs}")
    assert proc.returncode == 0, proc.stderr
    if jobs == 2:
        assert "seeds 3: training on core(s)" in proc.stdout and "seeds 5: training" in proc.stdout
        assert (workdir / "log_seeds_3.txt").exists() and (workdir / "log_seeds_5.txt").exists()
    summary = json.loads((workdir / "summary.json").read_text())
    rows = summary["seeds"]
    assert [r["seed"] for r in rows] == [3, 5] and summary["n_seeds"] == 2
    assert summary["jobs"] == jobs
    assert summary["split_seed"] == 0 and summary["same_split"] is True
    splits = [json.loads((workdir / f"seed{k}" / "split.json").read_text()) for k in (3, 5)]
    assert splits[0] == splits[1]
    for r, k in zip(rows, (3, 5)):
        records = run_dir.read_metrics(workdir / f"seed{k}")
        assert len(records) == 2 and json.loads(
            (workdir / f"seed{k}" / "config.json").read_text())["seed"] == k
        assert r["val_rmse_px_best"] == min(x["val_rmse_px"] for x in records)
        assert r["val_rmse_px_last"] == records[-1]["val_rmse_px"]
        assert r["val_rmse_px_ema_best"] == min(x["val_rmse_px_ema"] for x in records)
        # the TTA figure is of the best checkpoint: ranked by, and restored as, the EMA params
        assert r["best_checkpoint_rmse_px"] == pytest.approx(
            records[r["best_epoch"] - 1]["val_rmse_px_ema"], abs=1e-9)
        assert r["tta_rmse_px"] > 0 and r["wall_s"] > 0 and r["images_per_s"] > 0
    assert rows[0]["val_rmse_px_best"] != rows[1]["val_rmse_px_best"]  # the seeds differ
    for key in ("val_rmse_px_best", "val_rmse_px_last", "val_rmse_px_ema_best",
                "val_rmse_px_ema_last", "tta_rmse_px", "wall_s", "images_per_s"):
        values = np.array([r[key] for r in rows])
        assert summary["mean"][key] == pytest.approx(values.mean(), rel=1e-12)
        assert summary["std"][key] == pytest.approx(values.std(ddof=1), rel=1e-12)
    table = (workdir / "summary.md").read_text()
    assert "mean ± std (n=2)" in table and f"{summary['mean']['tta_rmse_px']:.3f} ± " in table
    assert table in proc.stdout

    stamps = {k: (workdir / f"seed{k}" / "seed_result.json").stat().st_mtime_ns for k in (3, 5)}
    again = _seeds(workdir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped") == 2 and "training in" not in again.stdout
    assert {k: (workdir / f"seed{k}" / "seed_result.json").stat().st_mtime_ns
            for k in (3, 5)} == stamps
    assert json.loads((workdir / "summary.json").read_text())["seeds"] == rows
    # the same directory with another config is refused, before anything is trained
    changed = _seeds(workdir, "--config.train.epochs=3")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "different config (train.epochs: 2 there, 3 now)" in changed.stderr

    # seed 3 alone in this process (--jobs 1) is the same run as its worker's above, up to
    # float rounding (one XLA thread per worker changes the order of some sums)
    alone = _seeds(tmp_path / "alone", "--seeds=3")
    assert alone.returncode == 0, alone.stderr
    (single,) = json.loads((tmp_path / "alone" / "summary.json").read_text())["seeds"]
    for key in ("val_rmse_px_best", "val_rmse_px_ema_last", "tta_rmse_px"):
        assert single[key] == pytest.approx(rows[0][key], rel=1e-3), key
    assert single["best_epoch"] == rows[0]["best_epoch"]


# --- auxiliary heatmap loss -------------------------------------------------------------------


def test_heatmap_kl_is_zero_on_the_target_gaussian_and_matches_its_formula():
    rng = np.random.default_rng(0)
    b, h, k, sigma = 2, 12, 15, 6.0
    kp = rng.uniform(10, 86, (b, 2 * k)).astype(np.float32)
    mask = np.ones((b, 2 * k), bool)
    centres = (np.arange(h) + 0.5) * 96 / h
    pts = kp.reshape(b, k, 2)
    d2 = ((centres[None, None, :, None] - pts[:, None, None, :, 0]) ** 2
          + (centres[None, :, None, None] - pts[:, None, None, :, 1]) ** 2)
    target_logits = -d2 / (2 * sigma ** 2) + 3.0  # any constant shift: same softmax
    assert float(steps.heatmap_kl(jnp.asarray(target_logits), kp, mask, sigma)) < 1e-5
    logits = rng.normal(size=(b, h, h, k)).astype(np.float32)
    q = np.exp(-d2 / (2 * sigma ** 2)).reshape(b, h * h, k)
    q /= q.sum(1, keepdims=True)
    p = np.exp(logits.reshape(b, h * h, k))
    p /= p.sum(1, keepdims=True)
    mask[1, 4:] = False  # row 1 keeps keypoints 0 and 1 only
    kl = (q * (np.log(q + 1e-30) - np.log(p))).sum(1)
    want = (kl[0].sum() + kl[1, :2].sum()) / (k + 2)
    got = float(steps.heatmap_kl(jnp.asarray(logits), kp, mask, sigma))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # an unlabelled keypoint's heatmap gets no gradient
    g = np.asarray(jax.grad(lambda z: steps.heatmap_kl(z, kp, mask, sigma))(jnp.asarray(logits)))
    assert np.all(g[1, ..., 2:] == 0) and np.all(np.abs(g[0]).sum((0, 1)) > 0)


def test_heatmap_kl_with_a_margin_targets_points_outside_the_crop():
    """With margin_px the cells span (-m, 96 + m), soft-argmax's grid for a padded
    heatmap_unet: the KL is ~0 on a Gaussian at a chin 8 px below the crop, and that map's
    soft-argmax, scaled to the crop, returns the chin."""
    from fkd_jax.models import networks

    h, m, sigma = 32, 16, 2.0
    chin = np.array([[48.0, 104.0]], np.float32)
    centres = (np.arange(h) + 0.5) * (96 + 2 * m) / h - m
    d2 = (centres[None, :, None] - chin[0, 0]) ** 2 + (centres[:, None, None] - chin[0, 1]) ** 2
    logits = jnp.asarray((-d2 / (2 * sigma ** 2))[None])  # (1, H, W, 1)
    mask = np.ones((1, 2), bool)
    assert float(steps.heatmap_kl(logits, chin, mask, sigma, 96, m)) < 1e-5
    assert float(steps.heatmap_kl(logits, chin, mask, sigma, 96)) > 0.1  # grid without margin
    found = np.asarray(networks.soft_argmax(logits))[0, 0] * (96 + 2 * m) / 96
    np.testing.assert_allclose((found + 1) * 48, chin[0], atol=0.05)


def test_heatmap_loss_trains_sharper_heatmaps_and_is_refused_without_heatmaps():
    c = _config(heatmap_loss_weight=0.01, heatmap_sigma_px=4.0)
    c.model.name, c.model.widths, c.model.hidden = "heatmap", (4, 8), None
    config_check.check_config(c)
    assert steps.make_heatmap_loss(_config().train) is None  # off by default
    assert steps.make_heatmap_loss(ml_collections.ConfigDict({"epochs": 1}).lock()) is None
    hl = steps.make_heatmap_loss(c.train)
    assert hl == steps.HeatmapLoss(0.01, 4.0)
    data = jax.device_put(_blob_data(32))
    kls = {}
    for name, aux in (("plain", None), ("heatmap", hl)):
        tx = steps.make_optimizer(c.train, 2)
        graphdef, state = steps.init_state(c.model, tx, 0)
        epoch = steps.make_train_epoch(graphdef, tx, 16, None, seed=0, heatmap_loss=aux)
        for e in range(1, 16):
            state, _ = epoch(state, data, steps.epoch_shuffle_key(0, e))
        from flax import nnx
        logits = nnx.merge(graphdef, state["params"]).heatmap_logits(data["images"])
        kls[name] = float(steps.heatmap_kl(logits, data["keypoints"], data["mask"], 4.0))
    assert kls["heatmap"] < 0.8 * kls["plain"], kls
    bad = _config(heatmap_loss_weight=0.01)  # simple_cnn regresses coordinates directly
    with pytest.raises(UserError, match="heatmap_loss_weight=0.01 needs a heatmap model"):
        config_check.check_config(bad)
