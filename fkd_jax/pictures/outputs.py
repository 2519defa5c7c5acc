"""What predict.py writes for a set of photos and videos, and the loop that fills it.

OUT receives (every file written atomically, fkd_jax.files):
  keypoints.csv  one row per face: file, frame (0 for photos), face, box_x, box_y, box_w, box_h,
                 score, then the 30 Kaggle keypoint columns in the picture's own pixels, then
                 each keypoint's confidence in [0, 1] (NAME_confidence; empty for a model that
                 gives none); a picture (or video frame) with no face has one row with empty
                 face cells
  landmarks.csv  for a model of another keypoint set (e.g. the 68 iBUG landmarks): the same
                 rows with all of its points (NAME_x, NAME_y) and their confidences
  overlays/      each photo (and video) with boxes and keypoints drawn, mirroring the inputs'
                 folders (`inputs.assign_overlay_names`)
  summary.json   files, faces, files with no face, failed files, settings, timings
  scores.json, scores.csv, ced.png   with labels (fkd_jax.pictures.scoring)

`process` runs a detector (fkd_jax.api.Detector) over the inputs: photos in chunks, then each
video tracked. A file that fails is reported by name and skipped; Ctrl-C keeps what is done.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fkd_jax import files
from fkd_jax.errors import RunStopped, UserError
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import kaggle15
from fkd_jax.pictures import drawing, scoring
from fkd_jax.pictures.inputs import Item
from fkd_jax.pictures.location import Face

EXIT_SOME_FAILED = 1
FACE_COLUMNS = ("file", "frame", "face", "box_x", "box_y", "box_w", "box_h", "score")
CSV_COLUMNS = (*FACE_COLUMNS, *keypoints.COLUMNS,
               *(f"{n}_confidence" for n in keypoints.KEYPOINT_NAMES))


def landmark_columns(keypoint_set: keypoints.KeypointSet) -> tuple[str, ...]:
    """landmarks.csv's columns for a model of `keypoint_set`."""
    return (*FACE_COLUMNS, *keypoint_set.columns,
            *(f"{n}_confidence" for n in keypoint_set.names))


def face_rows(name: str, frame: int, faces: Sequence[Face], all_points: bool = False
              ) -> list[dict]:
    """keypoints.csv rows of one picture (or video frame): one per face, numbered by its
    place in `faces` (a tracked face by its track), or one row of empty cells for none.
    `all_points`: landmarks.csv's rows instead, every point of the model's set."""
    if not faces:
        return [{"file": name, "frame": frame}]
    rows = []
    for i, f in enumerate(faces):
        row = {"file": name, "frame": frame, "face": getattr(f, "track", i),
               "box_x": f.box[0], "box_y": f.box[1], "box_w": f.box[2], "box_h": f.box[3],
               "score": f.score}
        if all_points:
            names = f.names
            row.update(zip((f"{n}_{a}" for n in names for a in "xy"), f.keypoints_px))
            row.update(zip((f"{n}_confidence" for n in names), f.confidence))
        else:
            row.update(zip(keypoints.COLUMNS, kaggle15(f.keypoints_px)))
            row.update(zip(CSV_COLUMNS[-keypoints.NUM_KEYPOINTS:], f.kaggle15_confidence))
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """keypoints.csv text: fixed columns, 2 decimals for pixels (and confidences), empty
    cells where no face. The csv module, not pandas: importing pandas is a tenth of a short
    predict.py run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def write_picture(path: Path, rgb: np.ndarray) -> None:
    """Encode by the suffix (JPEG quality 92, PNG) and write atomically."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UserError(f"{path}: could not encode the overlay")
    files.write_bytes(path, data.tobytes())


class Results:
    """Rows, failures, counts and timings of one command, written by `finish`."""

    def __init__(self, out: Path, overlays: bool = True,
                 keypoint_set: keypoints.KeypointSet = keypoints.KAGGLE15):
        self.out, self.overlays = Path(out), overlays
        self.rows: list[dict] = []
        # landmarks.csv's rows, kept only for a model of another set than Kaggle's 15
        self.landmark_rows: list[dict] = []
        self.landmark_set = None if keypoint_set is keypoints.KAGGLE15 else keypoint_set
        self.failed: list[dict] = []
        self.no_face: list[str] = []
        self.photo_faces: dict[str, list[Face]] = {}  # name -> faces, for scoring
        self.n_photos = self.n_videos = self.n_frames = self.n_faces = 0
        self.timings = {k: 0.0 for k in ("decode_s", "detect_s", "locate_s", "overlays_s",
                                         "write_s", "video_s")}

    def fail(self, item: Item, error: Exception) -> None:
        msg = " ".join(str(error).split())
        print(f"error: {msg}", file=sys.stderr, flush=True)
        self.failed.append({"file": item.name, "error": msg})

    def add(self, name: str, frame: int, faces: Sequence[Face]) -> None:
        """The rows of one picture or video frame; says so the first time a file has none."""
        if not faces:
            if frame == 0 or name not in self.no_face:
                print(f"no face found: {name}" + (f" (frame {frame})" if frame else ""),
                      flush=True)
            if name not in self.no_face:
                self.no_face.append(name)
        self.rows.extend(face_rows(name, frame, faces))
        if self.landmark_set is not None:
            self.landmark_rows.extend(face_rows(name, frame, faces, all_points=True))
        self.n_faces += len(faces)

    def photo(self, item: Item, picture: np.ndarray, faces: list[Face]) -> None:
        t = time.perf_counter()
        self.n_photos += 1
        self.add(item.name, 0, faces)
        self.photo_faces[item.name] = faces
        if self.overlays:
            write_picture(self.out / "overlays" / item.overlay, drawing.draw_faces(picture, faces))
        self.timings["overlays_s"] += time.perf_counter() - t

    def video(self, item: Item, detector, boxes=None) -> None:
        """Track a video's faces into rows (and an overlay video); a video broken off mid-way
        (unreadable, Ctrl-C) leaves no rows."""
        from fkd_jax.pictures import video as V

        t = time.perf_counter()
        try:
            frames, fps, size = V.read_video(item.path)
        except UserError as e:
            self.fail(item, e)
            return
        rows, faces, no_face, n = len(self.rows), self.n_faces, list(self.no_face), 0
        landmark_rows = len(self.landmark_rows)
        try:
            tracked = detector.track(frames, boxes=boxes, fps=fps, with_frames=True)
            if not self.overlays:
                for index, _, fs in tracked:
                    self.add(item.name, index, fs)
                    n += 1
            else:
                with V.VideoWriter(self.out / "overlays" / item.overlay, fps, size) as writer:
                    for index, frame, fs in tracked:
                        self.add(item.name, index, fs)
                        writer.write(drawing.draw_faces(frame, fs))
                        n += 1
        except (UserError, KeyboardInterrupt) as e:
            del self.rows[rows:]
            del self.landmark_rows[landmark_rows:]
            self.n_faces, self.no_face = faces, no_face
            if isinstance(e, KeyboardInterrupt):
                raise
            self.fail(item, e)
            return
        self.n_videos += 1
        self.n_frames += n
        self.timings["video_s"] += time.perf_counter() - t

    def finish(self, n_files: int, settings: dict, labels: dict | None, passes: int,
               started: float, interrupted: bool = False) -> int:
        """Write keypoints.csv and summary.json (and the scores with `labels`), print the
        totals; the exit status: 0, or EXIT_SOME_FAILED when a file failed. `interrupted`:
        Ctrl-C stopped the run; what was done is written and summary.json says so."""
        t = time.perf_counter()
        files.write_text(self.out / "keypoints.csv", rows_to_csv(self.rows))
        if self.landmark_set is not None:
            files.write_text(self.out / "landmarks.csv",
                             rows_to_csv(self.landmark_rows, landmark_columns(self.landmark_set)))
        scores = None
        if labels is not None:
            scores = scoring.score(self.photo_faces, labels, self.out, passes)
        self.timings["write_s"] += time.perf_counter() - t
        total = time.perf_counter() - started
        photo_time = sum(self.timings[k] for k in ("decode_s", "detect_s", "locate_s",
                                                   "overlays_s"))
        summary = {
            "files": n_files, "photos": self.n_photos, "videos": self.n_videos,
            "video_frames": self.n_frames, "faces": self.n_faces,
            "no_face": self.no_face, "failed": self.failed, "settings": settings,
            "timings_s": {k: round(v, 3) for k, v in {**self.timings, "total_s": total}.items()},
            "photos_per_s": round(self.n_photos / photo_time, 2) if photo_time > 0 else None,
            "video_frames_per_s": (round(self.n_frames / self.timings["video_s"], 2)
                                   if self.timings["video_s"] > 0 else None),
        }
        if scores is not None:
            summary["scores"] = scores
        if interrupted:
            summary["interrupted"] = True
        files.write_json(self.out / "summary.json", scoring.jsonable(summary))
        print(f"{self.n_photos} photos, {self.n_videos} videos ({self.n_frames} frames): "
              f"{self.n_faces} faces, {len(self.no_face)} files with no face found, "
              f"{len(self.failed)} failed; wrote {self.out}/keypoints.csv and summary.json")
        if scores is not None:
            final = scores["final"]
            print(f"scores on {final['n_faces']} labelled faces: found {final['found']:.1%}, "
                  f"NME {final['nme_mean']:.2%} (median {final['nme_median']:.2%}), "
                  f"failures (NME > 10%) {final['failure_rate']:.1%}, "
                  f"AUC@10% {final['auc_10']:.3f}; wrote scores.json, scores.csv, ced.png")
            conf = scores.get("confidence")
            if conf and conf["points"] and conf["sure_share"] is not None:
                print(f"confidence: AUROC {conf['auroc_wrong']:.3f} for points off by > 10%; "
                      f"{conf['sure_share']:.1%} of points sure (>= {conf['sure_threshold']}), "
                      f"their error {conf['error_sure'] or float('nan'):.2%} against "
                      f"{conf['error_all']:.2%} for all")
        if self.failed:
            print(f"some files failed: {len(self.failed)} of {n_files}", file=sys.stderr)
            return EXIT_SOME_FAILED
        return 0


def settings_of(detector, boxes) -> dict:
    """summary.json's settings: the detector's options, the given boxes and the model."""
    o, smoothing = detector.options, detector.options.one_euro
    return {"passes": o.passes, "settle": o.settle, "relax": o.relax, "tta": o.tta,
            "retry": o.retry, "final_scales": list(o.final_scales), "rotate": o.rotate,
            "box": boxes[0] if boxes else None,
            "smoothing": None if smoothing is None else
            {"min_cutoff": smoothing.min_cutoff, "beta": smoothing.beta,
             "d_cutoff": smoothing.d_cutoff},
            "model": detector.source}


def process(detector, items: list[Item], out: Path, *, boxes=None, overlays: bool = True,
            labels: dict | None = None, chunk: int | None = None,
            started: float | None = None, timings: dict | None = None) -> int:
    """Every photo (chunks through `detector.detect_files`) then every video
    (`detector.track`) of `items` into OUT; returns the exit status (0, or 1 when some file
    failed). Ctrl-C writes what is done (summary.json "interrupted": true) and raises
    RunStopped (exit status 130). `boxes`: the faces' boxes for every picture, no detection.
    `started`: perf_counter at the command's start; `timings`: more for summary.json."""
    started = time.perf_counter() if started is None else started
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    results = Results(out, overlays,
                      keypoints.set_for_width(2 * len(detector.keypoint_names)))
    results.timings.update(timings or {})
    photos = [it for it in items if it.kind == "photo"]
    finish = dict(n_files=len(items), settings=settings_of(detector, boxes), labels=labels,
                  passes=detector.options.passes, started=started)
    try:
        found = detector.detect_files([it.path for it in photos], boxes=boxes,
                                      timings=results.timings,
                                      **({} if chunk is None else {"chunk": chunk}))
        for item, result in zip(photos, found):
            if result.error is not None:
                results.fail(item, result.error)
            else:
                results.photo(item, result.picture, result.faces)
        for item in (it for it in items if it.kind == "video"):
            results.video(item, detector, boxes)
    except KeyboardInterrupt:  # keep what is done: a long folder stopped is not lost
        results.finish(**finish, interrupted=True)
        raise RunStopped(f"Ctrl-C: stopped after {results.n_photos} photos and "
                         f"{results.n_videos} videos, whose rows are in {out / 'keypoints.csv'}",
                         130, "interrupted") from None
    return results.finish(**finish)
