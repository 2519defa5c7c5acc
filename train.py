"""Train a facial keypoint regressor.

  python train.py --config configs/base.py [--workdir DIR] [--config.train.epochs=5 ...]

With no --config.data.train_path it trains on the embedded procedural faces. Re-running the
same command on the same --workdir resumes from the latest checkpoint. Ctrl-C finishes the
current epoch, saves it and exits (status 130); a non-finite loss stops the run (status 3)
keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (python, get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-host: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")

EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 130


def _format_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def train(config, workdir: Path) -> dict:
    """Train (or resume) the run in `workdir`; returns the last epoch's metrics record."""
    import jax
    import numpy as np

    from fkd_jax import augment, checkpoints, experiment, keypoints, parallel, training
    from fkd_jax.errors import UserError

    augment_settings = augment.read_settings(config.augment)  # validated before any work
    # Process 0 writes the synthetic data and split.json; the others then read them.
    train_data, val_data = parallel.main_first(
        "run data", lambda: experiment.load_run_data(config, workdir))
    bs = config.train.batch_size
    if bs > len(train_data):
        raise UserError(f"--config.train.batch_size={bs} is larger than the {len(train_data)} "
                        "training rows")
    steps_per_epoch = len(train_data) // bs
    tx = training.make_optimizer(config.train, steps_per_epoch)
    graphdef, state = training.init_state(config.model, tx, config.seed)

    layout = parallel.make_layout(bs)  # data parallel over every device of every process
    main_process = parallel.is_main_process()
    log = print if main_process else (lambda *a, **k: None)

    ckpt = checkpoints.Checkpoints(workdir)
    start_epoch, best = 0, {"val_rmse_px": math.inf, "epoch": 0}
    restored = ckpt.restore_latest(checkpoints.abstract_like(state))
    if restored is not None:
        state, meta = restored
        start_epoch, best = meta["epoch"], meta["best"]
        log(f"resuming {workdir} from epoch {start_epoch} (step {int(state['step'])})")
    if main_process:
        experiment.truncate_metrics(workdir, start_epoch)
        experiment.atomic_write_text(workdir / "config.json",
                                     config.to_json_best_effort(indent=2) + "\n")

    state = layout.put_replicated(state)
    train_arrays = layout.put_replicated({"images": train_data.images,
                                          "keypoints": train_data.keypoints, "mask": train_data.mask})
    val_images = layout.put_replicated(val_data.images)

    train_epoch = training.make_train_epoch(graphdef, tx, bs, augment_settings, config.seed,
                                            layout.batch)
    predict = training.make_predict(graphdef)
    schedule = training.make_schedule(config.train, steps_per_epoch)

    t0 = time.perf_counter()
    compiled = train_epoch.lower(state, train_arrays, training.epoch_shuffle_key(config.seed, 0)).compile()
    compile_time = time.perf_counter() - t0
    devices = jax.devices()
    log(f"{len(train_data)} training / {len(val_data)} validation rows, {steps_per_epoch} steps "
          f"of {bs} per epoch, {len(devices)} {devices[0].platform} device(s) in "
          f"{jax.process_count()} process(es); compiled in {compile_time:.1f}s")

    interrupted = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    record: dict = {}
    try:
        run_start = time.perf_counter()
        for epoch in range(start_epoch + 1, config.train.epochs + 1):
            t_epoch = time.perf_counter()
            state, m = compiled(state, train_arrays, training.epoch_shuffle_key(config.seed, epoch))
            train_loss = float(m["train_loss"])  # waits for the epoch
            epoch_time = time.perf_counter() - t_epoch
            if not (math.isfinite(train_loss) and bool(m["params_finite"])):
                ckpt.close()
                what = (f"training loss became {train_loss}" if not math.isfinite(train_loss)
                        else "the parameters became non-finite")
                print(f"error: {what} in epoch {epoch}; stopped. The "
                      f"last good checkpoint (epoch {epoch - 1}) is in {workdir}/checkpoints. "
                      "Try a lower --config.train.learning_rate or --config.train.grad_clip.",
                      file=sys.stderr)
                raise SystemExit(EXIT_NON_FINITE)

            t_eval = time.perf_counter()
            pred_px = np.asarray(keypoints.to_pixels(predict(state["params"], val_images)))
            val_rmse = training.rmse_report(pred_px, val_data.keypoints, val_data.mask)["rmse_px"]
            eval_time = time.perf_counter() - t_eval
            is_best = val_rmse < best["val_rmse_px"]
            if is_best:
                best = {"val_rmse_px": val_rmse, "epoch": epoch}
            step = int(state["step"])
            record = {
                "epoch": epoch, "step": step, "train_loss": train_loss,
                "train_rmse_px": float(m["train_rmse_px"]), "val_rmse_px": val_rmse,
                "learning_rate": float(schedule(step)), "epoch_time_s": epoch_time,
                "eval_time_s": eval_time, "images_per_s": steps_per_epoch * bs / epoch_time,
                "compile_time_s": compile_time,
            }
            if main_process:  # before the checkpoint: a resume truncates it to the checkpoint
                experiment.append_metrics(workdir, record)
            ckpt.wait()  # the previous save must be done before its buffers are donated again
            ckpt.save(epoch, state, {"epoch": epoch, "step": step, "best": best,
                                     "model": config.model.name}, is_best)
            ckpt.wait()
            done = epoch - start_epoch
            eta = (time.perf_counter() - run_start) / done * (config.train.epochs - epoch)
            log(f"epoch {epoch:3d}/{config.train.epochs}  train_loss {train_loss:.5f}  "
                  f"val_rmse {val_rmse:6.3f} px (best {best['val_rmse_px']:.3f} @{best['epoch']})  "
                  f"{record['images_per_s']:6.0f} img/s  {epoch_time:5.1f}s  left {_format_eta(eta)}",
                  flush=True)
            if interrupted:
                ckpt.close()
                print(f"interrupted: saved epoch {epoch} in {workdir}; run the same command to "
                      "resume", file=sys.stderr)
                raise SystemExit(EXIT_INTERRUPTED)
            patience = config.train.early_stop_patience
            if patience and epoch - best["epoch"] >= patience:
                log(f"early stop: no validation improvement for {patience} epochs")
                break
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        ckpt.close()
    log(f"best val_rmse {best['val_rmse_px']:.3f} px at epoch {best['epoch']}; run in {workdir}")
    return record


def main(argv: list[str]) -> None:
    from fkd_jax import cli
    from fkd_jax.errors import UserError

    cli.parse_flags(argv, flags.FLAGS)
    from fkd_jax import parallel

    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _CONFIG.value is None:
        raise UserError("--config is required, e.g. --config configs/base.py")
    config = _CONFIG.value
    cli.check_config(config)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    workdir = cli.check_workdir(Path(_WORKDIR.value or cli.default_workdir(config_path)))
    train(config, workdir)


if __name__ == "__main__":
    from fkd_jax.errors import exit_on_user_error

    exit_on_user_error(main)(sys.argv)
