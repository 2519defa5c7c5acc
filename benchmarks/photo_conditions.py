"""What a photo's resolution and tilt do to predict.py: the same labelled photos, enlarged
or turned, through its pipeline (fkd_jax.Detector, fkd_jax.pictures.outputs.process, labels
scored); prints one JSON object: per setting, faces found, NME (mean, median), failures,
faces reported per photo and detection ms a photo.
  uv run python benchmarks/photo_conditions.py --workdir=RUN_DIR --photos=LIST_OR_DIR \\
      --labels=PHOTOS_DIR/keypoints.csv [--scales=1,4] [--noise=0,16] [--turns=20,90] \\
      [--face_net=face_net.onnx]
--photos is a folder of photos or a text file naming one per line.

Phones take 12-megapixel photos; the development photos are about 250 x 300 pixels. Each
photo is enlarged by --scales (bicubic; keypoints scale with it: pixel j covers [j, j+1), so
x -> s x), optionally with Gaussian pixel noise of --noise grey levels added at the enlarged
size (the fine detail a real high-resolution photo has and an enlargement lacks); and, at its
own size, turned by each of --turns degrees (a tilted head, or a photo taken sideways without
EXIF orientation; the canvas grows to hold it, edges replicated; keypoints turned with it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import flags

from fkd_jax import cli
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry import framing, keypoints

FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Run directory written by train.py.", flag_values=FLAGS)
flags.DEFINE_string("model", None, "Exported model file (export.py), instead of --workdir.",
                    flag_values=FLAGS)
flags.DEFINE_string("face_net", None, "A learned face detector (train_face_net.py) in front "
                    "of the Haar cascade.", flag_values=FLAGS)
flags.DEFINE_string("photos", None, "Folder of photos, or a text file naming one per line.",
                    flag_values=FLAGS)
flags.DEFINE_string("labels", None, "CSV of the photos' true keypoints (file + the 30 Kaggle "
                    "columns, picture pixels).", flag_values=FLAGS)
flags.DEFINE_list("scales", ["1", "4"], "Enlargements.", flag_values=FLAGS)
flags.DEFINE_list("noise", ["0", "16"], "Grey levels (std) of noise added when enlarged.",
                  flag_values=FLAGS)
flags.DEFINE_list("turns", [], "Degrees the photos are turned by, e.g. 20,90.",
                  flag_values=FLAGS)


def enlarged(photos: list[Path], labels: Path, folder: Path, scale: float, noise: float,
             seed: int = 0) -> Path:
    """Write each photo enlarged by `scale` (with `noise`) into `folder`; returns the labels CSV
    for them (the input's rows for these photos, coordinates times `scale`)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for p in photos:
        if scale == 1 and not noise:  # the photo itself, not a re-encoded copy
            shutil.copyfile(p, folder / p.name)
            continue
        with Image.open(p) as im:
            im = im.convert("RGB")
            size = (round(im.width * scale), round(im.height * scale))
            a = np.asarray(im.resize(size, Image.BICUBIC) if scale != 1 else im, np.float32)
        if noise:
            a = a + rng.normal(0.0, noise, a.shape[:2])[..., None]
        Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).save(folder / p.name,
                                                                           quality=95)
    return _labels_for(photos, labels, folder, lambda name, pts: pts * scale)


def turned(photos: list[Path], labels: Path, folder: Path, degrees: float) -> Path:
    """Write each photo turned by `degrees` (its faces' x axis then points `degrees` below the
    picture's, y pointing down; the canvas grows to hold it) into `folder`; returns the labels
    CSV for them, keypoints turned with the photos."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    maps = {}  # file name -> (rot, shift) of its turned canvas
    for p in photos:
        img, *maps[p.name] = framing.turn_picture(cv2.imread(str(p)), degrees)
        cv2.imwrite(str(folder / p.name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return _labels_for(photos, labels, folder,
                       lambda name, pts: pts @ maps[name][0].T + maps[name][1])


def _labels_for(photos: list[Path], labels: Path, folder: Path, move) -> Path:
    """The labels CSV of `photos` (its rows for them), each row's keypoints (K, 2) through
    `move(file name, points)`, written beside `folder`."""
    import pandas as pd

    table = pd.read_csv(labels)
    table = table[table["file"].isin({p.name for p in photos})].copy()
    cols = list(keypoints.COLUMNS)
    values = table[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    table[cols] = np.stack([move(name, v.reshape(-1, 2)).reshape(-1)
                            for name, v in zip(table["file"], values)]) if len(table) else values
    out = folder.parent / f"{folder.name}_labels.csv"
    table.to_csv(out, index=False)
    return out


def main(argv: list[str]) -> None:
    from fkd_jax.api import Detector
    from fkd_jax.pictures import inputs, outputs, scoring

    cli.parse_flags(argv, FLAGS)
    if bool(FLAGS.workdir) == bool(FLAGS.model) or not (FLAGS.photos and FLAGS.labels):
        raise UserError("give --photos, --labels and one of --workdir / --model")
    given = Path(FLAGS.photos)
    if given.is_dir():
        photos = sorted(p for p in given.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    else:
        photos = [Path(line) for line in given.read_text().split()]
    detector = Detector.load(FLAGS.workdir or FLAGS.model, face_net=FLAGS.face_net)
    tmp = Path(tempfile.mkdtemp(prefix="photo_conditions_"))
    settings = [(float(s), float(n), 0.0) for s in FLAGS.scales for n in FLAGS.noise
                if not (float(s) == 1 and float(n))]
    settings += [(1.0, 0.0, float(t)) for t in FLAGS.turns if t.strip()]
    results = []
    for scale, noise, turn in settings:
        name = f"x{scale:g}_noise{noise:g}_turn{turn:g}"
        labels = (turned(photos, Path(FLAGS.labels), tmp / name, turn) if turn else
                  enlarged(photos, Path(FLAGS.labels), tmp / name, scale, noise))
        out = tmp / f"{name}_out"
        with contextlib.redirect_stdout(sys.stderr):  # the pipeline's lines; JSON on stdout
            outputs.process(detector, inputs.find_inputs([str(tmp / name)]), out,
                            overlays=False, labels=scoring.read_labels(labels))
        summary = json.loads((out / "summary.json").read_text())
        final = summary["scores"]["final"]
        results.append({
            "scale": scale, "noise": noise, "turn": turn, "photos": summary["photos"],
            "found": final["found"], "nme_mean": final["nme_mean"],
            "nme_median": final["nme_median"], "failure_rate": final["failure_rate"],
            "faces_per_photo": round(summary["faces"] / summary["photos"], 3),
            "detect_ms_per_photo": round(1e3 * summary["timings_s"]["detect_s"]
                                         / summary["photos"], 1),
        })
    print(json.dumps({"photos": len(photos), "results": results}, indent=2))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
