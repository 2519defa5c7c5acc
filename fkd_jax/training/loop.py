"""The training run: set up, then one epoch after another as named steps.

`train_and_evaluate(config, workdir)` is what train.py calls once its flags are parsed and the
config checked. It owns the run's side effects (the work directory's lock, data files,
metrics.jsonl, checkpoints, progress lines); the numerics are the pure functions of
fkd_jax.training.steps.

Stops: a non-finite loss or parameters -> `RunStopped` (exit 3, last good checkpoint kept);
Ctrl-C -> the current epoch finishes, is saved, then `RunStopped` (exit 130); early stopping
after `train.early_stop_patience` epochs without a better validation RMSE.

Parameter averaging (`train.ema_decay` or `train.swa_start_epoch`): both the raw and the
averaged parameters are scored every epoch (`val_rmse_px` and `val_rmse_px_ema` /
`val_rmse_px_swa` in metrics.jsonl), and the averaged figure is the one that ranks the best
checkpoint and drives early stopping, because the averaged parameters are what a restored
run predicts with (`restore.load_run`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax

from fkd_jax import files
from fkd_jax.data import augment
from fkd_jax.errors import RunStopped, UserError
from fkd_jax.geometry import keypoints
from fkd_jax.inference import predictor as inference
from fkd_jax.training import (
    checkpoints,
    ensemble,
    lock,
    parallel,
    processes,
    restore,
    run_dir,
    steps,
)

EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 130
ENSEMBLE_METRICS = "ensemble_metrics.json"


@dataclass
class Run:
    """What the epoch loop needs, built once by `_set_up`."""

    config: Any
    workdir: Path
    data: run_dir.RunData
    state: dict
    train_arrays: dict
    epoch_fn: Callable  # compiled (state, data, shuffle_key) -> (state, metrics)
    predict: Callable  # params -> Predictor of the validation crops
    averaging: steps.Averaging | None
    schedule: Callable
    steps_per_epoch: int
    start_epoch: int
    best: dict
    compile_time: float
    log: Callable
    layout: parallel.Layout


def train_and_evaluate(config, workdir: Path) -> dict:
    """Train (or resume) the run in `workdir`; returns the last epoch's metrics record."""
    if ensemble.members(config) > 1:
        raise UserError(f"config.train.members={ensemble.members(config)} is an ensemble: train "
                        "it with train.py (trainer.train_ensemble), not as one run")
    main = parallel.is_main_process()
    # One run per work directory: process 0 holds the lock for all processes of a run.
    with lock.hold(workdir) if main else contextlib.nullcontext():
        run = _set_up(config, workdir)  # nothing written in workdir before this succeeds
        with checkpoints.Checkpoints(workdir) as ckpt:
            _resume(run, ckpt)
            return _epochs(run, ckpt)


def _set_up(config, workdir: Path) -> Run:
    """Model, data, optimiser, compiled epoch.

    Everything that can fail on the user's input (model options, data files, batch size)
    fails here, before anything is written into the work directory; the synthetic set and
    split.json are written last, once all of it worked.
    """
    log = print if parallel.is_main_process() else (lambda *a, **k: None)
    keypoint_set = keypoints.KEYPOINT_SETS[config.data.keypoints]
    data = parallel.main_first("run data", lambda: _read_and_save_data(config, workdir))
    t = data.train
    bs = config.train.batch_size
    layout = parallel.make_layout(bs)  # data parallel over every device of every process
    steps_per_epoch = len(t) // bs
    tx = steps.make_optimizer(config.train, steps_per_epoch)
    averaging = steps.make_averaging(config.train, steps_per_epoch)
    # Keypoints and image size come from the data (the model's options were checked with the
    # config, before any data was read).
    graphdef, state = steps.init_state(config.model, tx, config.seed,
                                          keypoint_set.num_keypoints, t.image_size, averaging)
    train_arrays = layout.put_replicated({"images": t.images, "keypoints": t.keypoints,
                                          "mask": t.mask})
    epoch_fn = steps.make_train_epoch(graphdef, tx, bs, augment.read_settings(config.augment),
                                         config.seed, layout.batch, keypoint_set.flip_permutation,
                                         loss_fn=steps.make_loss(config.train),
                                         averaging=averaging,
                                         heatmap_loss=steps.make_heatmap_loss(config.train))
    state = layout.put_replicated(state)
    t0 = time.perf_counter()
    compiled = epoch_fn.lower(state, train_arrays, steps.epoch_shuffle_key(config.seed, 0)).compile()
    compile_time = time.perf_counter() - t0
    apply = inference.model_apply(graphdef)
    predict = lambda params: inference.Predictor(  # noqa: E731
        lambda x: apply(params, layout.put_replicated(x)), image_size=t.image_size,
        flip_permutation=keypoint_set.flip_permutation)
    devices = jax.devices()
    log(f"{len(t)} training / {len(data.val)} validation rows, {steps_per_epoch} steps "
        f"of {bs} per epoch, {len(devices)} {devices[0].platform} device(s) in "
        f"{jax.process_count()} process(es); compiled in {compile_time:.1f}s")
    return Run(config, workdir, data, state, train_arrays, compiled, predict, averaging,
               steps.make_schedule(config.train, steps_per_epoch), steps_per_epoch,
               0, {"val_rmse_px": math.inf, "epoch": 0}, compile_time, log, layout)


def train_ensemble(config, workdir: Path, member_command: Callable[[int], list[str]],
                   log: Callable = print) -> dict:
    """Train (or resume) an ensemble's members side by side, then score the members' mean.

    Member i runs `member_command(i)` (train.py for its single-run config, fkd_jax.training.ensemble),
    in a process pinned to its own share of the CPU cores, its output in workdir/member<i>.log.
    Ctrl-C reaches the members, which save and stop; rerunning the command resumes each, and a
    finished member is only re-scored. Returns the scores written to ensemble_metrics.json.
    """
    n = ensemble.members(config)
    # The members' data are checked here first: one clear error, not one per member.
    run_dir.discard_run_data(run_dir.read_run_data(config, workdir))
    cores = processes.available_cores()
    groups = processes.core_groups(cores, min(n, len(cores)))
    with lock.hold(workdir):
        files.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        jobs = [processes.Job(f"member{i}", member_command(i),
                              workdir / f"{ensemble.MEMBER_PREFIX}{i}.log") for i in range(n)]
        for i, job in enumerate(jobs):
            log(f"member {i} (seed {ensemble.member_config(config, i).seed}): core(s) "
                f"{','.join(map(str, groups[i % len(groups)]))}, output in {job.log}")
        t0 = time.perf_counter()
        try:
            status = processes.run_pinned(jobs, groups)
        except KeyboardInterrupt:
            raise RunStopped(f"members stopped and saved in {workdir}; run the same command to "
                             "resume", EXIT_INTERRUPTED, prefix="interrupted") from None
        wall = time.perf_counter() - t0
        failed = [(status.get(j.name), j) for j in jobs if status.get(j.name) != 0]
        if failed:
            code = max((c for c, _ in failed if c), default=EXIT_INTERRUPTED)
            raise RunStopped("; ".join(
                f"{j.name} {'did not start' if c is None else f'exit {c}'}: "
                f"{processes.last_line(j.log)} (log {j.log})" for c, j in failed),
                code if code in (EXIT_NON_FINITE, EXIT_INTERRUPTED) else 2)
        scores = score_ensemble(workdir)
        scores["wall_s"] = wall
        files.write_json(workdir / ENSEMBLE_METRICS, scores)
    log(f"ensemble of {n}: val_rmse {scores['val_rmse_px']:.3f} px (members "
        f"{', '.join(f'{v:.3f}' for v in scores['members_val_rmse_px'])}; with flip TTA "
        f"{scores['tta_rmse_px']:.3f}); trained in {wall / 60:.1f} min; {workdir / ENSEMBLE_METRICS}")
    return scores


def score_ensemble(workdir: Path) -> dict:
    """Validation RMSE (px) of an ensemble's best checkpoints: the mean prediction (and with
    flip TTA) and each member alone."""
    run = restore.load_run(workdir, "best")
    data = run_dir.read_run_data(run.config, workdir)
    run_dir.discard_run_data(data)
    members = [inference.Run(run.config, run.graphdef, p, {}) for p in run.params]
    mean = inference.Predictor.from_run(run)  # compiled once for both figures
    return {
        "val_rmse_px": evaluate(mean, data.val),
        "tta_rmse_px": evaluate(mean, data.val, tta=True),
        "members_val_rmse_px": [evaluate(inference.Predictor.from_run(m), data.val)
                                for m in members],
        "members_best_epoch": run.meta["epoch"],
    }


def _resume(run: Run, ckpt: checkpoints.Checkpoints) -> None:
    """Continue from the latest readable checkpoint, if any; record the config."""
    restored = ckpt.restore_latest(checkpoints.abstract_like(run.state))
    if restored is not None:
        state, meta = restored
        run.state = run.layout.put_replicated(state)
        run.start_epoch, run.best = meta["epoch"], meta["best"]
        run.log(f"resuming {run.workdir} from epoch {run.start_epoch} "
                f"(step {int(state['step'])})")
    if parallel.is_main_process():
        run_dir.truncate_metrics(run.workdir, run.start_epoch)
        files.write_text(run.workdir / "config.json",
                         run.config.to_json_best_effort(indent=2) + "\n")


def _read_and_save_data(config, workdir: Path) -> run_dir.RunData:
    """Read and check the run's data; only then (process 0) write its new files."""
    data = run_dir.read_run_data(config, workdir)
    bs = config.train.batch_size
    if bs > len(data.train):
        run_dir.discard_run_data(data)
        raise UserError(f"--config.train.batch_size={bs} is larger than the {len(data.train)} "
                        "training rows")
    if parallel.is_main_process():
        run_dir.save_run_data(data, config, workdir)
    else:
        run_dir.discard_run_data(data)
    return data


def _epochs(run: Run, ckpt: checkpoints.Checkpoints) -> dict:
    """The loop: run the epoch, stop if it broke, evaluate, record, save, stop rules."""
    config, workdir = run.config, run.workdir
    interrupted: list[bool] = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    record: dict = {}
    try:
        run_start = time.perf_counter()
        for epoch in range(run.start_epoch + 1, config.train.epochs + 1):
            t_epoch = time.perf_counter()
            run.state, m = run.epoch_fn(run.state, run.train_arrays,
                                        steps.epoch_shuffle_key(config.seed, epoch))
            train_loss = float(m["train_loss"])  # waits for the epoch
            epoch_time = time.perf_counter() - t_epoch
            _stop_if_not_finite(train_loss, bool(m["params_finite"]), epoch, workdir)

            t_eval = time.perf_counter()
            val_rmse = evaluate(run.predict(run.state["params"]), run.data.val)
            averaged = {}
            if run.averaging is not None:
                averaged = {run.averaging.metric:
                            evaluate(run.predict(run.state["avg_params"]), run.data.val)}
            eval_time = time.perf_counter() - t_eval
            # The figure of the parameters a restored run predicts with ranks the epochs.
            ranked = averaged[run.averaging.metric] if averaged else val_rmse
            if ranked < run.best["val_rmse_px"]:
                run.best = {"val_rmse_px": ranked, "epoch": epoch}

            step = int(run.state["step"])
            record = {
                "epoch": epoch, "step": step, "train_loss": train_loss,
                "train_rmse_px": float(m["train_rmse_px"]), "val_rmse_px": val_rmse,
                **averaged, "learning_rate": float(run.schedule(step)),
                "epoch_time_s": epoch_time, "eval_time_s": eval_time,
                "images_per_s": run.steps_per_epoch * config.train.batch_size / epoch_time,
                "compile_time_s": run.compile_time,
            }
            if parallel.is_main_process():  # before the checkpoint: a resume truncates to it
                run_dir.append_metrics(workdir, record)
            # Returns once the state is copied off the device: the next epoch may donate it.
            ckpt.save(epoch, run.state, {"epoch": epoch, "step": step, "best": run.best,
                                         "model": config.model.name}, val_rmse_px=ranked)
            _log_epoch(run, record, time.perf_counter() - run_start, epoch)

            if interrupted:
                ckpt.wait()
                raise RunStopped(f"saved epoch {epoch} in {workdir}; run the same command to "
                                 "resume", EXIT_INTERRUPTED, prefix="interrupted")
            patience = config.train.early_stop_patience
            if patience and epoch - run.best["epoch"] >= patience:
                run.log(f"early stop: no validation improvement for {patience} epochs")
                break
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    ranked = run.averaging.metric if run.averaging is not None else "val_rmse"
    run.log(f"best {ranked} {run.best['val_rmse_px']:.3f} px at epoch {run.best['epoch']}; "
            f"run in {workdir}")
    return record


def evaluate(predictor: inference.Predictor, val, tta: bool = False) -> float:
    """Validation RMSE in pixels over the labelled coordinates."""
    pred_px = predictor(val.images, tta=tta)
    return steps.rmse_report(pred_px, val.keypoints, val.mask, val.keypoint_set)["rmse_px"]


def _stop_if_not_finite(train_loss: float, params_finite: bool, epoch: int, workdir: Path):
    if math.isfinite(train_loss) and params_finite:
        return
    what = (f"training loss became {train_loss}" if not math.isfinite(train_loss)
            else "the parameters became non-finite")
    raise RunStopped(f"{what} in epoch {epoch}; stopped. The last good checkpoint (epoch "
                     f"{epoch - 1}) is in {workdir}/checkpoints. Try a lower "
                     "--config.train.learning_rate or --config.train.grad_clip.",
                     EXIT_NON_FINITE)


def _log_epoch(run: Run, record: dict, elapsed: float, epoch: int) -> None:
    epochs = run.config.train.epochs
    eta = elapsed / (epoch - run.start_epoch) * (epochs - epoch)
    m, s = divmod(int(eta), 60)
    h, m = divmod(m, 60)
    best = run.best
    averaged = ""
    if run.averaging is not None:
        averaged = f" {run.averaging.kind} {record[run.averaging.metric]:6.3f}"
    run.log(f"epoch {epoch:3d}/{epochs}  train_loss {record['train_loss']:.5f}  "
            f"val_rmse {record['val_rmse_px']:6.3f}{averaged} px (best {best['val_rmse_px']:.3f} "
            f"@{best['epoch']})  {record['images_per_s']:6.0f} img/s  "
            f"{record['epoch_time_s']:5.1f}s  left {h}:{m:02d}:{s:02d}", flush=True)
