"""One run of unet_pair's recipe for 45 epochs on a Kaggle download; untested on Kaggle's images.

  uv run python train.py --config configs/unet_kaggle.py --config.data.train_path=PATH/training.zip \
      --config.data.test_path=PATH/test.zip --config.data.lookup_path=PATH/IdLookupTable.csv
  uv run python eval.py --workdir runs/unet_kaggle      # also writes eval/submission.csv

About 5640 training rows after the split, 2.2x the faces the recipe was tuned on, so 45 epochs
see about as many images as its 100. The rows carry no person ids: the split is by row. No
measured result. The recipe: docs/experiments/2026-11-25-unet-recipe.md and later studies.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.train.members = 1
    c.data.train_path = "data/kaggle/training.zip"
    c.data.test_path = "data/kaggle/test.zip"
    c.data.lookup_path = "data/kaggle/IdLookupTable.csv"
    c.data.label_policy = "mask"
    c.train.epochs = 45
    return c
