"""Keypoints on your photos and videos: find every face, frame it as trained, predict, map back.
  python predict.py --workdir=RUN_DIR --out=OUT PATH...         # PATH: image, folder or video
  python predict.py --model=model.jaxexport --out=OUT PATH...   # an exported model (export.py)
  python predict.py --workdir=RUN_DIR --out=OUT --box=40,60,120,120 photo.jpg  # your face box
  python predict.py --workdir=RUN_DIR --out=OUT --labels=keypoints.csv PHOTOS...  # score them
Folders are searched recursively for images (.jpg .jpeg .png .bmp .tif .tiff .webp) and videos
(.mp4 .avi .mov .mkv). OUT gets keypoints.csv (one row per face, picture pixels), overlays/
(mirroring the inputs' folders), summary.json, and with --labels scores.json, scores.csv and
ced.png (fkd_jax/pictures/outputs.py). A whole-command mistake stops with one line, exit status
2, before anything is written; a file that fails is named and skipped (exit status 1); Ctrl-C
keeps what is done (exit status 130). From Python: fkd_jax.Detector (docs/python_api.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import flags

from fkd_jax.pictures.location import DEFAULT_PASSES, DEFAULT_RELAX, DEFAULT_SETTLE
from fkd_jax.pictures.video import OneEuroSettings

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py (or an "
                               "ensemble's).")
_MODEL = flags.DEFINE_string("model", None, "Exported model file (export.py), instead of "
                             "--workdir.")
_FACE_NET = flags.DEFINE_string("face_net", None, "A learned face detector (train_face_net.py's "
                                ".onnx file) in front of the Haar cascade: faster on photos "
                                "like those it was trained on.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "Which checkpoint of --workdir.")
_OUT = flags.DEFINE_string("out", None, "Output folder (required).")
_BOX = flags.DEFINE_string("box", None, "x,y,w,h: the face box (picture pixels) of every "
                           "picture; skips detection.")
_PASSES = flags.DEFINE_integer("passes", DEFAULT_PASSES, "Most passes per face: 1 from the "
                               "box, then re-framed from the keypoints until the crop settles.",
                               lower_bound=1)
_SETTLE = flags.DEFINE_float("settle", DEFAULT_SETTLE, "Stop re-framing a face once its crop "
                             "moves less than this fraction of its side (0: always --passes).",
                             lower_bound=0.0)
_RELAX = flags.DEFINE_float("relax", DEFAULT_RELAX, "Each re-framing moves the crop this many "
                            "times as far as the keypoints say (1: as far); in (0, 2).")
_TTA = flags.DEFINE_bool("tta", False, "Average with the mirror image.")
_FINAL_SCALES = flags.DEFINE_list("final_scales", [], "Read each face's last square again at "
                                  "these sides (x its own, e.g. 0.95,1,1.05) with the mirror "
                                  "image and average: 2 crops a scale more per face (at 1, "
                                  "the mirror image alone).")
_NO_RETRY = flags.DEFINE_bool("no_retry", False, "Keep a face still moving after the last pass "
                              "as it is (default: locate it again from its box with TTA).")
_NO_ROTATE = flags.DEFINE_bool("no_rotate", False, "Keep re-framed crops upright (default: "
                               "turn them with the eye line).")
_SMOOTHING = flags.DEFINE_enum("smoothing", "on", ["on", "off"], "One Euro filter on video "
                               "keypoints (photos are never smoothed).")
_MIN_CUTOFF = flags.DEFINE_float("min_cutoff", OneEuroSettings.min_cutoff,
                                 "One Euro min cutoff, Hz.")
_BETA = flags.DEFINE_float("beta", OneEuroSettings.beta, "One Euro speed coefficient, 1/px.")
_LABELS = flags.DEFINE_string("labels", None, "CSV of true keypoints in picture pixels (file + "
                              "the 30 Kaggle columns): score the photos against it.")
_NO_OVERLAYS = flags.DEFINE_bool("no_overlays", False, "Write no overlay pictures.")
_CACHE = flags.DEFINE_string("compilation_cache", None, "Folder of compiled programs kept "
                             "across runs (later runs skip compiling); default "
                             "~/.cache/fkd-jax/jax, '' for none.")


def main(argv: list[str]) -> int:
    from fkd_jax import cli
    from fkd_jax.api import Detector
    from fkd_jax.errors import UserError
    from fkd_jax.inference import onnx_model
    from fkd_jax.pictures import inputs, outputs, scoring

    started = time.perf_counter()
    paths = cli.parse_flags(argv, flags.FLAGS, positional=True)
    if not _OUT.value:
        raise UserError("--out is required (the output folder)")
    if bool(_WORKDIR.value) == bool(_MODEL.value):
        raise UserError("give --workdir RUN_DIR (a trained run) or --model FILE (exported), "
                        "one of them")
    if not paths:
        raise UserError("give at least one PATH (an image, a folder or a video)")
    boxes = [parse_box(_BOX.value)] if _BOX.value is not None else None
    items = inputs.find_inputs(paths)
    labels = scoring.read_labels(_LABELS.value) if _LABELS.value else None
    out = Path(_OUT.value)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")

    if _WORKDIR.value and not Path(_WORKDIR.value).is_dir():
        raise UserError(f"--workdir {_WORKDIR.value}: no such folder")
    if _MODEL.value and not Path(_MODEL.value).is_file():
        raise UserError(f"--model {_MODEL.value}: no such file")
    if _FACE_NET.value and not Path(_FACE_NET.value).is_file():
        raise UserError(f"--face_net {_FACE_NET.value}: no such file; write one with "
                        "train_face_net.py")
    if not (_MODEL.value and onnx_model.is_onnx(_MODEL.value)):  # onnxruntime compiles no XLA
        cli.use_compilation_cache(_CACHE.value)
    t = time.perf_counter()
    detector = Detector.load(
        _WORKDIR.value or _MODEL.value, checkpoint=_CHECKPOINT.value, passes=_PASSES.value,
        settle=_SETTLE.value, relax=_RELAX.value, tta=_TTA.value, retry=not _NO_RETRY.value,
        final_scales=_FINAL_SCALES.value,
        rotate=not _NO_ROTATE.value, smoothing=_SMOOTHING.value == "on",
        min_cutoff=_MIN_CUTOFF.value, beta=_BETA.value, face_net=_FACE_NET.value)
    detector.face_detector  # loads OpenCV's cascades: a missing one stops before any output
    return outputs.process(detector, items, out, boxes=boxes, overlays=not _NO_OVERLAYS.value,
                           labels=labels, started=started,
                           timings={"load_model_s": time.perf_counter() - t})


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x,y,w,h' (picture pixels) -> floats; w and h > 0."""
    import math

    from fkd_jax.errors import UserError

    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--box={text!r} must be x,y,w,h (four numbers, picture pixels)") from None
    if not (w > 0 and h > 0 and all(math.isfinite(v) for v in (x, y, w, h))):
        raise UserError(f"--box={text!r}: width and height must be > 0")
    return x, y, w, h


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    sys.exit(exit_on_user_error(main)(sys.argv))
