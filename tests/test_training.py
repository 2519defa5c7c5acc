"""The jitted training/eval functions: masked loss, updates, determinism, epoch loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from fkd_jax import models
from fkd_jax.geometry import keypoints
from fkd_jax.training import steps
from conftest import normal


def _config(**train):
    """default.py's simple_cnn, narrowed (what is tested here does not depend on its size)."""
    c = default.get_config()
    c.model.name, c.model.widths, c.model.hidden = "simple_cnn", (8, 16), (32,)
    for k, v in train.items():
        c.train[k] = v
    return c


def _blob_data(n, seed=0):
    """Images with one bright blob; every keypoint sits at a fixed offset from it."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(30, 66, size=(n, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:96, 0:96] + 0.5
    d2 = (xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2
    images = np.exp(-d2 / 40.0)[..., None].astype(np.float32)
    offsets = rng.uniform(-20, 20, size=(15, 2)).astype(np.float32)
    kp = (centre[:, None, :] + offsets[None]).reshape(n, 30)
    mask = np.ones((n, 30), bool)
    mask[: n // 2, 4:] = False  # half the rows carry only 2 keypoints, like Kaggle's
    return {"images": images, "keypoints": kp, "mask": mask}


def test_masked_loss_ignores_missing_coordinates():
    pred = normal(0, (4, 30))
    kp = np.full((4, 30), 48.0, np.float32)
    mask = np.ones((4, 30), bool)
    mask[:, 10:] = False
    other = kp.copy()
    other[:, 10:] = np.nan  # garbage where unlabelled must not matter
    loss = lambda p, k, m: steps.masked_loss(p, k, m)[0]  # noqa: E731 - the step's loss
    l1 = loss(pred, kp, mask)
    l2 = loss(pred, other, mask)
    assert float(l1) == float(l2) and np.isfinite(float(l2))
    _, se_sum, count = steps.masked_loss(pred, other, mask)
    assert int(count) == 40 and float(se_sum) == pytest.approx(float(l1) * 40, rel=1e-6)
    g = jax.grad(loss)(pred, other, mask)
    assert np.all(np.asarray(g)[:, 10:] == 0.0)
    assert np.all(np.asarray(g)[:, :10] != 0.0)
    # the mean is over labelled coordinates only
    expected = np.mean((np.asarray(pred)[:, :10] - 0.0) ** 2)
    np.testing.assert_allclose(float(l1), expected, rtol=1e-5)


def test_missing_labels_give_exactly_zero_parameter_gradient():
    c = _config()
    tx = steps.make_optimizer(c.train, 10)
    graphdef, state = steps.init_state(c.model, tx, 0)
    data = _blob_data(4)
    only_missing = data["mask"].copy()
    only_missing[:] = False
    only_missing[:, 0] = True  # a single labelled coordinate
    changed = data["keypoints"].copy()
    changed[:, 1:] += 17.0  # move every unlabelled target

    def grads(kp):
        def loss(p):
            pred = models.apply_model(graphdef, p, data["images"])
            return steps.masked_loss(pred, kp, only_missing)[0]
        return jax.jit(jax.grad(loss))(state["params"])

    g1, g2 = grads(data["keypoints"]), grads(changed)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(a, b)


def test_train_epoch_lowers_loss_and_is_deterministic():
    c = _config(batch_size=16, learning_rate=1e-3)
    data = jax.device_put(_blob_data(64))
    tx = steps.make_optimizer(c.train, 4)

    def run(epochs):
        graphdef, state = steps.init_state(c.model, tx, 0)
        epoch_fn = steps.make_train_epoch(graphdef, tx, 16, None, seed=0)
        losses = []
        for e in range(1, epochs + 1):
            state, m = epoch_fn(state, data, steps.epoch_shuffle_key(0, e))
            losses.append(float(m["train_loss"]))
        return state, losses

    state_a, losses_a = run(6)
    state_b, losses_b = run(6)
    assert losses_a == losses_b
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(a, b)
    assert int(state_a["step"]) == 6 * 4
    assert losses_a[-1] < 0.5 * losses_a[0], losses_a


def test_epoch_reports_parameters_broken_by_its_last_update():
    """The loss is measured before each update, so a one-step epoch whose update overflows
    still reports a finite loss: `params_finite` is what catches it."""
    c = _config(batch_size=16, learning_rate=1e39)  # Adam steps ~lr: beyond float32's max
    tx = steps.make_optimizer(c.train, 1)
    graphdef, state = steps.init_state(c.model, tx, 0)
    epoch_fn = steps.make_train_epoch(graphdef, tx, 16, None, seed=0)
    _, m = epoch_fn(state, jax.device_put(_blob_data(16)), steps.epoch_shuffle_key(0, 1))
    assert np.isfinite(float(m["train_loss"])) and not bool(m["params_finite"])
    c = _config(batch_size=16, learning_rate=1e-3)
    tx = steps.make_optimizer(c.train, 1)
    graphdef, state = steps.init_state(c.model, tx, 0)
    epoch_fn = steps.make_train_epoch(graphdef, tx, 16, None, seed=0)
    _, m = epoch_fn(state, jax.device_put(_blob_data(16)), steps.epoch_shuffle_key(0, 1))
    assert bool(m["params_finite"])


def test_scanned_epoch_equals_python_loop_of_train_steps():
    c = _config(batch_size=8)
    data = _blob_data(24)
    tx = steps.make_optimizer(c.train, 3)
    graphdef, state = steps.init_state(c.model, tx, 0)
    epoch_fn = steps.make_train_epoch(graphdef, tx, 8, None, seed=0)
    key = steps.epoch_shuffle_key(0, 1)
    scanned, _ = epoch_fn(jax.tree.map(jnp.array, state), jax.device_put(data), key)

    step = jax.jit(steps.make_train_step(graphdef, tx, None))
    perm = np.asarray(jax.random.permutation(key, 24)).reshape(3, 8)
    looped = state
    for idx in perm:
        batch = {k: v[idx] for k, v in data.items()}
        looped, _ = step(looped, batch, jax.random.fold_in(steps.step_key(0), looped["step"]))
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_predictor_pads_to_its_batch_compiles_once_and_matches_direct_application():
    from fkd_jax.inference import predictor

    c = _config()
    tx = steps.make_optimizer(c.train, 1)
    graphdef, state = steps.init_state(c.model, tx, 0)
    images = _blob_data(5)["images"]
    apply = predictor.model_apply(graphdef)
    predict = predictor.Predictor.from_params(apply, state["params"], batch_size=2)
    out = predict(images)  # 5 rows in batches of 2: the last one padded
    predict(images[:3])
    predict(images[:1], tta=True)
    direct = keypoints.to_pixels(np.asarray(models.apply_model(graphdef, state["params"], images)))
    assert out.shape == (5, 30)
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-4)
    assert apply._cache_size() == 1  # every request above reused one executable


def test_flip_tta_averages_with_the_unmirrored_prediction_of_the_mirrored_image():
    from fkd_jax.inference import predictor

    # A stand-in model: keypoint 0's x follows the image's brightness centroid, the rest is a
    # fixed (asymmetric) face. TTA must average the plain prediction with the mirrored
    # image's prediction mapped back (x -> 96 - x, left/right partners swapped).
    face = keypoints.to_normalised(_blob_data(1, seed=3)["keypoints"][0].astype(np.float64))
    xs = (np.arange(96) + 0.5) / 48 - 1

    def fn(x):
        x = np.asarray(x)[..., 0]
        out = np.repeat(face[None], len(x), 0)
        out[:, 0] = (x.sum(1) * xs).sum(1) / np.maximum(x.sum((1, 2)), 1e-9)
        return out

    predict = predictor.Predictor(fn, batch_size=4)
    images = _blob_data(3)["images"]
    plain = predict(images)
    mirrored = keypoints.to_pixels(fn(images[:, :, ::-1]))
    expected = 0.5 * (plain + keypoints.flip_keypoints_px(mirrored))
    np.testing.assert_allclose(predict(images, tta=True), expected, atol=1e-3)
    assert not np.allclose(expected, plain, atol=0.1)  # TTA changed something


def test_rmse_report_pools_labelled_values_in_pixels():
    kp = np.zeros((2, 30), np.float32)
    pred = np.zeros((2, 30), np.float32)
    pred[0, 0] = 3.0  # left_eye_center_x off by 3 px
    pred[1, 1] = 4.0  # left_eye_center_y off by 4 px
    pred[1, 2] = 100.0  # right_eye_center_x: unlabelled, ignored
    mask = np.ones((2, 30), bool)
    mask[1, 2] = False
    r = steps.rmse_report(pred, kp, mask)
    assert r["rmse_px"] == pytest.approx(np.sqrt((9 + 16) / 59))
    assert r["left_eye_center"] == pytest.approx(np.sqrt(25 / 4))
    assert r["right_eye_center"] == 0.0
    assert r["group/eyes"] == pytest.approx(np.sqrt(25 / 23))
    assert set(keypoints.KEYPOINT_NAMES) <= set(r)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules_start_and_end_sensibly(schedule):
    c = _config(schedule=schedule, warmup_epochs=1, epochs=10, learning_rate=1e-3)
    s = steps.make_schedule(c.train, 10)
    lrs = [float(s(i)) for i in range(100)]
    peak = max(lrs)
    assert peak == pytest.approx(1e-3, rel=1e-3)
    # warmup_epochs=1 is honoured by every schedule: the peak comes at the end of epoch 1
    assert int(np.argmax(lrs)) in (9, 10)
    if schedule != "constant":
        assert float(s(99)) < 0.1 * peak


def test_flip_tta_un_mirrors_about_the_runs_label_axis():
    """A model trained with augment.flip_label_offset_px predicts labels that sit that far
    right of their content, in mirrored images too; TTA must map the mirrored prediction
    back about W / 2 + offset, or it would pull every x by the offset."""
    from fkd_jax.inference import predictor

    xs = (np.arange(96) + 0.5) / 48 - 1
    offset = 0.4

    def fn(x):  # every keypoint's x = the brightness centroid's + 0.4 px; y fixed
        x = np.asarray(x)[..., 0]
        cx = (x.sum(1) * xs).sum(1) / np.maximum(x.sum((1, 2)), 1e-9) + offset / 48
        out = np.zeros((len(x), 30))
        out[:, 0::2] = cx[:, None]
        return out

    images = _blob_data(3)["images"]
    plain = predictor.Predictor(fn, batch_size=4)(images)
    with_axis = predictor.Predictor(fn, batch_size=4, flip_label_offset_px=offset)
    np.testing.assert_allclose(with_axis(images, tta=True), plain, atol=1e-3)
    centre_axis = predictor.Predictor(fn, batch_size=4)
    np.testing.assert_allclose(centre_axis(images, tta=True)[:, 0::2], plain[:, 0::2] - offset,
                               atol=1e-3)


def test_rmse_report_gives_the_mean_signed_error_per_axis():
    truth = np.full((3, 30), 40.0)
    pred = truth.copy()
    pred[:, 0::2] -= 0.4  # every x 0.4 px left
    pred[0, 1] += 3.0  # one y 3 px low
    mask = np.ones((3, 30), bool)
    mask[1, 2:4] = False  # an unlabelled keypoint does not count
    pred[1, 2] = 99.0
    report = steps.rmse_report(pred, truth, mask)
    assert report["bias_x_px"] == pytest.approx(-0.4)
    assert report["bias_y_px"] == pytest.approx(3.0 / 44)
