"""What the on-device epoch scan costs (or saves) against running its steps one by one.
  uv run python benchmarks/epoch_overhead.py --config configs/nouri.py --batch_size 128
      [--steps 10 --repeats 5]

On N = steps * batch random images, timed after compiling and one untimed warm-up each:
  (a) epoch: one call of `training.make_train_epoch` (shuffle + all steps in a `lax.scan`),
      as train.py runs it;
  (b) steps: the same batches (pre-sliced on the device) through `jax.jit(train_step)`, each
      call timed alone with `block_until_ready`; the figure is the sum of the step times;
  (c) loop: the naive Python loop: shuffle and slice numpy arrays on the host each step, hand
      the batch to the jitted step (a host-to-device copy per step), wait for the last one.
The repeats of (a), (b) and (c) alternate so that all three see the same machine load; each
figure is the median over --repeats. scan_overhead = epoch / sum(steps) - 1 (the issue's
goal: within 5%). The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import flags

from throughput import ROOT, load_config, random_batch  # benchmarks/ is this script's dir

from fkd_jax import cli
from fkd_jax.errors import exit_on_user_error
from fkd_jax.training import steps as training


FLAGS = flags.FlagValues()
flags.DEFINE_string("config", str(ROOT / "configs" / "nouri.py"), "Config file (get_config()).",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Images per step.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Steps per epoch.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, "Timed repeats of each way.", lower_bound=1,
                     flag_values=FLAGS)


class Runners:
    """The three ways of running one epoch, compiled, sharing one training state."""

    def __init__(self, config, batch_size: int, steps: int):
        self.bs, self.steps, self.seed = batch_size, steps, config.seed
        tx = training.make_optimizer(config.train, steps)
        graphdef, self.state = training.init_state(config.model, tx, config.seed)
        self.data = random_batch(np.random.default_rng(config.seed), batch_size * steps)
        self.host_data = jax.tree.map(np.asarray, self.data)
        self.shuffle_key = training.epoch_shuffle_key(config.seed, 1)
        t = time.perf_counter()
        self.epoch = training.make_train_epoch(graphdef, tx, batch_size, None, config.seed).lower(
            self.state, self.data, self.shuffle_key).compile()
        self.compile_epoch_s = time.perf_counter() - t
        # The scan's own batches and keys, made ahead so (b) times the steps alone.
        perm = jax.random.permutation(self.shuffle_key, batch_size * steps).reshape(steps, -1)
        self.batches = [jax.tree.map(lambda a, i=i: a[i], self.data) for i in perm]
        self.keys = [jax.random.fold_in(training.step_key(config.seed), i) for i in range(steps)]
        t = time.perf_counter()
        self.step = jax.jit(training.make_train_step(graphdef, tx, None), donate_argnums=(0,)
                            ).lower(self.state, self.batches[0], self.keys[0]).compile()
        self.compile_step_s = time.perf_counter() - t
        self.rng = np.random.default_rng(config.seed)

    def run_epoch(self) -> float:
        t = time.perf_counter()
        self.state, m = self.epoch(self.state, self.data, self.shuffle_key)
        jax.block_until_ready((self.state, m))
        return time.perf_counter() - t

    def run_steps(self) -> list[float]:
        times = []
        for batch, key in zip(self.batches, self.keys):
            t = time.perf_counter()
            self.state, m = self.step(self.state, batch, key)
            jax.block_until_ready((self.state, m))
            times.append(time.perf_counter() - t)
        return times

    def run_loop(self) -> float:
        t = time.perf_counter()
        perm = self.rng.permutation(self.bs * self.steps)
        base = training.step_key(self.seed)
        for i in range(self.steps):
            idx = perm[i * self.bs:(i + 1) * self.bs]
            batch = {k: v[idx] for k, v in self.host_data.items()}
            self.state, m = self.step(self.state, batch, jax.random.fold_in(base, i))
        jax.block_until_ready((self.state, m))
        return time.perf_counter() - t


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    args = cli.as_namespace(FLAGS)
    config = load_config(args.config)
    r = Runners(config, args.batch_size, args.steps)
    print(f"compiled: epoch {r.compile_epoch_s:.1f}s, step {r.compile_step_s:.1f}s", flush=True)
    r.run_epoch(), r.run_steps(), r.run_loop()  # warm-up
    epoch, steps, loop = [], [], []
    for i in range(args.repeats):
        epoch.append(r.run_epoch())
        step_times = r.run_steps()
        steps.append(sum(step_times))
        loop.append(r.run_loop())
        print(f"repeat {i + 1}: epoch {epoch[-1]:.3f}s  sum of steps {steps[-1]:.3f}s "
              f"(median step {statistics.median(step_times) * 1e3:.1f} ms)  "
              f"python loop {loop[-1]:.3f}s", flush=True)
    med = {name: statistics.median(v) for name, v in
           (("epoch_s", epoch), ("sum_of_steps_s", steps), ("python_loop_s", loop))}
    out = {"config": args.config, "model": config.model.name, "batch_size": args.batch_size,
           "steps": args.steps, "repeats": args.repeats, **med,
           "scan_overhead": med["epoch_s"] / med["sum_of_steps_s"] - 1,
           "loop_over_epoch": med["python_loop_s"] / med["epoch_s"],
           "images_per_s": {"epoch": args.batch_size * args.steps / med["epoch_s"],
                            "steps": args.batch_size * args.steps / med["sum_of_steps_s"],
                            "loop": args.batch_size * args.steps / med["python_loop_s"]},
           "all": {"epoch_s": epoch, "sum_of_steps_s": steps, "python_loop_s": loop},
           "compile_s": {"epoch": r.compile_epoch_s, "step": r.compile_step_s},
           "jax_version": jax.__version__, "backend": jax.default_backend(),
           "cpus": os.cpu_count(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
           "loadavg_end": os.getloadavg()}
    print(f"scan overhead {out['scan_overhead']:+.1%} vs the sum of its steps; "
          f"python loop {out['loop_over_epoch']:.2f}x the epoch")
    print(json.dumps(out))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
