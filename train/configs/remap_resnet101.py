r"""REMAP, ResNet-101, the paper's setting: taps on the last two blocks (layer4.1 + layer4.2), 40 regions
(levels=4 on the 24x32 map of 768x1024 inputs), KL-initialised alpha and whitening initialisation, trained
end to end with a triplet loss and hard-negative mining on SfM-120k (or GLDv2-clean).

    # 1. ImageNet backbone weights (torchvision's resnet101-63fe2227.pth; see the README)
    # 2. KL region weights + learned whitening from the off-the-shelf network
    python -m train.init_head --config=train/configs/remap_resnet101.py --workdir=$W/init \
        --config.model.pretrained=$WEIGHTS/resnet101.safetensors
    # 3. train
    python -m train.main --config=train/configs/remap_resnet101.py --workdir=$W \
        --config.model.pretrained=$WEIGHTS/resnet101.safetensors --config.head_init=$W/init/head_init.npz

GLDv2-clean instead of SfM-120k: `--config.dataset=gldv2_clean`. On 8 accelerators the 5-tuple batch is
padded to 8 (zero-weight tuples); use `--config.batch_size=8` to fill them instead.
"""

from train.configs.base import get_base_config


def get_config():
    c = get_base_config()  # the base config is this setting: SfM-120k, ResNet-101, layer4.1 + layer4.2, L=4,
    # triplet loss (margin 0.1), 5 negatives, 2000 queries / 20000-image pool per epoch, Adam 1e-6
    c.lr_mult_alpha = 10.0  # alpha and whitening start from their KL / Lw initialisation; let them move
    c.lr_mult_whitening = 10.0
    c.checkpoint_every_steps = 200
    c.describe_batch_size = 8
    return c
