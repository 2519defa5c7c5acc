"""Inference speed: faces/s in batches and the latency of one face, fkd-jax against PyTorch.
  uv run python benchmarks/inference_speed.py [--workdir RUN_DIR | --config configs/unet_pair.py]
      [--model model.jaxexport] [--batch_size 64 --calls 5 --latency_calls 50 --repeats 5]
      [--envs default,arena,hugetlb] [--torch_layouts nchw,channels_last] [--torch_threads 0,1]

Setups, each a warm subprocess started with one allocator environment of --envs (as in
benchmarks/throughput.py) and answering "infer B N" lines:
  fkd-jax    `predictor.Predictor` on the run's parameters (`restore.load_run(--workdir)`),
             or with no --workdir a freshly initialised --config model (the same cost), one
             executable compiled per batch shape, as predict.py and eval.py run it;
  exported   the `export.py` artefact through `exported.load_predictor`: --model, or else the
             same run exported here (`exported.export_run`) to a temporary file;
  torch      the PyTorch twin (benchmarks/torch_reference.py, its own random weights: same
             cost) in eval mode under torch.inference_mode, per --torch_layouts and
             --torch_threads.
Every call takes numpy crops (B, 96, 96, 1) in [0, 1] and returns numpy keypoints in pixels.
A round asks every setup, in turn, for --calls calls at --batch_size (faces/s = faces / summed
call time) and --latency_calls calls of one face (latency = the median call); after one
untimed round, --repeats rounds; each figure is the median over the rounds. Printed: a table,
fkd-jax and the export in the first environment and in their best, the best PyTorch setup,
the ratios; the last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from types import SimpleNamespace

import numpy as np
from absl import flags

from throughput import (ENVS, ROOT, check_setup_args, close_all, define_setup_flags, load_config,
                        start_servers, torch_specs, twin_cli, twin_settings)  # benchmarks/: here

from fkd_jax import cli, models
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry.keypoints import IMAGE_SIZE

VARIANTS = ("fkd-jax", "exported")


def load_run(args: SimpleNamespace):
    """The run to time: restored from --workdir, or --config's model freshly initialised."""
    from flax import nnx

    from fkd_jax.training import restore
    from fkd_jax.inference import predictor
    from fkd_jax.geometry import keypoints

    if args.workdir:
        return restore.load_run(args.workdir, args.checkpoint)
    config = load_config(args.config)
    k = keypoints.KEYPOINT_SETS[config.data.keypoints].num_keypoints
    graphdef, params = nnx.split(models.create_model(config.model, k, config.seed), nnx.Param)
    return predictor.Run(config, graphdef, nnx.to_pure_dict(params), {"epoch": None})


def run_config(args: SimpleNamespace):
    from fkd_jax.training import restore

    if args.workdir:
        return restore.read_run_config(Path(args.workdir))
    return load_config(args.config)


def serve(args: SimpleNamespace) -> None:
    """--serve VARIANT: one fkd-jax setup answering "infer B N" (B = --batch_size or 1)."""
    from fkd_jax.inference import exported
    from fkd_jax.inference import predictor

    t = time.perf_counter()
    if args.serve == "exported":
        predictors = {b: exported.load_predictor(args.model, b) for b in (args.batch_size, 1)}
    else:
        run = load_run(args)
        predictors = {b: predictor.Predictor.from_run(run, b) for b in (args.batch_size, 1)}
    for b, p in predictors.items():  # compile both executables
        p(np.zeros((b, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32))
    print(json.dumps({"ready": True, "framework": "jax", "variant": args.serve,
                      "load_and_compile_s": time.perf_counter() - t}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) != 3 or words[0] != "infer" or int(words[1]) not in predictors:
            break
        batch, calls = int(words[1]), int(words[2])
        images = np.random.default_rng(batch).random((batch, IMAGE_SIZE, IMAGE_SIZE, 1),
                                                    np.float32)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            predictors[batch](images)
            times.append(time.perf_counter() - t)
        print(json.dumps({"images_per_s": batch * calls / sum(times),
                          "latency_s": statistics.median(times)}), flush=True)


def export_to(args: SimpleNamespace, folder: Path) -> Path:
    """--model, or the timed run exported to `folder` as export.py would write it."""
    if args.model:
        if not Path(args.model).is_file():
            raise UserError(f"--model {args.model}: no such file; write one with export.py")
        return Path(args.model)
    from fkd_jax.inference import exported
    from fkd_jax import files

    path = folder / f"model{exported.SUFFIX}"
    t = time.perf_counter()
    files.write_bytes(path, exported.export_run(load_run(args)))
    print(f"exported the model to {path} in {time.perf_counter() - t:.1f}s", flush=True)
    return path


def setup_specs(args: SimpleNamespace, model_path: Path) -> list[tuple[str, list[str], str]]:
    source = (["--workdir", args.workdir, "--checkpoint", args.checkpoint] if args.workdir
              else ["--config", args.config])
    me = [sys.executable, str(Path(__file__).resolve()), "--batch_size", str(args.batch_size)]
    twin = twin_cli(twin_settings(run_config(args), None))
    specs = []
    for env in args.envs:
        specs.append((f"fkd-jax [{env}]", [*me, "--serve", "fkd-jax", *source], env))
        specs.append((f"exported [{env}]", [*me, "--serve", "exported", "--model",
                                            str(model_path)], env))
        specs += torch_specs(args, env, ["--warmup", "0", "--batch_size", "1", *twin])
    return specs


def time_rounds(args: SimpleNamespace, servers) -> dict[str, dict[str, list[float]]]:
    """Per setup, the faces/s and latency (s) of every timed round."""
    out = {s.name: {"faces_per_s": [], "latency_s": []} for s in servers}
    for r in range(args.repeats + 1):
        for s in servers:
            time.sleep(0.2)  # let the other processes' spinning threads go idle
            bulk = s.request(f"infer {args.batch_size} {args.calls}")
            one = s.request(f"infer 1 {args.latency_calls}")
            if r == 0:
                continue  # warm-up round
            out[s.name]["faces_per_s"].append(bulk["images_per_s"])
            out[s.name]["latency_s"].append(one["latency_s"])
            print(f"round {r}: {s.name:28s} {bulk['images_per_s']:8.1f} faces/s  "
                  f"{one['latency_s'] * 1e3:7.2f} ms", flush=True)
    return out


def report(args: SimpleNamespace, rounds: dict) -> dict:
    setups = {name: {"faces_per_s": statistics.median(v["faces_per_s"]),
                     "latency_ms": statistics.median(v["latency_s"]) * 1e3,
                     "faces_per_s_rounds": v["faces_per_s"],
                     "latency_ms_rounds": [x * 1e3 for x in v["latency_s"]]}
              for name, v in rounds.items()}
    print(f"\n{'setup':28s} {'faces/s':>9s} {'latency ms':>10s}  (batch {args.batch_size}; "
          "one face)")
    for name, s in setups.items():
        print(f"{name:28s} {s['faces_per_s']:9.1f} {s['latency_ms']:10.2f}")
    first = args.envs[0]
    pick = {}
    for prefix in (*VARIANTS, "torch"):
        names = [n for n in setups if n.startswith(prefix + " ")]
        pick[f"{prefix}_best_faces_per_s"] = max(names, key=lambda n: setups[n]["faces_per_s"])
        pick[f"{prefix}_best_latency"] = min(names, key=lambda n: setups[n]["latency_ms"])
    torch_fast, torch_quick = pick["torch_best_faces_per_s"], pick["torch_best_latency"]
    ratios = {}
    for variant in VARIANTS:
        for label, name in ((f"{variant} [{first}]", f"{variant} [{first}]"),
                            (f"{variant} best", pick[f"{variant}_best_faces_per_s"])):
            ratios[f"faces_per_s {label} / {torch_fast}"] = (
                setups[name]["faces_per_s"] / setups[torch_fast]["faces_per_s"])
        for label, name in ((f"{variant} [{first}]", f"{variant} [{first}]"),
                            (f"{variant} best", pick[f"{variant}_best_latency"])):
            ratios[f"latency {torch_quick} / {label}"] = (
                setups[torch_quick]["latency_ms"] / setups[name]["latency_ms"])
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    return {"setups": setups, "best": pick, "ratio": ratios}


FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "A train.py run directory (default: a fresh --config model).",
                    flag_values=FLAGS)
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.", flag_values=FLAGS)
flags.DEFINE_string("config", str(ROOT / "configs" / "unet_pair.py"),
                    "Config file of the model timed without --workdir.", flag_values=FLAGS)
flags.DEFINE_string("model", None, "An export.py artefact (default: export the run here).",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Faces per batched call.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("calls", 5, "Batches per round.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("latency_calls", 50, "One-face calls per round.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, "Timed rounds.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("serve", None, list(VARIANTS), "Internal: one setup, answering stdin lines.",
                  flag_values=FLAGS)
define_setup_flags(FLAGS)


def parse_args(argv: list[str]) -> SimpleNamespace:
    cli.parse_flags(argv, FLAGS)
    args = cli.as_namespace(FLAGS)
    check_setup_args(args)
    if args.workdir and not Path(args.workdir).is_dir():
        raise UserError(f"--workdir {args.workdir}: no such directory")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return
    out = {"workdir": args.workdir, "config": None if args.workdir else args.config,
           "batch_size": args.batch_size, "calls": args.calls,
           "latency_calls": args.latency_calls, "repeats": args.repeats,
           "envs": {name: ENVS[name] for name in args.envs}, "cpus": os.cpu_count(),
           "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="fkd-inference-speed-") as tmp:
        model_path = export_to(args, Path(tmp))
        out["model"] = args.model or "exported here from the timed run"
        servers = start_servers(setup_specs(args, model_path))
        try:
            rounds = time_rounds(args, servers)
        finally:
            close_all(servers)
    out.update(report(args, rounds))
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
