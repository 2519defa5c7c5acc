"""Training throughput (images/s) of the project's real training step, optionally against PyTorch.

  uv run python benchmarks/throughput.py --config configs/nouri.py --batch-size 128 \
      [--repeats 3 --steps 10] [--conv-impl auto,xla] [--mode epoch|step] [--torch | --compare]

What is timed (random data, masked MSE + Adam exactly as `fkd_jax.training` builds them):
  --mode epoch (default): `training.make_train_epoch`, the jitted on-device `lax.scan` over
      batches that train.py runs; one repeat = one epoch of --steps batches.
  --mode step: `jax.jit(training.make_train_step(...))` called once per batch from Python.
Each repeat's images/s is taken after compiling and --warmup untimed runs; the reported
figure is the median over --repeats. compile_s is the ahead-of-time compile of the function.

--torch runs benchmarks/torch_reference.py (PyTorch eager, same net and step; see
benchmarks/setup_torch.sh) after the JAX runs. --compare instead keeps a torch process warm
and alternates the repeats (JAX, torch, JAX, torch, ...) so that both see the same machine
load, then prints the ratio. Torch is timed in its default NCHW layout and in channels_last.
The last line printed is one JSON object; its "images_per_s" is the first --conv-impl's.

Environment: GLIBC_TUNABLES=glibc.malloc.hugetlb=1 makes glibc back large allocations with
huge pages; --mode step (a fresh temp buffer per call) runs ~40% faster with it on this
machine, see benchmarks/NOTES.md. The torch process inherits the same environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is imported as a package by the config files

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fkd_jax import models, ops, training  # noqa: E402
from fkd_jax.errors import UserError, exit_on_user_error  # noqa: E402
from fkd_jax.keypoints import IMAGE_SIZE, NUM_COORDS  # noqa: E402

TORCH_PYTHON = ROOT / "benchmarks" / ".torch-venv" / "bin" / "python"
TORCH_SCRIPT = ROOT / "benchmarks" / "torch_reference.py"
TORCH_LAYOUTS = {"nchw": [], "channels_last": ["--channels-last"]}


def load_config(path: str):
    """`get_config()` of a config file, as train.py's --config reads it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"_bench_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config {path}: the file defines no get_config()")
    return module.get_config()


def random_batch(rng: np.random.Generator, n: int) -> dict:
    return {"images": jnp.asarray(rng.random((n, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)),
            "keypoints": jnp.asarray(rng.random((n, NUM_COORDS), np.float32) * IMAGE_SIZE),
            "mask": jnp.asarray(rng.random((n, NUM_COORDS)) < 0.9)}


class JaxBench:
    """One compiled training function (epoch scan or single step) and its state."""

    def __init__(self, config, conv_impl: str, batch_size: int, steps: int, mode: str,
                 warmup: int):
        config.model.conv_impl = conv_impl
        ops.get_conv(conv_impl)  # unknown names fail here, with the list of valid ones
        self.conv_impl, self.mode, self.images_per_run = conv_impl, mode, batch_size * steps
        tx = training.make_optimizer(config.train, steps)
        graphdef, self.state = training.init_state(config.model, tx, config.seed)
        self.params = sum(x.size for x in jax.tree.leaves(self.state["params"]))
        rng = np.random.default_rng(config.seed)
        self.key = jax.random.key(config.seed)
        t = time.perf_counter()
        if mode == "epoch":
            self.data = random_batch(rng, batch_size * steps)
            fn = training.make_train_epoch(graphdef, tx, batch_size, None, config.seed)
            self.fn = fn.lower(self.state, self.data, self.key).compile()
        else:
            self.batch = random_batch(rng, batch_size)
            fn = jax.jit(training.make_train_step(graphdef, tx, None), donate_argnums=(0,))
            self.fn = fn.lower(self.state, self.batch, self.key).compile()
        self.steps = steps
        self.compile_s = time.perf_counter() - t
        self.rates: list[float] = []
        for _ in range(warmup):
            self.run()
        self.rates.clear()

    def run(self) -> float:
        """One repeat; returns images/s."""
        t = time.perf_counter()
        if self.mode == "epoch":
            self.state, m = self.fn(self.state, self.data, self.key)
        else:
            for _ in range(self.steps):
                self.state, m = self.fn(self.state, self.batch, self.key)
        jax.block_until_ready((self.state, m))
        rate = self.images_per_run / (time.perf_counter() - t)
        self.rates.append(rate)
        return rate

    def summary(self) -> dict:
        return {"images_per_s": statistics.median(self.rates), "repeats": self.rates,
                "compile_s": self.compile_s}


class TorchServer:
    """benchmarks/torch_reference.py --serve: a warm torch process answering 'run' lines."""

    def __init__(self, python: Path, layout: str, batch_size: int, steps: int, warmup: int):
        if not python.is_file():
            raise UserError(f"--torch-python {python}: not found; create it with "
                            "bash benchmarks/setup_torch.sh")
        self.layout, self.rates = layout, []
        self.proc = subprocess.Popen(
            [str(python), str(TORCH_SCRIPT), "--serve", "--batch-size", str(batch_size),
             "--steps", str(steps), "--warmup", str(warmup), *TORCH_LAYOUTS[layout]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise UserError(f"torch reference ({self.layout}) exited with status "
                            f"{self.proc.wait()}")
        return json.loads(line)

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        rate = self._read()["images_per_s"]
        self.rates.append(rate)
        return rate

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()

    def summary(self) -> dict:
        return {**{k: v for k, v in self.info.items() if k != "ready"},
                "images_per_s": statistics.median(self.rates), "repeats": self.rates}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "nouri.py"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="batches per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after compiling")
    p.add_argument("--conv-impl", default="auto",
                   help=f"comma-separated, from {', '.join(ops.CONV_IMPLS)}")
    p.add_argument("--mode", choices=("epoch", "step"), default="epoch")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--torch", action="store_true", help="also time PyTorch, after JAX")
    group.add_argument("--compare", action="store_true",
                       help="alternate JAX and PyTorch repeats and print the ratio")
    p.add_argument("--torch-layouts", default="nchw,channels_last",
                   help=f"comma-separated, from {', '.join(TORCH_LAYOUTS)}")
    p.add_argument("--torch-python", type=Path, default=TORCH_PYTHON)
    args = p.parse_args(argv)
    for name, value in (("--batch-size", args.batch_size), ("--steps", args.steps),
                        ("--repeats", args.repeats)):
        if value < 1:
            raise UserError(f"{name}={value}: must be at least 1")
    args.conv_impls = [s for s in args.conv_impl.split(",") if s]
    for impl in args.conv_impls:
        if impl not in ops.CONV_IMPLS:
            raise UserError(f"--conv-impl {impl!r}: choose from {', '.join(ops.CONV_IMPLS)}")
    args.layouts = [s for s in args.torch_layouts.split(",") if s]
    for layout in args.layouts:
        if layout not in TORCH_LAYOUTS:
            raise UserError(f"--torch-layouts {layout!r}: choose from {', '.join(TORCH_LAYOUTS)}")
    return args


@exit_on_user_error
def main(argv=None) -> None:
    args = parse_args(argv)
    config = load_config(args.config)
    if config.model.name not in models.MODELS:
        raise UserError(f"--config {args.config}: model.name={config.model.name!r} is unknown")
    out = {"config": args.config, "model": config.model.name, "batch_size": args.batch_size,
           "steps": args.steps, "repeats": args.repeats, "mode": args.mode,
           "jax_version": jax.__version__, "backend": jax.default_backend(),
           "cpus": os.cpu_count(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
           "loadavg_start": os.getloadavg()}
    torch_servers = []
    if args.compare or args.torch:
        # Started first so that their warm-up overlaps nothing we time.
        torch_servers = [TorchServer(args.torch_python, layout, args.batch_size, args.steps,
                                     warmup=2) for layout in args.layouts]
    benches = []
    for impl in args.conv_impls:
        b = JaxBench(load_config(args.config), impl, args.batch_size, args.steps, args.mode,
                     args.warmup)
        print(f"jax {impl}: compiled in {b.compile_s:.1f}s", flush=True)
        benches.append(b)
    try:
        if args.compare:
            for r in range(args.repeats):
                for runner in benches + torch_servers:
                    time.sleep(0.2)  # let the other process's spinning threads go idle
                    rate = runner.run()
                    name = (f"jax {runner.conv_impl}" if isinstance(runner, JaxBench)
                            else f"torch {runner.layout}")
                    print(f"repeat {r + 1}: {name:20s} {rate:7.1f} images/s", flush=True)
        else:
            for b in benches:
                for r in range(args.repeats):
                    print(f"repeat {r + 1}: jax {b.conv_impl:14s} {b.run():7.1f} images/s",
                          flush=True)
            for s in torch_servers:
                for r in range(args.repeats):
                    print(f"repeat {r + 1}: torch {s.layout:12s} {s.run():7.1f} images/s",
                          flush=True)
    finally:
        for s in torch_servers:
            s.close()
    out["jax"] = {b.conv_impl: b.summary() for b in benches}
    out["params"] = benches[0].params
    out["images_per_s"] = out["jax"][args.conv_impls[0]]["images_per_s"]
    if torch_servers:
        out["torch"] = {s.layout: s.summary() for s in torch_servers}
        out["ratio"] = {f"{impl}/torch_{s.layout}": round(
            out["jax"][impl]["images_per_s"] / out["torch"][s.layout]["images_per_s"], 3)
            for impl in args.conv_impls for s in torch_servers}
        if args.compare:  # per-repeat ratios: each pair ran back to back
            out["ratio_per_repeat"] = {f"{b.conv_impl}/torch_{s.layout}": [
                round(j / t, 3) for j, t in zip(b.rates, s.rates)]
                for b in benches for s in torch_servers}
    out["loadavg_end"] = os.getloadavg()
    for k, v in out.get("ratio", {}).items():
        print(f"ratio {k}: {v:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
