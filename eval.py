"""Evaluate a trained run: RMSE tables, figures, a Kaggle submission, predictions on image files.

  python eval.py --workdir DIR                      # the run's validation split, best checkpoint
  python eval.py --workdir DIR --data training.zip  # any Kaggle-format file (masked RMSE)
  python eval.py --workdir DIR --test test.zip --lookup IdLookupTable.csv   # submission.csv
  python eval.py --workdir DIR --images a.jpg,b.png # keypoints as JSON + overlay PNGs

Everything goes to DIR/eval/ (or --out). All inputs are read and checked before anything is
written, and every file is written atomically, so a bad input leaves no partial output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
_DATA = flags.DEFINE_string("data", None, "Kaggle-format training.csv/.zip to evaluate on "
                            "(default: the run's validation split).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_TTA = flags.DEFINE_bool("tta", False, "Average each prediction with that of the mirrored image.")
_TEST = flags.DEFINE_string("test", None, "Kaggle test.csv/.zip (default: config.data.test_path).")
_LOOKUP = flags.DEFINE_string("lookup", None, "IdLookupTable.csv (default: config.data.lookup_path).")
_IMAGES = flags.DEFINE_list("images", [], "Image files (PNG/JPG, any size) to predict on.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval).")
_N_SHOW = flags.DEFINE_integer("n_show", 32, "Faces in the prediction grid.")


def load_run(workdir: Path, which: str):
    """(config, graphdef, params, checkpoint meta) of a run directory."""
    import jax
    import ml_collections

    from fkd_jax import checkpoints, training
    from fkd_jax.errors import UserError

    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise UserError(f"--workdir {workdir} is not a run directory (no config.json); "
                        "train one with train.py first")
    try:
        config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path}: not valid JSON ({e})") from None
    tx = training.make_optimizer(config.train, 1)
    graphdef, state = training.init_state(config.model, tx, config.seed)
    with checkpoints.Checkpoints(workdir, read_only=True) as ckpt:
        abstract = checkpoints.abstract_like(jax.eval_shape(lambda: state))
        restored = (ckpt.restore_best if which == "best" else ckpt.restore_latest)(abstract)
    if restored is None:
        raise UserError(f"{workdir}/checkpoints/{which} holds no checkpoint yet")
    state, meta = restored
    return config, graphdef, state["params"], meta


def predict_px(graphdef, params, images, tta: bool):
    """Keypoints (N, 30) in pixels; with `tta`, averaged with the un-flipped mirror prediction."""
    import numpy as np

    from fkd_jax import keypoints, training

    predict = training.make_predict(graphdef)
    pred = np.asarray(keypoints.to_pixels(predict(params, images)))
    if tta:
        mirrored = np.asarray(keypoints.to_pixels(predict(params, images[:, :, ::-1, :])))
        pred = 0.5 * (pred + keypoints.flip_keypoints_px(mirrored))
    return pred


def main(argv: list[str]) -> None:
    import numpy as np

    from fkd_jax import cli, data, experiment, images as image_io, keypoints, plotting, training
    from fkd_jax.errors import UserError

    cli.parse_flags(argv, flags.FLAGS)
    if not _WORKDIR.value:
        raise UserError("--workdir is required (a run directory written by train.py)")
    workdir = Path(_WORKDIR.value)
    config, graphdef, params, meta = load_run(workdir, _CHECKPOINT.value)
    out = Path(_OUT.value) if _OUT.value else workdir / "eval"

    # Read and check every input before writing anything.
    if _DATA.value:
        ev, source = data.load_training(_DATA.value), _DATA.value
    else:
        ev, source = experiment.load_run_data(config, workdir)[1], f"{workdir} validation split"
    test_path = _TEST.value or config.data.get("test_path")
    lookup_path = _LOOKUP.value or config.data.get("lookup_path")
    submission_inputs = None
    asked = bool(_TEST.value or _LOOKUP.value)
    if asked and not (test_path and lookup_path):
        raise UserError("a submission needs both --test and --lookup")
    # Paths from the config are used when present; paths given as flags must work.
    if test_path and lookup_path and (asked or (Path(test_path).exists()
                                                and Path(lookup_path).exists())):
        image_ids, test_images = data.load_test(test_path)
        lookup = data.load_lookup(lookup_path)
        data.check_lookup_against_test(lookup, image_ids, lookup_path)
        submission_inputs = (image_ids, test_images, lookup)
    user_images = [image_io.load_face_image(p) for p in _IMAGES.value]
    cli.check_workdir(out, "--out")

    pred = predict_px(graphdef, params, ev.images, _TTA.value)
    report = training.rmse_report(pred, ev.keypoints, ev.mask)
    report.update({"n_images": len(ev), "data": source, "checkpoint": _CHECKPOINT.value,
                   "checkpoint_epoch": meta["epoch"], "tta": bool(_TTA.value)})
    _print_table(report)

    n = min(_N_SHOW.value, len(ev))
    plotting.plot_face_grid(out / "predictions.png", ev.images[:n], ev.keypoints[:n], pred[:n],
                            ev.mask[:n])
    per_image = np.sqrt(np.where(ev.mask, (pred - ev.keypoints) ** 2, 0).sum(1)
                        / np.maximum(ev.mask.sum(1), 1))
    worst = np.argsort(-per_image)[: min(16, len(ev))]
    plotting.plot_face_grid(out / "worst.png", ev.images[worst], ev.keypoints[worst], pred[worst],
                            ev.mask[worst], titles=[f"{per_image[i]:.2f} px" for i in worst])
    records = experiment.read_metrics(workdir)
    if records:
        plotting.plot_learning_curves(out / "learning_curves.png", records)
    plotting.plot_per_keypoint_errors(out / "per_keypoint_rmse.png",
                                      {k: report[k] for k in keypoints.KEYPOINT_NAMES})

    if submission_inputs is not None:
        image_ids, test_images, lookup = submission_inputs
        test_pred = np.clip(predict_px(graphdef, params, test_images, _TTA.value),
                            0.0, keypoints.IMAGE_SIZE)
        row_of = {int(i): r for r, i in enumerate(image_ids)}
        col_of = {c: j for j, c in enumerate(keypoints.COLUMNS)}
        rows = [row_of[int(i)] for i in lookup["ImageId"]]
        cols = [col_of[f] for f in lookup["FeatureName"]]
        locations = test_pred[rows, cols]
        text = "RowId,Location\n" + "".join(
            f"{int(r)},{v:.4f}\n" for r, v in zip(lookup["RowId"], locations))
        experiment.atomic_write_text(out / "submission.csv", text)
        print(f"wrote {out / 'submission.csv'} ({len(lookup)} rows)")

    for path, (arr, frame, gray) in zip(_IMAGES.value, user_images):
        kp96 = predict_px(graphdef, params, arr[None], _TTA.value)[0]
        kp = frame.to_original(kp96)
        stem = Path(path).stem
        result = {"file": str(path), "width": frame.width, "height": frame.height,
                  "units": "pixels of the original image, origin at its top-left corner",
                  "keypoints": {name: [round(float(kp[2 * i]), 2), round(float(kp[2 * i + 1]), 2)]
                                for i, name in enumerate(keypoints.KEYPOINT_NAMES)}}
        experiment.atomic_write_text(out / "images" / f"{stem}.json", json.dumps(result, indent=2) + "\n")
        plotting.plot_overlay(out / "images" / f"{stem}_keypoints.png", np.asarray(gray), kp)
        print(f"wrote {out / 'images' / stem}.json and _keypoints.png")

    experiment.atomic_write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}/metrics.json and figures")


def _print_table(report: dict) -> None:
    from fkd_jax import keypoints

    print(f"RMSE on {report['n_images']} images ({report['data']}; {report['checkpoint']} "
          f"checkpoint, epoch {report['checkpoint_epoch']}{', TTA' if report['tta'] else ''})")
    print(f"  {'overall':28s} {report['rmse_px']:7.3f} px")
    for group in keypoints.GROUPS:
        print(f"  {'group/' + group:28s} {report['group/' + group]:7.3f} px")
    for name in keypoints.KEYPOINT_NAMES:
        print(f"  {name:28s} {report[name]:7.3f} px")


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    exit_on_user_error(main)(sys.argv)
