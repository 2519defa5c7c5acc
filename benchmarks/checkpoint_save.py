"""What a checkpoint save costs the training loop, waited for at once or overlapped.
  uv run python benchmarks/checkpoint_save.py [--mb 100 --leaves 30 --epochs 6 --work_s 2]

A training state of --mb MB (float32, --leaves arrays, about the size of Nouri's net with
Adam's two moments at the default) goes through --epochs "epochs": a jitted function that
donates the state (as train.py's epoch does) and computes for about --work_s seconds, then
`Checkpoints.save`. Two loops, each in a fresh work directory under a temporary directory:
  (a) waited: save, then `wait()` at once (what train.py did before: the write blocks the
      loop);
  (b) overlapped: save and go on; the write runs during the next epoch, and the next save
      waits for it if it is still running (what train.py does now; that wait is then part of
      its `save()` time).
Per loop: the median `save()` call (the blocking part: SHA-256 digest of the state, the copy
to host, orbax's launch), the median `wait()` (a only) and the loop's wall time. The saving
the overlap buys is waited_wall - overlapped_wall (at most one write per epoch). The last line
printed is one JSON object. Each loop's last checkpoint is restored and checked against its
digest, so a write that read a donated buffer shows up as an error.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags

from fkd_jax import cli
from fkd_jax.errors import exit_on_user_error
from fkd_jax.training.checkpoints import Checkpoints, abstract_like

FLAGS = flags.FlagValues()
flags.DEFINE_float("mb", 100.0, "Size of the training state, MB.", lower_bound=0.001,
                   flag_values=FLAGS)
flags.DEFINE_integer("leaves", 30, "Arrays in the state.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("epochs", 6, "Epochs (saves) per loop.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("work_s", 2.0, "Seconds of computation per epoch.", lower_bound=0.0,
                   flag_values=FLAGS)


def make_state(mb: float, leaves: int) -> dict:
    n = int(mb * 2**20 / 4 / leaves)
    keys = jax.random.split(jax.random.key(0), leaves)
    return {"params": {f"w{i}": jax.random.normal(k, (n,)) for i, k in enumerate(keys)},
            "step": jnp.asarray(0, jnp.int32)}


def make_epoch(work_s: float):
    """A donating 'epoch' that takes about `work_s` seconds on this machine."""
    size = 512
    busy = jax.jit(lambda a, k: jax.lax.fori_loop(0, k, lambda _, x: jnp.tanh(x @ a), a),
                   static_argnums=1)
    a = jax.random.normal(jax.random.key(1), (size, size)) / size**0.5
    k = 1
    while True:  # calibrate the loop count
        t0 = time.perf_counter()
        busy(a, k).block_until_ready()
        if time.perf_counter() - t0 > work_s / 4 or k > 2**20:
            k = max(1, int(k * work_s / (time.perf_counter() - t0)))
            break
        k *= 2

    @jax.jit
    def update(state):
        return {"params": jax.tree.map(lambda w: w * 0.999 + 0.001, state["params"]),
                "step": state["step"] + 1}

    donate = jax.jit(lambda s: update(s), donate_argnums=0)

    def epoch(state):
        busy(a, k).block_until_ready()
        out = donate(state)
        jax.block_until_ready(out)
        return out

    return epoch


def run(workdir: Path, state, epoch_fn, epochs: int, overlap: bool) -> dict:
    saves, waits = [], []
    t0 = time.perf_counter()
    with Checkpoints(workdir) as ckpt:
        for e in range(1, epochs + 1):
            state = epoch_fn(state)
            t = time.perf_counter()
            ckpt.save(e, state, {"epoch": e}, val_rmse_px=1.0 / e)
            saves.append(time.perf_counter() - t)
            if not overlap:
                t = time.perf_counter()
                ckpt.wait()
                waits.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    with Checkpoints(workdir, read_only=True) as ckpt:  # digest-checked; raises if garbled
        assert ckpt.restore_latest(abstract_like(state))[1]["epoch"] == epochs
    return {"save_call_s": statistics.median(saves),
            "wait_s": statistics.median(waits) if waits else None, "wall_s": wall}


def main(argv: list[str]) -> None:
    cli.parse_flags(argv, FLAGS)
    args = cli.as_namespace(FLAGS)
    epoch_fn = make_epoch(args.work_s)
    result = {"mb": args.mb, "epochs": args.epochs, "device": jax.devices()[0].platform}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overlap in (("waited", False), ("overlapped", True)):
            state = make_state(args.mb, args.leaves)
            result[name] = run(Path(tmp) / name, state, epoch_fn, args.epochs, overlap)
            print(name, result[name], flush=True)
    result["saved_s"] = result["waited"]["wall_s"] - result["overlapped"]["wall_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
