"""Keypoints on your photos and videos: find every face, frame it as trained, predict, map back.

  python predict.py --workdir RUN_DIR --out OUT PATH...      # PATH: image, folder or video
  python predict.py --model model.jaxexport --out OUT PATH...  # an exported model (export.py)
  python predict.py --workdir RUN_DIR --out OUT --box 40,60,120,120 photo.jpg   # your face box
  python predict.py --workdir RUN_DIR --out OUT --labels keypoints.csv PHOTOS...  # score them

A folder is searched recursively for images (.jpg .jpeg .png .bmp .tif .tiff .webp) and videos
(.mp4 .avi .mov .mkv). OUT receives:
  keypoints.csv  one row per face: file, frame (0 for photos), face, box_x, box_y, box_w, box_h,
                 score, then the 30 Kaggle keypoint columns in the picture's own pixels; a
                 picture (or video frame) with no face has one row with empty face cells
  overlays/      each photo (and video) with boxes and keypoints drawn, mirroring the inputs'
                 folders (relative to their common folder), so a/x.jpg and b/x.jpg stay apart
  summary.json   files, faces, files with no face, failed files, settings, timings
  scores.json, scores.csv, ced.png   with --labels: faces found, NME per pass, failures, AUC

Whole-command problems (missing path, empty folder, unreadable model, bad option) stop with
one line and exit status 2 before anything is written. A corrupt file inside a folder is
reported by name and skipped; the rest is processed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fkd_jax.geometry.framing import to_gray
from fkd_jax.geometry import framing
from fkd_jax.pictures import detection
from fkd_jax.pictures import drawing
from fkd_jax.pictures import images as picture_files
from fkd_jax.pictures import location
from fkd_jax.errors import RunStopped, UserError, exit_on_user_error

EXIT_SOME_FAILED = 1
CHUNK = 64  # photos per chunk: all their crops go through the predictor together, per pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (through exit_on_user_error)
        raise UserError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="predict.py", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", metavar="PATH", help="image, folder or video files")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--workdir", help="run directory written by train.py")
    source.add_argument("--model", help="exported model file (export.py)")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best",
                   help="which checkpoint of --workdir (default best)")
    p.add_argument("--out", help="output folder (required)")
    p.add_argument("--box", help="x,y,w,h: the face box (picture pixels), skips detection")
    p.add_argument("--passes", type=int, default=None,
                   help="most passes per photo: 1 from the box, then re-framed from the "
                        "keypoints until the crop settles (default 8)")
    p.add_argument("--settle", type=float, default=None,
                   help="stop re-framing a face once its crop moves less than this fraction "
                        "of its side (default 0.02; 0 = always --passes passes)")
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--no_retry", action="store_true",
                   help="keep a face still moving after the last pass as it is (default: "
                        "locate it again from its box with --tta)")
    p.add_argument("--no_rotate", action="store_true",
                   help="keep re-framed crops upright (default: turn them with the eye line)")
    p.add_argument("--smoothing", choices=["on", "off"], default="on",
                   help="One Euro filter on video keypoints (photos are never smoothed)")
    p.add_argument("--min_cutoff", type=float, default=None, help="One Euro min cutoff, Hz")
    p.add_argument("--beta", type=float, default=None, help="One Euro speed coefficient")
    p.add_argument("--labels", help="CSV of true keypoints in picture pixels (file + the 30 "
                                    "Kaggle columns): score the photos against it")
    p.add_argument("--no_overlays", action="store_true", help="write no overlay pictures")
    args = p.parse_args(argv)
    if not args.out:
        raise UserError("--out is required (the output folder)")
    if not (args.workdir or args.model):
        raise UserError("give --workdir RUN_DIR (a trained run) or --model FILE (exported)")
    if not args.paths:
        raise UserError("give at least one PATH (an image, a folder or a video)")
    if args.passes is not None and args.passes < 1:
        raise UserError(f"--passes={args.passes} must be >= 1")
    if args.settle is not None and not args.settle >= 0:
        raise UserError(f"--settle={args.settle} must be >= 0")
    args.box = parse_box(args.box) if args.box is not None else None
    return args


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x,y,w,h' (picture pixels) -> floats; w and h > 0."""
    parts = text.split(",")
    try:
        x, y, w, h = (float(v) for v in parts)
    except ValueError:
        raise UserError(f"--box={text!r} must be x,y,w,h (four numbers, picture pixels)") from None
    if not (w > 0 and h > 0 and all(np.isfinite([x, y, w, h]))):
        raise UserError(f"--box={text!r}: width and height must be > 0")
    return x, y, w, h


@dataclass
class Item:
    """One input file: the path to read, its name in the outputs, and its kind."""

    path: Path
    name: str  # as given or found: the `file` column
    kind: str  # "photo" or "video"
    overlay: Path = field(default=Path())  # relative output path under OUT/overlays


def find_inputs(paths: list[str]) -> list[Item]:
    """Expand PATHs (files, folders searched recursively) into photos and videos, in order,
    each once. Raises UserError for a missing path, an unsupported file or an empty folder."""
    from fkd_jax.pictures.images import IMAGE_SUFFIXES
    from fkd_jax.pictures.video import VIDEO_SUFFIXES

    def kind(p: Path) -> str | None:
        s = p.suffix.lower()
        return "photo" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None

    items, seen = [], set()
    for text in paths:
        p = Path(text)
        if not p.exists():
            raise UserError(f"{text}: no such file or folder")
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and kind(q))
            if not found:
                raise UserError(f"{text}: folder holds no images or videos "
                                f"({' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            entries = [(q, str(q)) for q in found]
        elif kind(p) is None:
            raise UserError(f"{text}: not an image or video file by its name (expected one of "
                            f"{' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
        else:
            entries = [(p, text)]
        for q, name in entries:
            key = os.path.realpath(q)
            if key not in seen:
                seen.add(key)
                items.append(Item(q, name, kind(q)))
    return assign_overlay_names(items)


def assign_overlay_names(items: list[Item]) -> list[Item]:
    """Overlay paths that mirror the inputs relative to their deepest common folder (distinct
    inputs, distinct names). Formats other than JPEG/PNG/video get a .png overlay."""
    if not items:
        return items
    real = [Path(os.path.realpath(it.path)) for it in items]
    base = Path(os.path.commonpath([str(r.parent) for r in real]))
    for it, r in zip(items, real):
        rel = r.relative_to(base)
        if it.kind == "photo" and rel.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            rel = rel.with_name(rel.name + ".png")
        it.overlay = rel
    return items


def read_labels(path: str):
    """{file name in the CSV: (T, 30) true keypoints} from a CSV with `file` + Kaggle columns."""
    import pandas as pd

    from fkd_jax.geometry import keypoints

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--labels {path}: no such file")
    try:
        table = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"--labels {path}: not a readable CSV "
                        f"({' '.join(str(e).split())})") from None
    missing = [c for c in ("file",) + keypoints.COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"--labels {path}: missing column(s) {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''}")
    values = table[list(keypoints.COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy()
    labels: dict[str, list[np.ndarray]] = {}
    for name, row in zip(table["file"].astype(str), values):
        labels.setdefault(name, []).append(row)
    return {k: np.stack(v) for k, v in labels.items()}


def match_label(name: str, labels: dict) -> str | None:
    """The labels' file name that `name` ends with, component by component (e.g. photos/x.jpg
    ends with x.jpg); the longest such match."""
    parts = Path(name).parts
    best = None
    for key in labels:
        kp = Path(key).parts
        if len(kp) <= len(parts) and tuple(parts[len(parts) - len(kp):]) == kp:
            if best is None or len(kp) > len(Path(best).parts):
                best = key
    return best


# ---------------------------------------------------------------------------------------------


@exit_on_user_error
def main(argv: list[str]) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    items = find_inputs(args.paths)
    labels = read_labels(args.labels) if args.labels else None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")


    smoothing = None
    if args.smoothing == "on":
        from fkd_jax.pictures.video import OneEuroSettings

        defaults = OneEuroSettings()
        smoothing = OneEuroSettings(
            min_cutoff=defaults.min_cutoff if args.min_cutoff is None else args.min_cutoff,
            beta=defaults.beta if args.beta is None else args.beta,
            d_cutoff=defaults.d_cutoff)

    t0 = time.perf_counter()
    predictor = load_predictor(args)
    detector = detection.FaceDetector()
    timings = {"load_model_s": time.perf_counter() - t0}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror or e})") from None

    run = Runner(args, predictor, detector, out, smoothing)
    try:
        run.all_photos([it for it in items if it.kind == "photo"])
        for it in (it for it in items if it.kind == "video"):
            run.video(it)
    except KeyboardInterrupt:  # keep what is done: a long folder stopped is not lost
        run.timings.update(timings)
        run.finish(items, labels, t_start, interrupted=True)
        raise RunStopped(f"Ctrl-C: stopped after {run.n_photos} photos and {run.n_videos} "
                         f"videos, whose rows are in {out / 'keypoints.csv'}", 130,
                         "interrupted") from None
    run.timings.update(timings)
    return run.finish(items, labels, t_start)


def load_predictor(args) -> "TwoBatchPredictor":
    """The model from a run's checkpoint or an exported model, restored (or read) once here,
    so that a bad model is a whole-command error before anything is written."""
    from fkd_jax.training import restore
    from fkd_jax.inference import predictor as inference

    if args.model:
        from fkd_jax.inference import exported

        if not Path(args.model).is_file():
            raise UserError(f"--model {args.model}: no such file")
        exported.load_predictor(args.model, batch_size=SMALL_BATCH)  # reads and checks it
        return TwoBatchPredictor(lambda b: exported.load_predictor(args.model, batch_size=b))
    if not Path(args.workdir).is_dir():
        raise UserError(f"--workdir {args.workdir}: no such folder")
    run = restore.load_run(args.workdir, args.checkpoint)
    return TwoBatchPredictor(lambda b: inference.Predictor.from_run(run, batch_size=b))


# Predictor batch sizes. On 2 CPU cores heatmap_unet runs 3-3.5 ms a face in batches of 1-8
# and 7 ms a face in batches of 64 (cache-bound), so bulk crops go in batches of 8 and the rest
# (a single photo, a video frame's faces) one by one.
BULK_BATCH, SMALL_BATCH = 8, 1


class TwoBatchPredictor:
    """Crops (N, 96, 96, 1) -> keypoints (N, 2K) crop pixels, through two executables compiled
    once each, on first use: whole batches of BULK_BATCH through one, the rest through the
    batch-1 one (no padding wasted on a lone photo or video frame)."""

    def __init__(self, make):
        self._make, self._cache = make, {}

    @property
    def image_size(self) -> int:
        """The model's input side in pixels (crops are rendered at this size)."""
        return int(self._get(SMALL_BATCH).image_size)

    def _get(self, batch: int):
        if batch not in self._cache:
            self._cache[batch] = self._make(batch)
        return self._cache[batch]

    def __call__(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        images = np.asarray(images, np.float32)
        whole = len(images) // BULK_BATCH * BULK_BATCH
        parts = []
        if whole:
            parts.append(self._get(BULK_BATCH)(images[:whole], tta=tta))
        if len(images) > whole:
            parts.append(self._get(SMALL_BATCH)(images[whole:], tta=tta))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class Runner:
    """Processes photos in chunks and videos one by one; collects rows, failures, timings."""

    def __init__(self, args, predictor, detector, out: Path, smoothing):
        self.args, self.predictor, self.detector, self.out = args, predictor, detector, out
        self.smoothing = smoothing

        self.passes = args.passes or location.DEFAULT_PASSES
        self.settle = location.DEFAULT_SETTLE if args.settle is None else args.settle
        self.rotate = not args.no_rotate
        self.rows: list[dict] = []
        self.failed: list[dict] = []
        self.no_face: list[str] = []
        self.photo_faces: dict[str, list] = {}  # name -> faces, for --labels
        self.n_photos = self.n_videos = self.n_frames = self.n_faces = 0
        self.timings = {k: 0.0 for k in ("decode_s", "detect_s", "locate_s", "overlays_s",
                                         "write_s", "video_s")}

    def _fail(self, item: Item, e: Exception) -> None:
        msg = " ".join(str(e).split())
        print(f"error: {msg}", file=sys.stderr, flush=True)
        self.failed.append({"file": item.name, "error": msg})

    def photos(self, chunk: list[Item]) -> None:
        """One chunk of photos: decode, detect, locate, write."""
        self._locate(self._detect(chunk, self.detector))

    def all_photos(self, items: list[Item]) -> None:
        """Every photo, CHUNK at a time; the next chunk is decoded and searched for faces in a
        second thread (with its own detector: OpenCV's cascades are not shared between
        threads) while this one is located: detection and the model each leave part of the
        two cores idle, and overlapped they finish ~10-20% sooner (README, Speed). Stage
        timings then add up to more than the wall time."""
        chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
        if len(chunks) < 2:
            for chunk in chunks:
                self.photos(chunk)
            return

        detector = detection.FaceDetector()
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._detect, chunks[0], detector)
            for k in range(len(chunks)):
                found = ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(self._detect, chunks[k + 1], detector)
                self._locate(found)

    def _detect(self, chunk: list[Item], detector) -> tuple:
        """Decode a chunk and find its face boxes: (items read, pictures, grays, boxes, loose)."""

        t = time.perf_counter()
        ok, pictures = [], []
        for it in chunk:
            try:
                pictures.append(picture_files.read_picture(it.path))
                ok.append(it)
            except UserError as e:
                self._fail(it, e)
        grays = [to_gray(p) for p in pictures]
        t1 = time.perf_counter()
        if self.args.box is not None:
            boxes, loose = [[detection.Detection(self.args.box, 1.0)] for _ in grays], None
        else:
            boxes, loose = detection.detect_faces(grays, detector)
        self.timings["decode_s"] += t1 - t
        self.timings["detect_s"] += time.perf_counter() - t1
        return ok, pictures, grays, boxes, loose

    def _locate(self, detected: tuple) -> None:

        ok, pictures, grays, boxes, loose = detected
        t2 = time.perf_counter()
        found = location.find_faces(grays, self.predictor, self.detector, boxes=boxes,
                             confirm=self.args.box is None, loose=loose, passes=self.passes,
                             tta=self.args.tta, rotate=self.rotate, settle=self.settle,
                             retry_tta=not self.args.no_retry)
        t3 = time.perf_counter()
        for it, picture, fs in zip(ok, pictures, found):
            self.n_photos += 1
            self._add_rows(it.name, 0, fs)
            self.photo_faces[it.name] = fs
            if not self.args.no_overlays:
                write_picture(self.out / "overlays" / it.overlay, drawing.draw_faces(picture, fs))
        self.timings["locate_s"] += t3 - t2
        self.timings["overlays_s"] += time.perf_counter() - t3

    def _add_rows(self, name: str, frame: int, fs: list) -> None:
        from fkd_jax.geometry import keypoints

        if not fs:
            if frame == 0 or name not in self.no_face:
                print(f"no face found: {name}" + (f" (frame {frame})" if frame else ""),
                      flush=True)
            if name not in self.no_face:
                self.no_face.append(name)
            self.rows.append({"file": name, "frame": frame})
            return
        for i, f in enumerate(fs):
            # a video's face keeps its track number from frame to frame (video.TrackedFace)
            row = {"file": name, "frame": frame, "face": getattr(f, "track", i),
                   "box_x": f.box[0], "box_y": f.box[1], "box_w": f.box[2], "box_h": f.box[3],
                   "score": f.score}
            row.update(zip(keypoints.COLUMNS, framing.kaggle15(f.keypoints_px)))
            self.rows.append(row)
            self.n_faces += 1

    def video(self, item: Item) -> None:
        from fkd_jax.pictures import video as V

        t = time.perf_counter()
        try:
            frames, fps, size = V.read_video(item.path)
        except UserError as e:
            self._fail(item, e)
            return
        box = self.args.box

        def find(frame_rgb):
            gray = to_gray(frame_rgb)
            boxes = [[detection.Detection(box, 1.0)]] if box is not None else None
            return location.find_faces([gray], self.predictor, self.detector, boxes=boxes,
                                settle=self.settle, passes=self.passes,
                                tta=self.args.tta, rotate=self.rotate,
                                retry_tta=not self.args.no_retry)[0]

        def refine(frame_rgb, previous):
            return location.refine_faces(to_gray(frame_rgb), previous, self.predictor, passes=1,
                                  tta=self.args.tta, rotate=self.rotate,
                                  detector=self.detector)

        rows_before, faces_before, n = len(self.rows), self.n_faces, 0
        no_face_before = list(self.no_face)
        try:
            tracked = V.track_video(frames, find, refine, smoothing=self.smoothing, fps=fps)
            if self.args.no_overlays:
                for index, _, fs in tracked:
                    self._add_rows(item.name, index, fs)
                    n += 1
            else:
                with V.VideoWriter(self.out / "overlays" / item.overlay, fps, size) as writer:
                    for index, frame, fs in tracked:
                        self._add_rows(item.name, index, fs)
                        writer.write(drawing.draw_faces(frame, fs))
                        n += 1
        except (UserError, KeyboardInterrupt) as e:  # broken off mid-way: drop its partial rows
            del self.rows[rows_before:]
            self.n_faces, self.no_face = faces_before, no_face_before
            if isinstance(e, KeyboardInterrupt):
                raise
            self._fail(item, e)
            return
        self.n_videos += 1
        self.n_frames += n
        self.timings["video_s"] += time.perf_counter() - t

    def finish(self, items: list[Item], labels, t_start: float,
               interrupted: bool = False) -> int:
        """Write keypoints.csv and summary.json (and scores with labels); print the totals.
        `interrupted`: Ctrl-C stopped the run; what was done is written and said so."""
        from fkd_jax import files

        t = time.perf_counter()
        files.write_text(self.out / "keypoints.csv", rows_to_csv(self.rows))
        scores = None
        if labels is not None:
            scores = score(self.photo_faces, labels, self.out, self.passes)
        self.timings["write_s"] += time.perf_counter() - t
        total = time.perf_counter() - t_start
        photo_time = sum(self.timings[k] for k in ("decode_s", "detect_s", "locate_s",
                                                   "overlays_s"))
        summary = {
            "files": len(items), "photos": self.n_photos, "videos": self.n_videos,
            "video_frames": self.n_frames, "faces": self.n_faces,
            "no_face": self.no_face, "failed": self.failed,
            "settings": {"passes": self.passes, "settle": self.settle, "tta": self.args.tta,
                         "retry": not self.args.no_retry,
                         "rotate": self.rotate,
                         "box": self.args.box,
                         "smoothing": None if self.smoothing is None else
                         {"min_cutoff": self.smoothing.min_cutoff, "beta": self.smoothing.beta,
                          "d_cutoff": self.smoothing.d_cutoff},
                         "model": self.args.model or f"{self.args.workdir} "
                                                     f"({self.args.checkpoint})"},
            "timings_s": {k: round(v, 3) for k, v in {**self.timings, "total_s": total}.items()},
            "photos_per_s": round(self.n_photos / photo_time, 2) if photo_time > 0 else None,
            "video_frames_per_s": (round(self.n_frames / self.timings["video_s"], 2)
                                   if self.timings["video_s"] > 0 else None),
        }
        if scores is not None:
            summary["scores"] = scores
        if interrupted:
            summary["interrupted"] = True
        files.write_json(self.out / "summary.json", jsonable(summary))
        print(f"{self.n_photos} photos, {self.n_videos} videos ({self.n_frames} frames): "
              f"{self.n_faces} faces, {len(self.no_face)} files with no face found, "
              f"{len(self.failed)} failed; wrote {self.out}/keypoints.csv and summary.json")
        if scores is not None:
            final = scores["final"]
            print(f"scores on {final['n_faces']} labelled faces: found {final['found']:.1%}, "
                  f"NME {final['nme_mean']:.2%} (median {final['nme_median']:.2%}), "
                  f"failures (NME > 10%) {final['failure_rate']:.1%}, "
                  f"AUC@10% {final['auc_10']:.3f}; wrote scores.json, scores.csv, ced.png")
        if self.failed:
            print(f"some files failed: {len(self.failed)} of {len(items)}", file=sys.stderr)
            return EXIT_SOME_FAILED
        return 0


def rows_to_csv(rows: list[dict]) -> str:
    """keypoints.csv text: fixed columns, 2 decimals for pixels, empty cells where no face."""
    import pandas as pd

    from fkd_jax.geometry import keypoints

    columns = ["file", "frame", "face", "box_x", "box_y", "box_w", "box_h", "score",
               *keypoints.COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    table["face"] = table["face"].astype("Int64")
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.2f")
    return buf.getvalue()


def write_picture(path: Path, rgb: np.ndarray) -> None:
    """Encode by the suffix (JPEG quality 92, PNG) and write atomically."""
    import cv2

    from fkd_jax import files

    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UserError(f"{path}: could not encode the overlay")
    files.write_bytes(path, data.tobytes())


def score(photo_faces: dict, labels: dict, out: Path, passes: int) -> dict:
    """Match each labelled face to a predicted one and score: NME per pass and final, found
    share, failure rate, AUC; writes scores.csv (one row per labelled face) and ced.png."""
    import pandas as pd

    from fkd_jax import files
    from fkd_jax.evaluation import metrics as pm

    per_face, per_pass = [], [[] for _ in range(passes)]
    extra = 0
    for name, fs in photo_faces.items():
        key = match_label(name, labels)
        if key is None:
            continue
        truth = labels[key]
        pred = (np.stack([framing.kaggle15(f.keypoints_px) for f in fs]) if fs
                else np.zeros((0, truth.shape[1])))
        pairs = dict((t, p) for p, t in pm.match_faces(pred, truth))
        extra += len(fs) - len(pairs)
        for t in range(len(truth)):
            if t in pairs:
                f = fs[pairs[t]]
                hist = f.history or (f.keypoints_px,)
                errs = [float(pm.nme(framing.kaggle15(h), truth[t])) for h in hist]
                errs += [errs[-1]] * (passes - len(errs))
                final = float(pm.nme(framing.kaggle15(f.keypoints_px), truth[t]))
            else:
                errs, final = [float("nan")] * passes, float("nan")
            for p in range(passes):
                per_pass[p].append(errs[p])
            per_face.append({"file": name, "label_row": t,
                             "face": pairs.get(t, None), "nme": final})
    if not per_face:
        raise UserError("--labels: none of the processed photos has labels in the CSV "
                        "(its `file` names must end the photos' paths)")
    finals = [r["nme"] for r in per_face]
    table = pd.DataFrame(per_face, columns=["file", "label_row", "face", "nme"])
    table["face"] = table["face"].astype("Int64")
    files.write_text(out / "scores.csv", table.to_csv(index=False, float_format="%.5f"))
    curves = {f"pass {p + 1}": per_pass[p] for p in range(passes)}
    pm.plot_ced(out / "ced.png", curves)
    result = {
        "nme": "mean point-to-point error / distance between the true outer eye corners",
        "final": pm.summarise(finals).as_dict(),
        "per_pass": {f"pass {p + 1}": pm.summarise(v).as_dict() for p, v in enumerate(per_pass)},
        "extra_faces": extra,
        "worst": table.sort_values("nme", ascending=False, na_position="first")
                      .head(10)[["file", "nme"]].to_dict("records"),
    }
    files.write_json(out / "scores.json", jsonable(result))
    return result


def jsonable(obj):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
