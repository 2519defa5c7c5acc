"""How much frame-to-frame jitter One Euro smoothing removes from tracked keypoints, and the lag
it adds, on videos whose true motion is known exactly; prints one JSON object (also --out).
  # real photos of the run's validation people, the trained model (development only):
  uv run python benchmarks/video_jitter.py --workdir=runs/unet_pair [--n_photos=6] [--sweep]
  # or an exported model: --model=model.jaxexport; the photos: --photos=a.jpg,b.jpg
  # a synthetic face and a stand-in model (the true keypoints + Gaussian noise): no data needed
  uv run python benchmarks/video_jitter.py --synthetic

A video is made from one still picture moved along a slow smooth path by sub-pixel amounts
(exact cubic-spline translation, see `render`): still for the first --still seconds (2.5), then
d(t) = (A_x (1 - cos(2 pi t / 3 s)) / 2, A_y (1 - cos(2 pi t / 2 s)) / 2) with A = (16, 8) px
times --speed, nothing else (no zoom, no noise), so the true keypoints of frame t are those of
the picture plus d(t). Every frame is tracked by fkd_jax.pictures.video.track_video, with the photo
pipeline of fkd_jax.pictures (Haar detection + framing passes, then framing from the previous
keypoints), once raw and once per One Euro setting. Reported per setting, in pixels of the
picture, over all keypoints and all frames after the first SETTLE_S = 0.5 s:

  error_rms        RMS of the keypoints' deviation from the true motion, all frames (the
                   model's constant error at rest, per keypoint, removed: bias is not jitter)
  still_rms        the same over the still part (pure jitter: nothing to lag behind)
  moving_rms       the same over the moving part (jitter + lag)
  d2_rms           RMS of the second difference over frames of that deviation (what the eye
                   sees as shaking; the true path's own second difference is removed)
  lag_ms           the delay tau that best explains the moving keypoints as d(t - tau) + c
  moving_rms_at_lag  what is left of moving_rms once that lag is accounted for

--sweep also tries a grid of (min_cutoff, beta), filtering the raw tracks offline (the same
filter and timestamps as track_video, which frames each next frame from the raw keypoints, so
smoothing never changes what the model sees).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
from absl import flags

from fkd_jax import cli
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry.framing import to_gray
from fkd_jax.pictures import location, video
from fkd_jax.pictures.location import Face
from fkd_jax.pictures.video import OneEuroFilter, OneEuroSettings
from fkd_jax.training import run_dir

AMPLITUDE = np.array([16.0, 8.0])  # px, x and y
PERIOD = np.array([3.0, 2.0])  # s


def _data(name: str) -> Path:
    """A folder of the --data set (never committed: a user's download)."""
    if not FLAGS.data:
        raise UserError("give --photos PATHS, or --data DIR holding photos/ and youtube_faces/")
    folder = Path(FLAGS.data) / name
    if not folder.is_dir():
        raise UserError(f"--data {FLAGS.data}: no folder {name}/ in it")
    return folder


# --------------------------------------------------------------------------- the video


def path_offsets(t: np.ndarray, still: float, speed: float = 1.0) -> np.ndarray:
    """(len(t), 2) true offsets in pixels at times t (s): 0 until `still`, then smooth."""
    tau = np.clip(np.asarray(t, np.float64) - still, 0.0, None)[:, None]
    return 0.5 * speed * AMPLITUDE * (1.0 - np.cos(2.0 * np.pi * tau / PERIOD))


def render(picture: np.ndarray, offsets: np.ndarray, pixel_noise: float = 0.0,
           seed: int = 0) -> list[np.ndarray]:
    """The picture translated by each (dx, dy) (content moves by +d), same size and dtype.

    Exact sub-pixel translation: cubic-spline interpolation (scipy.ndimage.shift, mirrored
    borders): a smooth blob's centroid moves by d to 1e-6 px (0.015 px after rounding to uint8).
    (cv2.warpAffine was not used: it rounds positions to 1/32 px, 0.03 px errors, as large as
    the jitter measured here.) A keypoint at p in the picture is at p + d in the frame.
    `pixel_noise` adds fresh Gaussian noise of that std (gray levels) to every frame, as a
    camera sensor would; it changes no geometry, so the truth still moves exactly by d.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    src = np.asarray(picture, np.float32)
    planes = src.reshape(src.shape[:2] + (-1,))
    # The spline coefficients of each channel, once: every frame only resamples them.
    coeffs = [ndimage.spline_filter(planes[..., c], order=3, mode="mirror")
              for c in range(planes.shape[2])]
    frames = []
    for dx, dy in offsets:
        f = np.stack([ndimage.shift(c, (dy, dx), order=3, mode="mirror", prefilter=False)
                      for c in coeffs], axis=-1).reshape(src.shape)
        if pixel_noise > 0:
            f = f + rng.normal(0.0, pixel_noise, f.shape)
        if np.issubdtype(picture.dtype, np.integer):
            f = np.clip(np.rint(f), 0, 255)
        frames.append(f.astype(picture.dtype))
    return frames


# --------------------------------------------------------------------------- measuring


def _expand(offsets: np.ndarray, k2: int) -> np.ndarray:
    """(n, 2) offsets -> (n, 2K) per keypoint column (x, y interleaved)."""
    return np.tile(offsets, (1, k2 // 2))


# The first frames are left out of every measure: tracking from the detector's framing, the
# keypoints converge to the model's fixed point over a few frames (0.2 px -> 0.02 px in 6 frames
# on a still photo); that start-up drift is neither jitter nor anything smoothing could remove.
SETTLE_S = 0.5


def measure(keypoints: np.ndarray, t: np.ndarray, still: float, speed: float,
            fps: float) -> dict[str, float]:
    """Jitter and lag of tracked keypoints (n, 2K) in pixels against the known motion."""
    n, k2 = keypoints.shape
    keep = t >= SETTLE_S
    keypoints, t = keypoints[keep], t[keep]
    dev = keypoints - _expand(path_offsets(t, still, speed), k2)
    is_still = t < still
    moving = ~is_still
    # The model's own constant error per keypoint (its bias at rest) is not jitter.
    dev = dev - dev[is_still].mean(axis=0)
    # Lag: the delay that best explains the moving keypoints as the delayed path (+ a constant).
    taus = np.arange(-0.1, 0.4001, 0.0005)
    errs = []
    for tau in taus:
        r = keypoints[moving] - _expand(path_offsets(t[moving] - tau, still, speed), k2)
        errs.append(np.sqrt(np.mean((r - r.mean(axis=0)) ** 2)))
    best = int(np.argmin(errs))
    d2 = dev[2:] - 2 * dev[1:-1] + dev[:-2]
    return {
        "error_rms": float(np.sqrt(np.mean(dev ** 2))),
        "still_rms": float(np.sqrt(np.mean(dev[is_still] ** 2))),
        "moving_rms": float(np.sqrt(np.mean(dev[moving] ** 2))),
        "d2_rms": float(np.sqrt(np.mean(d2 ** 2))),
        "lag_ms": float(1000 * taus[best]),
        "moving_rms_at_lag": float(errs[best]),
    }


def smooth_offline(raw: np.ndarray, fps: float, settings: OneEuroSettings) -> np.ndarray:
    """What track_video reports for one track with `settings`, from its raw keypoints."""
    f = OneEuroFilter(settings)
    return np.stack([f(i / fps, x) for i, x in enumerate(raw)])


# --------------------------------------------------------------------------- tracking


FindFn = Callable[[np.ndarray], list[Face]]
RefineFn = Callable[[np.ndarray, list[np.ndarray]], list[Face | None]]


def track(frames: list[np.ndarray], find_faces: FindFn, refine: RefineFn, fps: float,
          smoothing: OneEuroSettings | None) -> tuple[np.ndarray, dict]:
    """Keypoints (n, 2K) of the first track, frame by frame (NaN where it is not seen)."""
    out, counts = None, {"detections": 0, "frames_without_track0": 0, "tracks": 0}

    def counting_find(frame):
        counts["detections"] += 1
        return find_faces(frame)

    start = time.perf_counter()
    for i, _, faces in video.track_video(frames, counting_find, refine, smoothing, fps):
        first = [f for f in faces if f.track == 0]
        counts["tracks"] = max([counts["tracks"]] + [f.track + 1 for f in faces])
        if out is None:
            k2 = len(faces[0].keypoints_px) if faces else 30
            out = np.full((len(frames), k2), np.nan)
        if first:
            out[i] = first[0].keypoints_px
        else:
            counts["frames_without_track0"] += 1
    counts["seconds"] = time.perf_counter() - start
    return out, counts


def model_pipeline(detector, passes: int = 1) -> tuple[FindFn, RefineFn]:
    """find_faces / refine of the photo pipeline (fkd_jax.pictures) around a Detector's model
    and face detector (fkd_jax.api); `passes`: framing passes per tracked frame."""

    def find(frame):
        return location.find_faces([to_gray(frame)], detector.predictor,
                                   detector.face_detector)[0]

    def refine(frame, previous):
        return location.refine_faces(to_gray(frame), previous, detector.predictor,
                                     passes=passes)

    return find, refine


def noisy_oracle(frames: list[np.ndarray], truth: np.ndarray, sigma: float,
                 seed: int = 0) -> tuple[FindFn, RefineFn]:
    """A stand-in for a model: each frame's true keypoints plus fixed Gaussian noise (px)."""
    rng = np.random.default_rng(seed)
    noisy = truth + rng.normal(0.0, sigma, truth.shape)
    index = {id(f): i for i, f in enumerate(frames)}

    def face(i):
        pts = noisy[i].reshape(-1, 2)
        lo, hi = pts.min(0), pts.max(0)
        return Face((float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])),
                    1.0, noisy[i])

    return (lambda frame: [face(index[id(frame)])],
            lambda frame, previous: [face(index[id(frame)]) for _ in previous])


# --------------------------------------------------------------------------- inputs


def validation_photos(workdir: Path, n: int) -> list[Path]:
    """The first n photos (sorted by name) of people in the run's validation split."""
    import pandas as pd

    split = json.loads(run_dir.split_path(workdir).read_text())
    ids = np.loadtxt(_data("youtube_faces") / "person_ids.txt", dtype=np.int64)
    train_people = set(ids[np.asarray(split["train_row_ids"])].tolist())
    table = pd.read_csv(_data("photos") / "keypoints.csv")
    names = sorted(set(table["person"]))  # person ids number the names in sorted order
    val = [f for f, p in zip(table["file"], table["person"])
           if names.index(p) not in train_people]
    return [_data("photos") / f for f in sorted(val)[:n]]


def photo_labels(path: Path) -> np.ndarray | None:
    import pandas as pd

    from fkd_jax.geometry import keypoints

    table = pd.read_csv(_data("photos") / "keypoints.csv")
    row = table[table["file"] == path.name]
    return None if row.empty else row[list(keypoints.COLUMNS)].to_numpy(np.float64)[0]


def synthetic_picture(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A generated face scaled 2x into a 256x224 RGB picture, and its keypoints there (px)."""
    import cv2

    from fkd_jax.data import synthetic

    image, kp = synthetic.generate_faces(1, seed)
    face = cv2.resize(image[0], (192, 192), interpolation=cv2.INTER_CUBIC)
    picture = np.full((224, 256), int(np.median(image[0])), np.uint8)
    x0, y0 = 40, 16
    picture[y0:y0 + 192, x0:x0 + 192] = face
    kp = kp[0].astype(np.float64) * 2.0  # scale about the corner (continuous convention)
    kp[0::2] += x0
    kp[1::2] += y0
    return np.repeat(picture[..., None], 3, axis=2), kp


# --------------------------------------------------------------------------- main


def run_one(picture: np.ndarray, pipeline, fps: float, seconds: float, still: float,
            speed: float, settings: list[OneEuroSettings], sweep: list[OneEuroSettings],
            pixel_noise: float = 0.0) -> dict:
    t = np.arange(int(round(seconds * fps))) / fps
    frames = render(picture, path_offsets(t, still, speed), pixel_noise)
    find, refine = pipeline(frames)
    raw, counts = track(frames, find, refine, fps, None)
    result = {"frames": len(frames), "raw": measure(raw, t, still, speed, fps), **counts}
    if np.isnan(raw).any():
        result["lost"] = True
        return result
    for s in settings:  # through track_video itself
        smoothed, _ = track(frames, find, refine, fps, s)
        result[_name(s)] = measure(smoothed, t, still, speed, fps)
    for s in sweep:  # offline, same filter
        result.setdefault("sweep", {})[_name(s)] = measure(smooth_offline(raw, fps, s), t,
                                                            still, speed, fps)
    return result


def _name(s: OneEuroSettings) -> str:
    return f"one_euro(min_cutoff={s.min_cutoff:g},beta={s.beta:g},d_cutoff={s.d_cutoff:g})"


def _mean_over(results: list[dict], key: str) -> dict[str, float] | None:
    rows = [r[key] for r in results if key in r]
    if not rows:
        return None
    return {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}


FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Trained run directory.", flag_values=FLAGS)
flags.DEFINE_string("model", None, "Exported model (export.py).", flag_values=FLAGS)
flags.DEFINE_bool("synthetic", False, "A generated face and a stand-in model (truth + noise).",
                  flag_values=FLAGS)
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of --workdir.",
                  flag_values=FLAGS)
flags.DEFINE_list("photos", [], "Photo paths (default: the run's validation people).",
                  flag_values=FLAGS)
flags.DEFINE_string("data", None, "Folder with photos/ (uncropped photos and keypoints.csv) and "
                    "youtube_faces/ (person_ids.txt): where the validation photos come from when "
                    "--photos is not given.", flag_values=FLAGS)
flags.DEFINE_integer("n_photos", 6, "Photos when --photos is not given.", flag_values=FLAGS)
flags.DEFINE_float("fps", 30.0, "Frames per second.", flag_values=FLAGS)
flags.DEFINE_float("seconds", 8.5, "Video length, s.", flag_values=FLAGS)
flags.DEFINE_float("still", 2.5, "Seconds still at the start.", flag_values=FLAGS)
flags.DEFINE_float("speed", 1.0, "Path amplitude factor.", flag_values=FLAGS)
flags.DEFINE_float("noise", 1.0, "Stand-in model noise, px.", flag_values=FLAGS)
flags.DEFINE_integer("passes", 1, "Framing passes per tracked frame.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_float("pixel_noise", 0.0, "Camera noise added to each frame, std in gray levels "
                   "0..255.", flag_values=FLAGS)
flags.DEFINE_float("min_cutoff", OneEuroSettings.min_cutoff, "One Euro min cutoff, Hz.",
                   flag_values=FLAGS)
flags.DEFINE_float("beta", OneEuroSettings.beta, "One Euro speed coefficient, 1/px.",
                   flag_values=FLAGS)
flags.DEFINE_float("d_cutoff", OneEuroSettings.d_cutoff, "One Euro speed low-pass, Hz.",
                   flag_values=FLAGS)
flags.DEFINE_bool("sweep", False, "Also a (min_cutoff, beta) grid.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Also write the JSON here.", flag_values=FLAGS)


def main(argv: list[str]) -> dict:
    cli.parse_flags(argv, FLAGS)
    args = SimpleNamespace(**FLAGS.flag_values_dict())
    if sum(map(bool, (args.workdir, args.model, args.synthetic))) > 1:
        raise UserError("give one of --workdir, --model, --synthetic")
    settings = [OneEuroSettings(args.min_cutoff, args.beta, args.d_cutoff)]
    sweep = ([OneEuroSettings(m, b, args.d_cutoff) for m in (0.3, 0.5, 1.0, 2.0)
              for b in (0.0, 0.02, 0.05, 0.1, 0.3)] if args.sweep else [])

    if args.workdir or args.model:
        from fkd_jax.api import Detector

        detector = Detector.load(args.workdir or args.model, checkpoint=args.checkpoint)
        pipeline = lambda frames: model_pipeline(detector, args.passes)  # noqa: E731
        if args.photos:
            photos = [Path(p) for p in args.photos]
        elif args.workdir:
            photos = validation_photos(Path(args.workdir), args.n_photos)
        else:
            photos = sorted(_data("photos").glob("*.jpg"))[: args.n_photos]
        from fkd_jax.pictures.images import read_picture

        pictures = [(p.name, read_picture(p)) for p in photos]
        model = str(args.workdir or args.model)
    else:
        picture, kp = synthetic_picture()
        t = np.arange(int(round(args.seconds * args.fps))) / args.fps
        truth = kp[None] + _expand(path_offsets(t, args.still, args.speed), len(kp))
        pipeline = lambda frames: noisy_oracle(frames, truth, args.noise)  # noqa: E731
        pictures = [("synthetic", picture)]
        model = f"stand-in: true keypoints + N(0, {args.noise:g} px)"

    per_picture = {}
    for name, picture in pictures:
        per_picture[name] = run_one(picture, pipeline, args.fps, args.seconds, args.still,
                                    args.speed, settings, sweep, args.pixel_noise)
    results = list(per_picture.values())
    kept = [r for r in results if not r.get("lost")]
    summary = {
        "model": model, "fps": args.fps, "seconds": args.seconds, "still_s": args.still,
        "pixel_noise": args.pixel_noise, "passes": args.passes,
        "max_speed_px_s": float(np.max(0.5 * args.speed * AMPLITUDE * 2 * np.pi / PERIOD)),
        "pictures": len(results), "lost": len(results) - len(kept),
        "settings": asdict(settings[0]),
        "raw": _mean_over(kept, "raw"), "smoothed": _mean_over(kept, _name(settings[0])),
    }
    if sweep:
        summary["sweep"] = {_name(s): {m: float(np.mean([r["sweep"][_name(s)][m] for r in kept]))
                                       for m in ("still_rms", "moving_rms", "d2_rms", "lag_ms",
                                                 "error_rms")}
                            for s in sweep}
    summary["per_picture"] = per_picture
    text = json.dumps(summary, indent=2)
    if args.out:
        from fkd_jax import files

        files.write_text(args.out, text + "\n")
    print(text)
    return summary


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
