r"""Baseline: R-MAC head (alpha fixed to 1, no whitening layer in the model), ResNet-101 last block, trained
with the same triplet loss, mining and data as `remap_resnet101.py` for a like-for-like comparison.

    python -m train.main --config=train/configs/rmac_resnet101.py --workdir=$W \
        --config.model.pretrained=$WEIGHTS/resnet101.safetensors
"""

from train.configs.remap_resnet101 import get_config as get_remap_config


def get_config():
    c = get_remap_config()
    c.model.head = "rmac"
    c.model.taps = ("layer4.2",)
    c.model.whiten = False
    return c
