"""unet_pair's recipe on base.py's small U-Net (a quarter of the channels, one member): the fast
photo model, 1/16 of unet_pair's convolution work, meant to be exported to ONNX.

  uv run python train.py --config configs/unet_small.py --config.data.train_path=PATH/training.zip \
      --config.data.groups_path=PATH/person_ids.txt --workdir runs/unet_small
  uv run --extra onnx python export.py --workdir runs/unet_small --format onnx

100 epochs: 15-25 min at 200-360 images/s on 2 CPU cores; crop RMSE 1.230-1.236 px (unet_pair's
member 1.214). Photos of unseen people: NME 3.66% (median 3.36%), 99% found; as model.onnx twice
the photos/s of the run directory. docs/experiments/2026-12-07-fast-photos.md.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.model.widths = (12, 24, 48, 96)
    c.train.members = 1
    return c
