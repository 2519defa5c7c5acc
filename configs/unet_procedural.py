"""A heatmap U-Net trained only on procedural faces, for photos: no real face data needed.

  uv run python train.py --config configs/unet_procedural.py --workdir runs/unet_procedural

Work in progress: see docs/experiments/ for its photo figures.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.train.members = 1
    c.train.epochs = 30
    c.data.synthetic_pose = True
    c.data.synthetic_texture = True
    c.data.synthetic_camera = True
    c.augment.flip_label_offset_px = 0.0  # procedural labels sit on their pixels exactly
    c.augment.rotate_deg = 10.0
    c.augment.scale = 0.08
    return c
