"""PyTorch eager twins of fkd-jax's nets and training step, for `benchmarks/throughput.py`.
  benchmarks/.torch-venv/bin/python benchmarks/torch_reference.py [--model heatmap_unet]
      [--batch_size 128 --steps 10 --repeats 3] [--serve | --check FILE]

Benchmark-only: torch is not a dependency of fkd-jax. Run it with the interpreter that
`benchmarks/setup_torch.sh` creates (benchmarks/.torch-venv/bin/python). It never imports jax:
parameters and reference numbers come from the JAX side through an .npz file (--check).

Models (--model):
  nouri (default): `fkd_jax.models.nouri`: conv 32@3x3, 64@2x2, 128@2x2 (VALID, bias, ReLU,
      2x2 max-pool each), dense 15488->500->500->30.
  heatmap_unet: `fkd_jax.models.HeatmapUNet` (configs/unet_pair.py's net): residual encoder
      (stem conv3x3/2 + bias; per stage a conv3x3-GN-ReLU-conv3x3-GN block with a 1x1
      projection skip where the shape changes), top-down decoder (1x1 lateral, nearest 2x
      upsample, add skip, conv3x3-GN-ReLU), 1x1 conv to K heatmaps, soft-argmax.
      Flax "SAME" padding is reproduced exactly: a stride-2 3x3 conv pads 0 before and 1
      after (torch's padding=1 would pad 1 and 1 and sample other pixels); GroupNorm has
      epsilon 1e-6 and min(8, C // 4) groups, as `models.Layers.group_norm`.
Step (as `fkd_jax.training.steps`): masked MSE on normalised targets (x / 48 - 1), gradients,
optional global-norm clipping (--grad_clip), Adam, or AdamW when --weight_decay > 0 (decoupled,
applied to every parameter, as optax.adamw), learning rate per step from --schedule
(optax's linear warm-up then constant, or warm-up + cosine decay to 1% of --lr).

Modes:
  python torch_reference.py --batch_size 128 --steps 10 --repeats 3   # one JSON line
  python torch_reference.py --serve ...   # reads lines on stdin, one JSON line back for each:
      "run"          one training repeat of --steps batches -> {"images_per_s"}
      "infer B N"    N eval-mode forward calls on B images under torch.inference_mode, numpy
                     in and out -> {"images_per_s", "latency_s" (median call)}
  python torch_reference.py --check FILE  # FILE from `throughput.py --check`: load the JAX
      parameters and batch, compare the loss, every gradient, the optimiser (clipping,
      AdamW, schedule) on the same gradients and a few training steps' losses; prints the
      largest differences, exits 1 on a mismatch (`run_check`)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from absl import flags
from torch import nn

IMAGE_SIZE = 96
MODELS = ("nouri", "heatmap_unet")
SCHEDULES = ("constant", "cosine")
# --check tolerances (see `run_check`): loss relative; gradients relative to each tensor's
# largest |value| (floored at GRAD_FLOOR x the net's largest); the optimiser's parameters
# and the schedule relative to the peak learning rate; a few training steps' losses relative.
LOSS_RTOL, GRAD_RTOL, GRAD_FLOOR, STEP_LR_TOL, TRAIN_LOSS_RTOL = 1e-5, 1e-4, 0.1, 1e-3, 1e-3
SCHEDULE_RTOL = 1e-5


# --------------------------------------------------------------------------- nets

def nouri_net(num_keypoints: int = 15, hidden: int = 500) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 11 * 11, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 2 * num_keypoints),
    )


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of XLA/flax "SAME": output ceil(size / stride), the extra
    pixel (odd total) after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Square conv with flax's "SAME" padding (asymmetric where flax's is)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True):
        super().__init__(in_ch, out_ch, kernel, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_pads(x.shape[2], k, s)
        left, right = same_pads(x.shape[3], k, s)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, s, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, s)


def group_norm(channels: int) -> nn.GroupNorm:
    """As `models.Layers.group_norm`: up to 8 groups of at least 4 channels, flax's epsilon."""
    return nn.GroupNorm(max(1, min(8, channels // 4)), channels, eps=1e-6)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = SameConv(in_ch, out_ch, 3, stride, bias=False)
        self.conv2 = SameConv(out_ch, out_ch, 3, bias=False)
        self.norm1, self.norm2 = group_norm(out_ch), group_norm(out_ch)
        self.proj = (SameConv(in_ch, out_ch, 1, stride, bias=False)
                     if stride != 1 or in_ch != out_ch else None)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class Backbone(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: int):
        super().__init__()
        self.stem = SameConv(1, widths[0], 3, 2)
        self.blocks = nn.ModuleList()
        in_ch = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                self.blocks.append(ResidualBlock(in_ch, w, 2 if (i > 0 and b == 0) else 1))
                in_ch = w
        self.blocks_per_stage = blocks

    def stages(self, x) -> list[torch.Tensor]:
        x = F.relu(self.stem(x))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if (i + 1) % self.blocks_per_stage == 0:
                outs.append(x)
        return outs


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> (B, 2K) normalised x0, y0, x1, ...: the softmax's expected cell
    centre, cell (i, j) at ((j + 0.5) / W * 2 - 1, (i + 0.5) / H * 2 - 1)."""
    b, k, h, w = logits.shape
    probs = torch.softmax(logits.reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
    xs = (torch.arange(w, dtype=probs.dtype) + 0.5) / w * 2.0 - 1.0
    ys = (torch.arange(h, dtype=probs.dtype) + 0.5) / h * 2.0 - 1.0
    x = (probs.sum(dim=2) * xs).sum(dim=-1)
    y = (probs.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1).reshape(b, 2 * k)


class HeatmapUNet(nn.Module):
    """`fkd_jax.models.HeatmapUNet`, module names as the JAX parameter tree's."""

    def __init__(self, widths: tuple[int, ...], blocks: int, heatmap_size: int,
                 num_keypoints: int, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.backbone = Backbone(widths, blocks)
        sizes = [image_size // 2 ** (i + 1) for i in range(len(widths))]
        if heatmap_size not in sizes:
            raise SystemExit(f"--heatmap_size {heatmap_size}: must be one of {sizes}")
        level = sizes.index(heatmap_size)
        self.laterals, self.smooths, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for coarse in range(len(widths) - 1, level, -1):
            w_in, w_out = widths[coarse], widths[coarse - 1]
            self.laterals.append(SameConv(w_in, w_out, 1, bias=False))
            self.smooths.append(SameConv(w_out, w_out, 3, bias=False))
            self.norms.append(group_norm(w_out))
        self.heatmaps = SameConv(widths[level], num_keypoints, 1)

    def forward(self, x):
        feats = self.backbone.stages(x)
        y, skips = feats[-1], feats[-2::-1]
        for lateral, smooth, norm, skip in zip(self.laterals, self.smooths, self.norms, skips):
            up = F.interpolate(lateral(y), scale_factor=2, mode="nearest")
            y = F.relu(norm(smooth(up + skip)))
        return soft_argmax(self.heatmaps(y))


def build_model(args: types.SimpleNamespace) -> nn.Module:
    if args.model == "nouri":
        return nouri_net(args.num_keypoints)
    return HeatmapUNet(args.widths, args.blocks, args.heatmap_size, args.num_keypoints)


# --------------------------------------------------------------------------- training step

def learning_rate(step: int, args: types.SimpleNamespace) -> float:
    """optax's schedule as `fkd_jax.training.steps.make_schedule` builds it, at update `step` (0-based):
    linear from 0 over --warmup-steps, then constant or cosine decay to lr/100 at --total-steps."""
    lr, warmup = args.lr, args.warmup_steps
    if step < warmup:
        return lr * step / warmup
    if args.schedule == "constant":
        return lr
    span = max(args.total_steps - warmup, 1)
    end = lr * 1e-2
    return end + (lr - end) * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def masked_mse(pred: torch.Tensor, keypoints_px: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`training.masked_loss` ("mse"): mean squared error over the labelled coordinates, in
    normalised units."""
    target = keypoints_px / (IMAGE_SIZE / 2) - 1.0
    diff = torch.where(mask, pred - target, torch.zeros_like(pred))
    return (diff ** 2).sum() / mask.sum().clamp(min=1)


class Bench:
    """Model, optimiser and one fixed random batch; `run(steps)` returns images/s."""

    def __init__(self, args: types.SimpleNamespace, seed: int = 0):
        torch.manual_seed(seed)
        self.args, self.batch_size, self.updates = args, args.batch_size, 0
        self.channels_last = args.channels_last
        self.model = build_model(args)
        opt = torch.optim.AdamW if args.weight_decay > 0 else torch.optim.Adam
        self.opt = opt(self.model.parameters(), lr=learning_rate(0, args),
                       weight_decay=args.weight_decay)
        g = torch.Generator().manual_seed(seed)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.images = self.in_format(
            torch.rand(args.batch_size, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g))
        k2 = 2 * args.num_keypoints
        self.keypoints = torch.rand(args.batch_size, k2, generator=g) * IMAGE_SIZE
        self.mask = torch.rand(args.batch_size, k2, generator=g) < 0.9
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def set_batch(self, images_nhwc: np.ndarray, keypoints_px: np.ndarray, mask: np.ndarray):
        self.images = self.to_input(images_nhwc)
        self.keypoints, self.mask = torch.from_numpy(keypoints_px), torch.from_numpy(mask)

    def to_input(self, images_nhwc: np.ndarray) -> torch.Tensor:
        """(B, S, S, 1) numpy -> (B, 1, S, S) tensor in the bench's memory format."""
        return self.in_format(torch.from_numpy(np.asarray(images_nhwc, np.float32)
                                               ).permute(0, 3, 1, 2))

    def in_format(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of NCHW-shaped `x` with the canonical strides of the bench's memory format.

        `.contiguous(memory_format=...)` is not enough: with one channel every stride order is
        "contiguous", so it keeps whatever strides `x` has, and oneDNN then picks the layout of
        the whole net from them (NHWC numpy input made the "NCHW" twin run channels_last)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.empty(x.shape, dtype=x.dtype, memory_format=fmt).copy_(x)

    def step(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = masked_mse(self.model(self.images), self.keypoints, self.mask)
        loss.backward()
        self.update()
        return loss

    def update(self) -> None:
        """Clip the gradients in `.grad`, set this update's learning rate, optimiser step."""
        if self.args.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        lr = learning_rate(self.updates, self.args)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.updates += 1

    def run(self, steps: int) -> float:
        self.model.train()
        t = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.item()  # eager already synchronous on CPU; keeps the result live
        return self.batch_size * steps / (time.perf_counter() - t)

    def infer(self, batch: int, calls: int) -> dict:
        """Eval-mode prediction as a user runs it: numpy crops in, pixels out, timed per call."""
        self.model.eval()
        images = np.random.default_rng(batch).random((batch, IMAGE_SIZE, IMAGE_SIZE, 1),
                                                    np.float32)
        times = []
        with torch.inference_mode():
            for _ in range(calls):
                t = time.perf_counter()
                pred = self.model(self.to_input(images))
                (pred.numpy() + 1.0) * (IMAGE_SIZE / 2)
                times.append(time.perf_counter() - t)
        return {"images_per_s": batch * calls / sum(times), "latency_s": statistics.median(times)}


# --------------------------------------------------------------------------- --check

def load_jax_params(model: nn.Module, params: dict[str, np.ndarray]) -> None:
    """Copy JAX parameters (dotted names, HWIO kernels) into the twin (OIHW weights)."""
    own = dict(model.named_parameters())
    names = {jax_name(name, p) for name, p in own.items()}
    if names != set(params):
        raise SystemExit(f"parameter names differ: only JAX {sorted(set(params) - names)}, "
                         f"only torch {sorted(names - set(params))}")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(to_torch_layout(params[jax_name(name, p)]))


def jax_name(torch_name: str, p: torch.Tensor) -> str:
    """backbone.stem.weight -> backbone.stem.kernel; a GroupNorm's weight is flax's scale."""
    prefix, leaf = torch_name.rsplit(".", 1)
    if leaf == "weight":
        leaf = "kernel" if p.ndim == 4 else "scale"
    return f"{prefix}.{leaf}"


def to_torch_layout(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a))


def from_torch_layout(t: torch.Tensor) -> np.ndarray:
    a = t.detach().numpy()
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def max_scaled_diff(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                    scale: dict[str, float]) -> tuple[float, float, str]:
    """(largest |difference|, largest |difference| / scale[tensor], that tensor)."""
    abs_max, rel_max, worst = 0.0, 0.0, ""
    for name, r in ref.items():
        d = float(np.abs(ours[name].astype(np.float64) - r).max())
        abs_max = max(abs_max, d)
        if d / scale[name] >= rel_max:
            rel_max, worst = d / scale[name], name
    return abs_max, rel_max, worst


def run_check(path: str, args: types.SimpleNamespace) -> int:
    """Compare the twin with the JAX numbers in `path` (written by `throughput.py --check`);
    0 if every figure is within its tolerance, 1 otherwise.

    1. the loss of the initial parameters on the batch, in NCHW and in channels_last;
    2. every gradient, per tensor relative to its largest |value| floored at GRAD_FLOOR of the
       net's largest (the heatmap bias's gradient is zero in exact arithmetic: the softmax
       ignores a constant added to a map, so only rounding noise is left to compare): JAX's
       float32 gradients against the twin's in float64 (the check), and against the twin's in
       float32, NCHW and channels_last (reported: these also carry PyTorch's rounding);
    3. the optimiser alone: the parameters after updates that are fed the JAX gradient
       times meta["fed_scales"] (the later ones past the clipping norm), relative to the
       learning rate. Fed, not recomputed: Adam moves every parameter by about lr whatever
       the size of its gradient, so over real steps a rounding-level difference in a tiny
       gradient grows to ~lr (torch against itself with parameters perturbed by 1e-6 differs
       by 1.7 lr after 5 steps);
    4. the learning rate at the steps of meta["schedule_lrs"] (warm-up, cosine decay, end);
    5. the losses of a few real training steps (a loose end-to-end check).
    """
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    meta = json.loads(str(data.pop("meta")))
    for key in ("model", "widths", "blocks", "heatmap_size", "num_keypoints", "lr",
                "weight_decay", "grad_clip", "schedule", "warmup_steps", "total_steps"):
        setattr(args, key, tuple(meta[key]) if isinstance(meta[key], list) else meta[key])
    args.batch_size, args.channels_last = int(data["images"].shape[0]), False
    group = lambda prefix: {k[len(prefix):]: v for k, v in data.items()  # noqa: E731
                            if k.startswith(prefix)}
    params, grads, fed_after = group("param/"), group("grad/"), group("fed_after/")

    def fresh(channels_last: bool = False) -> Bench:
        args.channels_last = channels_last
        bench = Bench(args)
        load_jax_params(bench.model, params)
        bench.set_batch(data["images"], data["keypoints"], data["mask"])
        return bench

    def torch_params(bench: Bench, attr: str = "data") -> dict[str, np.ndarray]:
        return {jax_name(n, p): from_torch_layout(getattr(p, attr))
                for n, p in bench.model.named_parameters()}

    loss_jax = float(data["loss"])
    floor = GRAD_FLOOR * max(float(np.abs(g).max()) for g in grads.values())
    grad_scale = {k: max(float(np.abs(g).max()), floor) for k, g in grads.items()}
    by_layout = {}
    for layout, channels_last in (("nchw", False), ("channels_last", True)):
        bench = fresh(channels_last)
        loss = masked_mse(bench.model(bench.images), bench.keypoints, bench.mask)
        loss.backward()
        g_abs, g_rel, g_name = max_scaled_diff(torch_params(bench, "grad"), grads, grad_scale)
        by_layout[layout] = {"loss_torch": loss.item(),
                             "loss_rel_diff": abs(loss.item() - loss_jax) / abs(loss_jax),
                             "grad_max_abs_diff": g_abs, "grad_max_rel_diff": g_rel,
                             "grad_worst": g_name}
    loss_rel = max(r["loss_rel_diff"] for r in by_layout.values())
    # The twin in float64: JAX's float32 gradients against it say whether the two compute the
    # same function, whatever either framework's float32 rounding (oneDNN's float32 backward of
    # the wide heatmap_unet is off by 4e-3 of a small gradient where JAX is within 3e-6).
    model64 = build_model(args)
    load_jax_params(model64, params)
    model64 = model64.double()
    images64 = torch.from_numpy(np.asarray(data["images"], np.float64)).permute(0, 3, 1, 2)
    masked_mse(model64(images64), torch.from_numpy(data["keypoints"]).double(),
               torch.from_numpy(data["mask"])).backward()
    exact = {jax_name(n, p): from_torch_layout(p.grad).astype(np.float64)
             for n, p in model64.named_parameters()}
    g64_abs, g64_rel, g64_name = max_scaled_diff(grads, exact, grad_scale)

    bench = fresh()
    for scale in meta["fed_scales"]:
        for n, p in bench.model.named_parameters():
            p.grad = to_torch_layout(grads[jax_name(n, p)] * np.float32(scale))
        bench.update()
    o_abs, o_rel, o_name = max_scaled_diff(torch_params(bench), fed_after,
                                           dict.fromkeys(fed_after, args.lr))

    s_rel = max(abs(learning_rate(t, args) - lr) / args.lr for t, lr in meta["schedule_lrs"])

    bench = fresh()
    losses = [bench.step().item() for _ in meta["train_losses"]]
    t_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, meta["train_losses"]))

    checks = {"loss": loss_rel <= LOSS_RTOL, "gradients": g64_rel <= GRAD_RTOL,
              "optimizer": o_rel <= STEP_LR_TOL, "schedule": s_rel <= SCHEDULE_RTOL,
              "train_losses": t_rel <= TRAIN_LOSS_RTOL}
    for layout, r in by_layout.items():
        print(f"{layout}: loss jax {loss_jax:.8g} torch {r['loss_torch']:.8g}: rel diff "
              f"{r['loss_rel_diff']:.1e} (tolerance {LOSS_RTOL:g}); gradients ({len(grads)} "
              f"tensors): max |diff| {r['grad_max_abs_diff']:.1e}, max |diff| / max|grad| "
              f"{r['grad_max_rel_diff']:.1e} at {r['grad_worst']} (tolerance {GRAD_RTOL:g})")
    print(f"gradients, JAX float32 against the twin in float64 (the check): max |diff| "
          f"{g64_abs:.1e}, max |diff| / max|grad| {g64_rel:.1e} at {g64_name} (tolerance "
          f"{GRAD_RTOL:g}); the float32 lines above also carry PyTorch's own rounding")
    print(f"optimiser, {len(meta['fed_scales'])} updates fed the JAX gradient: max |diff| "
          f"{o_abs:.1e} = {o_rel:.1e} x lr at {o_name} (tolerance {STEP_LR_TOL:g})")
    print(f"learning rate at {len(meta['schedule_lrs'])} steps of the schedule: max |diff| "
          f"{s_rel:.1e} x lr (tolerance {SCHEDULE_RTOL:g})")
    print(f"training losses of {len(losses)} steps: max rel diff {t_rel:.1e} "
          f"(tolerance {TRAIN_LOSS_RTOL:g})")
    failed = [k for k, ok in checks.items() if not ok]
    print(f"check {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
    print(json.dumps({"check": "fail" if failed else "pass", "failed": failed,
                      "model": args.model, "batch_size": args.batch_size,
                      "param_tensors": len(params), "loss_jax": loss_jax, **by_layout,
                      "grad_vs_float64_max_abs_diff": g64_abs,
                      "grad_vs_float64_max_rel_diff": g64_rel, "grad_vs_float64_worst": g64_name,
                      "optimizer_max_abs_diff": o_abs, "optimizer_max_diff_over_lr": o_rel,
                      "optimizer_worst": o_name, "schedule_max_diff_over_lr": s_rel,
                      "train_losses_jax": meta["train_losses"],
                      "train_losses_torch": losses, "train_losses_max_rel_diff": t_rel}))
    return 1 if failed else 0


# --------------------------------------------------------------------------- command line

FLAGS = flags.FlagValues()
flags.DEFINE_enum("model", "nouri", list(MODELS), "The net.", flag_values=FLAGS)
flags.DEFINE_list("widths", ["16", "32", "64", "128"], "heatmap_unet: channels per stage.",
                  flag_values=FLAGS)
flags.DEFINE_integer("blocks", 1, "heatmap_unet: blocks per stage.", flag_values=FLAGS)
flags.DEFINE_integer("heatmap_size", 24, "heatmap_unet: heatmap side.", flag_values=FLAGS)
flags.DEFINE_integer("num_keypoints", 15, "Keypoints predicted.", flag_values=FLAGS)
flags.DEFINE_float("lr", 1e-3, "(Peak) learning rate.", flag_values=FLAGS)
flags.DEFINE_enum("schedule", "constant", list(SCHEDULES), "Learning-rate schedule.",
                  flag_values=FLAGS)
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.", flag_values=FLAGS)
flags.DEFINE_integer("total_steps", 1, "cosine: steps to decay over.", flag_values=FLAGS)
flags.DEFINE_float("weight_decay", 0.0, "> 0: AdamW.", flag_values=FLAGS)
flags.DEFINE_float("grad_clip", 0.0, "Global norm; 0: off.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Batches per repeat.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, "Timed repeats.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed steps first.", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("threads", 0, "Torch threads; 0 = all cores.", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_bool("channels_last", False, "NHWC memory format.", flag_values=FLAGS)
flags.DEFINE_bool("serve", False, "Answer request lines on stdin.", flag_values=FLAGS)
flags.DEFINE_string("check", None, "Compare with the FILE of `throughput.py --check`.",
                    flag_values=FLAGS)


def parse_args(argv: list[str]):
    """absl flags as fkd_jax.cli parses them (this interpreter has torch, not fkd_jax): --help
    prints the docstring's first paragraph and the flags; a mistake is one line, exit 2."""
    if any(a in ("--help", "-h") for a in argv[1:]):
        print(__doc__.split("\n\n")[0] + "\n\nflags:\n" + FLAGS.get_help())
        raise SystemExit(0)
    try:
        rest = FLAGS(argv)[1:]
        if rest:
            raise flags.Error(f"unexpected argument {rest[0]!r}")
        if FLAGS.serve and FLAGS.check:
            raise flags.Error("--serve and --check exclude each other")
        if not all(w.isdigit() for w in FLAGS.widths):
            raise flags.Error(f"--widths={','.join(FLAGS.widths)}: give integers, e.g. 16,32")
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    widths = tuple(int(w) for w in FLAGS.widths)
    return types.SimpleNamespace(**{**FLAGS.flag_values_dict(), "widths": widths})


def serve(bench: Bench, info: dict, steps: int) -> None:
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words == ["run"]:
            print(json.dumps({"images_per_s": bench.run(steps)}), flush=True)
        elif len(words) == 3 and words[0] == "infer":
            print(json.dumps(bench.infer(int(words[1]), int(words[2]))), flush=True)
        else:
            break


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.check:
        sys.exit(run_check(args.check, args))
    bench = Bench(args)
    info = {"framework": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model": args.model, "channels_last": args.channels_last,
            "batch_size": args.batch_size, "params": bench.n_params,
            "malloc_env": {k: v for k, v in os.environ.items()
                           if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}}
    t = time.perf_counter()
    for _ in range(args.warmup):
        bench.step()
    info["warmup_s"] = time.perf_counter() - t
    if args.serve:
        serve(bench, info, args.steps)
        return
    rates = [bench.run(args.steps) for _ in range(args.repeats)]
    print(json.dumps({**info, "images_per_s": statistics.median(rates), "repeats": rates}))


if __name__ == "__main__":
    main(sys.argv)
