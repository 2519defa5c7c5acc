"""Keypoints of the faces in pictures: crop, predict, re-frame from the keypoints, repeat.

Pass 1 crops each face from its detector box; passes 2, 3, ... re-frame it from its own
predicted keypoints (the training rule) until the square settles. Crops of many pictures go
through the predictor together, per pass. A face whose box may not be a face is kept only if
the detector confirms it on its own crop. Keypoints are in the picture's own pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from fkd_jax.evaluation import metrics
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import (
    _IDX,
    MAX_SHAPE_ERROR,
    Framing,
    framing_from_box,
    framing_from_keypoints,
    hidden,
    kaggle15,
    shape_error,
)
from fkd_jax.pictures.detection import (
    CONFIRM_MIN_SCORE,
    Detection,
    FaceDetector,
    detect_faces,
)
from fkd_jax.pictures.reading import PredictFn, read_squares, read_views

# Passes: 1 from the detector box, then re-framed from the keypoints until the square moves
# less than DEFAULT_SETTLE of its side, at most DEFAULT_PASSES in all. Chosen on the training
# people's photos: as accurate as 3 fixed passes with 2.3 crops a face instead of 3, and far-off
# boxes (profile faces) get the passes they need (docs/photo_pipeline.md).
DEFAULT_PASSES = 8
DEFAULT_SETTLE = 0.02
# Each re-framing moves the square DEFAULT_RELAX times as far as the rule says: a model follows
# a mis-framed crop part of the way (unet_landmarks68's keypoints imply a side 0.43 of a crop's
# zoom, a centre 0.18-0.29 of its shift), so the plain rule closes only about half the gap a
# pass; the square it converges on is the same. Chosen on the training people's photos
# (unet_small.onnx with the face net; 1.3-1.5 alike): 2.44 crops a face at NME 3.37%, against
# 2.53 at 3.43% with plain re-framing (scripts/framing_cost.py, docs/photo_pipeline.md).
DEFAULT_RELAX = 1.4


@dataclass(frozen=True)
class Face:
    """One face in a picture. Everything in the picture's own pixels (origin top-left corner,
    the continuous convention of fkd_jax.geometry.keypoints): `keypoints` (K, 2) named by
    `names`; `keypoints_px` the same as the model's flat (2K,) output (x, y interleaved).
    The public face type (`fkd_jax.Face`); a tracked video's faces are `TrackedFace`s."""

    box: tuple[float, float, float, float]  # x, y, w, h of the detector's (or given) box
    # (found on a turned copy: the upright box around the turned one, Detection.bounds)
    score: float  # detector confidence (higher is surer); 1.0 for a box given by the user
    keypoints_px: np.ndarray  # (2K,) keypoints in Kaggle column order (x, y interleaved)
    # Keypoints after each pass (the last equals keypoints_px): to measure what a pass gains.
    history: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)
    shape_error: float = float("nan")  # see MAX_SHAPE_ERROR
    # (K,) each keypoint's spread in picture pixels (`Predictor.with_spread`, from the crop
    # its keypoints came from); None or NaN where the model gives none (exported models)
    spread_px: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def keypoints(self) -> np.ndarray:
        """(K, 2) float64: (x, y) of each keypoint, in the order of `names`."""
        return keypoints.as_points(np.asarray(self.keypoints_px, np.float64))

    @property
    def eye_distance_px(self) -> float:
        """Distance between the predicted outer eye corners, picture pixels: the face's size."""
        return _centre_and_size(self.keypoints_px)[1]

    @property
    def confidence(self) -> np.ndarray:
        """(K,) in [0, 1] for each keypoint, NaN where the model gives no spread:
        `confidence_from_spread` of its spread against this face's eye distance."""
        if self.spread_px is None:
            return np.full(len(self.keypoints_px) // 2, np.nan)
        return confidence_from_spread(self.spread_px, self.eye_distance_px)

    @property
    def kaggle15_spread_px(self) -> np.ndarray:
        """(15,) the spreads of Kaggle's 15 keypoints (`kaggle15`): for a 68-point model the
        points averaged into one (eye centres) average their spreads; NaN without spreads."""
        if self.spread_px is None:
            return np.full(keypoints.NUM_KEYPOINTS, np.nan)
        return kaggle15(np.repeat(np.asarray(self.spread_px, np.float64), 2, axis=-1))[0::2]

    @property
    def kaggle15_confidence(self) -> np.ndarray:
        """(15,) the confidence of Kaggle's 15 keypoints, from `kaggle15_spread_px`."""
        return confidence_from_spread(self.kaggle15_spread_px, self.eye_distance_px)

    @property
    def names(self) -> tuple[str, ...]:
        """The K keypoint names (the model's keypoint set, known by its 2K outputs)."""
        return keypoint_names(len(self.keypoints_px))


# The error a keypoint must stay under to count as right: this fraction of the face's outer
# eye-corner distance (the failure threshold of NME scoring, applied to one point).
CONFIDENT_WITHIN = 0.1


# Soft-argmax heatmaps are broader than the model's real error: spreads are scaled by this
# before they become confidences, so that on photos the mean confidence equals the share of
# points within CONFIDENT_WITHIN. Fitted for unet_pair on the training people's 420 photos by
# scripts/fit_confidence.py (raw spreads: mean confidence 0.43 where 0.99 of points are right).
SPREAD_SCALE = 0.3278


def confidence_from_spread(spread_px: np.ndarray, eye_distance_px: float,
                           scale: float = SPREAD_SCALE) -> np.ndarray:
    """Confidence in [0, 1] of keypoints whose model spreads its belief `spread_px` (RMS
    radius, picture pixels): the chance that a 2-D Gaussian of radius `scale` * spread
    falls within CONFIDENT_WITHIN of the eye distance of its mean (`metrics.chance_within`).
    Monotone in the spread, so it ranks points as the spread does; how well that matches real
    errors is measured by `metrics.confidence_report`. NaN spreads stay NaN."""
    return metrics.chance_within(CONFIDENT_WITHIN * float(eye_distance_px),
                                 scale * np.asarray(spread_px, np.float64))


def keypoint_names(width: int) -> tuple[str, ...]:
    """Names of the keypoints of a model that predicts `width` (2K) coordinates."""
    for candidate in keypoints.KEYPOINT_SETS.values():
        if 2 * candidate.num_keypoints == width:
            return candidate.names
    return tuple(f"p{i}" for i in range(width // 2))


# ---------------------------------------------------------------------------------------------
# Locating keypoints: crops of many pictures per predictor call


def locate(grays: Sequence[np.ndarray], picture_index: Sequence[int],
           framings: Sequence[Framing], predict: PredictFn, passes: int = DEFAULT_PASSES,
           tta: bool = False, rotate: bool = True, relax: float = DEFAULT_RELAX,
           settle: float = DEFAULT_SETTLE) -> list[np.ndarray]:
    """Keypoints (N, 2K) in picture pixels after each of `passes` passes, for N faces given by
    the picture each lies in (`picture_index` into `grays`) and its first framing.

    Pass 1 crops the given framings; every later pass re-frames each face from the previous
    pass's keypoints by the training rule (`framing_from_keypoints`). All crops of a pass go
    through `predict` in one call (it batches; nothing recompiles). Crops are rendered at the
    predictor's `image_size` (96 when it has none).

    `settle` > 0 stops re-framing a face once its square would move less than that (centre
    distance and side change, as fractions of the side) between two passes framed by the
    rule: it is not cropped again, and the keypoints read in the square before are carried to
    the later passes unchanged, so far-off starts can be given many passes without spending
    them on faces that have converged. Every face gets pass 2: a first re-framing close to
    the given framing says little (on a real photo the crop then crept 2-8% a pass for four
    more passes, NME 12.5% -> 3.0%).
    `relax` over-relaxes each re-framing (centre and log side move `relax` times as far as
    the rule says; 1: as far): the model follows a mis-framed face part of the way, so plain
    re-framing converges geometrically and slowly (DEFAULT_RELAX). The fixed point, where the
    keypoints frame the square they were read in, is the same.
    """
    return locate_with_spread(grays, picture_index, framings, predict, passes, tta, rotate,
                              relax, settle)[0]


def locate_with_spread(grays: Sequence[np.ndarray], picture_index: Sequence[int],
                       framings: Sequence[Framing], predict: PredictFn,
                       passes: int = DEFAULT_PASSES, tta: bool = False, rotate: bool = True,
                       relax: float = DEFAULT_RELAX, settle: float = DEFAULT_SETTLE
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """`locate`'s history, and (N, K) each face's keypoint spreads in picture pixels from the
    pass its final keypoints came from (NaN when `predict` has no `with_spread`)."""
    return _locate(grays, picture_index, framings, predict, passes, tta, rotate, relax,
                   settle)[:2]


def _locate(grays, picture_index, framings, predict, passes=DEFAULT_PASSES, tta=False,
            rotate=True, relax=DEFAULT_RELAX, settle=DEFAULT_SETTLE):
    """`locate_with_spread`'s (history, spread), each face's last square, and (N,) bool: True
    where its final keypoints are a plain reading (no TTA) of that square (False with TTA, or
    where it settled there and they were read in the square before)."""
    if passes < 1:
        raise ValueError("passes must be >= 1")
    framings = list(framings)
    active = np.ones(len(framings), bool)
    read_plain = np.full(len(framings), not tta)
    history: list[np.ndarray] = []
    for p in range(passes):
        settled = []
        if p > 0:
            current = history[-1].copy()
            for i in np.flatnonzero(active):
                new = _step(framings[i], framing_from_keypoints(current[i], rotate), relax)
                moved = max(math.hypot(new.cx - framings[i].cx, new.cy - framings[i].cy),
                            abs(new.side - framings[i].side)) / framings[i].side
                framings[i] = new
                if moved < settle and p > 1:  # pass 1's crop came from the box, not the rule
                    settled.append(i)
        else:
            current = np.zeros((len(framings), 0))
        active[settled] = False  # not cropped again: they keep the last pass's keypoints
        read_plain[settled] = False
        rows = np.flatnonzero(active) if p > 0 else np.arange(len(framings))
        pred, pred_spread = read_squares(grays, [picture_index[i] for i in rows],
                                         [framings[i] for i in rows], predict, tta)
        out = (current if p > 0 else
               np.zeros((len(framings), pred.shape[1] if len(pred) else keypoints.NUM_COORDS)))
        if p == 0:  # (N, K) picture pixels, rows replaced as their faces are re-cropped
            spread = np.full((len(framings), out.shape[1] // 2), np.nan)
        if len(rows):
            out[rows], spread[rows] = pred, pred_spread
        history.append(out)
    return history, spread, framings, read_plain


def _step(old: Framing, new: Framing, relax: float) -> Framing:
    if relax == 1.0:
        return new
    side = old.side * (new.side / old.side) ** relax
    return Framing(old.cx + relax * (new.cx - old.cx), old.cy + relax * (new.cy - old.cy),
                   side, new.angle)


def find_faces(grays: Sequence[np.ndarray], predict: PredictFn,
               detector: FaceDetector | None = None,
               boxes: Sequence[Sequence[Detection]] | None = None,
               confirm: bool | None = None, loose: Sequence[bool] | None = None,
               passes: int = DEFAULT_PASSES, tta: bool = False, rotate: bool = True,
               settle: float = DEFAULT_SETTLE, max_shape_error: float = MAX_SHAPE_ERROR,
               retry_tta: bool = True, final_scales: Sequence[float] = (),
               relax: float = DEFAULT_RELAX
               ) -> list[list[Face]]:
    """Every face of each picture (grayscale uint8 (H, W)), located: one list of Faces per
    picture, best score first; an empty list when there is no face (never a guess).

    Boxes come from `boxes` (one list per picture) or else from `detect_faces`; a face's
    first crop is its box's `framing` where the detector gives one. With `confirm`
    (default: when the boxes come from the detector here) a face is kept if its keypoints look
    like a face (`shape_error`) and the detector finds it again, surely, in the crop they
    frame (`FaceDetector.confirm_score` >= CONFIRM_MIN_SCORE, or SECOND_CASCADE finds it),
    or a learned detector vouched for its box (`Detection.sure`; where none of a learned
    detector's faces in a picture is confirmed, the cascade searches it again); in a picture
    where no box is confirmed that way, one is kept unless the boxes come from the loose
    fallback (`loose[i]`): the most face-like, first by how many of the two tests
    it passes, then the largest box (texture gives the cascade its false faces at small sizes,
    where its windows are many), then the detector's score.
    A user's box is kept as given. `passes`, `settle`, `relax`, `tta`, `rotate`: `locate`'s.
    With `retry_tta` (and `settle` > 0, `passes` > 1, no `tta`), faces whose square still moves
    at the last pass are located again from their boxes with flip TTA, and take that result
    if it settles: a head turned far from frontal can send the plain model chasing across the
    picture, where the mirrored view's average pulls it back. Faces that settle unconfirmed
    (the plain model lost on a face, or a box on no face) get the same retry on the same
    terms, and are judged again on its result.
    With `final_scales`, every face's last square (for a face that settled: the square it
    settled on) is read at those scales with the mirror image (`read_views`) and the views'
    mean is its keypoints (one more history entry).
    Faces whose keypoints coincide (two boxes on one face) are merged, keeping the higher score;
    with `confirm`, faces another face would hide are dropped (`drop_hidden`).
    """
    confirm = boxes is None if confirm is None else confirm
    if confirm and detector is None:
        raise ValueError("confirming faces needs the detector")
    if boxes is None:
        if detector is None:
            raise ValueError("give a detector or boxes")
        boxes, loose = detect_faces(grays, detector)
    if len(boxes) != len(grays):
        raise ValueError("one list of boxes per picture")
    loose = [False] * len(grays) if loose is None else list(loose)
    index = [i for i, bs in enumerate(boxes) for _ in bs]
    dets = [d for bs in boxes for d in bs]
    first = [d.framing or framing_from_box(d.box, d.angle) for d in dets]
    history, spread, framings, read_plain = _locate(grays, index, first, predict, passes, tta,
                                                   rotate, relax, settle)

    def looks(j: int) -> tuple[bool, bool]:  # (shaped, seen) of face j: seen by a cascade,
        kp = history[-1][j]  # or found by a learned detector (its score is its own check)
        seen = (dets[j].sure
                or detector.confirm_score(grays[index[j]], kp) >= CONFIRM_MIN_SCORE
                or detector.confirm_score(grays[index[j]], kp, second=True) > -math.inf)
        return shape_error(kp) <= max_shape_error, seen

    checks = [looks(j) for j in range(len(dets))] if confirm else []
    redone: list[int] = []  # faces read again with TTA
    if retry_tta and not tta and settle > 0 and passes > 1:
        unconfirmed = np.array([not all(c) for c in checks] if confirm else [], bool)
        history, spread, framings, read_plain, redone = _retry_unsettled(
            grays, index, framings, read_plain, first, predict, history, spread, rotate,
            relax, settle, unconfirmed)
        for j in redone if confirm else ():
            checks[j] = looks(j)
    if len(final_scales) and len(dets):
        final, spread = read_views(grays, index, framings, predict, final_scales,
                                   (history[-1], spread, read_plain))
        history = history + [final]
    faces: list[list[Face]] = [[] for _ in grays]
    candidates: dict[int, list[tuple[int, float, float, Face]]] = {}
    for j, (pic, det) in enumerate(zip(index, dets)):
        kp = history[-1][j]
        face = Face(det.bounds(), det.score, kp, tuple(h[j] for h in history), shape_error(kp),
                    spread[j])
        if not confirm:
            faces[pic].append(face)
            continue
        shaped, seen = checks[j]
        if shaped and seen:
            faces[pic].append(face)
        elif not loose[pic]:
            candidates.setdefault(pic, []).append(
                (int(shaped) + int(seen), det.box[2] * det.box[3], det.score, face))
    for pic, cands in candidates.items():
        if not faces[pic]:  # none confirmed: the most face-like of the detector's boxes
            faces[pic].append(max(cands, key=lambda c: c[:3])[3])
    if confirm:
        _second_opinion(grays, predict, detector, index, dets, checks, faces,
                        dict(passes=passes, tta=tta, rotate=rotate, settle=settle, relax=relax,
                             max_shape_error=max_shape_error, retry_tta=retry_tta,
                             final_scales=final_scales))
    return [drop_hidden(merge_duplicates(fs)) if confirm else merge_duplicates(fs)
            for fs in faces]


def _second_opinion(grays, predict, detector, index, dets, checks, faces, options) -> None:
    """Pictures whose every box came from a learned detector and none of whose faces is
    confirmed (a lit pattern taken for eyes: no face's shape; a face far tilted whose crop
    the net turned wrong: not seen again by the cascade). The Haar cascade searches them as
    if there were no learned detector; its faces replace those where it finds any."""
    boxes_of: dict[int, list[int]] = {}
    for j, pic in enumerate(index):
        boxes_of.setdefault(pic, []).append(j)
    redo = [pic for pic, js in boxes_of.items()
            if all(dets[j].framing is not None and not all(checks[j]) for j in js)]
    if not redo:
        return
    pictures = [grays[p] for p in redo]
    boxes, loose = detect_faces(pictures, detector, cascade_only=True)
    again = find_faces(pictures, predict, detector, boxes=boxes, confirm=True, loose=loose,
                       **options)
    for pic, found in zip(redo, again):
        if found:
            faces[pic] = found


def _retry_unsettled(grays, index, framings, read_plain, first, predict, history, spread,
                     rotate, relax, settle, also=None):
    """find_faces' retry: faces still moving at the last pass (and those marked in `also`),
    located again from their `first` squares with flip TTA; a retry that settles replaces the
    face's history, spread, last square and `read_plain`. Returns those, and the faces
    replaced."""
    redo = np.any(history[-1] != history[-2], axis=1)
    if also is not None and len(also):
        redo |= also
    redo = np.flatnonzero(redo)
    if len(redo) == 0:
        return history, spread, framings, read_plain, []
    again, again_spread, again_framings, again_plain = _locate(
        grays, [index[i] for i in redo], [first[i] for i in redo], predict, len(history),
        True, rotate, relax, settle)
    settled = np.all(again[-1] == again[-2], axis=1)
    history, spread, framings = [h.copy() for h in history], spread.copy(), list(framings)
    read_plain = read_plain.copy()
    replaced = []
    for k, i in enumerate(redo):
        if settled[k]:
            replaced.append(int(i))
            spread[i] = again_spread[k]
            framings[i] = again_framings[k]
            read_plain[i] = again_plain[k]
            for h, a in zip(history, again):
                h[i] = a[k]
    return history, spread, framings, read_plain, replaced


def merge_duplicates(faces: Sequence[Face], overlap: float = 0.5) -> list[Face]:
    """Drop a face whose keypoints' centre lies within `overlap` x its eye-corner distance of
    a higher-scored face's (two boxes that converged on one face). Best score first."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        c, d = _centre_and_size(f.keypoints_px)
        if all(np.linalg.norm(c - _centre_and_size(g.keypoints_px)[0]) > overlap * d
               for g in kept):
            kept.append(f)
    return kept


def drop_hidden(faces: Sequence[Face]) -> list[Face]:
    """`faces` (in their order) without those a larger one would hide (`framing.hidden`)."""
    return [f for f, h in zip(faces, hidden([f.keypoints_px for f in faces])) if not h]


def _centre_and_size(kp: np.ndarray) -> tuple[np.ndarray, float]:
    p = keypoints.as_points(kaggle15(kp))
    d = np.linalg.norm(p[_IDX["left_eye_outer_corner"]] - p[_IDX["right_eye_outer_corner"]])
    return p.mean(axis=0), max(float(d), 1e-6)


def refine_faces(gray: np.ndarray, previous: Sequence[np.ndarray], predict: PredictFn,
                 passes: int = 1, tta: bool = False, rotate: bool = True,
                 max_shape_error: float = MAX_SHAPE_ERROR,
                 detector: FaceDetector | None = None,
                 final_scales: Sequence[float] = ()) -> list[Face | None]:
    """Track faces into a new frame: frame each from its previous keypoints (2K,), predict;
    None for a face that is lost: its keypoints fail the face-shape check or (with a
    `detector`) `FaceDetector.confirms` fails. The box is the square the face was framed by;
    the score is 1 - shape error (tracked, not detected). `final_scales`: as find_faces'."""
    framings = [framing_from_keypoints(k, rotate) for k in previous]
    history, spread, last, read_plain = _locate([gray], [0] * len(framings), framings,
                                               predict, passes, tta, rotate)
    if len(final_scales) and len(framings):
        final, spread = read_views([gray], [0] * len(framings), last, predict, final_scales,
                                   (history[-1], spread, read_plain))
        history = history + [final]
    out: list[Face | None] = []
    for j, f in enumerate(framings):
        kp = history[-1][j]
        err = shape_error(kp)
        ok = err <= max_shape_error and (detector is None or detector.confirms(gray, kp))
        out.append(Face(f.box(), 1.0 - err, kp, tuple(h[j] for h in history), err, spread[j])
                   if ok else None)
    return out


def with_keypoints(face: Face, keypoints_px: np.ndarray) -> Face:
    """The same face with other keypoints (e.g. smoothed over time)."""
    return replace(face, keypoints_px=np.asarray(keypoints_px, np.float64))


