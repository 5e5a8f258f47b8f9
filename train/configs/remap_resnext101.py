r"""REMAP, ResNeXt-101 (32x8d), otherwise the paper's setting of `remap_resnet101.py` (taps layer4.1 +
layer4.2, 40 regions at 768x1024, KL-initialised alpha, whitening init, triplet loss with mining).

    python -m train.init_head --config=train/configs/remap_resnext101.py --workdir=$W/init \
        --config.model.pretrained=$WEIGHTS/resnext101_32x8d.safetensors
    python -m train.main --config=train/configs/remap_resnext101.py --workdir=$W \
        --config.model.pretrained=$WEIGHTS/resnext101_32x8d.safetensors \
        --config.head_init=$W/init/head_init.npz

The 64x4d variant: `--config.model.arch=resnext101_64x4d`. ResNeXt-101 needs about 2x the memory of
ResNet-101: on small accelerators use `--config.model.dtype=bfloat16` or `--config.grad_accum_steps`.
"""

from train.configs.remap_resnet101 import get_config as get_resnet101_config


def get_config():
    c = get_resnet101_config()
    c.model.arch = "resnext101_32x8d"
    return c
