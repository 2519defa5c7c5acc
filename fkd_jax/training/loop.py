"""The training run: set up, then one epoch after another as named steps.

`train_and_evaluate(config, workdir)` is what train.py calls once its flags are parsed and the
config checked. It owns the run's side effects (the work directory's lock, data files,
metrics.jsonl, checkpoints, progress lines); the numerics are the pure functions of
fkd_jax.training.steps.

An ensemble (`train.members` > 1, fkd_jax.training.ensemble) is trained by `train_ensemble`:
as pinned worker processes, each running `train_and_evaluate` on its member's config, or in
this process, where the same loop runs every member at once over their stacked states
(`Member`: each keeps its own directory, checkpoints, metrics and best epoch).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from fkd_jax import files
from fkd_jax.data import augment
from fkd_jax.errors import RunStopped, UserError
from fkd_jax.geometry import keypoints
from fkd_jax.inference import predictor as inference
from fkd_jax.training import (
    checkpoints,
    config_check,
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
class Member:
    """One run the loop trains: the whole run, or one member of an ensemble trained in this
    process (`name` "member<i>", prefixing its messages). Each has its own run directory."""

    name: str
    config: Any  # a single run's config (the member's, for an ensemble)
    workdir: Path
    ckpt: checkpoints.Checkpoints | None = None  # open while the loop runs
    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"val_rmse_px": math.inf, "epoch": 0})
    stopped: bool = False  # stopped early
    record: dict = field(default_factory=dict)  # its last epoch's metrics

    def say(self, text: str) -> str:
        return f"{self.name} {text}" if self.name else text


@dataclass
class Run:
    """What the epoch loop needs, built once by `_set_up`."""

    config: Any  # the run's config (the ensemble's, for members trained in one process)
    workdir: Path
    members: list[Member]
    data: run_dir.RunData
    state: dict  # the members' states stacked along a leading axis when `stacked`
    stacked: bool
    train_arrays: dict
    epoch_fn: Callable  # (state, data, epoch, active (M,) bool) -> (state, metrics, each (M,))
    predict: Callable  # params -> Predictor of the validation crops
    averaging: steps.Averaging | None
    schedule: Callable
    steps_per_epoch: int
    compile_time: float
    log: Callable
    layout: parallel.Layout

    def member_state(self, i: int) -> dict:
        """Member i's training state (its slice of the stacked state)."""
        if not self.stacked:
            return self.state
        return jax.tree.map(lambda a: a[i], self.state)


def _stack(states: list[dict]) -> dict:
    """The members' states stacked along a new leading axis (host arrays)."""
    return jax.tree.map(lambda *leaves: np.stack(leaves), *states)


def train_and_evaluate(config, workdir: Path) -> dict:
    """Train (or resume) the run in `workdir`; returns the last epoch's metrics record."""
    config_check.check_config(config)  # as train.py does: one line, before anything is written
    if ensemble.members(config) > 1:
        raise UserError(f"config.train.members={ensemble.members(config)} is an ensemble: train "
                        "it with train.py (loop.train_ensemble), not as one run")
    main = parallel.is_main_process()
    # One run per work directory: process 0 holds the lock for all processes of a run.
    with lock.hold(workdir) if main else contextlib.nullcontext():
        run_dir.check_run_format(workdir)
        # nothing written in workdir before the set-up succeeds
        run = _set_up(config, workdir, [Member("", config, workdir)])
        return _train(run)[0]


def _train_in_one_process(config, workdir: Path) -> list[dict]:
    """Train (or resume) an ensemble's members in this process (`steps.make_members_epoch`),
    each in its own member<i>/ run directory; returns each member's last metrics record. The
    caller holds the ensemble's lock."""
    members = [Member(f"{ensemble.MEMBER_PREFIX}{i}", ensemble.member_config(config, i),
                      ensemble.member_dir(workdir, i)) for i in range(ensemble.members(config))]
    for m in members:
        run_dir.check_run_format(m.workdir)
    run = _set_up(config, workdir, members)
    run_dir.write_run_files(config, workdir)
    return _train(run)


def _train(run: Run) -> list[dict]:
    """Open the members' checkpoints, resume, run the epochs."""
    with contextlib.ExitStack() as stack:
        for m in run.members:
            m.ckpt = stack.enter_context(checkpoints.Checkpoints(m.workdir))
        _resume(run)
        _epochs(run)
    return [m.record for m in run.members]


def _set_up(config, workdir: Path, members: list[Member]) -> Run:
    """Model, data, optimiser, compiled epoch (of every member at once when there are several).

    Everything that can fail on the user's input (model options, data files, batch size)
    fails here, before anything is written into the work directory; the synthetic set and
    split.json are written last, once all of it worked.
    """
    log = print if parallel.is_main_process() else (lambda *a, **k: None)
    keypoint_set = keypoints.KEYPOINT_SETS[config.data.keypoints]
    first = members[0]
    start = restore.start_params(config.train.get("init_from"))  # before any writing
    data = parallel.main_first("run data", lambda: _read_and_save_data(first.config,
                                                                       first.workdir))
    for m in members[1:]:
        run_dir.copy_run_data(m.config, first.workdir, m.workdir)
    t = data.train
    bs = config.train.batch_size
    layout = parallel.make_layout(bs)  # data parallel over every device of every process
    steps_per_epoch = len(t) // bs
    tx = steps.make_optimizer(config.train, steps_per_epoch)
    averaging = steps.make_averaging(config.train, steps_per_epoch)
    # Keypoints and image size come from the data (the model's options were checked with the
    # config, before any data was read).
    seeds = [m.config.seed for m in members]
    inits = [steps.init_state(config.model, tx, seed, keypoint_set.num_keypoints, t.image_size,
                              averaging) for seed in seeds]
    if start is not None:
        own = inits[0][1]["params"]
        inits = [(g, restore.start_from(start, config.train.init_from, s, tx, i, averaging))
                 for i, (g, s) in enumerate(inits)]
        fresh = restore.fresh_outputs(own, start)
        if fresh:
            log(f"init_from {config.train.init_from}: {', '.join(fresh)} start fresh "
                "(another keypoint set)")
    graphdef, state = inits[0]
    train_arrays = layout.put_replicated({"images": t.images, "keypoints": t.keypoints,
                                          "mask": t.mask})
    options = {"loss_fn": steps.make_loss(config.train), "averaging": averaging,
               "heatmap_loss": steps.make_heatmap_loss(config.train)}
    settings = (graphdef, tx, bs, augment.read_settings(config.augment))
    stacked = len(members) > 1
    if stacked:
        state = _stack([s for _, s in inits])
        epoch_fn = steps.make_members_epoch(*settings, tuple(seeds), layout.batch,
                                            keypoint_set.flip_permutation, **options)
        first_args = (np.int32(0), np.ones(len(members), bool))
    else:
        epoch_fn = steps.make_train_epoch(*settings, seeds[0], layout.batch,
                                          keypoint_set.flip_permutation, **options)
        first_args = (steps.epoch_shuffle_key(seeds[0], 0),)
    state = layout.put_replicated(state)
    t0 = time.perf_counter()
    compiled = epoch_fn.lower(state, train_arrays, *first_args).compile()
    compile_time = time.perf_counter() - t0
    apply = inference.model_apply(graphdef)
    predict = lambda params: inference.Predictor(  # noqa: E731
        lambda x: apply(params, layout.put_replicated(x)), image_size=t.image_size,
        flip_permutation=keypoint_set.flip_permutation)
    devices = jax.devices()
    log(f"{len(t)} training / {len(data.val)} validation rows, {steps_per_epoch} steps "
        f"of {bs} per epoch{f' for each of {len(members)} members' if stacked else ''}, "
        f"{len(devices)} {devices[0].platform} device(s) in {jax.process_count()} "
        f"process(es); compiled in {compile_time:.1f}s")
    return Run(config, workdir, members, data, state, stacked, train_arrays,
               _epoch_caller(compiled, seeds[0], stacked), predict, averaging,
               steps.make_schedule(config.train, steps_per_epoch), steps_per_epoch,
               compile_time, log, layout)


def _epoch_caller(compiled: Callable, seed: int, stacked: bool) -> Callable:
    """`(state, data, epoch, active) -> (state, metrics as host arrays (M,))` over either
    compiled epoch (a single run's takes its shuffle key; it is always active)."""
    if stacked:
        def call(state, data, epoch, active):
            state, m = compiled(state, data, np.int32(epoch), np.asarray(active))
            return state, jax.device_get(m)  # waits for the epoch
    else:
        def call(state, data, epoch, active):
            state, m = compiled(state, data, steps.epoch_shuffle_key(seed, epoch))
            return state, {k: np.reshape(v, (1,)) for k, v in jax.device_get(m).items()}
    return call


def train_ensemble(config, workdir: Path, member_command: Callable[[int], list[str]],
                   log: Callable = print) -> dict:
    """Train (or resume) an ensemble's members, then score the members' mean.

    In one process (`ensemble.in_one_process`), or side by side as member i running
    `member_command(i)` (train.py for its single-run config, fkd_jax.training.ensemble) in a
    process pinned to its own share of the CPU cores, its output in workdir/member<i>.log.
    Ctrl-C stops the members, which save; rerunning the command resumes each, and a finished
    member is only re-scored. Returns the scores written to ensemble_metrics.json.
    """
    n = ensemble.members(config)
    with lock.hold(workdir):
        run_dir.check_run_format(workdir)
        t0 = time.perf_counter()
        if ensemble.in_one_process(config):
            _train_in_one_process(config, workdir)
        else:
            _train_in_processes(config, workdir, member_command, log)
        wall = time.perf_counter() - t0
        scores = score_ensemble(workdir)
        scores["wall_s"] = wall
        files.write_json(workdir / ENSEMBLE_METRICS, scores)
    log(f"ensemble of {n}: val_rmse {scores['val_rmse_px']:.3f} px (members "
        f"{', '.join(f'{v:.3f}' for v in scores['members_val_rmse_px'])}; with flip TTA "
        f"{scores['tta_rmse_px']:.3f}); trained in {wall / 60:.1f} min; {workdir / ENSEMBLE_METRICS}")
    return scores


def _train_in_processes(config, workdir: Path, member_command: Callable[[int], list[str]],
                        log: Callable) -> None:
    """The members as pinned worker processes (see `train_ensemble`); the caller holds the
    ensemble's lock."""
    n = ensemble.members(config)
    # The members' data are checked here first: one clear error, not one per member.
    run_dir.discard_run_data(run_dir.read_run_data(config, workdir))
    cores = processes.available_cores()
    groups = processes.core_groups(cores, min(n, len(cores)))
    run_dir.write_run_files(config, workdir)
    jobs = [processes.Job(f"member{i}", member_command(i),
                          workdir / f"{ensemble.MEMBER_PREFIX}{i}.log") for i in range(n)]
    for i, job in enumerate(jobs):
        log(f"member {i} (seed {ensemble.member_config(config, i).seed}): core(s) "
            f"{','.join(map(str, groups[i % len(groups)]))}, output in {job.log}")
    try:
        status = processes.run_pinned(jobs, groups)
    except KeyboardInterrupt:
        raise RunStopped(f"members stopped and saved in {workdir}; run the same command to "
                         "resume", EXIT_INTERRUPTED, prefix="interrupted") from None
    failed = [(status.get(j.name), j) for j in jobs if status.get(j.name) != 0]
    if failed:
        code = max((c for c, _ in failed if c), default=EXIT_INTERRUPTED)
        raise RunStopped("; ".join(
            f"{j.name} {'did not start' if c is None else f'exit {c}'}: "
            f"{processes.last_line(j.log)} (log {j.log})" for c, j in failed),
            code if code in (EXIT_NON_FINITE, EXIT_INTERRUPTED) else 2)


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


def _resume(run: Run) -> None:
    """Continue each member from its latest readable checkpoint, if any; record the config."""
    states, resumed = [], False
    for i, m in enumerate(run.members):
        state = run.member_state(i)
        restored = m.ckpt.restore_latest(checkpoints.abstract_like(state))
        if restored is not None:
            (state, meta), resumed = restored, True
            m.start_epoch, m.best = meta["epoch"], meta["best"]
            run.log(m.say(f"resuming {m.workdir} from epoch {m.start_epoch} "
                          f"(step {int(state['step'])})"))
        states.append(state)
        if parallel.is_main_process():
            run_dir.truncate_metrics(m.workdir, m.start_epoch)
            run_dir.write_run_files(m.config, m.workdir)
    if resumed:
        run.state = run.layout.put_replicated(_stack(states) if run.stacked else states[0])


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


def _epochs(run: Run) -> None:
    """The loop: run the epoch (every member still training), stop if one broke, then per
    member evaluate, record, save; stop rules."""
    config, workdir = run.config, run.workdir
    interrupted: list[bool] = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    first_epoch = min(m.start_epoch for m in run.members) + 1
    try:
        run_start = time.perf_counter()
        for epoch in range(first_epoch, config.train.epochs + 1):
            active = [not m.stopped and m.start_epoch < epoch for m in run.members]
            if not any(active):
                break
            t_epoch = time.perf_counter()
            run.state, m = run.epoch_fn(run.state, run.train_arrays, epoch, active)
            epoch_time = time.perf_counter() - t_epoch
            training = [i for i, a in enumerate(active) if a]
            for i in training:
                _stop_if_not_finite(float(m["train_loss"][i]), bool(m["params_finite"][i]),
                                    epoch, run.members[i])
            for i in training:
                _finish_epoch(run, run.members[i], i, epoch, epoch_time,
                              {k: v[i] for k, v in m.items()})
                _log_epoch(run, run.members[i], time.perf_counter() - run_start,
                           epoch - first_epoch + 1)

            if interrupted:
                for member in run.members:
                    member.ckpt.wait()
                raise RunStopped(f"saved epoch {epoch} in {workdir}; run the same command to "
                                 "resume", EXIT_INTERRUPTED, prefix="interrupted")
            patience = config.train.early_stop_patience
            for i in training:
                member = run.members[i]
                if patience and epoch - member.best["epoch"] >= patience:
                    run.log(member.say(f"early stop: no validation improvement for {patience} "
                                       "epochs"))
                    member.stopped = True
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    ranked = run.averaging.metric if run.averaging is not None else "val_rmse"
    for member in run.members:
        run.log(member.say(f"best {ranked} {member.best['val_rmse_px']:.3f} px at epoch "
                           f"{member.best['epoch']}; run in {member.workdir}"))


def _finish_epoch(run: Run, member: Member, i: int, epoch: int, epoch_time: float,
                  m: dict) -> None:
    """Member i's epoch after training: evaluate, rank, record and save."""
    state = run.member_state(i)
    t_eval = time.perf_counter()
    val_rmse = evaluate(run.predict(state["params"]), run.data.val)
    averaged = {}
    if run.averaging is not None:
        averaged = {run.averaging.metric: evaluate(run.predict(state["avg_params"]),
                                                   run.data.val)}
    eval_time = time.perf_counter() - t_eval
    # The figure of the parameters a restored run predicts with ranks the epochs.
    ranked = averaged[run.averaging.metric] if averaged else val_rmse
    if ranked < member.best["val_rmse_px"]:
        member.best = {"val_rmse_px": ranked, "epoch": epoch}
    step = int(state["step"])
    member.record = {
        "epoch": epoch, "step": step, "train_loss": float(m["train_loss"]),
        "train_rmse_px": float(m["train_rmse_px"]), "val_rmse_px": val_rmse,
        **averaged, "learning_rate": float(run.schedule(step)),
        "epoch_time_s": epoch_time, "eval_time_s": eval_time,
        # This member's images; members trained in one process share the epoch's time.
        "images_per_s": run.steps_per_epoch * run.config.train.batch_size / epoch_time,
        "compile_time_s": run.compile_time,
    }
    if parallel.is_main_process():  # before the checkpoint: a resume truncates to it
        run_dir.append_metrics(member.workdir, member.record)
    # Returns once the state is copied off the device: the next epoch may donate it.
    member.ckpt.save(epoch, state, {"epoch": epoch, "step": step, "best": member.best,
                                    "model": run.config.model.name}, val_rmse_px=ranked)


def evaluate(predictor: inference.Predictor, val, tta: bool = False) -> float:
    """Validation RMSE in pixels over the labelled coordinates."""
    pred_px = predictor(val.images, tta=tta)
    return steps.rmse_report(pred_px, val.keypoints, val.mask, val.keypoint_set)["rmse_px"]


def _stop_if_not_finite(train_loss: float, params_finite: bool, epoch: int, member: Member):
    if math.isfinite(train_loss) and params_finite:
        return
    what = (f"training loss became {train_loss}" if not math.isfinite(train_loss)
            else "the parameters became non-finite")
    raise RunStopped((f"{member.name}: " if member.name else "") + (
        f"{what} in epoch {epoch}; stopped. The last good checkpoint (epoch {epoch - 1}) is in "
        f"{member.workdir}/checkpoints. Try a lower --config.train.learning_rate or "
        "--config.train.grad_clip."), EXIT_NON_FINITE)


def _log_epoch(run: Run, member: Member, elapsed: float, epochs_done: int) -> None:
    epochs, epoch = run.config.train.epochs, member.record["epoch"]
    eta = elapsed / epochs_done * (epochs - epoch)
    m, s = divmod(int(eta), 60)
    h, m = divmod(m, 60)
    best, record = member.best, member.record
    averaged = ""
    if run.averaging is not None:
        averaged = f" {run.averaging.kind} {record[run.averaging.metric]:6.3f}"
    run.log(member.say(
        f"epoch {epoch:3d}/{epochs}  train_loss {record['train_loss']:.5f}  "
        f"val_rmse {record['val_rmse_px']:6.3f}{averaged} px (best {best['val_rmse_px']:.3f} "
        f"@{best['epoch']})  {record['images_per_s']:6.0f} img/s  "
        f"{record['epoch_time_s']:5.1f}s  left {h}:{m:02d}:{s:02d}"), flush=True)
