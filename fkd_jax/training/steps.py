"""The training and evaluation steps: pure, jitted functions of a plain-dict state.

State is a dict pytree `{"params", "opt_state", "step"}` (params as a nested dict of arrays),
plus `"avg_params"` when the run keeps a running average of its parameters (EMA or SWA,
`make_averaging`); the model's structure lives in an NNX `GraphDef` that the jitted functions
close over. Nothing here touches files: `train.py` owns checkpoints, logging and the work
directory.

Units: batches carry keypoints in *pixels* (B, 2K) with a bool mask (B, 2K) (K = 15 for
Kaggle's keypoints); the network regresses normalised coordinates (u = x / (S/2) - 1 for
S x S images, S = 96), so the loss (MSE by default, or L1 / Wing: `make_loss`) is taken over
the present coordinates in normalised units and the reported RMSE is in pixels, whatever the
loss.

Randomness: every key comes from `config.seed` through `jax.random.fold_in`, per epoch for the
shuffle and per step for augmentation and dropout, so a resumed run draws exactly the keys
an uninterrupted one would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fkd_jax import models
from fkd_jax.data import augment
from fkd_jax.geometry import keypoints
from fkd_jax.models import networks

State = dict[str, Any]
Batch = dict[str, jax.Array]  # images (B,S,S,1) f32 [0,1]; keypoints (B,2K) px; mask (B,2K) bool

# fold_in tags separating the random streams derived from config.seed.
_SHUFFLE, _STEP = 1, 2


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
    if train_cfg.schedule == "onecycle":  # warm-up share: warmup_epochs, else optax's 30%
        return optax.cosine_onecycle_schedule(total, lr, pct_start=warmup / total if warmup else 0.3)
    raise ValueError(train_cfg.schedule)  # config_check allows only the three above


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


@dataclass(frozen=True)
class Averaging:
    """A running average of the parameters, kept in `state["avg_params"]` and updated inside
    the jitted step after every optimiser update (`optax.incremental_update` with the step
    size below), so it costs no host work.

    - "ema": the exponential moving average with `decay`, bias-corrected as Adam's moments
      are: after t updates it is sum_i (1-d) d^(t-i) p_i / (1 - d^t), i.e. optax.ema(decay,
      debias=True) of the parameter sequence. No dependence on the initial parameters; with
      decay 0 it is exactly the raw parameters.
    - "swa": stochastic weight averaging, the plain mean of the parameters after every update
      from step `start_step + 1` on (the first step of `train.swa_start_epoch`); before that
      it is exactly the raw parameters.
    """

    kind: str  # "ema" or "swa"
    decay: float = 0.0  # ema
    start_step: int = 0  # swa: updates before averaging starts

    def step_size(self, step: jax.Array) -> jax.Array:
        """Weight of the newest parameters after `step` (>= 1) updates: float32 scalar."""
        t = jnp.asarray(step, jnp.float32)
        if self.kind == "ema":
            d = jnp.float32(self.decay)
            return (1.0 - d) / (1.0 - d ** t)
        n = t - self.start_step  # updates averaged so far, this one included
        return jnp.where(n > 0, 1.0 / jnp.maximum(n, 1.0), 1.0)

    def update(self, avg_params, params, step: jax.Array):
        """The average after the update that produced `params` (the `step`-th update)."""
        return optax.incremental_update(params, avg_params, self.step_size(step))

    @property
    def metric(self) -> str:
        """The metrics.jsonl key of the averaged parameters' validation RMSE."""
        return f"val_rmse_px_{self.kind}"


def make_averaging(train_cfg, steps_per_epoch: int) -> Averaging | None:
    """The run's parameter averaging from `config.train.ema_decay` (0 = off) or
    `config.train.swa_start_epoch` (0 = off); None when neither is on (configs written before
    these keys existed have neither)."""
    decay = train_cfg.get("ema_decay", 0.0) or 0.0
    swa_start = train_cfg.get("swa_start_epoch", 0) or 0
    if decay > 0:
        return Averaging("ema", decay=float(decay))
    if swa_start > 0:
        return Averaging("swa", start_step=(swa_start - 1) * steps_per_epoch)
    return None


def init_state(model_cfg, tx: optax.GradientTransformation, seed: int,
               num_keypoints: int = keypoints.NUM_KEYPOINTS,
               image_size: int = keypoints.IMAGE_SIZE,
               averaging: Averaging | None = None) -> tuple[nnx.GraphDef, State]:
    """Model structure (static) and the initial training state (arrays only) for
    `num_keypoints` keypoints on `image_size`-pixel square images (both from the data);
    with `averaging`, the state also holds `avg_params` (a copy of the parameters: their own
    buffers, since the epoch donates the state)."""
    model = models.create_model(model_cfg, num_keypoints, seed, image_size=image_size)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if averaging is not None:
        state["avg_params"] = jax.tree.map(jnp.copy, params)
    return graphdef, state


def abstract_state(config) -> tuple[nnx.GraphDef, State]:
    """Model structure and the shapes/dtypes of a run's training state: a restore target.

    Traced abstractly (no parameters are initialised), so restoring a run costs no model
    initialisation."""
    tx = make_optimizer(config.train, 1)
    k = keypoints.KEYPOINT_SETS[config.data.keypoints].num_keypoints
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.create_model(config.model, k, config.seed)),
                            nnx.Param)
    averaging = make_averaging(config.train, 1)
    return graphdef, jax.eval_shape(
        lambda: init_state(config.model, tx, config.seed, k, averaging=averaging)[1])


LOSSES = ("mse", "l1", "wing")


def masked_loss(pred_norm, keypoints_px, mask, image_size: int = keypoints.IMAGE_SIZE,
                kind: str = "mse", wing_w_px: float = 10.0, wing_epsilon_px: float = 2.0):
    """(loss, se_sum, count): the loss over the labelled coordinates, and the sum of squared
    errors (normalised units) and count of those coordinates (for an exact epoch RMSE in
    pixels, whatever the loss). The training step's loss.

    `kind` (all means over the labelled coordinates, in normalised units u = x / (S/2) - 1):
    - "mse": squared error (the default);
    - "l1": absolute error;
    - "wing": Feng et al. 2018, "Wing loss for robust facial landmark localisation":
      w ln(1 + |x| / eps) for |x| < w, |x| - C beyond (C = w - w ln(1 + w / eps) joins the
      two), with `wing_w_px` and `wing_epsilon_px` given in *pixels* (the paper's w = 10,
      eps = 2) and applied to the error in pixels; the value is divided by S/2, so it is in
      normalised units like the others (L1-like for large errors, log-shaped for small ones).

    The difference is masked *before* the loss, so a missing coordinate's gradient is exactly
    zero, even if its placeholder target were NaN (0 * NaN would not be).
    """
    target = keypoints.to_normalised(keypoints_px, image_size)
    diff = jnp.where(mask, pred_norm - target, 0.0)
    se_sum = (diff ** 2).sum()
    count = mask.sum()
    if kind == "mse":
        return se_sum / jnp.maximum(count, 1), se_sum, count
    per = coordinate_loss(diff, kind, image_size, wing_w_px, wing_epsilon_px)
    return jnp.where(mask, per, 0.0).sum() / jnp.maximum(count, 1), se_sum, count


def coordinate_loss(diff_norm, kind: str, image_size: int = keypoints.IMAGE_SIZE,
                    wing_w_px: float = 10.0, wing_epsilon_px: float = 2.0):
    """Elementwise loss of errors in normalised units ("l1" or "wing", see `masked_loss`);
    zero at zero error."""
    a = jnp.abs(diff_norm)
    if kind == "l1":
        return a
    if kind == "wing":
        half = image_size / 2.0
        w, eps = wing_w_px / half, wing_epsilon_px / half
        c = float(w - w * np.log1p(w / eps))
        return jnp.where(a < w, w * jnp.log1p(a / eps), a - c)
    raise ValueError(kind)  # config_check allows only LOSSES


def make_loss(train_cfg) -> Callable:
    """`loss_fn(pred_norm, keypoints_px, mask, image_size) -> (loss, se_sum, count)` from
    `config.train.loss` (and `wing_w`, `wing_epsilon` in pixels); `masked_loss` itself for
    "mse" (configs from before the key existed trained with it)."""
    kind = train_cfg.get("loss", "mse")
    if kind == "mse":
        return masked_loss
    return functools.partial(masked_loss, kind=kind, wing_w_px=float(train_cfg.wing_w),
                             wing_epsilon_px=float(train_cfg.wing_epsilon))


@dataclass(frozen=True)
class HeatmapLoss:
    """An auxiliary loss on a heatmap model's heatmaps: `weight` x the mean, over labelled
    keypoints, of KL(target || softmax heatmap), the target a Gaussian of std `sigma_px`
    pixels at the true keypoint (`heatmap_kl`)."""

    weight: float
    sigma_px: float


def make_heatmap_loss(train_cfg) -> HeatmapLoss | None:
    """From `config.train.heatmap_loss_weight` (0 = off; configs from before the key: off)."""
    weight = train_cfg.get("heatmap_loss_weight", 0.0) or 0.0
    if weight <= 0:
        return None
    return HeatmapLoss(float(weight), float(train_cfg.heatmap_sigma_px))


def heatmap_kl(logits, keypoints_px, mask, sigma_px: float,
               image_size: int = keypoints.IMAGE_SIZE, margin_px: int = 0):
    """Mean over labelled keypoints of KL(q || p): p the softmax of logits (B, H, W, K) over
    the H x W cells, q a Gaussian of std `sigma_px` (pixels) centred on the keypoint
    (B, 2K pixels), evaluated at the cell centres (soft_argmax's grid) and normalised. The
    cells cover the crop and `margin_px` pixels around it (a heatmap_unet's `margin`).

    Why: soft-argmax is trained only through the heatmap's mean, so any spread-out or
    many-peaked heatmap with the right mean is as good as a sharp one; this pulls each
    heatmap towards one peak on the keypoint (DSNT's distribution regulariser, Nibali et
    al. 2018), which regularises a net trained on few faces.
    """
    b, h, w, k = logits.shape
    log_p = jax.nn.log_softmax(logits.reshape(b, h * w, k).astype(jnp.float32), axis=1)
    span = image_size + 2 * margin_px
    xs = (jnp.arange(w) + 0.5) * (span / w) - margin_px  # cell centres, crop pixels
    ys = (jnp.arange(h) + 0.5) * (span / h) - margin_px
    pts = keypoints_px.reshape(b, k, 2)
    d2 = ((xs[None, None, :, None] - pts[:, None, None, :, 0]) ** 2
          + (ys[None, :, None, None] - pts[:, None, None, :, 1]) ** 2)  # (B, H, W, K)
    logits_q = (-d2 / (2.0 * sigma_px ** 2)).reshape(b, h * w, k)
    log_q = jax.nn.log_softmax(logits_q, axis=1)
    kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=1)  # (B, K)
    labelled = mask.reshape(b, k, 2).all(axis=-1)
    return jnp.where(labelled, kl, 0.0).sum() / jnp.maximum(labelled.sum(), 1)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, augment_cfg=None,
                    flip_permutation: np.ndarray = keypoints.FLIP_PERMUTATION, *,
                    loss_fn: Callable = masked_loss, averaging: Averaging | None = None,
                    heatmap_loss: HeatmapLoss | None = None
                    ) -> Callable[[State, Batch, jax.Array], tuple[State, dict]]:
    """`train_step(state, batch, key) -> (state, metrics)`: augment, forward, Adam update,
    then (with `averaging`) the running average of the parameters.

    `loss_fn` is a `masked_loss`-like function (`make_loss`); `heatmap_loss` adds its term
    (heatmap models only). Not jitted itself: `make_train_epoch` scans it, and callers that
    step by hand jit it.
    """

    def objective(params, images, kp, mask, dropout_key):
        if heatmap_loss is None:
            pred = models.apply_model(graphdef, params, images, train=True, dropout_key=dropout_key)
            aux = 0.0
        else:
            model = nnx.merge(graphdef, params)
            logits, size = model.heatmap_logits(images), images.shape[1]
            points, _ = networks.crop_moments(logits, size, model.margin)  # jit drops spread
            pred = points.reshape(images.shape[0], -1)
            aux = heatmap_loss.weight * heatmap_kl(logits, kp, mask, heatmap_loss.sigma_px,
                                                   size, model.margin)
        loss, se_sum, count = loss_fn(pred, kp, mask, images.shape[1])
        return loss + aux, (se_sum, count)

    def train_step(state: State, batch: Batch, key: jax.Array):
        aug_key, drop_key = jax.random.split(key)
        images, kp, mask = batch["images"], batch["keypoints"], batch["mask"]
        if augment_cfg is not None:  # labels stay as far past the crop as the maps reach
            margin = getattr(nnx.merge(graphdef, state["params"]), "margin", 0)
            images, kp, mask = augment.augment_batch(aug_key, images, kp, mask, augment_cfg,
                                                     flip_permutation, margin)
        (loss, (se_sum, n)), grads = jax.value_and_grad(objective, has_aux=True)(
            state["params"], images, kp, mask, drop_key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        if averaging is not None:
            new_state["avg_params"] = averaging.update(state["avg_params"], params,
                                                       new_state["step"])
        metrics = {"loss": loss, "se_sum": se_sum, "count": n}
        return new_state, metrics

    return train_step


def rmse_px(se_sum_norm, count, image_size: int = keypoints.IMAGE_SIZE):
    """RMSE in pixels from a sum of squared errors in normalised units."""
    return jnp.sqrt(se_sum_norm / jnp.maximum(count, 1)) * (image_size / 2.0)


def make_train_epoch(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, batch_size: int,
                     augment_cfg=None, seed: int = 0, data_sharding=None,
                     flip_permutation: np.ndarray = keypoints.FLIP_PERMUTATION, *,
                     loss_fn: Callable = masked_loss, averaging: Averaging | None = None,
                     heatmap_loss: HeatmapLoss | None = None):
    """A jitted `train_epoch(state, data, shuffle_key) -> (state, metrics)`.

    The whole epoch runs on the device: the training set `data` (a Batch-like dict of all N
    rows, already on the device) is shuffled with `shuffle_key` and cut into N // batch_size
    batches (the remainder is dropped this epoch and drawn in others), and a `lax.scan` runs
    every step with no host round trip. `data_sharding`, if given, shards each batch over
    devices (data parallel); parameters stay replicated. `loss_fn`, `averaging` and
    `heatmap_loss`: see `make_train_step` (the state must hold `avg_params` when averaging:
    `init_state`).
    """
    epoch = _epoch(make_train_step(graphdef, tx, augment_cfg, flip_permutation, loss_fn=loss_fn,
                                   averaging=averaging, heatmap_loss=heatmap_loss),
                   batch_size, data_sharding)
    base_key = step_key(seed)

    def train_epoch(state: State, data: Batch, shuffle_key: jax.Array):
        return epoch(state, data, shuffle_key, base_key)

    return jax.jit(train_epoch, donate_argnums=(0,))


def make_members_epoch(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                       batch_size: int, augment_cfg=None, seeds: tuple[int, ...] = (0,),
                       data_sharding=None,
                       flip_permutation: np.ndarray = keypoints.FLIP_PERMUTATION, *,
                       loss_fn: Callable = masked_loss, averaging: Averaging | None = None,
                       heatmap_loss: HeatmapLoss | None = None):
    """A jitted `members_epoch(state, data, epoch, active) -> (state, metrics)`: one epoch of
    every member of an ensemble in one program (`jax.vmap` over the members).

    `state` holds the M = len(seeds) members' states stacked along a new leading axis; member
    m draws its shuffle (`epoch_shuffle_key(seeds[m], epoch)`, `epoch` an int32 scalar),
    augmentation and dropout from its seed exactly as `make_train_epoch(seed=seeds[m])` does,
    so it trains as that single run would (up to float rounding). `active` (M,) bool: a member
    not active keeps its state (it stopped early, or is ahead after a resume). Metrics are
    (M,) each. Why: on a GPU one member's small batches (unet_pair: 8 images) leave most of
    the device idle; vmapped, each step's kernels take every member's batch at once.
    """
    epoch = _epoch(make_train_step(graphdef, tx, augment_cfg, flip_permutation, loss_fn=loss_fn,
                                   averaging=averaging, heatmap_loss=heatmap_loss),
                   batch_size, data_sharding)
    member_seeds = np.asarray(seeds, np.int32)

    def members_epoch(state: State, data: Batch, epoch_index: jax.Array, active: jax.Array):
        shuffle_keys = jax.vmap(epoch_shuffle_key, in_axes=(0, None))(member_seeds, epoch_index)
        new, metrics = jax.vmap(epoch, in_axes=(0, None, 0, 0))(
            state, data, shuffle_keys, jax.vmap(step_key)(member_seeds))

        def keep_inactive(n, o):
            return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

        return jax.tree.map(keep_inactive, new, state), metrics

    return jax.jit(members_epoch, donate_argnums=(0,))


def _epoch(train_step: Callable, batch_size: int, data_sharding) -> Callable:
    """`epoch(state, data, shuffle_key, step_key) -> (state, metrics)`, not jitted: the
    shuffle, the scan over the steps (step keys folded from `step_key` by step) and the
    epoch's metrics (see `make_train_epoch`)."""

    def epoch(state: State, data: Batch, shuffle_key: jax.Array, base_key: jax.Array):
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
                   "train_rmse_px": rmse_px(m["se_sum"].sum(), m["count"].sum(),
                                            data["images"].shape[1]),
                   "params_finite": params_finite}
        return state, metrics

    return epoch


def error_sums(pred_px: np.ndarray, keypoints_px: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column sums of squared pixel error and label counts, each (2K,), over labelled values."""
    se = np.where(mask, (np.asarray(pred_px, np.float64) - keypoints_px) ** 2, 0.0)
    return se.sum(axis=0), mask.sum(axis=0)


def rmse_report(pred_px: np.ndarray, keypoints_px: np.ndarray, mask: np.ndarray,
                keypoint_set: keypoints.KeypointSet = keypoints.KAGGLE15) -> dict[str, float]:
    """RMSE in pixels: overall (`rmse_px`, over the set's scored keypoints: the 15 face points
    of the square set), per keypoint (x and y pooled) and per group; and the mean signed
    error of the scored x and y coordinates (`bias_x_px`, `bias_y_px`: a model off by the same
    amount everywhere, e.g. trained with labels mirrored about the wrong axis, shows here)."""
    se, n = error_sums(pred_px, keypoints_px, mask)

    def rmse(names) -> float:
        cols = keypoints.column_indices(names, keypoint_set.names)
        return float(np.sqrt(se[cols].sum() / n[cols].sum())) if n[cols].sum() else float("nan")

    scored = keypoints.column_indices(keypoint_set.scored or keypoint_set.names,
                                      keypoint_set.names)
    out = {"rmse_px": float(np.sqrt(se[scored].sum() / max(n[scored].sum(), 1)))}
    err = np.where(mask, np.asarray(pred_px, np.float64) - keypoints_px, 0.0)[:, scored]
    for axis, cols in (("x", slice(0, None, 2)), ("y", slice(1, None, 2))):
        count = np.asarray(mask)[:, scored][:, cols].sum()
        out[f"bias_{axis}_px"] = float(err[:, cols].sum() / count) if count else float("nan")
    out.update({name: rmse([name]) for name in keypoint_set.names})
    out.update({f"group/{group}": rmse(names) for group, names in keypoint_set.groups.items()})
    return out
