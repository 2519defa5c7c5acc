"""Every config key, documented once here, at its neutral value: the seed notebook's simple CNN
on the plain procedural faces. Other configs start from this one and change values only.

  uv run python train.py --config configs/default.py      # writes runs/default/

Seed 0, 30 epochs: best validation RMSE 1.888 px at epoch 30 (1.750 px with `eval.py --tta`;
the mean face 3.14 px), ~4 min at 300-350 images/s on 2 CPU cores. It learns the procedural
faces, not real ones (photo NME ~16%): docs/RESULTS.md, docs/configuration.md.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # The one seed: initialisation, split (unless data.split_seed), shuffling, dropout and
    # augmentation all derive from it (jax.random.fold_in).
    c.seed = 0

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
    # predict.py frames from keypoints (data/preparation.py), for models used on photos.
    c.data.framing = "as_given"
    c.data.val_fraction = 0.2  # share of rows (or of groups) held out for validation
    # Share of the training groups (rows without groups_path) kept, seeded and nested (10% of
    # the people lie within 30%): learning curves over the amount of data. Validation unchanged.
    c.data.train_fraction = 1.0
    # Seed of the data's draws (the split, and missing_pattern_path's imposed labels); None =
    # `seed`. Fix it to vary only init, shuffling, dropout and augmentation across seeds.
    c.data.split_seed = config_dict.placeholder(int)
    # Experiments: impose the missing labels of this Kaggle-format file's rows (e.g. Kaggle's
    # training.csv) on the training rows, to compare label policies on fully labelled data.
    c.data.missing_pattern_path = config_dict.placeholder(str)
    # The embedded default: procedural faces, generated in memory from `seed`.
    c.data.synthetic_n = 3000  # number of faces
    c.data.synthetic_seed = 0  # seed of the faces themselves (not of the run)
    c.data.synthetic_kaggle_missing = True  # impose Kaggle's missing-label pattern
    # Photo-like levers of the procedural faces (fkd_jax/data/synthetic.py), each off = the
    # original faces: heads turned in 3D (yaw to ~45, pitch ~25, roll ~20 degrees), value-noise
    # texture at several scales, camera effects (exposure, low resolution, motion blur, sensor
    # noise, JPEG blocks); anatomy: wider heads, deep eye sockets, soft brows, a large dark nose
    # base, as filmed faces show; occluders: hands, beards and hats over some faces.
    c.data.synthetic_pose = False
    c.data.synthetic_texture = False
    c.data.synthetic_camera = False
    c.data.synthetic_anatomy = False
    c.data.synthetic_occluders = False
    # Face shapes (keypoint geometry, framing, turns) from Kaggle's labels ("kaggle") or from the
    # filmed faces' labels of the photo runs' training people ("filmed", their convention).
    c.data.synthetic_shapes = "kaggle"

    c.model = ml_collections.ConfigDict()
    # simple_cnn, nouri, resnet, heatmap or heatmap_unet (fkd_jax/models/registry.py).
    c.model.name = "simple_cnn"
    # Sizes; None = the model's own default. A size a model does not have is an error.
    c.model.widths = config_dict.placeholder(tuple)  # channels per stage, e.g. "(16,32,64,128)"
    c.model.hidden = config_dict.placeholder(tuple)  # dense widths, e.g. "(500,500)"
    c.model.blocks = config_dict.placeholder(int)  # residual blocks per stage
    c.model.heatmap_size = config_dict.placeholder(int)  # heatmap side in cells (heatmap models)
    # heatmap_unet only: black padding (pixels a side) that its heatmaps also cover, for points
    # outside the crop such as iBUG's chin; heatmap_size then counts the padded square's cells
    c.model.margin = config_dict.placeholder(int)
    c.model.dropout = 0.0  # before dense layers; heatmap models have none and refuse it
    # "xla", "im2col" or "auto" (im2col matmuls with custom gradients on CPU, XLA's own
    # convolutions on GPU/TPU; "xla" inside the CPU epoch scan is very slow); "portable" (XLA
    # convolutions, reshape pooling) is what ONNX export builds.
    c.model.conv_impl = "auto"
    # "bfloat16": convolutions and matmuls in bfloat16 (GPU/TPU); parameters, optimiser state,
    # loss and outputs stay float32.
    c.model.compute_dtype = "float32"

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 30
    c.train.batch_size = 64  # global: split over all devices, so a multiple of their count
    c.train.learning_rate = 1e-3  # peak learning rate of Adam / AdamW
    c.train.schedule = "constant"  # "constant", "cosine" (warm-up + cosine) or "onecycle"
    c.train.warmup_epochs = 0  # linear warm-up; onecycle: its rising part (0 -> optax's 30%)
    c.train.weight_decay = 0.0  # > 0 switches Adam to AdamW (decays every parameter)
    c.train.grad_clip = 0.0  # global-norm clipping; 0 disables
    c.train.early_stop_patience = 0  # epochs without validation improvement; 0 disables
    # A run directory whose best (averaged) parameters start this run, e.g. a model pretrained
    # on procedural faces fine-tuned on real ones; same model and keypoints. The optimiser
    # starts afresh; a resume continues from this run's own checkpoint.
    c.train.init_from = config_dict.placeholder(str)
    # Coordinate loss, averaged over the labelled coordinates only (normalised units
    # u = x / 48 - 1): "mse", "l1" or "wing" (Feng et al. 2018; its width wing_w and
    # curvature wing_epsilon are in pixels). L1 and wing gradients do not shrink with the
    # error, so grad_clip clips far more often with them.
    c.train.loss = "mse"
    c.train.wing_w = 10.0
    c.train.wing_epsilon = 2.0
    # Parameter averaging, evaluated and checkpointed beside the raw parameters; the averaged
    # ones rank the best checkpoint and are what eval/predict/export use. At most one of:
    # EMA of the parameters after every step, bias-corrected (optax.ema(debias=True)); horizon
    # about 1 / (1 - decay) steps; 0 disables.
    c.train.ema_decay = 0.0
    c.train.swa_start_epoch = 0  # SWA: mean of every step's parameters from this epoch; 0 off
    # Heatmap models only: the loss adds weight x KL(Gaussian of std sigma px at the keypoint
    # || softmax heatmap), pulling each heatmap to one sharp peak (training/steps.py); 0 = off.
    # ~1e-3 balances it with the MSE late in training.
    c.train.heatmap_loss_weight = 0.0
    c.train.heatmap_sigma_px = 4.0
    # > 1: an ensemble of that many runs (seeds seed*N ... seed*N+N-1, one split), trained side
    # by side on the CPU cores, predicting their mean (fkd_jax/training/ensemble.py).
    c.train.members = 1
    # How: "processes" (one per member, pinned to CPU cores), "one_process" (vmapped over the
    # members in one program) or "auto" (one_process on GPU/TPU, processes on CPU).
    c.train.members_mode = "auto"

    c.augment = ml_collections.ConfigDict()
    # On the device, each from its own random stream; 0 / False = off. Ranges are uniform.
    c.augment.flip = False  # horizontal flip, probability 0.5 (mirror partners swapped)
    c.augment.rotate_deg = 0.0  # rotation in [-r, r] degrees about the centre
    c.augment.scale = 0.0  # relative, e.g. 0.1 -> scale in [0.9, 1.1]
    c.augment.shift_px = 0.0  # translation in [-s, s] pixels per axis
    c.augment.brightness = 0.0  # added, in [-b, b] (intensities in [0, 1])
    c.augment.contrast = 0.0  # factor in [1 - c, 1 + c] about the mean
    c.augment.gamma = 0.0  # x ** g, log g in [-log(1 + gamma), log(1 + gamma)]
    c.augment.noise_std = 0.0  # Gaussian pixel noise, std (intensities in [0, 1])
    c.augment.blur_prob = 0.0  # probability of a Gaussian blur (sigma 0.5-1.5 px)
    # Random erasing: this often, one flat rectangle of a random grey level over the face,
    # labels kept (the net must place an occluded point from the rest of the face).
    c.augment.erase_prob = 0.0
    c.augment.erase_size = 0.4  # its largest side, as a fraction of the image side
    # How far right of their pixels the x labels sit (pixels; a labelling convention): the
    # flip, and flip TTA, mirror labels about W / 2 + this. On a new dataset: minus the mean
    # signed x error (eval.py) of a run trained with 0.
    c.augment.flip_label_offset_px = 0.0
    return c
