"""unet_pair's recipe on the 68 iBUG/300W landmarks, heatmaps reaching 16 px past the crop (the
chin lies below it): predict.py gives all 68 points on photos (landmarks.csv) and Kaggle's 15.

  uv run python train.py --config configs/unet_landmarks68.py --config.data.train_path=PATH/training.zip \
      --config.data.keypoints_path=PATH/landmarks68.csv --config.data.groups_path=PATH/person_ids.txt

Two members, 70 epochs: 63-114 min on 2 CPU cores (50-58 / 30-32 images/s a member); crop RMSE
1.479-1.483 px over all 68 (jaw 2.07). Photos of unseen people: 68-point NME 4.21% (dlib 6.37%),
the 15 read off 3.60%, every face found; with predict.py --final_scales 1 4.17% / 3.56%. A third
member or a start from unet_procedural's run (train.init_from) lower the crop RMSE (1.472-1.473
px), not the photos' NME. docs/experiments/2026-12-07-landmarks68-margin.md, -final-views.md,
-mirror-read-and-third-member.md, -landmarks68-procedural-start.md.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.data.keypoints = "ibug68"
    c.model.margin = 16  # iBUG's chin sits ~8 px below a Kaggle-framed crop
    c.model.heatmap_size = 32  # cells of the 128-pixel padded square: 4 px, as unet_pair's
    c.train.epochs = 70
    return c
