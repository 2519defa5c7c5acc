"""unet_pair's heatmap U-Net (one member) trained only on procedural faces: a photo model
without any real face data.

  uv run python train.py --config configs/unet_procedural.py --workdir runs/unet_procedural

3000 faces, 30 epochs: ~15 min at 80-93 images/s on 2 CPU cores. Photos of unseen people: NME
7.26% (median 6.64%), 11.8% of photos above 10%, 99% found; real validation crops 2.51 px
(mean face 3.44, real-face unet_pair 1.195). docs/experiments/2026-12-06-procedural-unet.md.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.train.members = 1
    c.train.epochs = 30
    c.data.synthetic_pose = True
    c.data.synthetic_texture = True
    c.data.synthetic_camera = True
    c.data.synthetic_anatomy = True
    c.data.synthetic_shapes = "filmed"
    c.augment.flip_label_offset_px = 0.0  # procedural labels sit on their pixels exactly
    c.augment.rotate_deg = 10.0
    c.augment.scale = 0.08
    return c
