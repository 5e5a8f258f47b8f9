"""Checking a training config before any compute (ml_collections already locks its keys and types)."""

from __future__ import annotations

import os

import ml_collections

from remap_jax.data import labelled
from remap_jax.fit import losses
from remap_jax.fit.head_init import HeadInitOptions
from remap_jax.model import spec_errors
from remap_jax.nn.backbones.weights import INSTALLED

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("exponential", "cosine", "constant")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check the values of a training config.

    Raises:
      ValueError listing every wrong field with its value and what was expected.
    """
    errors: list[str] = []

    def check(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            errors.append(f"config.{field} = {value!r}: expected {expected}")

    def is_size(v) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and x >= 32 for x in v)

    m = config.model
    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.items() if k != "pretrained"}
    errors += [f"config.model.{e}" for e in spec_errors(fields, backbone=bool(m.arch))]
    check(not m.pretrained or m.pretrained == INSTALLED or os.path.exists(m.pretrained), "model.pretrained",
          f"'' (random init), {INSTALLED!r} (the arch's pip weights package) or an existing weights file")
    if m.pretrained == INSTALLED and m.arch:
        from remap_jax.nn.backbones.weights import PRETRAINED_PACKAGES

        check(m.arch in PRETRAINED_PACKAGES, "model.pretrained",
              f"a weights file: no pip package ships {m.arch} weights (packages exist for "
              f"{', '.join(PRETRAINED_PACKAGES)})")
    check(bool(config.dataset), "dataset", "a training set name (e.g. sfm120k, synthetic_landmarks, "
          "folder:/data/products, csv:/data/train.csv)")
    for field in ("dataset", "test_dataset"):  # your own images: the spelling and the path, before compute
        if labelled.is_spec(config[field]):
            try:
                spec = labelled.parse_spec(config[field])
                check(os.path.exists(spec.path), field, "an existing folder, CSV or ground-truth JSON")
            except ValueError as e:
                errors.append(f"config.{field}: {e}")
    check(is_size(config.image_size), "image_size", "(height, width), ints >= 32")
    check(is_size(config.test_image_size), "test_image_size", "(height, width), ints >= 32")
    check(config.num_workers >= 1, "num_workers", ">= 1")
    if config.get("test_rerank"):
        from remap_jax.search.rerank import SuperGlobal

        try:
            SuperGlobal.parse(config.test_rerank)
        except ValueError as e:
            errors.append(f"config.test_rerank = {config.test_rerank!r}: {e}")
    check(not config.head_init or os.path.exists(config.head_init), "head_init",
          "'' or an existing file written by train.init_head")
    check(not (config.initialise_head and config.head_init), "head_init",
          "'' with initialise_head = True (the run computes its own head initialisation)")
    check(config.num_negatives >= 1, "num_negatives", ">= 1")
    check(config.queries_per_epoch >= config.batch_size, "queries_per_epoch", ">= batch_size")
    check(config.pool_size >= config.num_negatives, "pool_size", ">= num_negatives")
    check(config.mining_candidates >= config.num_negatives, "mining_candidates", ">= num_negatives")
    check(config.loss in losses.LOSSES, "loss", f"one of {tuple(losses.LOSSES)}")
    check(config.margin > 0, "margin", "> 0")
    check(config.num_epochs >= 1, "num_epochs", ">= 1")
    check(config.batch_size >= 1, "batch_size", ">= 1")
    check(config.grad_accum_steps >= 1, "grad_accum_steps", ">= 1")
    check(config.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
    check(config.learning_rate > 0, "learning_rate", "> 0")
    for f in ("lr_mult_backbone", "lr_mult_alpha", "lr_mult_whitening", "lr_mult_head"):
        check(config[f] >= 0, f, ">= 0 (0 freezes the group)")
    check(isinstance(config.frozen_backbone_blocks, (tuple, list))
          and all(isinstance(b, str) and b for b in config.frozen_backbone_blocks),
          "frozen_backbone_blocks", "a tuple of backbone module names or prefixes, e.g. ('conv1', 'layer1')")
    check(0 <= config.momentum < 1, "momentum", "in [0, 1)")
    check(config.weight_decay >= 0, "weight_decay", ">= 0")
    check(config.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
    check(config.warmup_steps >= 0, "warmup_steps", ">= 0")
    check(config.decay_per_epoch >= 0, "decay_per_epoch", ">= 0")
    check(config.grad_clip_norm >= 0, "grad_clip_norm", ">= 0 (0 = off)")
    check(config.log_every_steps >= 1, "log_every_steps", ">= 1")
    check(config.eval_every_epochs >= 0, "eval_every_epochs", ">= 0 (0 = never)")
    check(config.checkpoint_every_steps >= 1, "checkpoint_every_steps", ">= 1")
    check(config.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
    check(config.describe_batch_size >= 1, "describe_batch_size", ">= 1")
    try:
        HeadInitOptions.from_mapping(config.init_head.to_dict())
    except ValueError as e:
        errors.append(f"config.{e}")
    if errors:
        raise ValueError("invalid training config:\n  " + "\n  ".join(errors))
