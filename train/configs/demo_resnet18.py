"""The previous main job: REMAP on ResNet-18 from random initialisation, on `synthetic_landmarks`.

    python -m train.main --config=train/configs/demo_resnet18.py --workdir=/tmp/remap_demo_resnet18

Until the pretrained EfficientNet-Lite0 demo (`demo.py`) replaced it, this was the README's main job (its
runs: docs/experiments.md). ResNet-18 from random initialisation (no pretrained weights were
reachable offline) kept frozen, the REMAP head (alpha + whitening) on three taps trained with a contrastive
loss and hard-negative mining, 256x320 images, short epochs, Adam 1e-3, on the dataset's 9 training photos
plus its 200 collage landmarks. It shows the training machinery learning, not what pretrained features do.
"""

from train.configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.dataset = "synthetic_landmarks"
    c.test_dataset = "synthetic_landmarks"
    c.image_size = (256, 320)  # 16x20 map at layer3, 8x10 at layer4: levels 3 -> 20 regions per layer
    c.test_image_size = (256, 320)
    c.cache_images = True
    c.num_workers = 2

    c.model.arch = "resnet18"
    # REMAP taps: the last block of stage 3 and both blocks of stage 4 (layer3.1 helps: docs/experiments.md)
    c.model.taps = ("layer3.1", "layer4.0", "layer4.1")
    c.model.levels = 3

    c.num_negatives = 3
    c.queries_per_epoch = 160
    c.pool_size = 200
    c.mining_candidates = 30

    # contrastive, not triplet: from a random network every descriptor starts in a tight cluster, and the
    # triplet loss with mined hard negatives collapses it further (distances fall towards 0); the
    # contrastive term pushes negatives out to the margin.
    c.loss = "contrastive"
    c.margin = 0.7
    c.num_epochs = 5
    c.batch_size = 8
    c.learning_rate = 1e-3
    # A randomly initialised backbone fine-tuned on these landmarks overfits them (test medium mAP
    # drops, also with only layer4 training at 1e-4); the REMAP head (region weights alpha and the
    # whitening layer) learns what carries over to unseen landmarks. Frozen, the backbone costs no backward.
    c.lr_mult_backbone = 0.0
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.warmup_steps = 5

    c.log_every_steps = 4
    c.eval_every_epochs = 5  # the 2-landmark val split is noisy: validate (and export) the final model
    c.checkpoint_every_steps = 20
    c.keep_checkpoints = 2
    return c
