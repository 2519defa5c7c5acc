"""Finding faces with the learned detector (`fkd_jax.models.face_net`), Haar cascade behind it.

A picture is shrunk onto the net's square canvas (`to_canvas`), the net's centre heatmap is
searched for peaks (`decode`), and each peak's square (centre, side, angle) becomes the
face's first framing: the keypoint model starts from the training square itself instead of a
cascade box's guess at it. Where the net is sure of nothing in a picture, the Haar cascade
searches it as before (`NetFaceDetector` is a `FaceDetector`). In pictures larger than
ALONE_MAX_SIDE, where small faces are below what the net sees on its canvas, the net looks
again at the picture itself (FINE_SCALE, `to_fine_canvas`) down to the faces the cascade would
find; a detector file of one canvas size (written before the net took any size) has the
cascade search beside it there instead.
The cascade's second look is not needed for the faces of the net's first look, whose score is
itself a learned check (unless tilted past SURE_MAX_TILT); the finer look's faces get it.

Decoding is numpy, and an exported detector (`FILE.onnx`) runs on onnxruntime: no jax.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fkd_jax.data.face_scenes import (
    CHANNELS,
    INPUT_SIZE,
    STRIDE,
    to_canvas,
    to_fine_canvas,
)
from fkd_jax.errors import UserError
from fkd_jax.geometry.framing import Framing
from fkd_jax.pictures.detection import Detection, FaceDetector

# A peak is a face from this probability on. The net trained by train_face_net.py's defaults
# on the training people's 420 photos passes it on 98.8% of them (the rest go to the cascade)
# with 6 peaks on no face.
DEFAULT_THRESHOLD = 0.5
# The net sees a picture at INPUT_SIZE pixels and finds faces from ~24 of those on: in a
# picture larger than this, faces the cascade finds (30 pixels on) may be too small for it,
# so it looks again, finer, there.
ALONE_MAX_SIDE = 2 * INPUT_SIZE
# The finer look's canvas pixels per picture pixel (of the picture shrunk to the cascade's
# max_side): the net's smallest faces (~24 canvas pixels) are then the cascade's (30 pixels).
# Its faces run from 20 / FINE_SCALE to 150 / FINE_SCALE pixels (SIDE_RANGE), the whole
# picture's from 0.15 of its longer side up: together every size, from 30 pixels on.
FINE_SCALE = 0.8
# The net's faces tilted further than this (radians) get the cascade's second look: a face
# turned far, or a photo taken sideways, is where its angle can be wrong by a half turn, and a
# face's shape upside down still looks like a face's shape.
SURE_MAX_TILT = math.radians(45)
# Squares whose centres lie within this fraction of the larger square's side are one face.
_SAME_FACE = 0.5


def decode(outputs: np.ndarray, scale: float, threshold: float = DEFAULT_THRESHOLD,
           size: int = INPUT_SIZE) -> list[Detection]:
    """Faces from one canvas's outputs (GH, GW, 6): peaks of the centre probability (above
    `threshold`, highest in their 3 x 3 cells, one per face) as Detections in picture pixels
    (`scale` canvas pixels per picture pixel), best first, each with its square as `framing`
    and `sure` set unless it is tilted more than SURE_MAX_TILT."""
    prob = 1.0 / (1.0 + np.exp(-outputs[..., 0]))
    padded = np.pad(prob, 1, constant_values=-1.0)
    gh, gw = prob.shape
    neighbours = np.max([padded[di:di + gh, dj:dj + gw] for di in range(3)
                         for dj in range(3)], axis=0)
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


class OnnxFaceNet:
    """An exported detector on one onnxruntime session (safe to share between threads):
    canvases (B, H, W, 1) -> outputs (B, H / STRIDE, W / STRIDE, CHANNELS). `any_size`: the
    file takes canvases of any size (else only INPUT_SIZE x INPUT_SIZE)."""

    def __init__(self, session, any_size: bool):
        self._session, self._name, self.any_size = session, session.get_inputs()[0].name, any_size

    def __call__(self, canvases: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._name: canvases})[0]


def load_face_net(path: str | Path) -> OnnxFaceNet:
    """A detector file written by train_face_net.py, loaded; a file that is not one is a
    UserError naming --face_net."""
    from fkd_jax.inference.onnx_model import open_session

    session, path = open_session(path, "--face_net", "train_face_net.py")
    ins, outs = session.get_inputs(), session.get_outputs()
    fixed_in, fixed_out = [INPUT_SIZE, INPUT_SIZE, 1], [INPUT_SIZE // STRIDE] * 2 + [CHANNELS]
    shapes = [list(v.shape[1:]) for v in (*ins, *outs)]
    any_size = all(isinstance(d, str) for d in (shapes[0][:2] if shapes else ()))
    if (len(ins), len(outs)) != (1, 1) or not (
            shapes == [fixed_in, fixed_out]
            or (any_size and shapes[0][2:] == [1] and shapes[1][2:] == [CHANNELS])):
        raise UserError(f"--face_net {path}: not a face detector (input "
                        f"{[i.shape for i in ins]}, output {[o.shape for o in outs]}; one "
                        f"written by train_face_net.py takes (B, H, W, 1))")
    return OnnxFaceNet(session, any_size)


class NetFaceDetector(FaceDetector):
    """The learned detector in front of the Haar cascade: `detect` returns the net's faces,
    or the cascade's where the net finds none; the fallbacks (turned copies, loose pass) and
    the second look stay the cascade's.

    `run` maps canvases (B, H, W, 1) float32 to outputs (B, H / STRIDE, W / STRIDE, 6): an
    `OnnxFaceNet` (`load`) or a jitted JAX model; one without `any_size` (a file of one canvas
    size) leaves the finer look at large pictures to the cascade."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray],
                 threshold: float = DEFAULT_THRESHOLD, alone_max_side: int = ALONE_MAX_SIDE,
                 **cascade_options):
        super().__init__(**cascade_options)
        self._run, self.threshold, self.alone_max_side = run, threshold, alone_max_side
        self.fine = bool(getattr(run, "any_size", True))

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

    def detect_fine(self, gray: np.ndarray) -> list[Detection]:
        """The net's faces on the picture at FINE_SCALE (of the picture shrunk to
        `max_side`): faces from the cascade's smallest on, best first. None is `sure`: on a
        canvas this large the net also fires on clothes and backgrounds (photos enlarged 4x:
        ~1 such box a photo), so each gets the cascade's second look."""
        scale = FINE_SCALE * min(1.0, self.max_side / max(np.shape(gray)[:2]))
        canvas = to_fine_canvas(gray, scale)
        found = decode(np.asarray(self._run(canvas[None, ..., None]))[0], scale, self.threshold)
        return [dataclasses.replace(d, sure=False) for d in found]

    def detect(self, gray: np.ndarray, min_neighbors: int | None = None) -> list[Detection]:
        if min_neighbors is None:
            return self.detect_all([gray])[0]
        return self.detect_cascade(gray, min_neighbors)

    def detect_all(self, grays: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The net's faces of each picture; in a picture larger than `alone_max_side`, with
        those of its finer look (or the cascade's) that are not on them; the cascade's where
        the net finds none."""
        out = []
        for g, found in zip(grays, self.detect_net(grays)):
            large = max(np.shape(g)[:2]) > self.alone_max_side
            if large and self.fine:
                found = found + [d for d in self.detect_fine(g) if not _found(d, found)]
            if not found or (large and not self.fine):
                found = found + [c for c in self.detect_cascade(g) if not _found(c, found)]
            out.append(found)
        return out


def _found(box: Detection, faces: Sequence[Detection]) -> bool:
    """Whether a box lies on one of the net's faces (its centre within half their side)."""
    x, y, w, h = box.box
    return any(math.hypot(x + w / 2 - f.framing.cx, y + h / 2 - f.framing.cy)
               < _SAME_FACE * f.framing.side for f in faces)
