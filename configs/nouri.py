"""Nouri's kfkd net (conv 32@3x3, 64@2x2, 128@2x2 + pools; dense 500, 500): 8.05M parameters.

  uv run python train.py --config configs/nouri.py

The speed benchmark's net: trains at 469 images/s at batch 128 on 2 CPU cores, 0.92x the
strongest PyTorch eager (docs/experiments/2026-12-01-pytorch-comparison.md). No accuracy figure.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model.name = "nouri"
    c.train.batch_size = 128
    return c
