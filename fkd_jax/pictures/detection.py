"""Face boxes in whole pictures: OpenCV's Haar cascades, upright and on turned copies.

The cascades ship inside opencv-python-headless 4.x (5.x wheels dropped them). A picture is
searched on a copy at most DETECT_MAX_SIDE pixels on its longer side; where nothing is found
upright, turned copies are searched (TURNS). A second look (`FaceDetector.confirms`) runs the
cascade again on the crop a face's keypoints frame, to drop boxes that were not faces.
Boxes are in the picture's own pixels (x, y of the top-left corner, w, h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fkd_jax.errors import UserError
from fkd_jax.geometry import framing_stats
from fkd_jax.geometry.framing import (
    Framing,
    _warp,
    framing_from_keypoints,
    to_gray,
    turn_picture,
)

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
# The second look's other opinion: a face this cascade finds again is confirmed too. It finds
# turned faces the default cascade misses in their own crop (a 3/4 face above a tie, whose
# tie the default cascade confirmed instead), and no more boxes on nothing (same extra boxes
# on the training people's photos, same faces in the three scenes).
SECOND_CASCADE = "haarcascade_frontalface_alt2.xml"
# Pictures are searched for faces at most this many pixels on their longer side (FaceDetector).
DETECT_MAX_SIDE = 1024
# Where no face is found upright: the tilts (degrees) turned copies are searched at. The
# cascade finds faces within ~15 degrees of upright, so 30-degree steps leave no gap to 105.
TURNS = (30, -30, 60, -60, 90, -90, 180)
_CONFIRM_SIZE, _CONFIRM_WIDEN = 96, 1.6  # FaceDetector.confirms: crop pixels, x the square
CONFIRM_MIN_SCORE = framing_stats.CONFIRM_MIN_SCORE


@dataclass(frozen=True)
class Detection:
    """A face box in picture pixels (x, y of the top-left corner, w, h) and its score.

    `angle` (radians, the box's x axis in the picture) is set when the box was found on a
    turned copy of the picture (`FaceDetector.detect_turned`): the face's square is then the
    box turned by `angle` about its centre. A learned detector gives the face's training
    square itself (`framing`, the box is that square) and vouches for the face (`sure`: no
    second look needed)."""

    box: tuple[float, float, float, float]
    score: float
    angle: float = 0.0
    framing: Framing | None = None
    sure: bool = False

    def bounds(self) -> tuple[float, float, float, float]:
        """The axis-aligned box around the (turned) square: what outputs report and draw."""
        x, y, w, h = self.box
        c, n = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        bw, bh = w * c + h * n, w * n + h * c
        return (x + (w - bw) / 2, y + (h - bh) / 2, bw, bh)



# ---------------------------------------------------------------------------------------------
# Detection


def cascade_path(name: str = DEFAULT_CASCADE) -> Path:
    """Path of a Haar cascade shipped inside the opencv-python-headless wheel."""
    return Path(cv2.data.haarcascades) / name


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = cascade_path(name)
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise UserError(f"cannot load the face detector {path} (opencv-python-headless "
                        "4.x ships it; 5.x does not)")
    return cascade


class FaceDetector:
    """OpenCV Haar cascade face detector (frontal faces), loaded once and reused.

    `detect(gray)` runs haarcascade_frontalface_default with scaleFactor 1.1, minNeighbors 3,
    minSize 30 px; `detect_loose(gray)` the same with minNeighbors 1 (more faces and more false
    boxes: its results are kept only if the predicted keypoints look like a face).
    A picture whose longer side exceeds `max_side` is searched on a copy shrunk to it (area
    average) and the boxes scaled back: a 12-megapixel photo costs what a 1024-pixel one does,
    and the smallest face searched for (30 px of the copy) grows with the picture instead of
    staying at 30 px, where texture gives the cascade false faces.
    """

    def __init__(self, cascade: str = DEFAULT_CASCADE, scale_factor: float = 1.1,
                 min_neighbors: int = 3, min_size: int = 30, max_side: int = DETECT_MAX_SIDE):
        self._cascade_name = cascade
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.max_side = max_side

    # The cascades load when first used: with a learned detector in front, most pictures
    # need neither.
    @cached_property
    def _cascade(self) -> cv2.CascadeClassifier:
        return _load_cascade(self._cascade_name)

    @cached_property
    def _second_cascade(self) -> cv2.CascadeClassifier:
        return _load_cascade(SECOND_CASCADE)

    def detect(self, gray: np.ndarray, min_neighbors: int | None = None) -> list[Detection]:
        """Face boxes of a picture, best first: the cascade's (`detect_cascade`); a learned
        detector in front of it (`NetFaceDetector`) answers here instead."""
        return self.detect_cascade(gray, min_neighbors)

    def detect_cascade(self, gray: np.ndarray, min_neighbors: int | None = None
                       ) -> list[Detection]:
        """The cascade's face boxes (x, y, w, h in the picture's pixels) of a grayscale uint8
        picture (H, W), best score first. The score is the cascade's last-stage weight
        (levelWeights): higher is surer, not a probability."""
        gray = to_gray(gray)
        h, w = gray.shape
        sx = sy = 1.0
        if max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            small = (max(1, round(w * s)), max(1, round(h * s)))
            gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
            sx, sy = w / small[0], h / small[1]
        n = self.min_neighbors if min_neighbors is None else min_neighbors
        rects, _, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=n,
            minSize=(self.min_size, self.min_size), outputRejectLevels=True)
        found = [Detection((float(x) * sx, float(y) * sy, float(bw) * sx, float(bh) * sy),
                           float(s)) for (x, y, bw, bh), s in
                 zip(np.reshape(rects, (-1, 4)), np.ravel(weights))]
        return sorted(found, key=lambda d: -d.score)

    def detect_all(self, grays: Sequence[np.ndarray]) -> list[list[Detection]]:
        """`detect` of each picture (a learned detector batches them)."""
        return [self.detect(g) for g in grays]

    def detect_loose(self, gray: np.ndarray) -> list[Detection]:
        """The fallback for pictures where `detect` finds nothing (minNeighbors 1)."""
        return self.detect_cascade(gray, min_neighbors=1)

    def detect_turned(self, gray: np.ndarray, turns: Sequence[float] = TURNS
                      ) -> list[Detection]:
        """The other fallback where `detect` finds nothing: the cascade only finds faces
        within ~15 degrees of upright, so a tilted head or a photo taken sideways (without
        EXIF orientation) has none. Searches copies of the picture turned by each of `turns`
        (degrees: the face's own tilt in the picture) and returns the boxes of all, each with
        its `angle`, in the picture's pixels. Not only the first copy with any: a copy turned
        30 degrees from the face finds boxes on texture as readily as none on the face (the
        second look then sorts them out)."""
        gray = to_gray(gray)
        fill = int(np.mean(gray))
        out = []
        for degrees in turns:
            # the copy turned back by the tilt: a face tilted by it is upright there
            copy, rot, shift = turn_picture(gray, -degrees, border_value=fill)
            for d in self.detect_cascade(copy):
                x, y, bw, bh = d.box
                cx, cy = rot.T @ (np.array([x + bw / 2, y + bh / 2]) - shift)
                out.append(Detection((float(cx) - bw / 2, float(cy) - bh / 2, bw, bh),
                                     d.score, math.radians(degrees)))
        return sorted(out, key=lambda d: -d.score)

    def confirms(self, gray: np.ndarray, keypoints_px: np.ndarray) -> bool:
        """Whether the cascade finds the face again, surely enough (`confirm_score` >=
        CONFIRM_MIN_SCORE), in the upright crop framed by the face's own keypoints. The
        keypoint model puts a face shape onto anything; this second look rejects boxes that
        were not faces."""
        return self.confirm_score(gray, keypoints_px) >= CONFIRM_MIN_SCORE

    def confirm_score(self, gray: np.ndarray, keypoints_px: np.ndarray,
                      second: bool = False) -> float:
        """The cascade's score for a face found in the training square framed by the
        keypoints (1.6x wider, turned with the eye line, rendered at 96 px, so the square is
        60 px) whose box is centred within a quarter side and 0.5-1.5 sides wide; -inf when
        there is none. Searching only those sizes makes it ~10x cheaper than a detection.
        `second` asks SECOND_CASCADE instead (its scores are on another scale)."""
        cascade = self._second_cascade if second else self._cascade
        f = framing_from_keypoints(keypoints_px, rotate=True)
        size = _CONFIRM_SIZE
        crop = _warp(to_gray(gray), Framing(f.cx, f.cy, f.side * _CONFIRM_WIDEN, f.angle), size)
        side, best = size / _CONFIRM_WIDEN, -math.inf
        lo, hi = math.ceil(0.5 * side), math.floor(1.5 * side)
        rects, _, weights = cascade.detectMultiScale3(
            crop, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(lo, lo), maxSize=(hi, hi), outputRejectLevels=True)
        for (x, y, w, h), score in zip(np.reshape(rects, (-1, 4)), np.ravel(weights)):
            if (abs(x + w / 2 - size / 2) < 0.25 * side and abs(y + h / 2 - size / 2) < 0.25 * side
                    and 0.5 * side < w < 1.5 * side):
                best = max(best, float(score))
        return best


def detect_faces(grays: Sequence[np.ndarray], detector: FaceDetector,
                 cascade_only: bool = False) -> tuple[list[list[Detection]], list[bool]]:
    """Detector boxes of each picture, and whether they came from the fallbacks: where the
    detector finds nothing upright, the boxes of the turned copies and of the loose pass
    (`FaceDetector.detect_turned`, `detect_loose`); a face from these is kept only if
    confirmed. `cascade_only`: the Haar cascade's boxes even where `detector` has a learned
    detector in front of it."""
    boxes, loose = [], []
    first = ([detector.detect_cascade(g) for g in grays] if cascade_only
             else detector.detect_all(grays))
    for g, found in zip(grays, first):
        loose.append(not found)
        boxes.append(found or detector.detect_turned(g) + detector.detect_loose(g))
    return boxes, loose


