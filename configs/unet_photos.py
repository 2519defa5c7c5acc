"""unet_pair's recipe with framing jitter: for keypoints on whole photos (predict.py).

  python train.py --config configs/unet_photos.py --config.data.train_path=PATH/training.zip \
      --config.data.groups_path=PATH/person_ids.txt --workdir DIR

predict.py frames each face from a detector box and then from the model's own keypoints; that
framing is off by about 1-2% of the crop's side in position and ~8% in size, while unet_pair's
crops were all framed on the true keypoints (its augmentation: +-2 px, +-4% scale). Shifts
and zooms of the order of the pipeline's framing error teach the model to follow a mis-framed
face instead of leaning toward where the crop expects one. Measured on the 102 photos of the
51 validation people (README, "Measured"; seed 0, unet_pair's recipe of 2026-12-02: weight
decay 0.1, erasing, heatmap loss): this jitter (+-2.5 px, +-8%) gives NME 3.86% (median 3.63%),
every face found, none above 10%, crop RMSE 1.292 px (EMA); the earlier, larger jitter (3.5 px,
14%) 3.80% (median 3.62%) but one turned face lost and crop RMSE 1.374 px; unet_pair itself
3.94% (seeds 1 and 2). One seed each: the two jitters are within seed noise on the mean; this
one is kept for the worst case and the crop accuracy. These figures predate unet_pair's flip
about the labels' own axis (augment.flip_label_offset_px = 0.4), which this config inherits:
with it, seeds 0 / 1 give NME 3.72% / 3.71%, every face found in both (crop RMSE 1.256 / 1.244
px), against unet_pair's 3.56-3.67% with 99-100% found (3 seeds).
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.train.members = 1  # one run: the figures above are single runs
    c.augment.shift_px = 2.5  # pixels of the 96-pixel crop (unet_pair: 2)
    c.augment.scale = 0.08  # +-8% (unet_pair: 4%)
    return c
