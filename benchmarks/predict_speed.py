"""Speed of predict.py: photos/s end to end, model-only faces/s, one-photo latency, video fps.

  uv run python benchmarks/predict_speed.py --workdir RUN_DIR [--photos DIR] [--n 256]
  uv run python benchmarks/predict_speed.py --model model.jaxexport ...

Measures, after a warm-up that compiles both predictor batch sizes (compilation is a one-off
per process and is reported separately):
  photos_per_s     end to end per photo, as predict.py runs a folder: decode, detect, every
                   pass (crop + predict), second-look confirmation, overlay drawn and written
                   (keypoints.csv and summary.json are written once at the end, not counted)
  faces_per_s      model only: 256 crops through the compiled predictor (bulk batches)
  latency_ms       one photo alone, end to end (median of 10 runs)
  video_fps        a 320x240 video made from one photo moved by small sub-pixel steps
                   (tracking: one pass per frame, detection only when a face is lost)
--photos defaults to ../shared/data/photos (development data, never committed); without it,
generated pictures of synthetic faces are used. Goals (issue 12): >= 50 photos/s and >= 30
video frames/s on 2 CPU cores. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import predict  # noqa: E402
from fkd_jax.pictures import detection
from fkd_jax.pictures import images as picture_files
from fkd_jax.pictures import location
from fkd_jax.data import synthetic  # noqa: E402

SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def generated_photos(folder: Path, n: int) -> list[Path]:
    """Pictures of one synthetic face each (about photo-sized), for machines without data."""
    import cv2

    images, _ = synthetic.generate_faces(n, seed=123)
    paths = []
    for i, img in enumerate(images):
        pic = np.full((240, 300), 100, np.uint8)
        pic[30:222, 50:242] = cv2.resize(img, (192, 192))
        paths.append(folder / f"gen_{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), pic)
    return paths


def make_video(photo: Path, path: Path, frames: int = 90) -> None:
    """A 320x240 clip of `photo` drifting by sub-pixel steps (as a hand-held camera would)."""
    import cv2

    rgb = picture_files.read_picture(photo)
    scale = min(320 / rgb.shape[1], 240 / rgb.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(frames):
        m = np.float32([[scale, 0, 3 * math.sin(i / 15)], [0, scale, 2 * math.cos(i / 20)]])
        frame = cv2.warpAffine(rgb, m, (320, 240), borderMode=cv2.BORDER_REPLICATE)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir")
    src.add_argument("--model")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--photos", type=Path, default=SHARED_PHOTOS)
    ap.add_argument("--n", type=int, default=256, help="photos for the end-to-end rate")
    ap.add_argument("--passes", type=int, default=location.DEFAULT_PASSES)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="predict_speed_"))
    if args.photos.is_dir():
        photos = sorted(args.photos.glob("*.jpg"))[: args.n]
    else:
        photos = generated_photos(tmp, args.n)
    pargs = predict.parse_args(
        (["--workdir", args.workdir, "--checkpoint", args.checkpoint] if args.workdir
         else ["--model", args.model]) + ["--out", str(tmp / "out"), "--passes",
                                         str(args.passes), "x"])

    t = time.perf_counter()
    predictor = predict.load_predictor(pargs)
    detector = detection.FaceDetector()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    crops = np.random.default_rng(0).random((predict.BULK_BATCH + 1, 96, 96, 1), np.float32)
    predictor(crops)  # compiles the bulk and the batch-1 executables
    compile_s = time.perf_counter() - t

    # Model only: 256 crops in bulk batches.
    block = np.tile(crops[:1], (256, 1, 1, 1))
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        predictor(block)
    faces_per_s = reps * len(block) / (time.perf_counter() - t)

    items = [predict.Item(p, str(p), "photo", Path(p.name)) for p in photos]

    def runner():
        return predict.Runner(pargs, predictor, detector, tmp / "out", None)

    # End to end, in chunks as predict.py runs a folder.
    r = runner()
    t = time.perf_counter()
    r.all_photos(items)
    photos_s = time.perf_counter() - t
    stages = {k: round(v / max(len(items), 1) * 1000, 2) for k, v in r.timings.items() if v}

    # One photo alone.
    lat = []
    for _ in range(10):
        r1 = runner()
        t = time.perf_counter()
        r1.photos(items[:1])
        lat.append(time.perf_counter() - t)

    # Video.
    from fkd_jax.pictures.video import OneEuroSettings

    clip = tmp / "clip.avi"
    make_video(photos[0], clip)
    rv = predict.Runner(pargs, predictor, detector, tmp / "out", OneEuroSettings())
    t = time.perf_counter()
    rv.video(predict.Item(clip, str(clip), "video", Path("clip.avi")))
    video_s = time.perf_counter() - t

    print(json.dumps({
        "photos": len(items), "source": str(args.photos if args.photos.is_dir() else "generated"),
        "passes": args.passes,
        "photos_per_s": round(len(items) / photos_s, 1),
        "ms_per_photo_by_stage": stages,
        "faces_found": sum(1 for row in r.rows if "face" in row),
        "faces_per_s_model_only": round(faces_per_s, 1),
        "latency_ms_one_photo": round(1000 * float(np.median(lat)), 1),
        "video_fps_320x240": round(rv.n_frames / video_s, 1), "video_frames": rv.n_frames,
        "load_s": round(load_s, 2), "compile_s": round(compile_s, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
