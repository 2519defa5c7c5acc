"""The Python front door: a trained model that finds faces and their keypoints in pictures.

    import fkd_jax
    detector = fkd_jax.Detector.load("runs/unet_pair")   # run dir, ensemble dir or .jaxexport
    for face in detector("photo.jpg"):                     # a path or an RGB/gray uint8 array
        print(face.box, face.score, dict(zip(face.names, face.keypoints.tolist())))
    for frame_index, faces in detector.track("clip.mp4"):  # tracked and smoothed
        ...

Everything is in the picture's own pixels (origin at its top-left corner, the continuous
convention of fkd_jax.geometry.keypoints): keypoints (K, 2), boxes (x, y, w, h). The options
(passes, settle, relax, tta, retry, final_scales, rotate, smoothing) are those of predict.py, with
its defaults.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from fkd_jax.errors import UserError
from fkd_jax.geometry.framing import to_gray
from fkd_jax.inference.two_batch import TwoBatchPredictor
from fkd_jax.pictures import detection, location
from fkd_jax.pictures.location import DEFAULT_PASSES, DEFAULT_RELAX, DEFAULT_SETTLE, Face
from fkd_jax.pictures.video import DEFAULT_FPS, OneEuroSettings, TrackedFace

__all__ = ["Detector", "Face", "FileResult", "Options", "TrackedFace", "CHUNK"]

# A picture: a file path, or an RGB (H, W, 3) / grayscale (H, W) uint8 array.
Picture = Union[str, Path, np.ndarray]
Box = Sequence[float]  # x, y, w, h in picture pixels
# Pictures per `detect_files` chunk: all their crops go through the model together, while the
# next chunk is searched for faces. The first chunk's search and the last one's keypoints are
# not overlapped: on 102 photos chunks of 16 ran 5-20% sooner than chunks of 64 (warm).
CHUNK = 16


@dataclass(frozen=True)
class Options:
    """How faces are located; the defaults are predict.py's.

    passes      most passes per face: 1 from the box, then re-framed from the keypoints until
                the crop settles
    settle      stop re-framing a face once its crop moves less than this fraction of its
                side (0: always `passes` passes)
    relax       each re-framing moves the crop this many times as far as the keypoints
                say (1: as far; the model follows a mis-framed crop part of the way, so
                more converges in fewer crops, on the same square); in (0, 2)
    tta         average every prediction with the mirror image's
    retry       a face still moving after the last pass is located again from its box with
                tta (and kept if that settles)
    final_scales  read each face's last square again at these sides (x its own, e.g.
                (0.95, 1.0, 1.05)) with the mirror image and average the views
                (`reading.read_views`): 2 x len crops more a face, one at 1 (the
                mirror image: the square itself was read by the last pass); () reads it once
    rotate      turn re-framed crops with the eye line (False: keep them upright)
    smoothing   One Euro filter on tracked video keypoints (`min_cutoff` Hz, `beta` 1/px;
                fkd_jax.pictures.video.OneEuroSettings); pictures are never smoothed
    """

    passes: int = DEFAULT_PASSES
    settle: float = DEFAULT_SETTLE
    relax: float = DEFAULT_RELAX
    tta: bool = False
    retry: bool = True
    final_scales: tuple[float, ...] = ()
    rotate: bool = True
    smoothing: bool = True
    min_cutoff: float = OneEuroSettings.min_cutoff
    beta: float = OneEuroSettings.beta

    def __post_init__(self):
        if not (isinstance(self.passes, (int, np.integer)) and self.passes >= 1):
            raise UserError(f"passes={self.passes} must be a whole number >= 1")
        if not self.settle >= 0:
            raise UserError(f"settle={self.settle} must be >= 0")
        if not 0 < self.relax < 2:
            raise UserError(f"relax={self.relax} must lie between 0 and 2 (1: plain re-framing)")
        try:
            scales = tuple(float(s) for s in self.final_scales)
        except (TypeError, ValueError):
            raise UserError(f"final_scales={self.final_scales!r} must be numbers") from None
        object.__setattr__(self, "final_scales", scales)
        if not all(0.5 <= s <= 2.0 for s in scales):
            raise UserError(f"final_scales={self.final_scales}: each must lie in 0.5-2 (a "
                            "side factor of the face's square)")
        self.one_euro  # checks min_cutoff and beta

    @property
    def one_euro(self) -> OneEuroSettings | None:
        """The smoothing filter's settings, None when smoothing is off."""
        settings = OneEuroSettings(self.min_cutoff, self.beta)
        return settings if self.smoothing else None


@dataclass
class FileResult:
    """One picture file of `Detector.detect_files`: its faces, or the error that stopped it."""

    path: Path
    picture: np.ndarray | None = None  # RGB uint8 (H, W, 3) as decoded
    faces: list[Face] = field(default_factory=list)
    error: UserError | None = None


class Detector:
    """A trained keypoint model with the face detector and the framing passes around it.

    Build one with `Detector.load` (or around any `predictor` with TwoBatchPredictor's
    interface: crops (N, S, S, 1) -> (N, 2K) crop pixels, `image_size`, `width`). Each of its
    two batch sizes compiles once, on first use. Not shared between threads (OpenCV's cascades
    are not); `detect_files` runs its second thread with a detector of its own.
    """

    def __init__(self, predictor: TwoBatchPredictor, *, source: str = "model",
                 face_net: str | Path | None = None, **options):
        self.predictor = predictor
        self.options = Options(**options)
        self.source = source  # what the model is, for reports: a path (and checkpoint)
        self.face_net = face_net  # a learned face detector's file, or None: the cascade alone
        self._face_detector: detection.FaceDetector | None = None
        self._face_net_run = None  # the learned detector's session, shared by both threads

    @classmethod
    def load(cls, path: str | Path, *, checkpoint: str = "best",
             face_net: str | Path | None = None, **options) -> "Detector":
        """A run directory (train.py; an ensemble's directory predicts its members' mean, at
        its `checkpoint`, "best" or "latest") or an exported model file (export.py: a
        .jaxexport file, or an .onnx file run by onnxruntime, the `onnx` extra).
        `face_net`: a learned face detector (train_face_net.py's .onnx file) in front of
        the Haar cascade. `options`: see `Options`. A missing or unreadable model raises
        UserError."""
        from fkd_jax.inference import onnx_model
        from fkd_jax.inference.predictor import Predictor

        path = Path(path)
        Options(**options)  # a bad option stops before the model is read
        if checkpoint not in ("best", "latest"):
            raise UserError(f"checkpoint={checkpoint!r} must be 'best' or 'latest'")
        if path.is_dir():
            from fkd_jax.training import restore

            run = restore.load_run(path, checkpoint)
            predictor = TwoBatchPredictor(lambda b: Predictor.from_run(run, batch_size=b))
            source = f"{path} ({checkpoint})"
        elif path.is_file():
            if onnx_model.is_onnx(path):  # onnxruntime: jax is never imported
                predictor = TwoBatchPredictor(onnx_model.onnx_predictors(path))
            else:
                from fkd_jax.inference import exported

                predictor = TwoBatchPredictor(lambda b: exported.load_predictor(path, b))
            source = str(path)
        else:
            raise UserError(f"{path}: no such run directory or model file")
        predictor.image_size  # reads and checks the model now, not at the first picture
        made = cls(predictor, source=source, face_net=face_net, **options)
        if face_net is not None:
            made.face_detector  # reads and checks it now
        return made

    def __repr__(self) -> str:
        return f"Detector({self.source!r}, {self.options})"

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        """The K keypoint names the model predicts (the order of `Face.keypoints`)."""
        return location.keypoint_names(self.predictor.width)

    # ----------------------------------------------------------------------------- pictures

    def __call__(self, picture: Picture, *, boxes: Sequence[Box] | None = None) -> list[Face]:
        """The faces of one picture, best score first; [] when there is none (never a guess).
        `boxes`: the faces' boxes (x, y, w, h picture pixels), kept as given: no detection."""
        return self.detect_many([picture], boxes=None if boxes is None else [boxes])[0]

    def detect_many(self, pictures: Sequence[Picture],
                    boxes: Sequence[Sequence[Box]] | None = None) -> list[list[Face]]:
        """The faces of each picture (one list per picture; `boxes`: one list per picture).
        All crops of all the pictures go through the model together, pass by pass."""
        grays = [to_gray(read(p)) for p in pictures]
        return self._locate(grays, self._find_boxes(grays, boxes))

    def detect_files(self, paths: Sequence[str | Path], *, boxes: Sequence[Box] | None = None,
                     chunk: int = CHUNK, timings: dict | None = None) -> Iterator[FileResult]:
        """One FileResult per picture file, in order; a file that cannot be read has its
        `error` and the rest go on. `boxes` (the same for every file) skip detection.

        Files go `chunk` at a time through `detect_many`'s work; the next chunk is decoded and
        searched for faces in a second thread (with its own face detector) while this one is
        located: detection and the model each leave part of two cores idle, and overlapped
        they finish ~10-20% sooner. `timings` (if given) gains decode_s, detect_s, locate_s
        (which then add up to more than the wall time)."""
        timings = {} if timings is None else timings
        chunk = max(int(chunk), 1)
        for key in ("decode_s", "detect_s", "locate_s"):
            timings.setdefault(key, 0.0)
        paths = [Path(p) for p in paths]
        chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
        if len(chunks) < 2:
            for part in chunks:
                yield from self._locate_files(self._read_and_find(part, boxes, None, timings),
                                              timings)
            return
        ahead_detector = self._new_face_detector()
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._read_and_find, chunks[0], boxes, ahead_detector, timings)
            for k in range(len(chunks)):
                found = ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(self._read_and_find, chunks[k + 1], boxes,
                                        ahead_detector, timings)
                yield from self._locate_files(found, timings)

    def _read_and_find(self, paths, boxes, face_detector, timings) -> tuple:
        """Decode files and find their boxes: (results, grays, found)."""
        t = time.perf_counter()
        results, grays = [], []
        for p in paths:
            try:
                results.append(FileResult(p, read(p)))
                grays.append(to_gray(results[-1].picture))
            except UserError as e:
                results.append(FileResult(p, error=e))
        t1 = time.perf_counter()
        found = self._find_boxes(grays, None if boxes is None else [boxes] * len(grays),
                                 face_detector)
        timings["decode_s"] += t1 - t
        timings["detect_s"] += time.perf_counter() - t1
        return results, grays, found

    def _locate_files(self, read_and_found: tuple, timings: dict) -> Iterator[FileResult]:
        results, grays, found = read_and_found
        t = time.perf_counter()
        faces = iter(self._locate(grays, found))
        timings["locate_s"] += time.perf_counter() - t
        for r in results:
            if r.error is None:
                r.faces = next(faces)
            yield r

    def _find_boxes(self, grays, boxes, face_detector=None) -> tuple:
        """(detections per picture, loose per picture or None, whether to confirm)."""
        if boxes is not None:
            if len(boxes) != len(grays):
                raise UserError(f"boxes: {len(boxes)} lists for {len(grays)} pictures")
            return [[detection.Detection(_box(b), 1.0) for b in bs] for bs in boxes], None, False
        found, loose = detection.detect_faces(grays, face_detector or self.face_detector)
        return found, loose, True

    def _locate(self, grays, found) -> list[list[Face]]:
        boxes, loose, confirm = found
        o = self.options
        return location.find_faces(grays, self.predictor, self.face_detector, boxes=boxes,
                                   confirm=confirm, loose=loose, passes=o.passes, tta=o.tta,
                                   rotate=o.rotate, settle=o.settle, relax=o.relax,
                                   retry_tta=o.retry, final_scales=o.final_scales)

    @property
    def face_detector(self) -> detection.FaceDetector:
        """The face detector, loaded on first use: OpenCV's Haar cascades, behind the
        learned detector when there is one (`face_net`)."""
        if self._face_detector is None:
            self._face_detector = self._new_face_detector()
        return self._face_detector

    def _new_face_detector(self) -> detection.FaceDetector:
        """A face detector of its own (OpenCV's cascades are not shared between threads);
        the learned detector's onnxruntime session is, loaded once."""
        if self.face_net is None:
            return detection.FaceDetector()
        from fkd_jax.pictures.face_net_detector import NetFaceDetector, load_face_net

        if self._face_net_run is None:
            self._face_net_run = load_face_net(self.face_net)
        return NetFaceDetector(self._face_net_run)

    # ----------------------------------------------------------------------------- video

    def track(self, video: str | Path | Iterable[np.ndarray], *,
              boxes: Sequence[Box] | None = None, fps: float | None = None,
              with_frames: bool = False) -> Iterator[tuple]:
        """(frame_index, faces) for every frame of a video file or an iterable of RGB (or
        gray) uint8 frames; ((frame_index, frame, faces) `with_frames`). Faces are
        `TrackedFace`s, ordered by their `track` number, kept from frame to frame while the
        face is followed; keypoints are One Euro smoothed (Options.smoothing) at `fps`
        (default: the file's, else 30). A face is framed from its previous keypoints; the
        detector runs when a face is lost (or on `boxes`, which replace detection)."""
        from fkd_jax.pictures import video as V

        if isinstance(video, (str, Path)):  # read here: an unreadable file raises now
            frames, file_fps, _ = V.read_video(video)
            fps = file_fps if fps is None else fps
        else:
            frames = iter(video)
        return self._tracked(frames, DEFAULT_FPS if fps is None else fps, boxes, with_frames)

    def _tracked(self, frames, fps, boxes, with_frames) -> Iterator[tuple]:
        from fkd_jax.pictures import video as V

        o = self.options
        given = None if boxes is None else [[detection.Detection(_box(b), 1.0) for b in boxes]]

        def find(frame):
            return location.find_faces([to_gray(frame)], self.predictor, self.face_detector,
                                       boxes=given, settle=o.settle, relax=o.relax,
                                       passes=o.passes, tta=o.tta, rotate=o.rotate,
                                       retry_tta=o.retry,
                                       final_scales=o.final_scales)[0]

        def refine(frame, previous):
            return location.refine_faces(to_gray(frame), previous, self.predictor, passes=1,
                                         tta=o.tta, rotate=o.rotate,
                                         detector=self.face_detector,
                                         final_scales=o.final_scales)

        tracked = V.track_video(frames, find, refine, smoothing=o.one_euro, fps=fps)
        for index, frame, faces in tracked:
            yield (index, frame, faces) if with_frames else (index, faces)

    # ----------------------------------------------------------------------------- crops

    def predict_crops(self, crops: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Keypoints (N, K, 2) float64 in crop pixels of face crops (N, S, S) or (N, S, S, 1),
        float in [0, 1] (0 black), S = `image_size`, framed as the model was trained."""
        crops = np.asarray(crops, np.float32)
        if crops.ndim == 3:
            crops = crops[..., None]
        size = self.image_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 1):
            raise UserError(f"crops of shape {crops.shape}: expected (N, {size}, {size}) or "
                            f"(N, {size}, {size}, 1)")
        pred = np.asarray(self.predictor(crops, tta=tta), np.float64)
        return pred.reshape(len(crops), -1, 2)

    @property
    def image_size(self) -> int:
        """S: the side in pixels of the crops the model takes."""
        return self.predictor.image_size


def read(picture: Picture) -> np.ndarray:
    """A picture as a uint8 array: a file decoded to RGB (H, W, 3), EXIF rotation applied;
    an array checked (H, W) or (H, W, 3) uint8 and returned as it is."""
    from fkd_jax.pictures.images import read_picture

    if isinstance(picture, (str, Path)):
        return read_picture(picture)
    if not isinstance(picture, np.ndarray):
        raise UserError(f"a picture must be a path or a numpy array, not {type(picture).__name__}")
    if picture.dtype != np.uint8 or not (picture.ndim == 2 or (picture.ndim == 3
                                                               and picture.shape[2] == 3)):
        raise UserError(f"a picture array must be uint8 (H, W) or (H, W, 3); got "
                        f"{picture.dtype} {picture.shape}")
    if min(picture.shape[:2]) < 1:
        raise UserError(f"a picture array has no pixels: {picture.shape}")
    return picture


def _box(box: Box) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise UserError(f"box {box!r} must be x, y, w, h (four numbers, picture pixels)") from None
    if not (w > 0 and h > 0 and np.all(np.isfinite([x, y, w, h]))):
        raise UserError(f"box {box!r}: width and height must be > 0 (and all finite)")
    return x, y, w, h
