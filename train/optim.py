"""The optimiser: parameter groups with their own learning rates, schedules, frozen modules.

Groups (`param_labels`): 'backbone', 'alpha' (ROI-stream region weights), 'whitening', 'head' (other head
parameters, e.g. GeM's p) and 'frozen' (backbone modules named in `config.frozen_backbone_blocks`). Each group
gets `config.learning_rate` times its multiplier (`group_lr_mults`; 0 freezes it), through
`optax.multi_transform`; `remap_jax.nn.heads.nonnegative_alpha()` is chained last so alpha stays >= 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from remap_jax.nn import heads


def names_module(entry: str, name: str) -> bool:
    """Whether a `frozen_backbone_blocks` entry names the top-level backbone module `name`: the name itself,
    or a prefix of it that does not end inside a number. "layer1" names "layer1" (not a "layer10"), "bn"
    names "bn1", "blocks_1" names "blocks_1" but not "blocks_10", and "blocks_" names every block."""
    if not name.startswith(entry):
        return False
    rest = name[len(entry):]
    return not (rest and entry[-1].isdigit() and rest[0].isdigit())


def param_labels(params, frozen_blocks: Sequence[str] = ()) -> Any:
    """Optimiser group of every parameter: 'backbone', 'alpha' (ROI-stream weights), 'whitening', 'head', or
    'frozen' for backbone parameters whose top-level module is named by one of `frozen_blocks`
    (`names_module`; e.g. ``("conv1", "bn1", "layer1", "layer2", "layer3")`` trains only a ResNet's last
    stage)."""

    def label(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys and keys[0] == "backbone":
            if len(keys) > 1 and any(names_module(entry, keys[1]) for entry in frozen_blocks):
                return "frozen"
            return "backbone"
        if keys and keys[-1] == "alpha":
            return "alpha"
        if "whiten" in keys:
            return "whitening"
        return "head"

    return jax.tree_util.tree_map_with_path(label, params)


def group_lr_mults(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Learning-rate multiplier of each optimiser group of `param_labels` (0 = frozen)."""
    return {"backbone": config.lr_mult_backbone, "alpha": config.lr_mult_alpha,
            "whitening": config.lr_mult_whitening, "head": config.lr_mult_head, "frozen": 0.0}


def check_frozen_blocks(config: ml_collections.ConfigDict, params) -> None:
    """Every entry of `config.frozen_backbone_blocks` must name (a prefix of) a backbone module."""
    names = list(params.get("backbone", {}))
    for block in config.frozen_backbone_blocks:
        if not any(names_module(block, n) for n in names):
            raise ValueError(
                f"frozen_backbone_blocks: {block!r} matches no module of backbone {config.model.arch!r}; "
                f"expected prefixes of {names}"
            )


def frozen_mask(config: ml_collections.ConfigDict, params) -> Any:
    """Pytree of bools: True for parameters whose group has learning-rate multiplier 0."""
    mults = group_lr_mults(config)
    labels = param_labels(params, config.frozen_backbone_blocks)
    return jax.tree_util.tree_map(lambda label: mults[label] == 0, labels)


def make_schedule(config: ml_collections.ConfigDict, base_lr: float, updates_per_epoch: int):
    """Learning rate per optimiser update: linear warm-up, then exponential / cosine decay or constant."""
    total = max(1, config.num_epochs * updates_per_epoch)
    warmup = min(config.warmup_steps, total - 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(base_lr)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(base_lr, decay_steps=max(1, total - warmup))
    else:  # exponential, per epoch as in cnnimageretrieval: lr * exp(-decay * epoch), applied continuously

        def main(step):
            return base_lr * jnp.exp(-config.decay_per_epoch * step / max(1, updates_per_epoch))

    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, params, updates_per_epoch: int):
    """Optax transformation with per-group learning rates, optional accumulation, alpha kept >= 0.

    Checks `config.frozen_backbone_blocks` against the parameters first.

    Returns:
      (tx, schedule) where schedule(update_index) is the base learning rate (before group multipliers).
    """
    check_frozen_blocks(config, params)
    mults = group_lr_mults(config)

    def group(mult: float):
        if mult == 0:
            return optax.set_to_zero()
        lr = make_schedule(config, config.learning_rate * mult, updates_per_epoch)
        if config.optimizer == "adam":
            if config.weight_decay:
                return optax.adamw(lr, weight_decay=config.weight_decay)
            return optax.adam(lr)
        parts = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
        return optax.chain(*parts, optax.sgd(lr, momentum=config.momentum or None))

    labels = param_labels(params, config.frozen_backbone_blocks)
    used = set(jax.tree_util.tree_leaves(labels))
    chain = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    chain.append(optax.multi_transform({g: group(mults[g]) for g in used}, labels))
    chain.append(heads.nonnegative_alpha())  # last: projects alpha back to >= 0 after the update
    tx = optax.chain(*chain)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx, make_schedule(config, config.learning_rate, updates_per_epoch)
