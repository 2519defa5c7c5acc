"""Finding faces with the learned detector (`fkd_jax.models.face_net`), Haar cascade behind it.

A picture is shrunk onto the net's square canvas (`to_canvas`), the net's centre heatmap is
searched for peaks (`decode`), and each peak's square (centre, side, angle) becomes the
face's first framing: the keypoint model starts from the training square itself instead of a
cascade box's guess at it. Where the net is sure of nothing in a picture, the Haar cascade
searches it as before (`NetFaceDetector` is a `FaceDetector`), and in pictures larger than
ALONE_MAX_SIDE, where small faces are below what the net sees, it searches beside the net.
The cascade's second look is not needed for the net's faces, whose score is itself a learned
check.

Decoding is numpy, and an exported detector (`FILE.onnx`) runs on onnxruntime: no jax.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fkd_jax.data.face_scenes import CHANNELS, INPUT_SIZE, STRIDE, to_canvas
from fkd_jax.errors import UserError
from fkd_jax.geometry.framing import Framing
from fkd_jax.pictures.detection import Detection, FaceDetector

# A peak is a face from this probability on. The net trained by train_face_net.py's defaults
# on the training people's 420 photos passes it on 98.8% of them (the rest go to the cascade)
# with 6 peaks on no face.
DEFAULT_THRESHOLD = 0.5
# The net sees a picture at INPUT_SIZE pixels and finds faces from ~24 of those on: in a
# picture larger than this, faces the cascade finds (30 pixels on) may be too small for it,
# so the cascade searches beside it there.
ALONE_MAX_SIDE = 2 * INPUT_SIZE
# The net's faces tilted further than this (radians) get the cascade's second look: a face
# turned far, or a photo taken sideways, is where its angle can be wrong by a half turn, and a
# face's shape upside down still looks like a face's shape.
SURE_MAX_TILT = math.radians(45)
# Squares whose centres lie within this fraction of the larger square's side are one face.
_SAME_FACE = 0.5


def decode(outputs: np.ndarray, scale: float, threshold: float = DEFAULT_THRESHOLD,
           size: int = INPUT_SIZE) -> list[Detection]:
    """Faces from one canvas's outputs (G, G, 6): peaks of the centre probability (above
    `threshold`, highest in their 3 x 3 cells, one per face) as Detections in picture pixels
    (`scale` canvas pixels per picture pixel), best first, each with its square as `framing`
    and `sure` set unless it is tilted more than SURE_MAX_TILT."""
    prob = 1.0 / (1.0 + np.exp(-outputs[..., 0]))
    padded = np.pad(prob, 1, constant_values=-1.0)
    g = prob.shape[0]
    neighbours = np.max([padded[di:di + g, dj:dj + g] for di in range(3) for dj in range(3)],
                        axis=0)
    found: list[Detection] = []
    for i, j in zip(*np.nonzero((prob >= threshold) & (prob >= neighbours))):
        dx, dy, log_side, c, n = (float(v) for v in outputs[i, j, 1:])
        cx, cy = (j + 0.5 + dx) * STRIDE / scale, (i + 0.5 + dy) * STRIDE / scale
        side = math.exp(log_side) * size / scale
        f = Framing(cx, cy, side, math.atan2(n, c))
        found.append(Detection((cx - side / 2, cy - side / 2, side, side), float(prob[i, j]),
                               f.angle, framing=f, sure=abs(f.angle) <= SURE_MAX_TILT))
    found.sort(key=lambda d: -d.score)
    kept: list[Detection] = []
    for d in found:
        if all(math.hypot(d.framing.cx - k.framing.cx, d.framing.cy - k.framing.cy)
               > _SAME_FACE * max(d.framing.side, k.framing.side) for k in kept):
            kept.append(d)
    return kept


def load_face_net(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """The run function (canvases -> outputs) of a detector file written by
    train_face_net.py, on one onnxruntime session (safe to share between threads); a file
    that is not one is a UserError naming --face_net."""
    from fkd_jax.inference.onnx_model import open_session

    session, path = open_session(path, "--face_net", "train_face_net.py")
    ins, outs = session.get_inputs(), session.get_outputs()
    want_in, want_out = [INPUT_SIZE, INPUT_SIZE, 1], [INPUT_SIZE // STRIDE] * 2 + [CHANNELS]
    if (len(ins), len(outs)) != (1, 1) or list(ins[0].shape[1:]) != want_in or list(
            outs[0].shape[1:]) != want_out:
        raise UserError(f"--face_net {path}: not a face detector (input "
                        f"{[i.shape for i in ins]}, output {[o.shape for o in outs]}; one "
                        f"written by train_face_net.py takes (B, {INPUT_SIZE}, "
                        f"{INPUT_SIZE}, 1))")
    name = ins[0].name
    return lambda canvases: session.run(None, {name: canvases})[0]


class NetFaceDetector(FaceDetector):
    """The learned detector in front of the Haar cascade: `detect` returns the net's faces,
    or the cascade's where the net finds none; the fallbacks (turned copies, loose pass) and
    the second look stay the cascade's.

    `run` maps canvases (B, S, S, 1) float32 to outputs (B, G, G, 6): an onnxruntime session
    (`load`) or a jitted JAX model."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray],
                 threshold: float = DEFAULT_THRESHOLD, alone_max_side: int = ALONE_MAX_SIDE,
                 **cascade_options):
        super().__init__(**cascade_options)
        self._run, self.threshold, self.alone_max_side = run, threshold, alone_max_side

    @classmethod
    def load(cls, path: str | Path, threshold: float = DEFAULT_THRESHOLD,
             **cascade_options) -> "NetFaceDetector":
        """A detector exported by train_face_net.py (an ONNX file), run by onnxruntime."""
        return cls(load_face_net(path), threshold, **cascade_options)

    def detect_net(self, grays: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The net's faces only, best first, in each picture (one batch of canvases)."""
        if not len(grays):
            return []
        canvases, scales = zip(*(to_canvas(g) for g in grays))
        outputs = np.asarray(self._run(np.stack(canvases)[..., None]))
        return [decode(o, s, self.threshold) for o, s in zip(outputs, scales)]

    def detect(self, gray: np.ndarray, min_neighbors: int | None = None) -> list[Detection]:
        if min_neighbors is None:
            return self.detect_all([gray])[0]
        return self.detect_cascade(gray, min_neighbors)

    def detect_all(self, grays: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The net's faces of each picture; the cascade's where the net finds none, and
        beside the net's in a picture larger than `alone_max_side` (its boxes on faces the
        net found left out)."""
        out = []
        for g, found in zip(grays, self.detect_net(grays)):
            if not found or max(np.shape(g)[:2]) > self.alone_max_side:
                found = found + [c for c in self.detect_cascade(g) if not _found(c, found)]
            out.append(found)
        return out


def _found(box: Detection, faces: Sequence[Detection]) -> bool:
    """Whether a cascade box lies on one of the net's faces (its centre within half a side)."""
    x, y, w, h = box.box
    return any(math.hypot(x + w / 2 - f.framing.cx, y + h / 2 - f.framing.cy)
               < _SAME_FACE * f.framing.side for f in faces)
