"""docs/pipeline_scene.png: predict.py's pipeline (fkd_jax.Detector) on a generated scene.
  uv run python scripts/pipeline_figure.py --workdir=RUN_DIR [--out=docs/pipeline_scene.png]

Three procedural faces (fkd_jax.data.synthetic) are pasted into a larger picture at known position,
scale and in-plane rotation. Panels: the detector's boxes; each face's crop framed from its box
(pass 1) with the keypoints predicted there; the crop re-framed from those keypoints by the
training rule, turned upright (last pass); the keypoints mapped back onto the picture, with the
true ones.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
from absl import flags

from fkd_jax import cli, files
from fkd_jax.data import synthetic
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.evaluation import metrics
from fkd_jax.geometry import framing as geo
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import to_gray
from fkd_jax.pictures import drawing
from fkd_jax.pictures.location import DEFAULT_PASSES

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Run directory written by train.py (required).",
                    flag_values=FLAGS)
flags.DEFINE_string("out", str(ROOT / "docs" / "pipeline_scene.png"), "The figure.",
                    flag_values=FLAGS)
flags.DEFINE_integer("passes", DEFAULT_PASSES, "Most passes per face.", lower_bound=1,
                     flag_values=FLAGS)
PLACEMENTS = ((1.9, -8.0, 40.0, 40.0), (1.4, 12.0, 290.0, 90.0), (2.3, 4.0, 470.0, 20.0))


def scene(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (300, 720, 3) picture, true keypoints (3, 30) in its pixels)."""
    rng = np.random.default_rng(seed)
    h, w = 300, 720
    yy, xx = np.mgrid[0:h, 0:w]
    bg = 90 + 40 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + rng.normal(0, 6, (h, w))
    picture = np.clip(bg, 0, 255).astype(np.uint8)
    images, kps = synthetic.generate_faces(6, seed)
    truth = []
    for (scale, deg, tx, ty), img, kp in zip(PLACEMENTS, images[[0, 2, 4]], kps[[0, 2, 4]]):
        a = math.radians(deg)
        lin = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        # Continuous map crop -> picture, as OpenCV's index map (centres at whole numbers).
        t = np.array([tx, ty])
        fwd = np.concatenate([lin, (lin @ [0.5, 0.5] + t - 0.5)[:, None]], axis=1)
        warped = cv2.warpAffine(img, fwd, (w, h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.full((96, 96), 255, np.uint8), fwd, (w, h)) == 255
        picture = np.where(mask, warped, picture)
        truth.append((keypoints.as_points(kp) @ lin.T + t).reshape(-1))
    return np.repeat(picture[..., None], 3, axis=2), np.stack(truth)


def main(argv: list[str]) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from fkd_jax.api import Detector

    cli.parse_flags(argv, FLAGS)
    if not FLAGS.workdir:
        raise UserError("--workdir is required (a run directory written by train.py)")
    out = Path(FLAGS.out)
    picture, truth = scene()
    gray = to_gray(picture)
    found = sorted(Detector.load(FLAGS.workdir, passes=FLAGS.passes)(picture),
                   key=lambda f: f.box[0])
    n = len(found)

    fig = Figure(figsize=(12, 6.2))
    grid = fig.add_gridspec(2, max(2 * n, 2), height_ratios=[1.25, 1])
    ax = fig.add_subplot(grid[0, : max(n, 1)])
    ax.imshow(gray, cmap="gray")
    for f in found:
        x, y, w, h = f.box
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="gold", lw=1.5))
    ax.set_title(f"1. detect: {n} boxes (Haar cascade)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, max(n, 1):])
    ax.imshow(drawing.draw_faces(picture, found))
    nmes = []
    for f in found:
        pairs = metrics.match_faces(f.keypoints_px[None], truth)
        if pairs:
            nmes.append(float(metrics.nme(f.keypoints_px, truth[pairs[0][1]])))
    t = keypoints.as_points(truth)
    ax.plot(t[..., 0].ravel() - 0.5, t[..., 1].ravel() - 0.5, "w+", ms=4, mew=0.8)
    ax.set_title(f"4. keypoints in picture pixels (+ true); NME "
                 f"{', '.join(f'{100 * v:.1f}%' for v in nmes)}", fontsize=9)
    ax.axis("off")
    for i, f in enumerate(found):
        first = geo.framing_from_box(f.box)
        last = geo.framing_from_keypoints(f.history[-2] if len(f.history) > 1
                                            else f.keypoints_px, rotate=True)
        for k, (framing, kp, title) in enumerate((
                (first, f.history[0], f"2. face {i}:\ncrop from the box (pass 1)"),
                (last, f.keypoints_px, f"3. face {i}: re-framed\nfrom its keypoints (last pass)"))):
            ax = fig.add_subplot(grid[1, 2 * i + k])
            ax.imshow(geo.crop_faces(gray, [framing])[0, :, :, 0], cmap="gray", vmin=0, vmax=1)
            q = keypoints.as_points(framing.to_crop(kp))
            ax.plot(q[:, 0] - 0.5, q[:, 1] - 0.5, "r.", ms=3)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    files.save_figure(fig, out, dpi=90)
    print(f"wrote {out} ({n} faces; NME {nmes})")


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
