"""Evaluate a trained run: RMSE tables, figures, a Kaggle submission, predictions on image files.
  python eval.py --workdir DIR                      # the run's validation split, best checkpoint
  python eval.py --workdir DIR --data steps.zip  # any Kaggle-format file (masked RMSE)
  python eval.py --workdir DIR --test test.zip --lookup IdLookupTable.csv   # submission.csv
  python eval.py --workdir DIR --images a.jpg,b.png # keypoints as JSON + overlay PNGs

Everything goes to DIR/eval/ (or --out). All inputs are read and checked before anything is
written, and every file is written atomically, so a bad input leaves no partial output.
"""

from __future__ import annotations

from fkd_jax.data import kaggle, submission
import sys
from pathlib import Path

import numpy as np
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
_DATA = flags.DEFINE_string("data", None, "Kaggle-format steps.csv/.zip to evaluate on "
                            "(default: the run's validation split).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_TTA = flags.DEFINE_bool("tta", False, "Average each prediction with that of the mirrored image.")
_TEST = flags.DEFINE_string("test", None, "Kaggle test.csv/.zip (default: config.data.test_path).")
_LOOKUP = flags.DEFINE_string("lookup", None, "IdLookupTable.csv (default: config.data.lookup_path).")
_IMAGES = flags.DEFINE_list("images", [], "Image files (PNG/JPG, any size) to predict on.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval).")
_N_SHOW = flags.DEFINE_integer("n_show", 32, "Faces in the prediction grid.")


def main(argv: list[str]) -> None:
    from fkd_jax import cli
    from fkd_jax.training import run_dir
    from fkd_jax import files
    from fkd_jax.pictures import images as image_io
    from fkd_jax.training import restore
    from fkd_jax.inference import predictor
    from fkd_jax.geometry import keypoints
    from fkd_jax.evaluation import plots
    from fkd_jax.training import steps
    from fkd_jax.errors import UserError

    cli.parse_flags(argv, flags.FLAGS)
    if not _WORKDIR.value:
        raise UserError("--workdir is required (a run directory written by train.py)")
    workdir = Path(_WORKDIR.value)
    run = restore.load_run(workdir, _CHECKPOINT.value)
    config = run.config
    out = Path(_OUT.value) if _OUT.value else workdir / "eval"

    # Read and check every input before writing anything.
    if _DATA.value:
        keypoint_set = keypoints.KEYPOINT_SETS[config.data.keypoints]
        ev, source = kaggle.load_training(_DATA.value, keypoint_set), _DATA.value
    else:
        run_data = run_dir.read_run_data(config, workdir)
        run_dir.discard_run_data(run_data)  # eval never writes into the run's folder
        ev, source = run_data.val, f"{workdir} validation split"
    test_path = _TEST.value or config.data.get("test_path")
    lookup_path = _LOOKUP.value or config.data.get("lookup_path")
    submission_inputs = None
    asked = bool(_TEST.value or _LOOKUP.value)
    if asked and not (test_path and lookup_path):
        raise UserError("a submission needs both --test and --lookup")
    if asked and config.data.keypoints not in ("kaggle15", "kaggle15_square"):
        raise UserError(f"a Kaggle submission needs a model of Kaggle's 15 keypoints; this run "
                        f"predicts {config.data.keypoints}")
    # Paths from the config are used when present; paths given as flags must work.
    if test_path and lookup_path and (asked or (Path(test_path).exists()
                                                and Path(lookup_path).exists())):
        image_ids, test_images = submission.load_test(test_path)
        lookup = submission.load_lookup(lookup_path)
        submission.check_lookup_against_test(lookup, image_ids, lookup_path)
        submission_inputs = (image_ids, test_images, lookup)
    user_images = [image_io.load_face_image(p) for p in _IMAGES.value]
    cli.check_workdir(out, "--out")

    predict = predictor.Predictor.from_run(run)  # compiled once, for every input below
    pred = predict(ev.images, tta=_TTA.value)
    report = steps.rmse_report(pred, ev.keypoints, ev.mask, ev.keypoint_set)
    if ev.keypoint_set in (keypoints.KAGGLE15, keypoints.KAGGLE15_SQUARE):
        report.update(_nme_report(pred, ev))
    report.update({"n_images": len(ev), "data": source, "checkpoint": _CHECKPOINT.value,
                   "checkpoint_epoch": run.meta["epoch"], "tta": bool(_TTA.value)})
    _print_table(report, ev.keypoint_set)

    n = min(_N_SHOW.value, len(ev))
    plots.plot_face_grid(out / "predictions.png", ev.images[:n], ev.keypoints[:n], pred[:n],
                            ev.mask[:n])
    per_image = np.sqrt(np.where(ev.mask, (pred - ev.keypoints) ** 2, 0).sum(1)
                        / np.maximum(ev.mask.sum(1), 1))
    worst = np.argsort(-per_image)[: min(16, len(ev))]
    plots.plot_face_grid(out / "worst.png", ev.images[worst], ev.keypoints[worst], pred[worst],
                            ev.mask[worst], titles=[f"{per_image[i]:.2f} px" for i in worst])
    records = run_dir.read_metrics(workdir)
    if records:
        plots.plot_learning_curves(out / "learning_curves.png", records)
    plots.plot_per_keypoint_errors(out / "per_keypoint_rmse.png",
                                      {k: report[k] for k in ev.keypoint_set.names})

    if submission_inputs is not None:
        image_ids, test_images, lookup = submission_inputs
        text = submission.submission_csv(lookup, image_ids,
                                   predict(test_images, tta=_TTA.value)[:, :keypoints.NUM_COORDS])
        files.write_text(out / "submission.csv", text)
        print(f"wrote {out / 'submission.csv'} ({len(lookup)} rows)")

    if user_images:
        kp96 = predict(np.stack([arr for arr, _, _ in user_images]), tta=_TTA.value)
    for path, name, (_, frame, gray), k in zip(_IMAGES.value, files.mirrored_names(_IMAGES.value),
                                               user_images, kp96 if user_images else []):
        kp = frame.to_original(k)
        stem = out / "images" / name
        result = {"file": str(path), "width": frame.width, "height": frame.height,
                  "units": "pixels of the original image, origin at its top-left corner",
                  "keypoints": {name: [round(float(kp[2 * i]), 2), round(float(kp[2 * i + 1]), 2)]
                                for i, name in enumerate(ev.keypoint_set.names)}}
        files.write_json(stem.with_name(stem.name + ".json"), result)
        plots.plot_overlay(stem.with_name(stem.name + "_keypoints.png"), np.asarray(gray), kp)
        print(f"wrote {stem}.json and {stem}_keypoints.png")

    files.write_json(out / "metrics.json", report)
    print(f"wrote {out}/metrics.json and figures")


def _nme_report(pred, ev) -> dict:
    """NME (300-W: mean error / outer-eye-corner distance) over the faces whose outer eye
    corners and every keypoint are labelled, as photos are scored by predict.py."""
    from fkd_jax.geometry import keypoints
    from fkd_jax.evaluation import metrics

    k = keypoints.NUM_COORDS  # Kaggle's 15 come first (a square model's square points follow)
    scored = ev.mask[:, :k].all(axis=1)
    if not scored.any():
        return {}
    nmes = metrics.nme(pred[scored, :k], ev.keypoints[scored, :k])
    return {"nme": float(nmes.mean()), "nme_median": float(np.median(nmes)),
            "nme_failure_rate": metrics.failure_rate(nmes),
            "nme_faces": int(scored.sum())}


def _print_table(report: dict, keypoint_set) -> None:
    print(f"RMSE on {report['n_images']} images ({report['data']}; {report['checkpoint']} "
          f"checkpoint, epoch {report['checkpoint_epoch']}{', TTA' if report['tta'] else ''})")
    scored = " (the 15 face points)" if keypoint_set.scored else ""
    print(f"  {'overall' + scored:28s} {report['rmse_px']:7.3f} px")
    print(f"  {'mean signed error x, y':28s} {report['bias_x_px']:+7.3f} {report['bias_y_px']:+.3f} px")
    if "nme" in report:
        print(f"  {'NME (outer eye corners)':28s} {100 * report['nme']:7.2f} %   (median "
              f"{100 * report['nme_median']:.2f} %, failures > 10%: "
              f"{100 * report['nme_failure_rate']:.1f} % of {report['nme_faces']} faces)")
    for group in keypoint_set.groups:
        print(f"  {'group/' + group:28s} {report['group/' + group]:7.3f} px")
    for name in keypoint_set.names:
        print(f"  {name:28s} {report[name]:7.3f} px")


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    exit_on_user_error(main)(sys.argv)
