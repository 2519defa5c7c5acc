"""Videos: reading and writing frames, tracking faces across frames, One Euro smoothing.

Frames are RGB uint8 arrays (H, W, 3); keypoints are in the frame's own pixels (the continuous
convention of fkd_jax.geometry.keypoints), (2K,) in Kaggle's column order. Decoding and encoding go
through OpenCV (its pip wheels ship FFmpeg).

Tracking (`track_video`): a face found in one frame is framed in the next from its keypoints
(the model sees it as trained, without running the detector), which is cheaper and steadier
than detecting in every frame; the detector runs again only when a face is lost (and, if
asked, every `redetect_every` frames to pick up faces that entered). Each track keeps an
identity (`TrackedFace.track`) and its own One Euro filter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from fkd_jax.errors import UserError
from fkd_jax.pictures.location import Face

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
# FourCC per container: MPEG-4 Part 2 plays almost everywhere and is in OpenCV's wheels
# (H.264 encoders are not); AVI gets Motion-JPEG, its most common codec.
_FOURCC = {".avi": "MJPG"}
_DEFAULT_FOURCC = "mp4v"
DEFAULT_FPS = 30.0  # when a file does not say its frame rate


# --------------------------------------------------------------------------- reading, writing

def read_video(path: str | Path) -> tuple[Iterator[np.ndarray], float, tuple[int, int]]:
    """(frames, fps, (width, height)) of a video file; frames are RGB uint8 (H, W, 3).

    The first frame is decoded here, so a file that is not a readable video (or holds no
    frame) raises UserError naming it before any work starts. Frames are decoded lazily.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}, "
                        "not a video")
    # FFmpeg (inside OpenCV's wheels) prints its own lines for a broken file ("moov atom not
    # found") before the one-line error below; quiet (AV_LOG_QUIET) unless the user set a level.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok or first is None:
        capture.release()
        raise UserError(f"{path}: not a readable video (no frame could be decoded)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    height, width = first.shape[:2]

    def frames() -> Iterator[np.ndarray]:
        try:
            frame = first
            while frame is not None:
                yield _to_rgb(frame)
                ok, frame = capture.read()
                if not ok:
                    break
        finally:
            capture.release()

    return frames(), fps, (int(width), int(height))


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    import cv2

    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoWriter:
    """Write RGB uint8 frames (H, W, 3) to a video file, atomically.

        with VideoWriter("out.mp4", fps, (width, height)) as video:
            video.write(frame)

    Frames go to a temporary file beside `path` (same suffix, so the container is chosen from
    it), renamed onto `path` when the block ends normally and removed if it raises.
    Codec: MPEG-4 Part 2 ("mp4v") for .mp4/.mov/.mkv, Motion-JPEG for .avi. Both need even
    sizes (FFmpeg would crop an odd one): an odd width or height gets one more column or row,
    copied from the last, so every pixel of the frames is kept.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path, self.fps = Path(path), float(fps)
        self.size = (int(size[0]), int(size[1]))
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"{self.path}: unsupported video suffix; use one of "
                            f"{', '.join(VIDEO_SUFFIXES)}")
        if not (self.fps > 0 and self.size[0] > 0 and self.size[1] > 0):
            raise ValueError(f"bad fps {fps} or size {size}")
        self.frames_written = 0
        self._context = None
        self._writer = None

    def __enter__(self) -> "VideoWriter":
        import cv2

        from fkd_jax import files

        self._context = files.atomic_path(self.path)
        tmp = self._context.__enter__()
        fourcc = cv2.VideoWriter_fourcc(*_FOURCC.get(self.path.suffix.lower(), _DEFAULT_FOURCC))
        even = (self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2)
        self._writer = cv2.VideoWriter(str(tmp), fourcc, self.fps, even)
        if not self._writer.isOpened():
            self._writer.release()
            error = UserError(f"{self.path}: cannot open a video writer for it")
            self._context.__exit__(UserError, error, None)
            raise error
        return self

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one RGB uint8 frame of exactly the writer's (width, height)."""
        import cv2

        frame_rgb = np.asarray(frame_rgb)
        w, h = self.size
        if frame_rgb.shape != (h, w, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame ({h}, {w}, 3), got "
                             f"{frame_rgb.dtype} {frame_rgb.shape}")
        bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
        if w % 2 or h % 2:
            bgr = cv2.copyMakeBorder(bgr, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        self._writer.write(bgr)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._writer.release()
        # atomic_path renames the temporary file onto `path` only when no exception is passed.
        return bool(self._context.__exit__(exc_type, exc, tb))


# --------------------------------------------------------------------------- One Euro filter

@dataclass(frozen=True)
class OneEuroSettings:
    """One Euro filter parameters (Casiez, Roussel & Vogel, CHI 2012) for keypoints in pixels.

    min_cutoff  Hz: cutoff frequency when a point is still. Lower = less jitter at rest, more
                lag when it starts moving.
    beta        1/pixel (Hz per pixel/s of speed): how fast the cutoff rises with speed.
                Higher = less lag on fast moves.
    d_cutoff    Hz: cutoff of the low-pass on the speed estimate itself.

    Defaults chosen with benchmarks/video_jitter.py (real photos moved along a slow smooth
    path, up to 17 px/s, 30 fps, faces about 100-150 px wide, camera noise 4 gray levels, the
    unet_pair model): frame-to-frame shaking (RMS second difference) 0.25 -> 0.08 px, jitter at
    rest 0.10 -> 0.03 px, for about 40 ms more lag (16 -> 54 ms). beta is per pixel: for faces
    many times larger in pixels, a proportionally smaller beta behaves the same.
    """

    min_cutoff: float = 1.0
    beta: float = 0.3
    d_cutoff: float = 1.0

    def __post_init__(self):
        if not (self.min_cutoff > 0 and self.beta >= 0 and self.d_cutoff > 0):
            raise UserError(f"One Euro settings must have min_cutoff > 0, beta >= 0, "
                            f"d_cutoff > 0; got {self}")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass with `cutoff` Hz at time step `dt` s."""
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The One Euro filter, elementwise over an array of coordinates (any fixed shape).

    A low-pass whose cutoff rises with the signal's (filtered) speed: still points are
    smoothed hard (jitter removed), moving ones lightly (little lag). Each element is filtered
    independently, as in the paper; the speed is the low-passed difference of successive inputs
    (as in the authors' reference code). On a ramp of speed v the output trails by
    v / (2 pi (min_cutoff + beta |v|)) once settled. Call with increasing timestamps in seconds.
    """

    def __init__(self, settings: OneEuroSettings = OneEuroSettings()):
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next call returns its input unchanged."""
        self._t: float | None = None
        self._raw: np.ndarray | None = None  # last input: the speed is estimated from inputs
        self._x: np.ndarray | None = None  # last output
        self._dx: np.ndarray | None = None  # filtered speed, units per second

    def __call__(self, t_seconds: float, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._t is None:
            self._t, self._raw, self._x = float(t_seconds), x.copy(), x.copy()
            self._dx = np.zeros_like(x)
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter got shape {x.shape}, was filtering {self._x.shape}")
        dt = float(t_seconds) - self._t
        if not dt > 0:
            raise ValueError(f"OneEuroFilter timestamps must increase; got {t_seconds} after "
                             f"{self._t}")
        s = self.settings
        dx = (x - self._raw) / dt
        self._dx = self._dx + _alpha(s.d_cutoff, dt) * (dx - self._dx)
        cutoff = s.min_cutoff + s.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t, self._raw = float(t_seconds), x.copy()
        return self._x.copy()


# --------------------------------------------------------------------------- tracking

@dataclass(frozen=True)
class TrackedFace(Face):
    """A `Face` with its track identity: the same number in every frame while it is tracked.

    Tracks are numbered 0, 1, 2, ... in order of first detection; a face that is lost and
    found again later (not matched to a live track) gets a new number.
    """

    track: int = 0


@dataclass(eq=False)  # compared by identity
class _Track:
    track: int
    raw: np.ndarray  # (2K,) last unsmoothed keypoints: what the next frame is framed from
    face: Face  # the last Face refine or the detector gave (its score and other fields)
    box_rel: np.ndarray  # the detector box in the keypoints' own frame, see _box_in_shape_units
    filter: OneEuroFilter | None = field(default=None)


def _centre_and_size(kp: np.ndarray) -> tuple[np.ndarray, float]:
    """Centroid (2,) and RMS radius (px) of the keypoints: a face's position and size."""
    pts = np.asarray(kp, np.float64).reshape(-1, 2)
    centre = pts.mean(axis=0)
    return centre, max(float(np.sqrt(((pts - centre) ** 2).sum(axis=1).mean())), 1e-6)


def _box_in_shape_units(box: Sequence[float], kp: np.ndarray) -> np.ndarray:
    centre, size = _centre_and_size(kp)
    x, y, w, h = box
    return np.array([(x - centre[0]) / size, (y - centre[1]) / size, w / size, h / size])


def box_from_keypoints(kp: np.ndarray, box_rel: np.ndarray) -> tuple[float, float, float, float]:
    """The box of a tracked face: the box its detector gave, carried along by the keypoints.

    `box_rel` holds that detector box as offsets and sizes in units of the keypoints' RMS
    radius about their centroid, recorded when the face was last detected; the box of a
    tracked frame is the same relative box around that frame's keypoints (it follows the
    face's position and scale; it stays axis-aligned).
    """
    centre, size = _centre_and_size(kp)
    rx, ry, rw, rh = box_rel
    return (float(centre[0] + rx * size), float(centre[1] + ry * size),
            float(rw * size), float(rh * size))


# Two keypoint sets are the same face when their mean point distance is below this many RMS
# radii of the earlier face (a face moves far less than its own size between frames; two faces
# overlap less than that).
MATCH_DISTANCE = 0.5


def _match(tracks: list[_Track], keypoints: list[np.ndarray]) -> dict[int, int]:
    """Greedy one-to-one matching, closest first: {keypoints index: track list index}."""
    pairs = []
    for ti, tr in enumerate(tracks):
        _, size = _centre_and_size(tr.raw)
        a = tr.raw.reshape(-1, 2)
        for fi, kp in enumerate(keypoints):
            d = float(np.linalg.norm(a - np.asarray(kp).reshape(-1, 2), axis=1).mean()) / size
            if d < MATCH_DISTANCE:
                pairs.append((d, fi, ti))
    matched: dict[int, int] = {}
    used = set()
    for _, fi, ti in sorted(pairs):
        if fi not in matched and ti not in used:
            matched[fi] = ti
            used.add(ti)
    return matched


def track_video(
    frames: Iterable[np.ndarray],
    find_faces: Callable[[np.ndarray], list[Face]],
    refine: Callable[[np.ndarray, list[np.ndarray]], list[Face | None]],
    smoothing: OneEuroSettings | None = None,
    fps: float = 30.0,
    redetect_every: int = 0,
) -> Iterator[tuple[int, np.ndarray, list[TrackedFace]]]:
    """(frame index, frame, faces) for every frame; faces ordered by track number.

    find_faces(frame) -> list[Face]: detection + keypoints on a whole frame.
    refine(frame, previous keypoints (list of (2K,) px)) -> list[Face | None], one per
        previous face (one batched call for all tracks): frame each face from its previous
        keypoints and predict again; None means the face is lost.

    Per frame: refine every live track; if any is lost (or there are none, or the frame index
    is a multiple of `redetect_every` > 0) detect too. Detections are matched to tracks by
    keypoint distance (MATCH_DISTANCE): a lost track that matches continues with the detected
    keypoints; unmatched detections start new tracks (new number, fresh filter); lost tracks
    that match nothing end. Tracks that converge onto one face are merged into the older one.

    Smoothing (None = off): one OneEuroFilter per track over its (2K,) keypoints, timestamps
    frame / fps. The smoothed keypoints are reported (and give the box); the next frame is
    framed from the raw ones, so smoothing adds no lag to the tracking itself.
    Box: the detector's box, carried along by the reported keypoints (`box_from_keypoints`):
    exactly the detector's box in a frame where a face is (re)detected and not smoothed.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    tracks: list[_Track] = []
    next_track = 0
    for index, frame in enumerate(frames):
        alive: list[_Track] = []  # tracks found in this frame
        lost: list[_Track] = []
        if tracks:
            refined = list(refine(frame, [tr.raw for tr in tracks]))
            if len(refined) != len(tracks):
                raise ValueError(f"refine returned {len(refined)} faces for {len(tracks)}")
            for tr, face in zip(tracks, refined):
                if face is None:
                    lost.append(tr)
                else:
                    tr.raw, tr.face = np.asarray(face.keypoints_px, np.float64), face
                    alive.append(tr)
        if not tracks or lost or (redetect_every > 0 and index % redetect_every == 0):
            candidates = alive + lost
            found = list(find_faces(frame))
            matched = _match(candidates, [face.keypoints_px for face in found])
            for fi, face in enumerate(found):
                kp = np.asarray(face.keypoints_px, np.float64)
                if fi in matched:
                    tr = candidates[matched[fi]]
                    if tr in lost:  # lost by refine, found by the detector: same face goes on
                        tr.raw, tr.face = kp, face
                        lost.remove(tr)
                        alive.append(tr)
                    tr.box_rel = _box_in_shape_units(face.box, kp)
                else:
                    filt = OneEuroFilter(smoothing) if smoothing is not None else None
                    alive.append(_Track(next_track, kp, face, _box_in_shape_units(face.box, kp),
                                        filt))
                    next_track += 1
        tracks = _merge_duplicates(alive)  # lost tracks that matched no detection end here

        faces = []
        for tr in tracks:
            kp = tr.filter(index / fps, tr.raw) if tr.filter is not None else tr.raw
            faces.append(_tracked(tr.face, box=box_from_keypoints(kp, tr.box_rel),
                                  keypoints_px=np.asarray(kp, np.float32), track=tr.track))
        yield index, frame, faces


def _tracked(face: Face, **changes) -> TrackedFace:
    """`face` as a TrackedFace (every other field of the Face kept), with `changes`."""
    kept = {f.name: getattr(face, f.name) for f in fields(Face)}
    return TrackedFace(**{**kept, **changes})


def _merge_duplicates(tracks: list[_Track]) -> list[_Track]:
    """Drop a track whose keypoints coincide with an older track's (both framed one face)."""
    out: list[_Track] = []
    for tr in sorted(tracks, key=lambda tr: tr.track):
        if not _match(out, [tr.raw]):
            out.append(tr)
    return out
