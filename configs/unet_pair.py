"""A pair of heatmap U-Nets trained side by side, their mean predicted: the accurate recipe.

  uv run python train.py --config configs/unet_pair.py --config.data.train_path=PATH/training.zip \
      --config.data.groups_path=PATH/person_ids.txt --workdir runs/unet_pair

Validation RMSE 1.195 +- 0.002 px over 3 ensemble seeds (1.186 with flip TTA); photos of unseen
people NME 3.55-3.58%; 43 min on 2 CPU cores at 114-115 images/s a member, one member a core.
`--config.train.members=1` trains one run: 1.214 +- 0.005 px, 32.5 min at 149 images/s.
Why each value: docs/experiments/2026-12-02-two-members.md and the studies it links.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.label_policy = "mask"
    c.model.name = "heatmap_unet"
    c.model.widths = (24, 48, 96, 192)
    c.train.batch_size = 8
    c.train.epochs = 100
    c.train.learning_rate = 2e-3
    c.train.schedule = "cosine"
    c.train.warmup_epochs = 3
    c.train.weight_decay = 0.1
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9998
    c.train.heatmap_loss_weight = 0.001
    c.train.members = 2
    c.augment.flip = True
    c.augment.flip_label_offset_px = 0.4  # these labels sit ~0.4 px right of their pixels
    c.augment.rotate_deg = 6.0
    c.augment.scale = 0.04
    c.augment.shift_px = 2.0
    c.augment.brightness = 0.15
    c.augment.contrast = 0.25
    c.augment.gamma = 0.25
    c.augment.noise_std = 0.01
    c.augment.blur_prob = 0.1
    c.augment.erase_prob = 0.5
    return c
