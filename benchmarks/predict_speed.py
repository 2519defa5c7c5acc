"""Speed of predict.py's pipeline (fkd_jax.Detector): photos/s end to end, model-only faces/s,
one-photo latency, video fps; prints one JSON object.
  uv run python benchmarks/predict_speed.py --workdir=RUN_DIR [--photos=DIR] [--n=256]
  uv run python benchmarks/predict_speed.py --model=model.jaxexport ...
--photos DIR: a folder of photos (none are committed); without it, generated pictures of
synthetic faces are used. Goals: >= 50 photos/s and >= 30 video
frames/s on 2 CPU cores.

Measures, after a warm-up that compiles both predictor batch sizes (compilation is a one-off
per process and is reported separately):
  photos_per_s     end to end per photo, as predict.py runs a folder: decode, detect, every
                   pass (crop + predict), second-look confirmation, overlay drawn and written
                   (keypoints.csv and summary.json are written once at the end, not counted)
  faces_per_s      model only: 256 crops through the compiled predictor (bulk batches)
  latency_ms       one photo alone, end to end (median of 10 runs)
  video_fps        a 320x240 video made from one photo moved by small sub-pixel steps
                   (tracking: one pass per frame, detection only when a face is lost)
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags

from fkd_jax import cli
from fkd_jax.data import synthetic
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.inference.two_batch import BULK_BATCH
from fkd_jax.pictures import images as picture_files
from fkd_jax.pictures import inputs, outputs
from fkd_jax.pictures.location import DEFAULT_PASSES

ROOT = Path(__file__).resolve().parents[1]


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


FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Run directory written by train.py.", flag_values=FLAGS)
flags.DEFINE_string("model", None, "Exported model file (export.py), instead of --workdir.",
                    flag_values=FLAGS)
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of --workdir.",
                  flag_values=FLAGS)
flags.DEFINE_string("photos", None, "Folder of .jpg photos (generated pictures "
                    "of synthetic faces when it does not exist).", flag_values=FLAGS)
flags.DEFINE_integer("n", 256, "Photos for the end-to-end rate.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("passes", DEFAULT_PASSES, "Most passes per face.", lower_bound=1,
                     flag_values=FLAGS)


def main(argv: list[str]) -> None:
    from fkd_jax.api import Detector

    cli.parse_flags(argv, FLAGS)
    if bool(FLAGS.workdir) == bool(FLAGS.model):
        raise UserError("give --workdir RUN_DIR or --model FILE, one of them")
    tmp = Path(tempfile.mkdtemp(prefix="predict_speed_"))
    if FLAGS.photos and not Path(FLAGS.photos).is_dir():
        raise UserError(f"--photos {FLAGS.photos}: no such folder")
    photos = (sorted(Path(FLAGS.photos).glob("*.jpg"))[: FLAGS.n] if FLAGS.photos
              else generated_photos(tmp, FLAGS.n))

    t = time.perf_counter()
    detector = Detector.load(FLAGS.workdir or FLAGS.model, checkpoint=FLAGS.checkpoint,
                             passes=FLAGS.passes)
    detector.face_detector
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    crops = np.random.default_rng(0).random((BULK_BATCH + 1, 96, 96), np.float32)
    detector.predict_crops(crops)  # compiles the bulk and the batch-1 executables
    compile_s = time.perf_counter() - t

    # Model only: 256 crops in bulk batches.
    block = np.tile(crops[:1], (256, 1, 1))
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        detector.predict_crops(block)
    faces_per_s = reps * len(block) / (time.perf_counter() - t)

    items = [inputs.Item(p, str(p), "photo", Path(p.name)) for p in photos]

    def photos_through(results: outputs.Results, items: list[inputs.Item]) -> None:
        """As predict.py runs a folder: chunks with detection ahead, overlays written."""
        found = detector.detect_files([it.path for it in items], timings=results.timings)
        for item, r in zip(items, found):
            results.photo(item, r.picture, r.faces)

    with contextlib.redirect_stdout(sys.stderr):  # "no face found" lines; JSON on stdout
        # End to end, in chunks as predict.py runs a folder.
        r = outputs.Results(tmp / "out")
        t = time.perf_counter()
        photos_through(r, items)
        photos_s = time.perf_counter() - t
        stages = {k: round(v / max(len(items), 1) * 1000, 2) for k, v in r.timings.items() if v}

        # One photo alone.
        lat = []
        for _ in range(10):
            t = time.perf_counter()
            photos_through(outputs.Results(tmp / "out"), items[:1])
            lat.append(time.perf_counter() - t)

        # Video, tracked and smoothed as predict.py does.
        clip = tmp / "clip.avi"
        make_video(photos[0], clip)
        rv = outputs.Results(tmp / "out")
        t = time.perf_counter()
        rv.video(inputs.Item(clip, str(clip), "video", Path("clip.avi")), detector)
        video_s = time.perf_counter() - t

    print(json.dumps({
        "photos": len(items), "source": FLAGS.photos or "generated",
        "passes": FLAGS.passes,
        "photos_per_s": round(len(items) / photos_s, 1),
        "ms_per_photo_by_stage": stages,
        "faces_found": r.n_faces,
        "faces_per_s_model_only": round(faces_per_s, 1),
        "latency_ms_one_photo": round(1000 * float(np.median(lat)), 1),
        "video_fps_320x240": round(rv.n_frames / video_s, 1), "video_frames": rv.n_frames,
        "load_s": round(load_s, 2), "compile_s": round(compile_s, 2),
    }, indent=2))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
