"""All of fkd-jax's figures: face grids with keypoints, learning curves, per-keypoint errors.

Figures are built as bare `matplotlib.figure.Figure` objects on the Agg canvas, never through
pyplot, so no global figure state is left open whatever happens; every writer creates the
parent folder, writes to a temporary file beside the target and renames it (a killed run never
leaves half a PNG) and returns the path.

Images are drawn with imshow(extent=(0, W, H, 0)), so a keypoint at continuous pixel
coordinates (x, y) lands exactly where fkd_jax.geometry.keypoints says (pixel (i, j) centred at
(j + 0.5, i + 0.5)). Colours tell the subject's left (on the image's right) from the right and
from the midline; true keypoints are dots, predictions crosses.

scripts/plot_faces.py draws a Kaggle file's faces from the command line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fkd_jax import files
from fkd_jax.geometry.keypoints import KEYPOINT_NAMES, KEYPOINT_SETS, as_points

_DPI = 100
_CELL_IN = 1.6  # inches per face in a grid
_SIDES = ("left", "right", "midline")
# Per side: (true colour, predicted colour). Red for the subject's left (the overlays' convention).
_COLOURS = {"left": ("#ff2020", "#ff40ff"), "right": ("#20e020", "#00d8ff"),
            "midline": ("#ffd000", "#ffffff")}


def _side(name: str) -> str:
    """The subject's side a keypoint belongs to: 'left', 'right' or 'midline'."""
    if name.startswith("left_") or name == "mouth_left_corner":
        return "left"
    if name.startswith("right_") or name == "mouth_right_corner":
        return "right"
    return "midline"


def _sides(n_coords: int) -> np.ndarray:
    """Side of each keypoint of the set with `n_coords` coordinates (Kaggle's 30 or iBUG's
    136). Unnamed mirror pairs (iBUG numbers) put the subject's left on the higher index."""
    ks = next((s for s in KEYPOINT_SETS.values() if 2 * s.num_keypoints == n_coords), None)
    if ks is None:
        raise ValueError(f"no keypoint set has {n_coords} coordinates")
    out = []
    for i, name in enumerate(ks.names):
        side = _side(name)
        if side == "midline" and ks.mirror[i] != i:
            side = "left" if i > ks.mirror[i] else "right"
        out.append(side)
    return np.array(out)


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    return files.save_figure(fig, path, dpi=_DPI)


def _as_gray(images) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1), uint8 or float in [0, 1] -> float (N, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 1), got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _points(keypoints_px, n: int, what: str) -> np.ndarray | None:
    if keypoints_px is None:
        return None
    k = np.asarray(keypoints_px, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != n or k.shape[1] % 2:
        raise ValueError(f"{what} must have shape ({n}, 2K), got {k.shape}")
    return as_points(k)


def _draw_points(ax, points: np.ndarray, show: np.ndarray, which: int, marker: str) -> None:
    """Scatter one face's points (K, 2) where `show` (K,) is True, coloured by side."""
    side_of = _sides(2 * len(points))
    for side in _SIDES:
        sel = show & (side_of == side)
        if sel.any():
            kw = {"linewidths": 1.0} if marker == "x" else {"edgecolors": "black",
                                                            "linewidths": 0.3}
            ax.scatter(points[sel, 0], points[sel, 1], s=10 if marker == "x" else 9,
                       c=_COLOURS[side][which], marker=marker, zorder=3 + which, **kw)


def _legend_handles(with_true: bool, with_pred: bool) -> list[Line2D]:
    handles = []
    for which, (label, marker, show) in enumerate((("true", "o", with_true),
                                                   ("predicted", "x", with_pred))):
        if show:
            for side in _SIDES:
                where = side if side == "midline" else f"subject {side}"
                handles.append(Line2D([], [], linestyle="none", marker=marker, markersize=5,
                                      color=_COLOURS[side][which],
                                      markeredgecolor="black" if marker == "o" else None,
                                      label=f"{label}: {where}"))
    return handles


def _figure_legend(fig: Figure, handles: list[Line2D]) -> None:
    """Legend across the top, on grey so that white and yellow markers show."""
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=7,
               facecolor="0.4", framealpha=1.0, labelcolor="white", handletextpad=0.2,
               columnspacing=0.8, borderpad=0.3)


def plot_face_grid(path, images, keypoints_px=None, predictions_px=None, mask=None,
                   titles=None, ncols: int = 8) -> Path:
    """A grid of faces with true keypoints (dots) and predictions (crosses), in pixels.

    images: (N, 96, 96) or (N, 96, 96, 1), uint8 or float in [0, 1]. keypoints_px and
    predictions_px: (N, 30) pixels, Kaggle column order. mask: bool (N, 30); true keypoints
    whose mask is False (or NaN) are not drawn; a thin line joins each drawn true keypoint to
    its prediction. titles: N strings.
    """
    gray = _as_gray(images)
    n = len(gray)
    if n == 0:
        raise ValueError("plot_face_grid needs at least one image")
    truth = _points(keypoints_px, n, "keypoints_px")
    pred = _points(predictions_px, n, "predictions_px")
    n_coords = (truth if truth is not None else pred).shape[1] * 2 if (
        truth is not None or pred is not None) else 0
    if mask is None:
        show_true = np.ones((n, n_coords // 2), dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n, n_coords):
            raise ValueError(f"mask must have shape ({n}, {n_coords}), got {mask.shape}")
        show_true = as_points(mask).all(axis=-1)
    if truth is not None:
        show_true &= np.isfinite(truth).all(axis=-1)
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")

    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    legend = _legend_handles(truth is not None, pred is not None)
    legend_in = 0.3 if legend else 0.0
    title_in = 0.18 if titles is not None else 0.0
    fig = _new_figure(ncols * _CELL_IN, nrows * (_CELL_IN + title_in) + legend_in)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    height, width = gray.shape[1:]
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(gray[i], cmap="gray", vmin=0.0, vmax=1.0, extent=(0, width, height, 0),
                  interpolation="nearest")
        if truth is not None and pred is not None:
            for k in np.flatnonzero(show_true[i] & np.isfinite(pred[i]).all(axis=-1)):
                ax.plot([truth[i, k, 0], pred[i, k, 0]], [truth[i, k, 1], pred[i, k, 1]],
                        color="white", linewidth=0.5, alpha=0.7, zorder=2)
        if truth is not None:
            _draw_points(ax, truth[i], show_true[i], 0, "o")
        if pred is not None:
            _draw_points(ax, pred[i], np.isfinite(pred[i]).all(axis=-1), 1, "x")
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7, pad=2)
    top = 1.0 - legend_in / fig.get_figheight()
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=top - 0.005,
                        wspace=0.03, hspace=0.03 + (0.15 if titles is not None else 0.0))
    if legend:
        _figure_legend(fig, legend)
    return _save(fig, path)


def plot_overlay(path, image, keypoints_px) -> Path:
    """One image of any size (H, W) with keypoints (30,) in its own pixels; about 6 in wide."""
    gray = _as_gray(np.asarray(image)[None])[0]
    height, width = gray.shape
    points = _points(np.asarray(keypoints_px).reshape(1, -1), 1, "keypoints_px")[0]
    scale = 6.0 / max(width, height)
    fig = _new_figure(max(width * scale, 1.0), max(height * scale, 1.0) + 0.35)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.35 / fig.get_figheight()))
    ax.set_axis_off()
    ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, extent=(0, width, height, 0))
    side_of = _sides(2 * len(points))
    for side in _SIDES:
        sel = (side_of == side) & np.isfinite(points).all(axis=-1)
        ax.scatter(points[sel, 0], points[sel, 1], s=18, c=_COLOURS[side][1], marker="x",
                   linewidths=1.2)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    _figure_legend(fig, _legend_handles(False, True))
    return _save(fig, path)


def plot_learning_curves(path, records: list[dict]) -> Path:
    """Two panels from metrics.jsonl records: training loss (log scale) and RMSE in pixels
    (validation, and training where recorded) against the epoch; the best epoch is marked."""
    if not records:
        raise ValueError("plot_learning_curves needs at least one record")

    def series(key):
        pts = [(r["epoch"], r[key]) for r in records
               if r.get(key) is not None and np.isfinite(r[key])]
        return np.array(pts, dtype=np.float64).reshape(-1, 2)

    fig = _new_figure(10.0, 3.8)
    ax_loss, ax_rmse = fig.subplots(1, 2)
    loss = series("train_loss")
    ax_loss.plot(loss[:, 0], loss[:, 1], marker=".", label="train loss")
    val_loss = series("val_loss")
    if len(val_loss):
        ax_loss.plot(val_loss[:, 0], val_loss[:, 1], marker=".", label="validation loss")
    if len(loss) and (loss[:, 1] > 0).all():
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss (normalised units, log scale)", title="loss")
    for key, label in (("val_rmse_px", "validation"), ("train_rmse_px", "train")):
        s = series(key)
        if len(s):
            ax_rmse.plot(s[:, 0], s[:, 1], marker=".", label=label)
    val = series("val_rmse_px")
    if len(val):
        best = val[np.argmin(val[:, 1])]
        ax_rmse.scatter([best[0]], [best[1]], s=60, facecolors="none", edgecolors="red",
                        zorder=3, label=f"best {best[1]:.3f} px @ epoch {best[0]:.0f}")
    ax_rmse.set(xlabel="epoch", ylabel="RMSE (px)", title="RMSE in pixels")
    for ax in (ax_loss, ax_rmse):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_keypoint_errors(path, rmse_by_name: dict[str, float]) -> Path:
    """Horizontal bars of RMSE in pixels per keypoint, coloured by side, values written on the
    bars; keypoints with no value (NaN: never labelled) are listed as n/a."""
    if not rmse_by_name:
        raise ValueError("plot_per_keypoint_errors needs at least one keypoint")
    names = list(rmse_by_name)
    values = np.array([float(rmse_by_name[k]) for k in names], dtype=np.float64)
    fig = _new_figure(7.0, 0.8 + 0.3 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    colours = [_COLOURS[_side(k)][0] if k in KEYPOINT_NAMES else "#808080" for k in names]
    finite = np.isfinite(values)
    ax.barh(y[finite], values[finite], color=np.array(colours)[finite], edgecolor="black",
            linewidth=0.4)
    top = values[finite].max() if finite.any() else 1.0
    for yi, v, ok in zip(y, values, finite):
        ax.text(v if ok else 0.0, yi, f" {v:.2f}" if ok else " n/a", va="center", fontsize=8)
    if finite.any():
        ax.axvline(values[finite].mean(), color="black", linestyle="--", linewidth=0.8,
                   label=f"mean over keypoints {values[finite].mean():.2f} px")
        ax.legend(fontsize=8, loc="best")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, top * 1.18 if top > 0 else 1.0)
    ax.set(xlabel="RMSE (px)", title="RMSE per keypoint (red: subject's left, green: right)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
