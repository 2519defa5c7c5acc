"""Train on a Kaggle download. Point it at your files:

  python train.py --config configs/kaggle.py --config.data.train_path=PATH/training.zip \
      --config.data.test_path=PATH/test.zip --config.data.lookup_path=PATH/IdLookupTable.csv
"""

from configs import base


def get_config():
    c = base.get_config()
    c.data.train_path = "data/kaggle/training.zip"
    c.data.test_path = "data/kaggle/test.zip"
    c.data.lookup_path = "data/kaggle/IdLookupTable.csv"
    c.data.label_policy = "mask"
    c.model.name = "nouri"
    c.train.batch_size = 128
    c.train.epochs = 100
    return c
