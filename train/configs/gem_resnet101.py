r"""Baseline: GeM pooling (learnable p, initialised at 3) on ResNet-101's last block with a whitening layer,
the Radenovic et al. recipe (contrastive loss, margin 0.85, Adam 1e-6 and 10x on p), same data and mining as
`remap_resnet101.py`.

    python -m train.main --config=train/configs/gem_resnet101.py --workdir=$W \
        --config.model.pretrained=$WEIGHTS/resnet101.safetensors
"""

from train.configs.remap_resnet101 import get_config as get_remap_config


def get_config():
    c = get_remap_config()
    c.model.head = "gem"  # p starts at the default p_init = 3, trained at lr_mult_head = 10x
    c.model.taps = ("layer4.2",)
    c.loss = "contrastive"
    c.margin = 0.85
    c.lr_mult_whitening = 1.0
    return c
