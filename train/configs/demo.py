"""The README's main job: train a small REMAP model on the built-in `synthetic_landmarks` demo dataset.

    python -m train.main --config=train/configs/demo.py --workdir=/tmp/remap_demo

Sized for a 2-core CPU (< 10 minutes including the dataset build and both evaluations): ResNet-18 from random
initialisation (no pretrained weights are reachable offline), small images, short epochs, Adam with a
comparatively high learning rate since nothing pretrained needs protecting.
"""

from train.configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.dataset = "synthetic_landmarks"
    c.test_dataset = "synthetic_landmarks"
    c.image_size = (128, 160)
    c.test_image_size = (128, 160)
    c.cache_images = True
    c.num_workers = 2

    c.model.arch = "resnet18"
    c.model.taps = ("layer4.0", "layer4.1")
    c.model.head = "remap"
    c.model.levels = 2
    c.model.out_dim = 0

    c.num_negatives = 3
    c.queries_per_epoch = 96
    c.pool_size = 400
    c.mining_candidates = 30

    c.loss = "triplet"
    c.margin = 0.3
    c.num_epochs = 6
    c.batch_size = 8
    c.optimizer = "adam"
    c.learning_rate = 1e-4
    c.lr_mult_alpha = 10.0
    c.lr_mult_whitening = 1.0
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.warmup_steps = 5

    c.log_every_steps = 4
    c.eval_every_epochs = 2
    c.checkpoint_every_steps = 24
    c.keep_checkpoints = 2
    c.describe_batch_size = 32
    return c
