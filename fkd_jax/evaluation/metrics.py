"""Accuracy of keypoints on pictures (or crops): NME, failure rate, CED and its AUC, matching.

NME (normalised mean error, the 300-W convention): the mean over the 15 keypoints of the
point-to-point distance between prediction and truth, divided by the distance between the
truth's OUTER eye corners (left_eye_outer_corner to right_eye_outer_corner). Scale-free, so it
compares pictures of any size and 96x96 crops alike. A face fails when its NME > 10%.
CED: the share of faces with NME <= x, for x from 0 to 10%; AUC: the area under it on
[0, 10%] divided by 10% (1 = every face perfect; a missed face counts as a failure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fkd_jax.geometry import keypoints

FAILURE_NME = 0.10
# The outer eye corners (left, right) by keypoint index: Kaggle's 15, and iBUG's 68 (300-W).
KAGGLE_OUTER_EYES = (keypoints.KEYPOINT_NAMES.index("left_eye_outer_corner"),
                     keypoints.KEYPOINT_NAMES.index("right_eye_outer_corner"))
IBUG68_OUTER_EYES = (45, 36)


def outer_eye_distance(true_px: np.ndarray, eyes: tuple[int, int] = KAGGLE_OUTER_EYES
                       ) -> np.ndarray:
    """(...,) distance between the outer eye corners (keypoints `eyes`) of keypoints (..., 2K),
    same units."""
    p = keypoints.as_points(np.asarray(true_px, np.float64))
    return np.linalg.norm(p[..., eyes[0], :] - p[..., eyes[1], :], axis=-1)


def point_errors(pred_px: np.ndarray, true_px: np.ndarray,
                 eyes: tuple[int, int] = KAGGLE_OUTER_EYES) -> np.ndarray:
    """(..., K) each keypoint's distance from the truth / the true outer-eye-corner distance."""
    p = keypoints.as_points(np.asarray(pred_px, np.float64))
    t = keypoints.as_points(np.asarray(true_px, np.float64))
    return np.linalg.norm(p - t, axis=-1) / outer_eye_distance(true_px, eyes)[..., None]


def nme(pred_px: np.ndarray, true_px: np.ndarray, mask: np.ndarray | None = None,
        eyes: tuple[int, int] = KAGGLE_OUTER_EYES) -> np.ndarray:
    """(...,) NME of predictions against truth (..., 2K: Kaggle's 30 by default; iBUG's 136
    with eyes=IBUG68_OUTER_EYES), both in the same pixels.

    `mask` (..., 2K) marks labelled coordinates; a keypoint counts where both of its
    coordinates are labelled (the outer eye corners must be labelled)."""
    err = point_errors(pred_px, true_px, eyes)  # (..., K)
    if mask is None:
        return err.mean(axis=-1)
    m = keypoints.as_points(np.asarray(mask, bool)).all(axis=-1)
    return np.where(m, err, 0.0).sum(axis=-1) / np.maximum(m.sum(axis=-1), 1)


# Each eye's centre sits about this far round the head from the face's midline: what turns
# the ratio of the two eyes' widths into a yaw angle (`estimated_yaw_deg`).
_EYE_ANGLE_DEG = 30.0
TURN_BINS_DEG = (0.0, 15.0, 30.0, 45.0, 90.0)


def estimated_yaw_deg(true_px: np.ndarray) -> np.ndarray:
    """(...,) how far a face is turned (degrees, 0 = frontal, unsigned), from its labels: on a
    head turned by y, eyes at +-a round it show widths in the ratio r = cos(y + a) / cos(y - a),
    so y = atan((1 - r) / ((1 + r) tan a)) with r the narrower eye's width over the wider's."""
    p = keypoints.as_points(np.asarray(true_px, np.float64))
    idx = {n: i for i, n in enumerate(keypoints.KEYPOINT_NAMES)}
    widths = [np.linalg.norm(p[..., idx[f"{side}_eye_inner_corner"], :]
                             - p[..., idx[f"{side}_eye_outer_corner"], :], axis=-1)
              for side in ("left", "right")]
    r = np.minimum(*widths) / np.maximum(np.maximum(*widths), 1e-9)
    return np.degrees(np.arctan((1 - r) / ((1 + r) * np.tan(np.radians(_EYE_ANGLE_DEG)))))


def by_turn(nmes: Sequence[float], yaw_deg: Sequence[float],
            bins: Sequence[float] = TURN_BINS_DEG) -> list[dict]:
    """`summarise` of the faces in each bin of estimated yaw (degrees, [low, high))."""
    v, yaw = np.asarray(nmes, np.float64), np.asarray(yaw_deg, np.float64)
    out = []
    for low, high in zip(bins[:-1], bins[1:]):
        sel = (yaw >= low) & (yaw < high)
        if sel.any():
            out.append({"yaw_deg": [low, high], **summarise(v[sel]).as_dict()})
    return out


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for telling `positive` cases from the rest: the
    chance a random positive scores above a random negative (ties half). NaN if a class is
    empty."""
    from scipy.stats import rankdata

    score, positive = np.asarray(score, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def chance_within(radius, spread) -> np.ndarray:
    """The chance that a 2-D isotropic Gaussian of RMS radius `spread` lands within `radius`
    of its mean, 1 - exp(-radius^2 / spread^2) (same units; arrays broadcast)."""
    spread = np.maximum(np.asarray(spread, np.float64), 1e-9)
    return 1.0 - np.exp(-np.square(radius) / (spread * spread))


def fit_spread_scale(spread: np.ndarray, within: np.ndarray, radius: float) -> float:
    """The factor c that calibrates spreads (any unit, `radius` in the same): the mean of
    1 - exp(-radius^2 / (c * spread)^2) equals the share of points `within` the radius.
    Bisection in log c (the mean falls as c grows)."""
    spread, target = np.asarray(spread, np.float64), float(np.mean(within))
    lo, hi = -6.0, 6.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        conf = chance_within(radius, np.exp(mid) * spread)
        lo, hi = (mid, hi) if conf.mean() > target else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


# Points at or above this confidence count as sure (reports; hollow markers in overlays below).
SURE_CONFIDENCE = 0.5


def confidence_report(confidence: np.ndarray, errors: np.ndarray, sure: float = SURE_CONFIDENCE,
                      wrong: float = FAILURE_NME) -> dict:
    """How well per-point confidences (any shape) rank per-point errors (same shape, in eye
    distances): AUROC of 1 - confidence for the points off by more than `wrong`, and the mean
    error of the points at or above `sure` against all points. NaN confidences are left out."""
    c, e = np.asarray(confidence, np.float64).ravel(), np.asarray(errors, np.float64).ravel()
    ok = np.isfinite(c) & np.isfinite(e)
    c, e = c[ok], e[ok]
    kept = c >= sure
    return {"points": int(c.size), "wrong_share": float(np.mean(e > wrong)) if c.size else None,
            "auroc_wrong": auroc(1.0 - c, e > wrong),
            "sure_threshold": sure, "sure_share": float(kept.mean()) if c.size else None,
            "error_all": float(e.mean()) if c.size else None,
            "error_sure": float(e[kept].mean()) if kept.any() else None,
            "wrong_share_sure": float(np.mean(e[kept] > wrong)) if kept.any() else None}


def ced(nmes: Sequence[float], limit: float = FAILURE_NME, steps: int = 1001
        ) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (steps,), share of faces with NME <= threshold); NaN/inf (missed) never."""
    x = np.linspace(0.0, limit, steps)
    v = np.asarray(nmes, np.float64)
    v = np.where(np.isfinite(v), v, np.inf)
    if v.size == 0:
        return x, np.zeros_like(x)
    return x, (v[None, :] <= x[:, None]).mean(axis=1)


def auc(nmes: Sequence[float], limit: float = FAILURE_NME) -> float:
    """Area under the CED on [0, limit], divided by limit (exact for the step function)."""
    v = np.asarray(nmes, np.float64)
    if v.size == 0:
        return 0.0
    v = np.where(np.isfinite(v), np.minimum(v, limit), limit)
    return float(np.mean(limit - v) / limit)


def failure_rate(nmes: Sequence[float], threshold: float = FAILURE_NME) -> float:
    """Share of faces with NME > threshold (a missed face, NaN or inf, fails)."""
    v = np.asarray(nmes, np.float64)
    if v.size == 0:
        return 0.0
    return float(np.mean(~(np.where(np.isfinite(v), v, np.inf) <= threshold)))


def match_faces(pred_px: np.ndarray, true_px: np.ndarray, max_nme: float = 0.5
                ) -> list[tuple[int, int]]:
    """Pair predicted faces (M, 30) with labelled faces (T, 30) of one picture: greedily by
    smallest NME, each face at most once, pairs with NME above `max_nme` left unpaired (a
    prediction that far off is on another face or none). Returns (pred index, true index)."""
    pred_px, true_px = np.asarray(pred_px, np.float64), np.asarray(true_px, np.float64)
    if len(pred_px) == 0 or len(true_px) == 0:
        return []
    cost = nme(pred_px[:, None, :], true_px[None, :, :])  # (M, T)
    pairs, used_p, used_t = [], set(), set()
    for flat in np.argsort(cost, axis=None):
        i, j = np.unravel_index(flat, cost.shape)
        if cost[i, j] > max_nme:
            break
        if i in used_p or j in used_t:
            continue
        pairs.append((int(i), int(j)))
        used_p.add(i)
        used_t.add(j)
    return sorted(pairs, key=lambda p: p[1])


@dataclass(frozen=True)
class Scores:
    """Summary of NMEs of labelled faces (NaN for a face not found)."""

    n_faces: int
    found: float  # share of labelled faces with a matched prediction
    nme_mean: float  # over found faces
    nme_median: float
    failure_rate: float  # NME > 10%, over all labelled faces (missed = failed)
    auc_10: float  # over all labelled faces

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def summarise(nmes: Sequence[float]) -> Scores:
    """Scores of one NME per labelled face (NaN where the face was not found)."""
    v = np.asarray(nmes, np.float64)
    found = np.isfinite(v)
    return Scores(n_faces=int(v.size), found=float(found.mean()) if v.size else 0.0,
                  nme_mean=float(v[found].mean()) if found.any() else float("nan"),
                  nme_median=float(np.median(v[found])) if found.any() else float("nan"),
                  failure_rate=failure_rate(v), auc_10=auc(v))


def plot_ced(path: str | Path, curves: dict[str, Sequence[float]], limit: float = FAILURE_NME
             ) -> Path:
    """CED figure (PNG), one curve per label (e.g. per pass), AUC in the legend."""
    from matplotlib.figure import Figure

    from fkd_jax import files

    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    for label, v in curves.items():
        x, y = ced(v, limit)
        ax.plot(100 * x, 100 * y, label=f"{label} (AUC@10% {auc(v, limit):.3f})")
    ax.set_xlabel("NME (% of outer-eye-corner distance)")
    ax.set_ylabel("faces with NME <= x (%)")
    ax.set_xlim(0, 100 * limit)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return files.save_figure(fig, path)
