"""Training throughput (images/s) of the project's real training step, optionally against PyTorch.
  uv run python benchmarks/throughput.py --config configs/nouri.py --batch_size 128
      [--repeats 3 --steps 10] [--conv_impl auto,xla] [--mode epoch|step] [--torch | --compare]
  uv run python benchmarks/throughput.py --config configs/unet_pair.py --batch_size 8 --check

What is timed (random data, no augmentation; the config's loss and optimiser exactly as
`fkd_jax.training.steps` builds them: Adam or AdamW, gradient clipping, learning-rate schedule):
  --mode epoch (default): `training.make_train_epoch`, the jitted on-device `lax.scan` over
      batches that train.py runs; one repeat = one epoch of --steps batches.
  --mode step: `jax.jit(training.make_train_step(...))` called once per batch from Python.
Each repeat's images/s is taken after compiling and --warmup untimed runs; the reported
figure is the median over --repeats. compile_s is the ahead-of-time compile of the function.

--compare and --torch time "setups": fkd-jax (per --conv_impl) and the PyTorch eager twin
(benchmarks/torch_reference.py, per --torch_layouts: NCHW and channels_last, and per
--torch_threads: all cores unless told; on shared cores 1 thread can win), each under each
allocator environment of --envs, every setup a warm subprocess of its own started with that
environment and answering "run" lines (one repeat each):
  default   the environment without the variables below;
  arena     MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184
            MALLOC_TOP_PAD_=268435456 (one heap that is never trimmed nor mmap'ed: freed
            buffers are reused without page faults);
  hugetlb   GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (large allocations on transparent huge
            pages; docs/experiments/2026-11-24-cpu-training-speed.md).
--compare alternates the repeats round-robin over all setups (so every setup sees the same
machine load); --torch runs each setup's repeats in turn. Both print a table, then fkd-jax in
the default environment and in its best one against the best PyTorch setup, the training
FLOPs per image (XLA's cost_analysis of one compiled train step, every op counted, divided by
the batch size) and each headline rate as a fraction of a 4096x4096 float32 matmul timed
through XLA in the same run (in the default environment, once per round). The twin exists for
nouri and heatmap_unet with the mse loss; --check proves it against fkd-jax (loss, every
gradient, the optimiser on the same gradients, 5 training steps) and exits non-zero on a
mismatch.
The last line printed is one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from fkd_jax import cli, files, models
from fkd_jax.errors import UserError, exit_on_user_error
from fkd_jax.geometry import keypoints
from fkd_jax.geometry.keypoints import IMAGE_SIZE, NUM_COORDS
from fkd_jax.models import ops
from fkd_jax.training import steps as training

ROOT = Path(__file__).resolve().parents[1]

TORCH_PYTHON = ROOT / "benchmarks" / ".torch-venv" / "bin" / "python"
TORCH_SCRIPT = ROOT / "benchmarks" / "torch_reference.py"
TORCH_LAYOUTS = {"nchw": [], "channels_last": ["--channels_last"]}
# Allocator environments (glibc malloc), each set on a fresh process: see the docstring.
ENVS = {
    "default": {},
    "arena": {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_TOP_PAD_": "268435456"},
    "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    # Not an allocator: XLA:CPU's Eigen kernels on one thread (small batches pay for the
    # hand-off between threads). Opt-in: `--envs default,hugetlb,xla1thread`.
    "xla1thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
}
DEFAULT_ENVS = ("default", "arena", "hugetlb")
# Every variable some setup sets (allocator tunables and XLA_FLAGS): each setup starts from the
# caller's environment without them, then adds its own.
SETUP_VARS = {k for env in ENVS.values() for k in env}
MATMUL_N = 4096
CHECK_STEPS = 5  # --check's optimiser updates: 3 of warm-up (unet_pair), then the decay


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
    """n random faces: images (n, 96, 96, 1) in [0, 1], keypoints (n, 30) in pixels, ~10%
    of the coordinates masked out."""
    return {"images": jnp.asarray(rng.random((n, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)),
            "keypoints": jnp.asarray(rng.random((n, NUM_COORDS), np.float32) * IMAGE_SIZE),
            "mask": jnp.asarray(rng.random((n, NUM_COORDS)) < 0.9)}


def allocator_env(name: str) -> dict[str, str]:
    """This process's environment with the allocator variables of setup `name` only."""
    env = {k: v for k, v in os.environ.items() if k not in SETUP_VARS}
    return {**env, **ENVS[name]}


class JaxBench:
    """One compiled training function (epoch scan or single step) and its state."""

    def __init__(self, config, conv_impl: str, batch_size: int, steps: int, mode: str,
                 warmup: int):
        config.model.conv_impl = conv_impl
        ops.get_conv(conv_impl)  # unknown names fail here, with the list of valid ones
        self.conv_impl, self.mode, self.images_per_run = conv_impl, mode, batch_size * steps
        tx = training.make_optimizer(config.train, steps)
        loss_fn = training.make_loss(config.train)
        graphdef, self.state = training.init_state(config.model, tx, config.seed)
        self.params = sum(x.size for x in jax.tree.leaves(self.state["params"]))
        rng = np.random.default_rng(config.seed)
        self.key = jax.random.key(config.seed)
        step = training.make_train_step(graphdef, tx, None, loss_fn=loss_fn)
        batch = random_batch(rng, batch_size)
        t = time.perf_counter()
        if mode == "epoch":
            self.data = random_batch(rng, batch_size * steps)
            fn = training.make_train_epoch(graphdef, tx, batch_size, None, config.seed,
                                           loss_fn=loss_fn)
            self.fn = fn.lower(self.state, self.data, self.key).compile()
        else:
            self.batch = batch
            self.fn = jax.jit(step, donate_argnums=(0,)).lower(self.state, batch,
                                                               self.key).compile()
        self.steps = steps
        self.compile_s = time.perf_counter() - t
        # XLA's count for one step (a scan's cost analysis does not multiply by its length).
        one_step = (self.fn if mode == "step"
                    else jax.jit(step).lower(self.state, batch, self.key).compile())
        self.flops_per_image = compiled_flops(one_step) / batch_size
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
                "compile_s": self.compile_s, "flops_per_image": self.flops_per_image}


def compiled_flops(compiled) -> float:
    """Floating-point operations of one call of a compiled function (XLA's cost analysis)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


class Matmul:
    """A float32 MATMUL_N x MATMUL_N matmul through XLA: the machine's large-matmul rate."""

    def __init__(self, n: int = MATMUL_N):
        self.n = n
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.a, self.b = a, a.T + 1.0
        self.fn = jax.jit(jnp.matmul).lower(self.a, self.b).compile()
        self.fn(self.a, self.b).block_until_ready()

    def gflop_s(self, calls: int = 2) -> float:
        """Best of `calls` timed calls, GFLOP/s (2 n^3 per call)."""
        best = float("inf")
        for _ in range(calls):
            t = time.perf_counter()
            self.fn(self.a, self.b).block_until_ready()
            best = min(best, time.perf_counter() - t)
        return 2 * self.n ** 3 / best / 1e9


# --------------------------------------------------------------------------- the PyTorch twin

def twin_settings(config, steps_per_epoch: int | None) -> dict:
    """The torch_reference.py settings that reproduce `config`'s net and (unless
    `steps_per_epoch` is None: inference only) its training step; a UserError for what the
    twin does not have."""
    name = config.model.name
    sizes = models.model_sizes(config.model)
    if name not in ("nouri", "heatmap_unet"):
        raise UserError(f"--config: model {name!r} has no PyTorch twin (nouri, heatmap_unet)")
    if name == "nouri" and sizes != models.MODELS["nouri"].sizes:
        raise UserError(f"--config: the nouri twin has the default sizes only, not {sizes}")
    num_keypoints = keypoints.KEYPOINT_SETS[config.data.get("keypoints", "kaggle15")].num_keypoints
    out = {"model": name, "widths": list(sizes["widths"]), "blocks": sizes.get("blocks", 1),
           "heatmap_size": sizes.get("heatmap_size", 24), "num_keypoints": num_keypoints}
    if steps_per_epoch is None:
        return out
    if config.model.get("dropout", 0.0):
        raise UserError("--config: the PyTorch twin has no dropout; set model.dropout=0")
    loss = config.train.get("loss", "mse")
    if loss != "mse":
        raise UserError(f"--config: train.loss={loss!r}; the PyTorch twin has the mse loss only")
    t = config.train
    if t.schedule not in ("constant", "cosine"):
        raise UserError(f"--config: train.schedule={t.schedule!r}; the PyTorch twin has "
                        "constant and cosine")
    total = max(1, t.epochs * steps_per_epoch)  # the step counts of `training.make_schedule`
    return {**out, "num_keypoints": keypoints.NUM_KEYPOINTS,  # as JaxBench's random batches
            "lr": float(t.learning_rate), "schedule": t.schedule, "total_steps": total,
            "warmup_steps": min(total - 1, int(t.warmup_epochs * steps_per_epoch)),
            "weight_decay": float(t.weight_decay), "grad_clip": float(t.grad_clip)}


def twin_cli(settings: dict) -> list[str]:
    """torch_reference.py options for `twin_settings`."""
    out = []
    for key, value in settings.items():
        out += [f"--{key}",
                ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return out


def flat_params(tree) -> dict[str, np.ndarray]:
    """A params dict as {"backbone.stem.kernel": array, ...}."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in leaves}


def write_check_file(config, batch_size: int, path: Path) -> None:
    """fkd-jax's side of --check (torch_reference.run_check says what is compared): the initial
    parameters, one random batch, the loss and every gradient of the training objective on it;
    the parameters after CHECK_STEPS optimiser updates fed that gradient times growing scales
    (the first below the clipping norm, the others above it), one update per "epoch" so the
    schedule's warm-up and decay both run; the losses of CHECK_STEPS training steps; the
    learning rate at ~20 steps spread over that schedule."""
    settings = twin_settings(config, 1)
    tx = training.make_optimizer(config.train, 1)
    loss_fn = training.make_loss(config.train)
    graphdef, state = training.init_state(config.model, tx, config.seed)
    params = state["params"]
    batch = random_batch(np.random.default_rng(config.seed), batch_size)

    def objective(params):
        pred = models.apply_model(graphdef, params, batch["images"], train=True)
        return loss_fn(pred, batch["keypoints"], batch["mask"], IMAGE_SIZE)[0]

    loss, grads = jax.jit(jax.value_and_grad(objective))(params)
    unit = settings["grad_clip"] * 0.6 / float(optax.global_norm(grads)) or 1.0
    scales = [unit * (i + 1) for i in range(CHECK_STEPS)]
    fed, opt_state = params, tx.init(params)
    for scale in scales:
        updates, opt_state = tx.update(jax.tree.map(lambda g, s=scale: g * s, grads), opt_state,
                                       fed)
        fed = optax.apply_updates(fed, updates)
    step = jax.jit(training.make_train_step(graphdef, tx, None, loss_fn=loss_fn))
    train_losses = []
    for i in range(CHECK_STEPS):
        state, m = step(state, batch, jax.random.key(i))
        train_losses.append(float(m["loss"]))
    arrays = {"images": batch["images"], "keypoints": batch["keypoints"], "mask": batch["mask"],
              "loss": loss}
    for prefix, tree in (("param", params), ("grad", grads), ("fed_after", fed)):
        arrays.update({f"{prefix}/{k}": v for k, v in flat_params(tree).items()})
    schedule = training.make_schedule(config.train, 1)
    steps = sorted({*range(0, settings["total_steps"] + 2, max(1, settings["total_steps"] // 20)),
                    settings["warmup_steps"], settings["total_steps"]})
    meta = json.dumps({**settings, "fed_scales": scales, "train_losses": train_losses,
                       "schedule_lrs": [[t, float(schedule(t))] for t in steps]})
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(meta), **{k: np.asarray(v) for k, v in arrays.items()})


def run_check(args: SimpleNamespace, config) -> int:
    """--check: write the JAX numbers to a file, let the twin compare; its exit status."""
    if config.model.name != "heatmap_unet":
        raise UserError(f"--check: the parameter mapping is written for heatmap_unet, not "
                        f"{config.model.name!r}")
    python = torch_python(args.torch_python)
    with tempfile.TemporaryDirectory(prefix="fkd-twin-check-") as tmp:
        path = Path(args.check_file or Path(tmp) / "check.npz")
        write_check_file(config, args.batch_size, path)
        print(f"wrote {path}; torch compares:", flush=True)
        return subprocess.run([str(python), str(TORCH_SCRIPT), "--check", str(path)],
                              check=False).returncode


def torch_python(python: str | Path) -> Path:
    python = Path(python)
    if not python.is_file():
        raise UserError(f"--torch_python {python}: not found; create it with "
                        "bash benchmarks/setup_torch.sh")
    return python


# --------------------------------------------------------------------------- warm subprocesses

class Server:
    """A warm benchmark process (started with its own environment) answering request lines
    with one JSON line each; its first line is a JSON "ready" object (its `info`)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name, self.rates = name, []
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.info = {k: v for k, v in self.request(None).items() if k != "ready"}

    def request(self, line: str | None) -> dict:
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise UserError(f"benchmark process {self.name!r} exited with status "
                            f"{self.proc.wait()}")
        return json.loads(answer)

    def run(self) -> float:
        """One training repeat; images/s."""
        rate = self.request("run")["images_per_s"]
        self.rates.append(rate)
        return rate

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()

    def summary(self) -> dict:
        return {**self.info, "images_per_s": statistics.median(self.rates),
                "repeats": self.rates}


def start_servers(specs: list[tuple[str, list[str], str]]) -> list[Server]:
    """Start (name, command, env name) one after the other, each warm before the next starts
    (so no start-up overlaps another's warm-up); on failure, stop those already started."""
    servers: list[Server] = []
    try:
        for name, cmd, env in specs:
            t = time.perf_counter()
            servers.append(Server(name, cmd, allocator_env(env)))
            print(f"{name}: ready in {time.perf_counter() - t:.1f}s", flush=True)
    except BaseException:
        close_all(servers)
        raise
    return servers


def close_all(servers: list[Server]) -> None:
    for s in servers:
        s.close()


def serve_jax(args: SimpleNamespace, config) -> None:
    """--serve: one fkd-jax setup for the parent's --compare; also answers "matmul"."""
    bench = JaxBench(config, args.conv_impls[0], args.batch_size, args.steps, args.mode,
                     args.warmup)
    matmul = Matmul() if args.matmul else None
    print(json.dumps({"ready": True, "framework": "jax", "conv_impl": bench.conv_impl,
                      "params": bench.params, "compile_s": bench.compile_s,
                      "flops_per_image": bench.flops_per_image,
                      "malloc_env": {k: os.environ[k] for k in SETUP_VARS if k in os.environ}}),
          flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            print(json.dumps({"images_per_s": bench.run()}), flush=True)
        elif line.strip() == "matmul" and matmul is not None:
            print(json.dumps({"gflop_s": matmul.gflop_s()}), flush=True)
        else:
            break


def setup_specs(args: SimpleNamespace, config) -> list[tuple[str, list[str], str]]:
    """(name, command, env) of every setup: fkd-jax per conv_impl, the twin per layout, each in
    each environment; the first fkd-jax setup in the first environment also times the matmul."""
    common = ["--batch_size", str(args.batch_size), "--steps", str(args.steps)]
    twin = twin_cli(twin_settings(config, args.steps))
    specs = []
    for env in args.envs:
        for impl in args.conv_impls:
            matmul = ["--matmul"] if not specs else []
            specs.append((f"jax {impl} [{env}]",
                          [sys.executable, str(Path(__file__).resolve()), "--serve",
                           "--config", args.config, "--mode", args.mode, "--conv_impl", impl,
                           "--warmup", str(args.warmup), *common, *matmul], env))
        specs += torch_specs(args, env, ["--warmup", "2", *common, *twin])
    return specs


def torch_specs(args: SimpleNamespace, env: str, options: list[str]
                ) -> list[tuple[str, list[str], str]]:
    """The twin's setups in environment `env`, one per --torch_layouts x --torch_threads."""
    python = torch_python(args.torch_python)
    specs = []
    for layout in args.layouts:
        for threads in args.torch_threads:
            name = f"torch {layout}" + (f" {threads}t" if threads else "")
            specs.append((f"{name} [{env}]",
                          [str(python), str(TORCH_SCRIPT), "--serve", "--threads", str(threads),
                           *options, *TORCH_LAYOUTS[layout]], env))
    return specs


def time_setups(args: SimpleNamespace, servers: list[Server]) -> list[float]:
    """Run the repeats (round-robin with --compare, setup by setup with --torch); returns the
    matmul GFLOP/s measured once per round."""
    matmul = []
    order = ([(r, s) for r in range(args.repeats) for s in servers] if args.compare
             else [(r, s) for s in servers for r in range(args.repeats)])
    for r, s in order:
        time.sleep(0.2)  # let the other processes' spinning threads go idle
        print(f"repeat {r + 1}: {s.name:32s} {s.run():8.1f} images/s", flush=True)
        if s is servers[0]:
            time.sleep(0.2)
            matmul.append(servers[0].request("matmul")["gflop_s"])
            print(f"repeat {r + 1}: {'matmul 4096^2 f32 (XLA)':32s} {matmul[-1]:8.1f} GFLOP/s",
                  flush=True)
    return matmul


def compare_report(args: SimpleNamespace, servers: list[Server], matmul: list[float]
                   ) -> dict:
    """The table, the headline ratios and FLOP fractions; the JSON fields."""
    setups = {s.name: s.summary() for s in servers}
    first = args.conv_impls[0]
    jax_names = [s.name for s in servers if s.name.startswith(f"jax {first} [")]
    torch_names = [s.name for s in servers if s.name.startswith("torch ")]
    rate = lambda n: setups[n]["images_per_s"]  # noqa: E731
    jax_default = f"jax {first} [{args.envs[0]}]"
    jax_best = max(jax_names, key=rate)
    torch_best = max(torch_names, key=rate)
    flops = setups[jax_default]["flops_per_image"]
    gflop_s = statistics.median(matmul)

    print(f"\n{'setup':32s} {'images/s':>9s} {'GFLOP/s':>8s} {'of matmul':>9s}  repeats")
    for name, s in setups.items():
        achieved = s["images_per_s"] * flops / 1e9
        print(f"{name:32s} {s['images_per_s']:9.1f} {achieved:8.1f} {achieved / gflop_s:9.1%}  "
              + " ".join(f"{r:.0f}" for r in s["repeats"]))
    print(f"training FLOPs per image {flops / 1e6:.1f} M (XLA cost_analysis of one train step "
          f"/ batch); matmul {MATMUL_N}^2 float32 via XLA {gflop_s:.1f} GFLOP/s (median)")
    ratios, per_repeat = {}, {}
    for label, name in (("jax_default_env", jax_default), ("jax_best_env", jax_best)):
        ratios[f"{label}/torch_best"] = rate(name) / rate(torch_best)
        per_repeat[f"{label}/torch_best"] = [
            round(j / t, 3) for j, t in zip(setups[name]["repeats"], setups[torch_best]["repeats"])]
        if label == "jax_best_env" and name == jax_default:
            continue  # the same line again
        print(f"ratio {name} / {torch_best}: {ratios[f'{label}/torch_best']:.2f} "
              f"(per repeat {' '.join(f'{x:.2f}' for x in per_repeat[f'{label}/torch_best'])})")
    return {"setups": setups, "jax_default": jax_default, "jax_best": jax_best,
            "torch_best": torch_best, "images_per_s": rate(jax_default), "ratio": ratios,
            "ratio_per_repeat": per_repeat if args.compare else None,
            "flops_per_image": flops, "flops_source": "XLA cost_analysis of one train step",
            "matmul_gflop_s": gflop_s, "matmul_gflop_s_per_round": matmul,
            "fraction_of_matmul": {n: rate(n) * flops / 1e9 / gflop_s
                                   for n in (jax_default, jax_best, torch_best)}}


# --------------------------------------------------------------------------- command line

def split_choices(value: str, option: str, choices) -> list[str]:
    """A comma-separated option's values, each checked against `choices`."""
    out = [s for s in value.split(",") if s]
    if not out:
        raise UserError(f"{option}: give at least one of {', '.join(choices)}")
    for v in out:
        if v not in choices:
            raise UserError(f"{option} {v!r}: choose from {', '.join(choices)}")
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("config", str(ROOT / "configs" / "nouri.py"), "Config file (get_config()).",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Batches per repeat.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, "Timed repeats.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("warmup", 1, "Untimed runs after compiling.", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_string("conv_impl", "auto", f"Comma-separated, from {', '.join(ops.CONV_IMPLS)}.",
                    flag_values=FLAGS)
flags.DEFINE_enum("mode", "epoch", ["epoch", "step"], "What one repeat calls.", flag_values=FLAGS)
flags.DEFINE_bool("torch", False, "Time every setup, one after the other.", flag_values=FLAGS)
flags.DEFINE_bool("compare", False, "Alternate the repeats of every setup and print the ratios.",
                  flag_values=FLAGS)
flags.DEFINE_bool("check", False, "Prove the PyTorch twin against fkd-jax (loss, gradients, "
                  "updates).", flag_values=FLAGS)
flags.DEFINE_bool("serve", False, "Internal: one setup of --compare, answering stdin lines.",
                  flag_values=FLAGS)
flags.DEFINE_string("check_file", None, "--check: keep the JAX side's .npz here (default: a "
                    "temp file).", flag_values=FLAGS)
flags.DEFINE_bool("matmul", False, "Internal: --serve also times the reference matmul.",
                  flag_values=FLAGS)


def define_setup_flags(flag_values: flags.FlagValues) -> None:
    """The flags choosing the setups: allocator environments, torch layouts and python."""
    flags.DEFINE_string("envs", ",".join(DEFAULT_ENVS),
                        f"Allocator setups, comma-separated, from {', '.join(ENVS)}; the first "
                        "is fkd-jax's 'default env' in the ratios.", flag_values=flag_values)
    flags.DEFINE_string("torch_layouts", "nchw,channels_last",
                        f"Comma-separated, from {', '.join(TORCH_LAYOUTS)}.",
                        flag_values=flag_values)
    flags.DEFINE_string("torch_threads", "0", "Torch threads per setup, comma-separated; 0 = all "
                        "cores.", flag_values=flag_values)
    flags.DEFINE_string("torch_python", str(TORCH_PYTHON), "The PyTorch venv's python.",
                        flag_values=flag_values)


define_setup_flags(FLAGS)


def parse_args(argv: list[str]) -> SimpleNamespace:
    """`argv`'s options as one namespace, --conv_impl, --envs, --torch_layouts and
    --torch_threads split into lists (conv_impls, envs, layouts, torch_threads)."""
    cli.parse_flags(argv, FLAGS)
    args = cli.as_namespace(FLAGS)
    if sum((args.torch, args.compare, args.check, args.serve)) > 1:
        raise UserError("--torch, --compare, --check and --serve exclude each other")
    check_setup_args(args)
    args.conv_impls = split_choices(args.conv_impl, "--conv_impl", ops.CONV_IMPLS)
    return args


def check_setup_args(args: SimpleNamespace) -> None:
    """Parses --envs, --torch_layouts and --torch_threads into args.envs, args.layouts and
    args.torch_threads (lists), or a UserError naming the option."""
    args.envs = split_choices(args.envs, "--envs", ENVS)
    args.layouts = split_choices(args.torch_layouts, "--torch_layouts", TORCH_LAYOUTS)
    raw = args.torch_threads
    try:
        args.torch_threads = [int(t) for t in raw.split(",") if t]
    except ValueError:
        args.torch_threads = []
    if not args.torch_threads or min(args.torch_threads) < 0:
        raise UserError(f"--torch_threads {raw}: give thread counts >= 0 (0 = all cores), e.g. 1,2")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    config = load_config(args.config)
    models.model_sizes(config.model)  # a bad model option fails here, named
    if args.check:
        sys.exit(run_check(args, config))
    if args.serve:
        serve_jax(args, config)
        return
    out = {"config": args.config, "model": config.model.name, "batch_size": args.batch_size,
           "steps": args.steps, "repeats": args.repeats, "mode": args.mode,
           "jax_version": jax.__version__, "backend": jax.default_backend(),
           "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    if args.compare or args.torch:
        servers = start_servers(setup_specs(args, config))
        try:
            matmul = time_setups(args, servers)
        finally:
            close_all(servers)
        out["envs"] = {name: ENVS[name] for name in args.envs}
        out.update(compare_report(args, servers, matmul))
    else:  # fkd-jax alone, in this process (its environment as inherited)
        out["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
        benches = []
        for impl in args.conv_impls:
            b = JaxBench(load_config(args.config), impl, args.batch_size, args.steps,
                         args.mode, args.warmup)
            print(f"jax {impl}: compiled in {b.compile_s:.1f}s", flush=True)
            for r in range(args.repeats):
                print(f"repeat {r + 1}: jax {impl:14s} {b.run():7.1f} images/s", flush=True)
            benches.append(b)
        out["jax"] = {b.conv_impl: b.summary() for b in benches}
        out["params"] = benches[0].params
        out["images_per_s"] = out["jax"][args.conv_impls[0]]["images_per_s"]
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    exit_on_user_error(main)(sys.argv)
