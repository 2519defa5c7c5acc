"""Base config: a small CNN on the embedded procedural faces; a few minutes on 2 CPU cores.

Override any key from the command line, e.g.
  python train.py --config configs/base.py --config.train.epochs=5 --config.seed=1
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives init, split, shuffling, dropout and augmentation

    c.data = ml_collections.ConfigDict()
    # A Kaggle training.csv or training.zip; None trains on the embedded procedural faces.
    c.data.train_path = config_dict.placeholder(str)
    c.data.test_path = config_dict.placeholder(str)  # Kaggle test.csv/.zip, for submissions
    c.data.lookup_path = config_dict.placeholder(str)  # Kaggle IdLookupTable.csv
    c.data.groups_path = config_dict.placeholder(str)  # one group id per row: grouped split
    # Which keypoints: "kaggle15" (Kaggle's 15, from train_path's own columns), "ibug68"
    # (the 68 iBUG/300W landmarks, read from keypoints_path, row for row with train_path) or
    # "kaggle15_square" (Kaggle's 15 + four fixed points of the crop's square, so that the
    # model says where the training framing lies: predict.py re-frames photos by them).
    c.data.keypoints = "kaggle15"
    c.data.keypoints_path = config_dict.placeholder(str)
    c.data.label_policy = "mask"  # "mask": all rows, masked loss; "drop": complete rows only
    # "as_given": the file's crops; "keypoints": each complete row re-cropped to the square
    # predict.py frames from keypoints (faces.reframe_by_keypoints), for models used on photos.
    c.data.framing = "as_given"
    c.data.val_fraction = 0.2
    # Seed of the data's draws (the split, and missing_pattern_path's imposed labels); None =
    # `seed`. Fix it to vary only init, shuffling, dropout and augmentation across seeds.
    c.data.split_seed = config_dict.placeholder(int)
    # Experiments: impose the missing labels of this Kaggle-format file's rows (e.g. Kaggle's
    # training.csv) on the training rows, to compare label policies on fully labelled data.
    c.data.missing_pattern_path = config_dict.placeholder(str)
    # The embedded default: procedural faces, generated in memory from `seed`.
    c.data.synthetic_n = 3000
    c.data.synthetic_seed = 0
    c.data.synthetic_kaggle_missing = True  # impose Kaggle's missing-label pattern

    c.model = ml_collections.ConfigDict()
    c.model.name = "simple_cnn"  # see fkd_jax/models/networks.py: simple_cnn, nouri, resnet, heatmap, ...
    # Sizes; None = the model's own default. A size a model does not have is an error.
    c.model.widths = config_dict.placeholder(tuple)  # channels per stage, e.g. "(16,32,64,128)"
    c.model.hidden = config_dict.placeholder(tuple)  # dense widths, e.g. "(500,500)"
    c.model.blocks = config_dict.placeholder(int)  # residual blocks per stage
    c.model.heatmap_size = config_dict.placeholder(int)  # heatmap side in cells (heatmap models)
    c.model.dropout = 0.0  # before dense layers; heatmap models have none and refuse it
    c.model.conv_impl = "auto"  # "xla", "im2col" or "auto" (im2col on CPU, xla elsewhere)
    c.model.compute_dtype = "float32"  # "bfloat16" for GPU/TPU

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 30
    c.train.batch_size = 64
    c.train.learning_rate = 1e-3
    c.train.schedule = "constant"  # "constant", "cosine" (warm-up + cosine) or "onecycle"
    c.train.warmup_epochs = 0  # linear warm-up; onecycle: its rising part (0 -> optax's 30%)
    c.train.weight_decay = 0.0  # > 0 switches Adam to AdamW
    c.train.grad_clip = 0.0  # global-norm clipping; 0 disables
    c.train.early_stop_patience = 0  # epochs without val improvement; 0 disables
    # Coordinate loss over the labelled coordinates (normalised units): "mse", "l1" or "wing"
    # (Feng et al. 2018; its width wing_w and curvature wing_epsilon are in pixels).
    c.train.loss = "mse"
    c.train.wing_w = 10.0
    c.train.wing_epsilon = 2.0
    # Parameter averaging, evaluated and checkpointed beside the raw parameters; the averaged
    # ones rank the best checkpoint and are what eval/predict/export use. At most one of:
    c.train.ema_decay = 0.0  # EMA of the parameters per step (bias-corrected); 0 disables
    c.train.swa_start_epoch = 0  # SWA: mean of every step's parameters from this epoch; 0 off
    # Heatmap models: + weight x KL(Gaussian of std sigma px at the keypoint || heatmap),
    # which pulls each heatmap to one sharp peak (training.heatmap_kl); 0 = off.
    c.train.heatmap_loss_weight = 0.0
    c.train.heatmap_sigma_px = 4.0
    # > 1: an ensemble of that many runs (seeds seed*N ... seed*N+N-1, one split), trained side
    # by side on the CPU cores, predicting their mean (fkd_jax/training/ensemble.py).
    c.train.members = 1
    # How: "processes" (one per member, pinned to CPU cores), "one_process" (vmapped over the
    # members in one program) or "auto" (one_process on GPU/TPU, processes on CPU).
    c.train.members_mode = "auto"

    c.augment = ml_collections.ConfigDict()
    c.augment.flip = False
    c.augment.rotate_deg = 0.0
    c.augment.scale = 0.0  # relative, e.g. 0.1 -> scale in [0.9, 1.1]
    c.augment.shift_px = 0.0
    c.augment.brightness = 0.0
    c.augment.contrast = 0.0
    c.augment.gamma = 0.0
    c.augment.noise_std = 0.0
    c.augment.blur_prob = 0.0
    c.augment.erase_prob = 0.0  # one occluding rectangle (random erasing), this often
    c.augment.erase_size = 0.4  # its largest side, as a fraction of the image side
    # How far right of the image content the x labels sit, pixels (a labelling convention);
    # the flip mirrors labels about that axis (fkd_jax/data/augment.py).
    c.augment.flip_label_offset_px = 0.0
    return c
