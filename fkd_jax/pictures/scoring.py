"""Scoring located faces against true keypoints: a labels CSV (file + Kaggle's 30 columns, in
the pictures' own pixels), each labelled face matched to a found one, NME per pass and final
(fkd_jax.evaluation.metrics: error / outer-eye-corner distance), by how far the face is turned,
how well the keypoints' confidences rank their errors, CED figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fkd_jax import files
from fkd_jax.errors import UserError
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.framing import kaggle15
from fkd_jax.pictures.location import Face


def read_labels(path: str | Path, option: str = "--labels",
                columns: tuple[str, ...] = keypoints.COLUMNS) -> dict[str, np.ndarray]:
    """{file name in the CSV: (T, 2K) true keypoints, NaN where missing} of a CSV with a
    `file` column and the keypoint `columns` (Kaggle's 30; IBUG68.columns for
    landmarks68.csv). Mistakes name `option` and the file."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        table = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{option} {path}: not a readable CSV "
                        f"({' '.join(str(e).split())})") from None
    missing = [c for c in ("file",) + tuple(columns) if c not in table.columns]
    if missing:
        raise UserError(f"{option} {path}: missing column(s) {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''}")
    values = table[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy()
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


def score(photo_faces: dict[str, list[Face]], labels: dict, out: Path, passes: int) -> dict:
    """Match each labelled face to a predicted one and score: NME per pass and final, found
    share, failure rate, AUC; writes scores.csv (one row per labelled face), ced.png and
    scores.json under `out`, and returns what scores.json holds."""
    return write_scores(out, *match_labelled(photo_faces, labels, passes))


def match_labelled(photo_faces: dict[str, list[Face]], labels: dict, passes: int
                ) -> tuple[list[dict], list[list[float]], int]:
    """(one record per labelled face of the photos: file, label_row, face (index into the
    photo's faces, None when none matched), nme (NaN when none), yaw_deg (estimated from the
    labels), and for a found face its 15 points' confidence and point_errors; NMEs per pass, each face's
    last pass repeated to `passes`; predicted faces matched to no label). A photo given with
    no faces counts its labelled faces as missed."""
    from fkd_jax.evaluation import metrics as pm

    per_face, per_pass = [], [[] for _ in range(passes)]
    extra = 0
    for name, fs in photo_faces.items():
        key = match_label(name, labels)
        if key is None:
            continue
        truth = labels[key]
        pred = (np.stack([kaggle15(f.keypoints_px) for f in fs]) if fs
                else np.zeros((0, truth.shape[1])))
        pairs = dict((t, p) for p, t in pm.match_faces(pred, truth))
        extra += len(fs) - len(pairs)
        for t in range(len(truth)):
            if t in pairs:
                f = fs[pairs[t]]
                hist = f.history or (f.keypoints_px,)
                errs = [float(pm.nme(kaggle15(h), truth[t])) for h in hist]
                errs += [errs[-1]] * (passes - len(errs))
                final = float(pm.nme(kaggle15(f.keypoints_px), truth[t]))
                found = {"confidence": f.kaggle15_confidence,
                         "point_errors": pm.point_errors(kaggle15(f.keypoints_px), truth[t])}
            else:
                errs, final, found = [float("nan")] * passes, float("nan"), {}
            for p in range(passes):
                per_pass[p].append(errs[p])
            per_face.append({"file": name, "label_row": t, "face": pairs.get(t, None),
                             "nme": final, "yaw_deg": float(pm.estimated_yaw_deg(truth[t])),
                             **found})
    if not per_face:
        raise UserError("--labels: none of the processed photos has labels in the CSV "
                        "(its `file` names must end the photos' paths)")
    return per_face, per_pass, extra


def write_scores(out: Path, per_face: list[dict], per_pass: list[list[float]], extra: int
                 ) -> dict:
    """scores.csv, ced.png and scores.json of `match_labelled`' results under `out`; returns
    what scores.json holds."""
    import pandas as pd

    from fkd_jax.evaluation import metrics as pm

    passes = len(per_pass)
    finals = [r["nme"] for r in per_face]
    found = [r for r in per_face if "confidence" in r]
    table = pd.DataFrame(per_face, columns=["file", "label_row", "face", "nme", "yaw_deg"])
    table["face"] = table["face"].astype("Int64")
    files.write_text(out / "scores.csv", table.to_csv(index=False, float_format="%.5f"))
    curves = {f"pass {p + 1}": per_pass[p] for p in range(passes)}
    pm.plot_ced(out / "ced.png", curves)
    result = {
        "nme": "mean point-to-point error / distance between the true outer eye corners",
        "final": pm.summarise(finals).as_dict(),
        "per_pass": {f"pass {p + 1}": pm.summarise(v).as_dict() for p, v in enumerate(per_pass)},
        "extra_faces": extra,
        # yaw estimated from the labels' eye widths (fkd_jax.evaluation.metrics)
        "by_turn": pm.by_turn(finals, table["yaw_deg"].to_numpy()),
        "confidence": (pm.confidence_report(np.stack([r["confidence"] for r in found]),
                                            np.stack([r["point_errors"] for r in found]))
                       if found else None),
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
