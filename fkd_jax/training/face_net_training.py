"""Training the face detector (`fkd_jax.models.face_net`) on photos whose keypoints are known.

Plain pytree state and a jitted step, as the keypoint models' training: canvases are composed
on the host each step (`fkd_jax.data.face_scenes.compose`, numpy and OpenCV) from a seeded
generator, so a seed reproduces a run on one machine. Stops on a non-finite loss (looked at
with the logged metrics, every 100 steps: reading it every step would wait on each one).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx

from fkd_jax.data import face_scenes
from fkd_jax.errors import UserError
from fkd_jax.geometry.framing import Framing, framing_from_keypoints
from fkd_jax.models import face_net

DEFAULT_STEPS = 6000
DEFAULT_BATCH = 32
DEFAULT_LR = 3e-3


def face_squares(keypoints_px: np.ndarray) -> list[Framing]:
    """The training squares (rotate=True: turned with the eye line) of a photo's faces, from
    their keypoints (T, 2K) in photo pixels; faces with a missing keypoint are left out."""
    rows = np.atleast_2d(np.asarray(keypoints_px, np.float64))
    return [framing_from_keypoints(kp, rotate=True) for kp in rows if np.all(np.isfinite(kp))]


def train_face_net(photos: Sequence[np.ndarray], faces: Sequence[Sequence[Framing]],
                   steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH,
                   learning_rate: float = DEFAULT_LR, seed: int = 0,
                   any_tilt_p: float = face_scenes.ANY_TILT_P,
                   log: Callable[[dict], None] | None = None) -> nnx.State:
    """The detector's parameters after `steps` Adam steps (warm-up, cosine decay) on canvases
    composed from grayscale uint8 `photos` and their faces' squares (`face_squares`), a share
    `any_tilt_p` of them turned by any angle (`face_scenes.compose`).
    `log` gets {"step", "loss", "heat", "box", "images_per_s"} every 100 steps and at the end."""
    if not any(faces):
        raise UserError("no labelled face to train the face detector on")
    graphdef, params = nnx.split(face_net.create_face_net(seed), nnx.Param)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, steps // 10),
                                                  steps, end_value=learning_rate * 1e-2)
    tx = optax.adam(schedule)
    state = {"params": params, "opt_state": tx.init(params)}

    def objective(p, canvases, targets):
        outputs = nnx.merge(graphdef, p)(canvases)
        return face_net.face_net_loss(outputs, *targets)

    @jax.jit
    def train_step(state, canvases, targets):
        (loss, parts), grads = jax.value_and_grad(objective, has_aux=True)(
            state["params"], canvases, targets)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return ({"params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}, {"loss": loss, **parts})

    rng = np.random.default_rng(seed)
    start, done = time.perf_counter(), 0
    for step in range(1, steps + 1):
        canvases, squares = face_scenes.compose(rng, photos, faces, batch_size,
                                                any_tilt_p=any_tilt_p)
        state, metrics = train_step(state, canvases[..., None], face_scenes.targets(squares))
        done += batch_size
        if step % 100 == 0 or step == steps:
            values = {k: float(v) for k, v in metrics.items()}
            if not math.isfinite(values["loss"]):
                raise UserError(f"face detector training: loss is {values['loss']} at step "
                                f"{step}; lower the learning rate")
            if log:
                log({"step": step, **values,
                     "images_per_s": done / (time.perf_counter() - start)})
    return state["params"]


def jax_detector_fn(params: nnx.State) -> Callable[[np.ndarray], np.ndarray]:
    """A `NetFaceDetector` run function on the JAX parameters (without exporting them)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: face_net.create_face_net(0)), nnx.Param)
    apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    return lambda canvases: np.asarray(apply(params, canvases))
