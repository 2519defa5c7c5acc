r"""Peer benchmark: fkd-jax's predict.py beside dlib and MediaPipe Face Mesh on the same photos,
each run as a whole process in alternation and all scored by fkd-jax's own scoring.
  bash benchmarks/setup_peers.sh          # once: the peers' environments in benchmarks/.peers/
  uv run python benchmarks/peers.py --workdir=RUN_DIR --photos=photos.txt \
      --labels=keypoints.csv [--labels68=landmarks68.csv] [--rounds=3] --out=OUT
--workdir and --model take several models (comma-separated): each is a pipeline of its own,
"fkd-jax NAME", alternated with the rest, to compare two setups inside one run. With
--face_net=FILE each of them also runs with that learned face detector ("NAME + face_net"),
with --final_scales=S,... also with predict.py's --final_scales ("NAME + views").
--photos: photos, folders, or .txt files listing photos one a line (comma-separated; or as
arguments). Time it on an otherwise idle machine: every pipeline shares its cores.

In each round every pipeline runs once over all the photos, as a subprocess, so imports and
model load count for all of them; the order turns by one each round. Pipelines:
  fkd-jax     `predict.py --workdir RUN_DIR --labels ... --no_overlays PHOTO...` (project env;
              no overlays, as the peers draw none; its time includes its own scoring)
  dlib        `benchmarks/peer_landmarks.py --peer dlib` in benchmarks/.peers/dlib
  mediapipe   `benchmarks/peer_landmarks.py --peer mediapipe` in benchmarks/.peers/mediapipe
A peer whose environment is missing is skipped with a note. Every pipeline's keypoints.csv
(first round) is scored like `predict.py --labels` (fkd_jax.pictures.scoring): the face
nearest each labelled one, NME over the outer-eye-corner distance, a photo without a match a
failure. With --labels68, a pipeline that writes 68 points (file, face, p0_x ... p67_y: dlib's
landmarks68.csv, predict.py's landmarks.csv for a 68-point model) is scored
on the 68 points too (300-W: outer eye corners 36 and 45), and by part (jaw, eyebrows, nose,
eyes, mouth) in peers.md's notes.

OUT receives round<R>/<pipeline>/ (each run's output and log.txt), scores/<pipeline>/
(scores.csv, ced.png, scores.json), peers.json (everything) and peers.md (the table).
Speeds: photos/s end to end = photos / the subprocess's wall time (median over rounds, and each
round's); one-photo latency = median seconds of one photo alone with the model loaded (decode,
detect, keypoints): the peers' photo loop handles one photo at a time (timing.json's
latency_s); fkd-jax, which batches photos, is timed here after the rounds, `Detector` on
--latency_photos photos one by one after a warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from absl import flags

from fkd_jax import cli, files
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.evaluation import metrics
from fkd_jax.geometry import keypoints
from fkd_jax.pictures import inputs, scoring
from fkd_jax.pictures.location import Face
from fkd_jax.pictures.outputs import FACE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
FKD = "fkd-jax"
PEERS = ("dlib", "mediapipe")

FLAGS = flags.FlagValues()
flags.DEFINE_list("workdir", [], "fkd-jax run directories (train.py), comma-separated.",
                  flag_values=FLAGS)
flags.DEFINE_list("model", [], "Exported fkd-jax model files (.jaxexport, .onnx), beside or "
                  "instead of --workdir.", flag_values=FLAGS)
flags.DEFINE_string("face_net", None, "A learned face detector (train_face_net.py): every "
                    "fkd-jax model also runs as a pipeline with it (NAME + face_net).",
                    flag_values=FLAGS)
flags.DEFINE_list("final_scales", [], "predict.py's --final_scales: every fkd-jax pipeline "
                  "also runs with them (NAME + views).", flag_values=FLAGS)
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of --workdir.",
                  flag_values=FLAGS)
flags.DEFINE_list("photos", [], "Photos, folders, or .txt files of photo paths (one a line).",
                  flag_values=FLAGS)
flags.DEFINE_string("labels", None, "CSV of true keypoints in photo pixels (file + the 30 "
                    "Kaggle columns), as predict.py --labels.", flag_values=FLAGS)
flags.DEFINE_string("labels68", None, "CSV of the 68 true iBUG landmarks (file, p0_x, ... "
                    "p67_y): 68-point NME of the pipelines that write landmarks68.csv.",
                    flag_values=FLAGS)
flags.DEFINE_integer("rounds", 3, "Rounds; each runs every pipeline once.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_list("peers", list(PEERS), "Peers to run beside fkd-jax.", flag_values=FLAGS)
flags.DEFINE_string("peers_dir", str(ROOT / "benchmarks" / ".peers"), "Folder of the peers' "
                    "environments (benchmarks/setup_peers.sh).", flag_values=FLAGS)
flags.DEFINE_integer("latency_photos", 10, "Photos timed one by one for fkd-jax's one-photo "
                     "latency (0: not measured).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output folder (required).", flag_values=FLAGS)


def photo_list(entries: list[str]) -> list[str]:
    """The photos of --photos entries and arguments, in order, each once: a .txt entry lists
    paths one a line, anything else is a photo or a folder (fkd_jax.pictures.inputs)."""
    paths: list[str] = []
    for entry in entries:
        if entry.endswith(".txt"):
            if not Path(entry).is_file():
                raise UserError(f"--photos {entry}: no such file")
            paths += [s.strip() for s in Path(entry).read_text().splitlines() if s.strip()]
        else:
            paths.append(entry)
    if not paths:
        raise UserError("give photos: --photos LIST.txt, photos or folders")
    items = inputs.find_inputs(paths)
    videos = [it.name for it in items if it.kind != "photo"]
    if videos:
        raise UserError(f"{videos[0]}: a video; the peer benchmark takes photos")
    return [it.name for it in items]


def read_faces(path: Path, names: list[str]) -> dict[str, list[Face]]:
    """{photo: its faces} of a keypoints.csv, every one of `names` present (a photo missing
    from the file has no faces, so its labelled faces count as failures)."""
    import pandas as pd

    table = pd.read_csv(path)
    missing = [c for c in (*FACE_COLUMNS, *keypoints.COLUMNS) if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing[:4])}")
    faces: dict[str, list[Face]] = {n: [] for n in names}
    for _, row in table[table["face"].notna()].iterrows():
        box = tuple(float(row[c]) for c in ("box_x", "box_y", "box_w", "box_h"))
        kp = row[list(keypoints.COLUMNS)].to_numpy(np.float64)
        faces.setdefault(str(row["file"]), []).append(Face(box, float(row["score"]), kp))
    return faces


def read_landmarks68(path: Path) -> dict[tuple[str, int], np.ndarray]:
    """{(photo, face index): (136,) landmarks} of a landmarks68.csv (file, face, p0_x, ...) or
    of fkd-jax's landmarks.csv of a 68-point model (rows without a face skipped)."""
    import pandas as pd

    table = pd.read_csv(path)
    columns = list(keypoints.IBUG68.columns)
    table = table[table["face"].notna()]
    return {(str(f), int(i)): v for f, i, v in
            zip(table["file"], table["face"], table[columns].to_numpy(np.float64))}


def score_pipeline(folder: Path, names: list[str], labels: dict, labels68: dict | None,
                   out: Path) -> dict:
    """Scores of one pipeline's output `folder` (written under `out`): the 15-point summary,
    and with `labels68` and a landmarks68.csv the 68-point one (same matched faces)."""
    per_face, per_pass, extra = scoring.match_labelled(
        read_faces(folder / "keypoints.csv", names), labels, passes=1)
    result = {"scores": scoring.write_scores(out, per_face, per_pass, extra)["final"],
              "extra_faces": extra, "nme68": None}
    found68 = [folder / n for n in ("landmarks68.csv", "landmarks.csv")
               if (folder / n).is_file()]
    if labels68 is not None and found68 and "p67_y" in found68[0].read_text().split("\n")[0]:
        points = read_landmarks68(found68[0])
        nmes, errors = [], []  # errors: (68,) per located face, for the parts' means
        for r in per_face:
            key = scoring.match_label(r["file"], labels68)
            found = points.get((r["file"], r["face"])) if r["face"] is not None else None
            if found is None or key is None:
                nmes.append(float("nan"))
                continue
            errors.append(metrics.point_errors(found, labels68[key][r["label_row"]],
                                               eyes=metrics.IBUG68_OUTER_EYES))
            nmes.append(float(errors[-1].mean()))
        result["nme68"] = metrics.summarise(nmes).as_dict()
        names = list(keypoints.IBUG68.names)
        result["nme68_by_part"] = {  # mean over located faces and the part's points
            part: float(np.mean([e[[names.index(n) for n in members]] for e in errors]))
            for part, members in keypoints.IBUG68.groups.items()} if errors else None
    return result


Command = Callable[[Path], list[str]]  # a pipeline's command line for an output folder


def fkd_models() -> dict[str, list[str]]:
    """{pipeline name: predict.py's model flags} of every --workdir and --model: "fkd-jax"
    alone, "fkd-jax NAME" (the run folder's or file's name) when several are compared."""
    models = ([[f"--workdir={w}", f"--checkpoint={FLAGS.checkpoint}"] for w in FLAGS.workdir]
              + [[f"--model={m}"] for m in FLAGS.model])
    named = ({FKD: models[0]} if len(models) == 1 else
             {f"{FKD} {Path(m[0].split('=', 1)[1]).name}": m for m in models})
    if len(named) < len(models):
        raise UserError("--workdir/--model: two models with the same name; rename one")
    if FLAGS.face_net:
        named.update({f"{name} + face_net": [*m, f"--face_net={FLAGS.face_net}"]
                      for name, m in list(named.items())})
    if FLAGS.final_scales:
        scales = ",".join(FLAGS.final_scales)
        named.update({f"{name} + views": [*m, f"--final_scales={scales}"]
                      for name, m in list(named.items())})
    return named


def commands(photos_file: Path, names: list[str]) -> tuple[dict[str, Command], list[str]]:
    """({pipeline: folder -> its command line}, notes on the peers skipped)."""
    found = {name: (lambda d, model=model: [
        sys.executable, str(ROOT / "predict.py"), *model, f"--out={d}", "--no_overlays",
        *names]) for name, model in fkd_models().items()}  # scored here, as the peers are
    notes = []
    for peer in FLAGS.peers:
        python = Path(FLAGS.peers_dir) / peer / "bin" / "python"
        if not python.is_file():
            notes.append(f"{peer}: not installed ({python} missing: bash "
                         f"benchmarks/setup_peers.sh {peer}); skipped")
            print(notes[-1], flush=True)
            continue
        found[peer] = (lambda d, python=python, peer=peer: [
            str(python), str(ROOT / "benchmarks" / "peer_landmarks.py"), f"--peer={peer}",
            f"--out={d}", f"--list={photos_file}"])
    return found, notes


def run_once(name: str, command: list[str], folder: Path, n_photos: int) -> dict:
    """One whole-process run: wall time and what the pipeline timed itself; its output and
    log.txt in `folder`. A run that stops or writes no keypoints.csv stops the benchmark."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.txt", "w") as log:
        t = time.perf_counter()
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t
    if rc not in (0, 1) or not (folder / "keypoints.csv").is_file():
        raise UserError(f"{name} failed (exit status {rc}); see {folder / 'log.txt'}")
    run = {"wall_s": round(wall, 3), "photos_per_s": round(n_photos / wall, 3), "exit": rc}
    if (folder / "timing.json").is_file():
        timing = json.loads((folder / "timing.json").read_text())
        run.update(load_s=timing["load_s"], latency_s=timing["latency_s"],
                   version=timing.get("version"))
    elif (folder / "summary.json").is_file():
        timings = json.loads((folder / "summary.json").read_text())["timings_s"]
        run.update(load_s=timings.get("load_model_s"), write_s=timings.get("write_s"))
    return run


def fkd_latency(model: list[str], photos: list[str], n: int) -> float | None:
    """Median seconds of one photo alone through fkd-jax's Detector (predict.py's defaults)
    for `model` (predict.py's model flags), the model loaded and compiled by a first photo;
    None when n is 0."""
    from fkd_jax.api import Detector

    if n == 0:
        return None
    options = dict(m.lstrip("-").split("=", 1) for m in model)
    detector = Detector.load(model[0].split("=", 1)[1], checkpoint=FLAGS.checkpoint,
                             face_net=options.get("face_net"),
                             final_scales=options.get("final_scales", "").split(",")
                             if options.get("final_scales") else ())
    list(detector.detect_files([photos[0]]))  # compiles (detect_files is lazy)
    seconds = []
    for p in (photos * n)[:n]:
        t = time.perf_counter()
        list(detector.detect_files([p]))
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds)


def table(report: dict) -> str:
    """peers.md: one row per pipeline."""
    with68 = report["labels68"] is not None

    def pct(v) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    head = ["pipeline", "faces found", "other faces", "NME mean (median)", "failures > 10%",
            "AUC@10%", "photos/s end to end: median (rounds)", "one-photo latency"]
    head += ["68-point NME mean (median)"] if with68 else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p in report["pipelines"].items():
        s, rates = p["scores"], [r["photos_per_s"] for r in p["rounds"]]
        row = [name, f"{100 * s['found']:.1f}%", str(p["extra_faces"]),
               f"{pct(s['nme_mean'])} ({pct(s['nme_median'])})",
               f"{100 * s['failure_rate']:.1f}%", f"{s['auc_10']:.3f}",
               f"{p['photos_per_s']:.3g} ({', '.join(f'{r:.3g}' for r in rates)})",
               "-" if p["latency_s"] is None else f"{1000 * p['latency_s']:.0f} ms"]
        if with68:
            n68 = p["nme68"]
            row.append("-" if n68 is None else
                       f"{pct(n68['nme_mean'])} ({pct(n68['nme_median'])})")
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"{report['photos']} photos, {report['labelled_faces']} labelled faces, "
             f"rounds: {report['rounds']}; {report['machine']['cpus']} CPUs. Other faces: "
             "faces reported beyond the labelled one(s) of each photo (a background person "
             "or a false face)."] + report["notes"]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def main(argv: list[str]) -> None:
    rest = cli.parse_flags(argv, FLAGS, positional=True)
    if not FLAGS.out:
        raise UserError("--out is required (the output folder)")
    if not FLAGS.workdir and not FLAGS.model:
        raise UserError("give --workdir RUN_DIR or --model FILE (or several, comma-separated)")
    for flag, paths, ok in (("workdir", FLAGS.workdir, Path.is_dir),
                            ("model", FLAGS.model, Path.is_file)):
        missing = [p for p in paths if not ok(Path(p))]
        if missing:
            raise UserError(f"--{flag} {missing[0]}: not found")
    if FLAGS.face_net and not Path(FLAGS.face_net).is_file():
        raise UserError(f"--face_net {FLAGS.face_net}: not found")
    models = fkd_models()
    if not FLAGS.labels:
        raise UserError("--labels is required (true keypoints of the photos)")
    unknown = [p for p in FLAGS.peers if p not in PEERS]
    if unknown:
        raise UserError(f"--peers: unknown peer {unknown[0]!r} (known: {', '.join(PEERS)})")
    names = photo_list(FLAGS.photos + rest)
    labels = scoring.read_labels(FLAGS.labels)
    labels68 = (scoring.read_labels(FLAGS.labels68, "--labels68", keypoints.IBUG68.columns)
                if FLAGS.labels68 else None)
    out = cli.check_workdir(Path(FLAGS.out), "--out")
    photos_file = files.write_text(out / "photos.txt", "\n".join(names) + "\n")
    pipelines, notes = commands(photos_file, names)

    runs: dict[str, list[dict]] = {name: [] for name in pipelines}
    order = list(pipelines)
    for r in range(FLAGS.rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            folder = out / f"round{r + 1}" / name
            runs[name].append(run_once(name, pipelines[name](folder), folder, len(names)))
            print(f"round {r + 1}: {name} {runs[name][-1]['photos_per_s']:.1f} photos/s "
                  "end to end", flush=True)

    report = {"photos": len(names), "rounds": FLAGS.rounds, "labels": FLAGS.labels,
              "labels68": FLAGS.labels68, "models": models, "notes": notes,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "pipelines": {}}
    latency = {name: fkd_latency(model, names, FLAGS.latency_photos)
               for name, model in models.items()}
    for name in pipelines:
        first = out / "round1" / name
        result = score_pipeline(first, names, labels, labels68, out / "scores" / name)
        same = all((out / f"round{r + 1}" / name / "keypoints.csv").read_bytes()
                   == (first / "keypoints.csv").read_bytes() for r in range(FLAGS.rounds))
        lat = (latency[name] if name in models else
               statistics.median(r["latency_s"] for r in runs[name]) if runs[name][0].get(
                   "latency_s") is not None else None)
        report["pipelines"][name] = {
            **result, "photos_per_s": statistics.median(r["photos_per_s"] for r in runs[name]),
            "latency_s": lat, "same_keypoints_every_round": same, "rounds": runs[name],
            "command": pipelines[name](out / "round1" / name)[:4] + ["..."]}
        if result.get("nme68_by_part"):
            report["notes"].append(f"{name}: 68-point NME by part: " + ", ".join(
                f"{part} {100 * v:.2f}%" for part, v in result["nme68_by_part"].items()))
        if labels68 is not None and result["nme68"] is None:
            report["notes"].append(
                f"{name}: no 68 landmarks written, no 68-point NME"
                + (" (a 15-point model)" if name in models else ""))
    report["labelled_faces"] = report["pipelines"][next(iter(models))]["scores"]["n_faces"]
    files.write_json(out / "peers.json", scoring.jsonable(report))
    files.write_text(out / "peers.md", table(report))
    print(table(report), end="")
    print(f"wrote {out / 'peers.json'} and {out / 'peers.md'}")


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
