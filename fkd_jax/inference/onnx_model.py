"""A trained model as an ONNX file, for onnxruntime, TensorRT and the browser.

Same contract as the jax.export artefact (fkd_jax.inference.exported), as a standard graph:
  input   "images"     float32 (B, S, S, 1), NHWC, grayscale in [0, 1], any B >= 1 (S = 96);
  output  "keypoints"  float32 (B, 2K) normalised coordinates u = x / (S / 2) - 1, x and y
          interleaved in the run's keypoint order; an ensemble's file predicts the mean;
  output  "spread"     float32 (B, K) each keypoint's spread in the same normalised units (the
          per-point confidence's input, `Predictor.with_spread`), for heatmap models and
          ensembles only: a single coordinate regressor has none to give;
  metadata "keypoint_set" and "flip_label_offset_px" (the axis flip TTA un-mirrors about).

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    keypoints_px = (session.run(None, {"images": images})[0] + 1) * 48

The graph is converted by jax2onnx from the model rebuilt with `conv_impl="portable"` (plain
Conv nodes, which every ONNX runtime optimises, instead of the im2col matmuls the CPU path
uses, and a reshape-and-max pooling; the parameters are the same). Both packages come with the
`onnx` extra (`pip install "fkd-jax[onnx]"`); nothing here imports them until it is used.
Loading and running a file needs numpy and onnxruntime only: predict.py --model FILE.onnx
starts without importing jax, the larger part of a short run's start-up.

The learned face detector (`fkd_jax.models.face_net`) is written the same way
(`export_face_net`: input "canvases" (B, 160, 160, 1), output "outputs" (B, 20, 20, 6)).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable

import numpy as np

from fkd_jax.errors import UserError
from fkd_jax.geometry import keypoints
from fkd_jax.inference.predictor import (
    EVAL_BATCH,
    Predictor,
    Run,
    apply_members,
    apply_members_with_spread,
    check_keypoint_model,
    has_spread,
)

SUFFIX = ".onnx"
INPUT, OUTPUT, SPREAD = "images", "keypoints", "spread"


def is_onnx(path: str | Path) -> bool:
    """Whether a model file is an ONNX one (by its suffix): run by onnxruntime, without jax."""
    return Path(path).suffix.lower() == SUFFIX


def need_package(module: str):
    """The module, or a one-line UserError saying to install the `onnx` extra."""
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"ONNX needs the `{module}` package: pip install \"fkd-jax[onnx]\" "
                        "(or uv run --extra onnx ...)") from None


def export_onnx(run: Run) -> bytes:
    """The run's prediction function with its parameters as an ONNX model (symbolic batch);
    with the keypoints' spreads as a second output where the model has them."""
    jax2onnx = need_package("jax2onnx")
    from flax import nnx

    from fkd_jax import models
    from fkd_jax.data import augment

    model_cfg = copy.deepcopy(run.config.model)
    model_cfg.conv_impl = "portable"
    k = keypoints.KEYPOINT_SETS[run.config.data.keypoints].num_keypoints
    size = keypoints.IMAGE_SIZE
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.create_model(model_cfg, k, 0)),
                            nnx.Param)

    spread = has_spread(run)

    def predict(images):
        if spread:
            return apply_members_with_spread(graphdef, run.members, run.params, images)
        return apply_members(graphdef, run.members, run.params, images)

    proto = jax2onnx.to_onnx(predict, [("B", size, size, 1)], model_name="fkd_jax",
                             input_names=[INPUT],
                             output_names=[OUTPUT, SPREAD] if spread else [OUTPUT])
    offset = augment.read_settings(run.config.get("augment")).flip_label_offset_px
    for key, value in {"keypoint_set": run.config.data.keypoints,
                       "flip_label_offset_px": repr(float(offset))}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def open_session(path: str | Path, option: str, writer: str):
    """(onnxruntime CPU session, Path) of an ONNX file; mistakes name `option` and the file
    (`writer` is the command that writes such files)."""
    ort = need_package("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: {'is a directory' if path.is_dir() else 'no such file'}"
                        f"; write one with {writer}")
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: not its notes on unused initialisers
        options.intra_op_num_threads = session_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own error types on a bad file
        raise UserError(f"{option} {path}: not a readable ONNX model ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]})") from None
    return session, path


def session_threads() -> int:
    """Threads of each onnxruntime session: half the cores this process may use. predict.py
    runs the keypoint model and the face detector side by side, in two threads (the next
    chunk's detection beside this chunk's keypoints); with all the cores each, they fight
    over them (2 cores: 15% more photos/s with one thread each, alternated)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 2) // 2)


def export_face_net(params) -> bytes:
    """A face detector's parameters (`fkd_jax.models.face_net`, as `nnx.state(model,
    nnx.Param)`) as an ONNX model: input "canvases" (B, H, W, 1), output "outputs"
    (B, H / STRIDE, W / STRIDE, CHANNELS), for any H and W that are multiples of
    CANVAS_MULTIPLE (the net is convolutional; `to_fine_canvas`)."""
    jax2onnx = need_package("jax2onnx")
    from flax import nnx

    from fkd_jax.data.face_scenes import CANVAS_MULTIPLE
    from fkd_jax.models import face_net

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: face_net.create_face_net(0, "portable")),
                            nnx.Param)

    def detect(canvases):
        return nnx.merge(graphdef, params)(canvases)

    m = CANVAS_MULTIPLE  # jax's shape polymorphism: sides h and w times it, h, w >= 1
    proto = jax2onnx.to_onnx(detect, [("B", f"{m}*h", f"{m}*w", 1)],
                             model_name="fkd_jax_face_net", input_names=["canvases"],
                             output_names=["outputs"])
    return proto.SerializeToString()


def load_onnx_predictor(path: str | Path, batch_size: int = EVAL_BATCH) -> Predictor:
    """A `Predictor` (pixels out) running an ONNX keypoint model through onnxruntime on the
    CPU; its image size and keypoint set (for flip TTA) come from the graph's shapes."""
    return onnx_predictors(path)(batch_size)


def onnx_predictors(path: str | Path) -> Callable[[int], Predictor]:
    """`load_onnx_predictor` for any batch size, every one on one onnxruntime session (its
    batch size is free): what `TwoBatchPredictor` takes, for the price of one model load."""
    session, path = open_session(path, "--model", "export.py --format onnx")
    ins, outs = session.get_inputs(), session.get_outputs()
    keypoint_set = check_keypoint_model([i.shape for i in ins], [o.shape for o in outs], path,
                                        float32=all(i.type == "tensor(float)" for i in ins))
    name, image_size = ins[0].name, int(ins[0].shape[1])
    offset = float(session.get_modelmeta().custom_metadata_map.get("flip_label_offset_px", 0.0))

    def run(images) -> np.ndarray:
        return session.run([outs[0].name], {name: np.asarray(images, np.float32)})[0]

    def run_with_spread(images) -> tuple[np.ndarray, np.ndarray]:
        return tuple(session.run(None, {name: np.asarray(images, np.float32)}))

    return lambda batch_size: Predictor(
        run, batch_size, image_size, keypoint_set.flip_permutation, offset,
        spread_fn=run_with_spread if len(outs) == 2 else None)
