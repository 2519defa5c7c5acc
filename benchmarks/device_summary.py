"""benchmarks/device_check.sh's helper: the pictures predict.py is timed on, and the summary.

  python benchmarks/device_summary.py pictures DIR --n 64   # generated pictures of faces
  python benchmarks/device_summary.py report OUT            # one line per figure, OUT/summary.json

`report` reads what device_check.sh left in OUT: OUT/<dtype>/ (train.py's ensemble run of
configs/unet_pair.py, members in one process) for each dtype trained, and OUT/predict2/
(predict.py's second run over the pictures, its compiled programs read from JAX's cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")


def training_figures(run: Path) -> dict:
    """Images/s of the ensemble (its members' together: one program trains them all; median
    of the epochs after the first, which pays for the first calls), and validation RMSE (px)
    of the ensemble's mean and of each member's last epoch."""
    members = sorted(run.glob("member*/metrics.jsonl"))
    if not members:
        raise SystemExit(f"{run}: no member*/metrics.jsonl; did train.py fail?")
    rows = [[json.loads(line) for line in m.read_text().splitlines()] for m in members]
    speeds = [statistics.median(r["images_per_s"] for r in (rs[1:] or rs)) for rs in rows]
    scores = json.loads((run / "ensemble_metrics.json").read_text())
    return {"images_per_s": sum(speeds), "members_images_per_s": speeds,
            "epochs": rows[0][-1]["epoch"], "val_rmse_px": scores["val_rmse_px"],
            "members_last_val_rmse_px": [rs[-1]["val_rmse_px"] for rs in rows],
            "compile_time_s": rows[0][-1]["compile_time_s"]}


def report(out: Path) -> dict:
    """The check's figures; prints one line each."""
    summary = {dtype: training_figures(out / dtype) for dtype in DTYPES if (out / dtype).is_dir()}
    for dtype, f in summary.items():
        print(f"{dtype}: {f['images_per_s']:.0f} images/s ({len(f['members_images_per_s'])} "
              f"members in one process; median of epochs after the first), val RMSE "
              f"{f['val_rmse_px']:.3f} px after {f['epochs']} epochs (ensemble's mean; members' "
              f"last epoch {', '.join(f'{v:.3f}' for v in f['members_last_val_rmse_px'])}), "
              f"compile {f['compile_time_s']:.1f} s")
    predicted = json.loads((out / "predict2" / "summary.json").read_text())
    summary["predict"] = {"photos": predicted["photos"], "faces": predicted["faces"],
                          "photos_per_s": predicted["photos_per_s"]}
    print(f"predict.py: {predicted['photos_per_s']} photos/s ({predicted['photos']} generated "
          f"pictures, {predicted['faces']} faces found; float32 run; programs from the cache)")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def pictures(folder: Path, n: int) -> None:
    """`n` pictures of one synthetic face each (benchmarks/predict_speed.py makes them)."""
    spec = importlib.util.spec_from_file_location("predict_speed",
                                                  ROOT / "benchmarks" / "predict_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder.mkdir(parents=True, exist_ok=True)
    module.generated_photos(folder, n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pictures")
    p.add_argument("folder", type=Path)
    p.add_argument("--n", type=int, default=64)
    r = sub.add_parser("report")
    r.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.command == "pictures":
        pictures(args.folder, args.n)
    else:
        report(args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
