"""The first command: a small heatmap U-Net trained only on procedural faces made to look filmed,
a model to point at photos without any real face data. Every key: configs/default.py.

  uv run python train.py --config configs/base.py      # writes runs/base/

Seed 0, 30 epochs: ~3.5 min of epochs at ~360 images/s on 2 CPU cores. Photos of unseen people
NME 7.33% (median 6.22%), 14.7% of photos above 10%, 99% found; real crops 2.44 px (mean face
3.44). Its larger twin is configs/unet_procedural.py. docs/RESULTS.md.
"""

from configs import unet_procedural


def get_config():
    c = unet_procedural.get_config()
    c.model.widths = (12, 24, 48, 96)  # a quarter of unet_pair's channels
    c.train.batch_size = 16
    c.train.epochs = 30
    c.train.ema_decay = 0.999  # a horizon of ~1000 of its 4500 steps
    return c
