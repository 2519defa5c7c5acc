"""A trained model as one self-contained file: a `jax.export` artefact with its parameters.

Why: a user who only wants keypoints should need jax alone, not fkd_jax's model code, its
config or an Orbax checkpoint. The artefact is the serialised StableHLO of the prediction
function with the parameters folded in as constants, lowered for "cpu", "cuda" and "tpu", with
a symbolic batch size (one file serves every batch size). With conv_impl "auto" each platform
gets its own convolutions (im2col matmuls on CPU, XLA's convolutions on GPU/TPU: fkd_jax.models.ops).

Contract of the exported function (`.call(images)`):
  input   float32 (B, 96, 96, 1), NHWC, grayscale in [0, 1] (0 black), any B >= 1;
  output  float32 (B, 2K): normalised coordinates u = x / 48 - 1 (x in pixels of the 96x96
          crop, origin at its top-left corner; see fkd_jax.geometry.keypoints), x and y interleaved in
          the run's keypoint order: K = 15 in Kaggle's column order (left_eye_center_x,
          left_eye_center_y, right_eye_center_x, ...), K = 68 iBUG points (p0_x, p0_y, ...)
          for an ibug68 run, or K = 19 for a kaggle15_square run (Kaggle's 15, then the four
          square points). Pixels: (u + 1) * 48.

With jax alone (no fkd_jax):

    import jax, numpy as np
    model = jax.export.deserialize(bytearray(open("model.jaxexport", "rb").read()))
    keypoints_px = (np.asarray(model.call(images)) + 1) * 48   # images: (B, 96, 96, 1) float32

Serialisation needs the `flatbuffers` package (a dependency of jax's export serialiser).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from fkd_jax.errors import UserError
from fkd_jax.geometry import keypoints
from fkd_jax.inference.predictor import (
    EVAL_BATCH,
    Predictor,
    Run,
    apply_members,
    check_keypoint_model,
)

PLATFORMS = ("cpu", "cuda", "tpu")
SUFFIX = ".jaxexport"


def export_run(run: Run, platforms: tuple[str, ...] = PLATFORMS) -> bytes:
    """The run's inference function, parameters included, serialised by `jax.export`.

    Batch size is symbolic ("b"); the crop size is fixed at keypoints.IMAGE_SIZE.
    """
    def predict(images: jax.Array) -> jax.Array:  # an ensemble's mean, for an ensemble's run
        return apply_members(run.graphdef, run.members, run.params, images)

    (batch,) = jax.export.symbolic_shape("b")
    size = keypoints.IMAGE_SIZE
    spec = jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32)
    exported = jax.export.export(jax.jit(predict), platforms=platforms)(spec)
    return bytes(exported.serialize())


def load_exported(path: str | Path) -> jax.export.Exported:
    """Deserialise an artefact written by export.py, checking it has the contract above."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise UserError(f"--model {path}: {what}; write one with export.py")
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except ImportError:
        raise  # flatbuffers missing: an installation problem, keep the traceback
    except Exception as e:  # flatbuffers raises a variety of errors on garbage input
        raise UserError(f"--model {path}: not a jax.export model file "
                        f"({type(e).__name__}: {e}); write one with export.py") from None
    _check_signature(exported, path)
    return exported


def _check_signature(exported: jax.export.Exported, path: Path) -> None:
    ins, outs = exported.in_avals, exported.out_avals
    check_keypoint_model([a.shape for a in ins], [a.shape for a in outs], path,
                         float32=all(a.dtype == jnp.float32 for a in ins))


def keypoint_set(exported: jax.export.Exported, path: str | Path = "model"
                 ) -> keypoints.KeypointSet:
    """Which keypoints an exported model predicts, from its output width 2K."""
    return keypoints.set_for_width(exported.out_avals[0].shape[1], f"--model {path}")


def load_predictor(path: str | Path, batch_size: int = EVAL_BATCH) -> Predictor:
    """A `Predictor` (pixels out, fixed batch, compiled once) running an exported model.

    Its image size comes from the model's input shape, its keypoint set (for flip TTA) from
    the output width.
    """
    exported = load_exported(path)
    image_size = int(exported.in_avals[0].shape[1])
    return Predictor(jax.jit(exported.call), batch_size, image_size,
                     keypoint_set(exported, path).flip_permutation)
