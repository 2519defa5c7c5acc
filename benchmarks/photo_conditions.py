"""What a photo's resolution and tilt do to predict.py: the same labelled photos, enlarged
or turned.

Phones take 12-megapixel photos; the development photos are about 250 x 300 pixels. Each
photo is enlarged by --scales (bicubic; keypoints scale with it: pixel j covers [j, j+1), so
x -> s x), optionally with Gaussian pixel noise of --noise grey levels added at the enlarged
size (the fine detail a real high-resolution photo has and an enlargement lacks); and, at its
own size, turned by each of --turns degrees (a tilted head, or a photo taken sideways without
EXIF orientation; the canvas grows to hold it, edges replicated; keypoints turned with it).
Each set runs through predict.py exactly as a user would (`predict.main`, --labels scoring).
Prints one JSON object: per setting, faces found, NME (mean, median), failures, faces
reported per photo and detection ms a photo.

  uv run python benchmarks/photo_conditions.py --workdir RUN_DIR --photos LIST_OR_DIR \\
      --labels ../shared/data/photos/keypoints.csv [--scales 1,4] [--noise 0,16] [--turns 20,90]

--photos is a folder of photos or a text file naming one per line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import predict  # noqa: E402
from fkd_jax.geometry import framing
from fkd_jax.geometry import keypoints  # noqa: E402


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir")
    src.add_argument("--model")
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--scales", default="1,4")
    ap.add_argument("--noise", default="0,16", help="grey levels (std) added, comma-separated")
    ap.add_argument("--turns", default="", help="degrees the photos are turned by, e.g. 20,90")
    args = ap.parse_args(argv)

    if args.photos.is_dir():
        photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    else:
        photos = [Path(line) for line in args.photos.read_text().split()]
    model = ["--workdir", args.workdir] if args.workdir else ["--model", args.model]
    tmp = Path(tempfile.mkdtemp(prefix="photo_conditions_"))
    settings = [(float(s), float(n), 0.0) for s in args.scales.split(",")
                for n in args.noise.split(",") if not (float(s) == 1 and float(n))]
    settings += [(1.0, 0.0, float(t)) for t in args.turns.split(",") if t.strip()]
    results = []
    for scale, noise, turn in settings:
        name = f"x{scale:g}_noise{noise:g}_turn{turn:g}"
        labels = (turned(photos, args.labels, tmp / name, turn) if turn else
                  enlarged(photos, args.labels, tmp / name, scale, noise))
        out = tmp / f"{name}_out"
        with contextlib.redirect_stdout(sys.stderr):  # predict's lines; the JSON on stdout
            predict.main(model + ["--out", str(out), "--no_overlays", "--labels",
                                  str(labels), str(tmp / name)])
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
    main()
