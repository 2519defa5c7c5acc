"""Train on a Kaggle download with unet_pair's recipe. Point it at your files:

  python train.py --config configs/unet_kaggle.py --config.data.train_path=PATH/training.zip \
      --config.data.test_path=PATH/test.zip --config.data.lookup_path=PATH/IdLookupTable.csv

Kaggle's training.csv leaves about 5640 training rows after the validation split, 2.2x the
2555 faces best_cpu was tuned on, so 45 epochs see about as many images (unet_pair's net
trained at 113 images/s on 2 CPU cores: about 40 minutes of training there).
Its rows carry no person ids, so the validation split is by row. Kaggle's images are not
available where this project was developed: this config is untested on them.
"""

from configs import unet_pair


def get_config():
    c = unet_pair.get_config()
    c.train.members = 1  # one run: 45 epochs of ~5640 rows already take about the budget
    c.data.train_path = "data/kaggle/training.zip"
    c.data.test_path = "data/kaggle/test.zip"
    c.data.lookup_path = "data/kaggle/IdLookupTable.csv"
    c.data.label_policy = "mask"
    c.train.epochs = 45
    return c
