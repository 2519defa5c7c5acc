"""PyTorch eager reference for `benchmarks/throughput.py`: Nouri's net, masked MSE + Adam.

Benchmark-only: torch is not a dependency of fkd-jax. Run it with the interpreter that
`benchmarks/setup_torch.sh` creates (benchmarks/.torch-venv/bin/python).

The network and step match the JAX side (`fkd_jax.models.nouri`, `fkd_jax.training`):
conv 32@3x3, 64@2x2, 128@2x2 (VALID, bias, ReLU, 2x2 max-pool each), dense 15488->500->500->30,
masked MSE on normalised targets, Adam(lr=1e-3), batch of random images in [0, 1].

Modes:
  python torch_reference.py --batch-size 128 --steps 10 --repeats 3   # one JSON line
  python torch_reference.py --serve ...   # for throughput.py --compare: reads "run" lines on
                                          # stdin, answers each with one JSON line (one repeat)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

NUM_COORDS = 30
IMAGE_SIZE = 96


def nouri_net(hidden: int = 500) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 11 * 11, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, NUM_COORDS),
    )


class Bench:
    """Model, optimiser and one fixed random batch; `run(steps)` returns images/s."""

    def __init__(self, batch_size: int, channels_last: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.batch_size = batch_size
        self.model = nouri_net()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(batch_size, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.keypoints = torch.rand(batch_size, NUM_COORDS, generator=g) * IMAGE_SIZE
        self.mask = torch.ones(batch_size, NUM_COORDS, dtype=torch.bool)
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def step(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        pred = self.model(self.images)
        target = self.keypoints / (IMAGE_SIZE / 2) - 1.0
        se = torch.where(self.mask, (pred - target) ** 2, torch.zeros_like(pred))
        loss = se.sum() / self.mask.sum().clamp(min=1)
        loss.backward()
        self.opt.step()
        return loss

    def run(self, steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.item()  # eager already synchronous on CPU; keeps the result live
        return self.batch_size * steps / (time.perf_counter() - t)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--serve", action="store_true", help="answer 'run' lines on stdin")
    args = p.parse_args(argv)

    import os

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    bench = Bench(args.batch_size, args.channels_last)
    info = {"framework": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "channels_last": args.channels_last, "batch_size": args.batch_size,
            "params": bench.n_params}
    t = time.perf_counter()
    for _ in range(args.warmup):
        bench.step()
    info["warmup_s"] = time.perf_counter() - t
    if args.serve:
        print(json.dumps({"ready": True, **info}), flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            print(json.dumps({"images_per_s": bench.run(args.steps)}), flush=True)
        return
    rates = [bench.run(args.steps) for _ in range(args.repeats)]
    print(json.dumps({**info, "images_per_s": statistics.median(rates), "repeats": rates}))


if __name__ == "__main__":
    main()
