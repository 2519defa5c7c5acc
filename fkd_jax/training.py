"""The training and evaluation steps: pure, jitted functions of a plain-dict state.

State is a dict pytree `{"params", "opt_state", "step"}` (params as a nested dict of arrays);
the model's structure lives in an NNX `GraphDef` that the jitted functions close over. Nothing
here touches files: `train.py` owns checkpoints, logging and the work directory.

Units: batches carry keypoints in *pixels* (B, 30) with a bool mask (B, 30); the network
regresses normalised coordinates (u = x / 48 - 1), so the loss is the MSE over present
coordinates in normalised units and the reported RMSE is in pixels.

Randomness: every key comes from `config.seed` through `jax.random.fold_in`, per epoch for the
shuffle and per step for augmentation and dropout, so a resumed run draws exactly the keys
an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fkd_jax import augment, keypoints, models
from fkd_jax.errors import UserError

State = dict[str, Any]
Batch = dict[str, jax.Array]  # images (B,96,96,1) f32 [0,1]; keypoints (B,30) px; mask (B,30) bool

# fold_in tags separating the random streams derived from config.seed.
_SHUFFLE, _STEP = 1, 2
_PX_PER_UNIT = keypoints.IMAGE_SIZE / 2.0  # 48 pixels per normalised unit


def root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def epoch_shuffle_key(seed: int, epoch: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(root_key(seed), _SHUFFLE), epoch)


def step_key(seed: int) -> jax.Array:
    """Base key of the per-step stream; the step itself is folded in inside the jitted loop."""
    return jax.random.fold_in(root_key(seed), _STEP)


def make_schedule(train_cfg, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per step, from `config.train` (schedule, learning_rate, warmup_epochs)."""
    total = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(train_cfg.warmup_epochs * steps_per_epoch))
    lr = train_cfg.learning_rate
    if train_cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    if train_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=lr * 1e-2)
    if train_cfg.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr)
    raise UserError(f"--config.train.schedule={train_cfg.schedule!r} is not one of "
                    "constant, cosine, onecycle")


def make_optimizer(train_cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam (AdamW when weight_decay > 0), optionally after global-norm gradient clipping."""
    schedule = make_schedule(train_cfg, steps_per_epoch)
    if train_cfg.weight_decay > 0:
        opt = optax.adamw(schedule, weight_decay=train_cfg.weight_decay)
    else:
        opt = optax.adam(schedule)
    if train_cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), opt)
    return opt


def init_state(model_cfg, tx: optax.GradientTransformation, seed: int) -> tuple[nnx.GraphDef, State]:
    """Model structure (static) and the initial training state (arrays only)."""
    model = models.create_model(model_cfg, seed)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    return graphdef, {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def abstract_state(config) -> tuple[nnx.GraphDef, State]:
    """Model structure and the shapes/dtypes of a run's training state: a restore target."""
    tx = make_optimizer(config.train, 1)
    graphdef, state = init_state(config.model, tx, config.seed)
    return graphdef, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)


def apply_model(graphdef: nnx.GraphDef, params, images, *, train: bool = False, dropout_key=None):
    """Predicted keypoints (B, 30) in normalised coordinates."""
    return nnx.merge(graphdef, params)(images, train=train, dropout_key=dropout_key)


def masked_squared_error(pred_norm, keypoints_px, mask):
    """Squared error per coordinate (B, 30) in normalised units, zero where unlabelled.

    The difference is masked *before* squaring, so a missing coordinate's gradient is exactly
    zero, even if its placeholder target were NaN (0 * NaN would not be).
    """
    target = keypoints.to_normalised(keypoints_px)
    return jnp.where(mask, pred_norm - target, 0.0) ** 2


def masked_mse(pred_norm, keypoints_px, mask):
    """Mean of the squared error over the labelled coordinates only."""
    se = masked_squared_error(pred_norm, keypoints_px, mask)
    return se.sum() / jnp.maximum(mask.sum(), 1)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, augment_cfg=None
                    ) -> Callable[[State, Batch, jax.Array], tuple[State, dict]]:
    """`train_step(state, batch, key) -> (state, metrics)`: augment, forward, Adam update.

    Not jitted itself: `make_train_epoch` scans it, and callers that step by hand jit it.
    """

    def loss_fn(params, images, kp, mask, dropout_key):
        pred = apply_model(graphdef, params, images, train=True, dropout_key=dropout_key)
        se = masked_squared_error(pred, kp, mask)
        count = jnp.maximum(mask.sum(), 1)
        return se.sum() / count, (se.sum(), mask.sum())

    def train_step(state: State, batch: Batch, key: jax.Array):
        aug_key, drop_key = jax.random.split(key)
        images, kp, mask = batch["images"], batch["keypoints"], batch["mask"]
        if augment_cfg is not None:
            images, kp, mask = augment.augment_batch(aug_key, images, kp, mask, augment_cfg)
        (loss, (se_sum, n)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], images, kp, mask, drop_key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        metrics = {"loss": loss, "se_sum": se_sum, "count": n}
        return new_state, metrics

    return train_step


def rmse_px(se_sum_norm, count):
    """RMSE in pixels from a sum of squared errors in normalised units."""
    return jnp.sqrt(se_sum_norm / jnp.maximum(count, 1)) * _PX_PER_UNIT


def make_train_epoch(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, batch_size: int,
                     augment_cfg=None, seed: int = 0, data_sharding=None):
    """A jitted `train_epoch(state, data, shuffle_key) -> (state, metrics)`.

    The whole epoch runs on the device: the training set `data` (a Batch-like dict of all N
    rows, already on the device) is shuffled with `shuffle_key` and cut into N // batch_size
    batches (the remainder is dropped this epoch and drawn in others), and a `lax.scan` runs
    every step with no host round trip. `data_sharding`, if given, shards each batch over
    devices (data parallel); parameters stay replicated.
    """
    train_step = make_train_step(graphdef, tx, augment_cfg)
    base_key = step_key(seed)

    def train_epoch(state: State, data: Batch, shuffle_key: jax.Array):
        n = data["images"].shape[0]
        steps = n // batch_size
        perm = jax.random.permutation(shuffle_key, n)[: steps * batch_size]
        perm = perm.reshape(steps, batch_size)

        def body(state, idx):
            batch = jax.tree.map(lambda a: a[idx], data)
            if data_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, data_sharding)
            key = jax.random.fold_in(base_key, state["step"])
            return train_step(state, batch, key)

        state, m = jax.lax.scan(body, state, perm)
        # The loss is taken before each update, so the last update's damage shows only here.
        params_finite = jnp.all(jnp.stack([jnp.isfinite(p).all()
                                           for p in jax.tree.leaves(state["params"])]))
        metrics = {"train_loss": m["loss"].mean(),
                   "train_rmse_px": rmse_px(m["se_sum"].sum(), m["count"].sum()),
                   "params_finite": params_finite}
        return state, metrics

    return jax.jit(train_epoch, donate_argnums=(0,))


# Prediction batch: larger ones run slower on CPU (640 faces through heatmap_unet on 2 cores:
# 3.8 s in batches of 64, 4.9 s in batches of 256).
EVAL_BATCH = 64


def make_predict(graphdef: nnx.GraphDef, batch_size: int = EVAL_BATCH):
    """A jitted `predict(params, images) -> (N, 30)` normalised predictions, batched on device."""

    def predict(params, images):
        n = images.shape[0]
        per_batch = min(batch_size, max(1, n))
        pad = (-n) % per_batch
        padded = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
        batches = padded.reshape((-1, per_batch) + images.shape[1:])
        preds = jax.lax.map(lambda x: apply_model(graphdef, params, x), batches)
        return preds.reshape(-1, keypoints.NUM_COORDS)[:n]

    return jax.jit(predict)


def error_sums(pred_px: np.ndarray, keypoints_px: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column sums of squared pixel error and label counts, each (30,), over labelled values."""
    se = np.where(mask, (np.asarray(pred_px, np.float64) - keypoints_px) ** 2, 0.0)
    return se.sum(axis=0), mask.sum(axis=0)


def rmse_report(pred_px: np.ndarray, keypoints_px: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """RMSE in pixels: overall (`rmse_px`), per keypoint (x and y pooled) and per group."""
    se, n = error_sums(pred_px, keypoints_px, mask)
    out = {"rmse_px": float(np.sqrt(se.sum() / max(n.sum(), 1)))}
    for name in keypoints.KEYPOINT_NAMES:
        cols = keypoints.column_indices([name])
        out[name] = float(np.sqrt(se[cols].sum() / n[cols].sum())) if n[cols].sum() else float("nan")
    for group, names in keypoints.GROUPS.items():
        cols = keypoints.column_indices(names)
        out[f"group/{group}"] = (float(np.sqrt(se[cols].sum() / n[cols].sum()))
                                 if n[cols].sum() else float("nan"))
    return out
