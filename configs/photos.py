"""best_cpu's recipe with framing jitter: for keypoints on whole photos (predict.py).

  python train.py --config configs/photos.py --config.data.train_path=PATH/training.zip \
      --config.data.groups_path=PATH/person_ids.txt --workdir DIR

predict.py frames each face from a detector box and then from the model's own keypoints; that
framing is off by about 1-2% of the crop's side in position and ~8% in size, while best_cpu's
crops were all framed on the true keypoints (its augmentation: +-2 px, +-4% scale). Shifts
and zooms as large as the pipeline's framing error teach the model to follow a mis-framed
face. Measured on the 102 photos of the 51 validation people (README, "Measured"; seed 0):
NME 3.94% (median 3.72%), every face found, against 4.05% (median 3.86%) for best_cpu with
the same weight decay (1e-4), at the cost of crop RMSE on perfectly framed faces (1.420 px with
the EMA against 1.273 px). Same net as best_cpu (widths 24-192); the narrow net (16-128) with
this jitter gave 3.95% (median 3.83%) and missed one turned face.
"""

from configs import best_cpu


def get_config():
    c = best_cpu.get_config()
    # As measured above: best_cpu's later additions (weight decay 0.05, then 0.1, erasing,
    # the heatmap loss) were not tried with the jitter.
    c.train.weight_decay = 1e-4
    c.augment.erase_prob = 0.0
    c.train.heatmap_loss_weight = 0.0
    c.augment.shift_px = 3.5  # pixels of the 96-pixel crop: ~2 std of the pipeline's centring error
    c.augment.scale = 0.14  # +-14%: ~2 std of its size error
    return c
