"""unet_pair's recipe on the 68 iBUG/300W landmarks, heatmaps reaching 16 px past the crop (the
chin lies below it): predict.py gives all 68 points on photos (landmarks.csv) and Kaggle's 15.

  uv run python train.py --config configs/unet_landmarks68.py --config.data.train_path=PATH/training.zip \
      --config.data.keypoints_path=PATH/landmarks68.csv --config.data.groups_path=PATH/person_ids.txt

Two members, 70 epochs: 63 min at 50-58 images/s a member on 2 CPU cores; crop RMSE 1.479 px
over all 68 (jaw 2.07). Photos of unseen people: 68-point NME 4.29% (dlib 6.37%), the 15 read
off 3.68%, every face found; trained again on a machine half as fast (107.5-114.5 min): 1.483
px, 4.21%; with predict.py --final_scales 1 (the last square's mirror) 4.17%. A third member
(--config.train.members=3) lowers the crop RMSE to 1.473 px but not the photos' NME.
docs/experiments/2026-12-07-landmarks68-margin.md, 2026-12-07-final-views.md,
2026-12-07-mirror-read-and-third-member.md.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.data.keypoints = "ibug68"
    c.model.margin = 16  # iBUG's chin sits ~8 px below a Kaggle-framed crop
    c.model.heatmap_size = 32  # cells of the 128-pixel padded square: 4 px, as unet_pair's
    c.train.epochs = 70
    return c
