r"""Initialise the REMAP head of a training config: KL region weights and whitening from its starting network.

    python -m train.init_head --config=train/configs/demo.py --workdir=/tmp/remap_init

Describes training pairs with the network `train.main` starts from (`config.model.pretrained`, else the
seeded random initialisation), as training sees the images (`config.image_size`), and writes head_init.npz,
head_params.msgpack, region_weights.png and init_head.json into the workdir (see `remap_jax.head_init`).
Set `config.head_init` to workdir/head_init.npz to train from it. Options: `config.init_head`.
"""

from __future__ import annotations

import ml_collections

from remap_jax.head_init import HeadInit, HeadInitOptions


def init_options(config: ml_collections.ConfigDict) -> HeadInitOptions:
    """`config.init_head` as options; an unknown key or a bad value raises ValueError naming the field."""
    try:
        return HeadInitOptions.from_mapping(config.get("init_head", ml_collections.ConfigDict()).to_dict())
    except ValueError as e:
        raise ValueError(f"config.{e}") from None


def run(config: ml_collections.ConfigDict, workdir: str) -> HeadInit:
    """The command's body: the training config's starting model -> `remap_jax.head_init.initialise_head`."""
    import jax

    from remap_jax.data import load_training_set
    from remap_jax.extract import Extractor
    from remap_jax.head_init import initialise_head
    from train.build import initial_variables, model_spec
    from train.step import make_mesh, pad_to_multiple

    options = init_options(config)  # a bad value fails here, before any compute
    if config.model.head != "remap":
        print(f"note: config.model.head is {config.model.head!r}; the alphas only apply to the 'remap' head")
    start = config.copy_and_resolve_references()
    start.head_init = ""  # describe with the network training starts from, before any head initialisation
    spec = model_spec(start)
    from remap_jax.model import model_from_config

    variables = initial_variables(model_from_config(spec), start, jax.random.key(config.seed))
    mesh = make_mesh()
    extractor = Extractor.from_config(spec, variables, image_size=config.image_size, resize="exact",
                                      batch_size=pad_to_multiple(config.describe_batch_size, mesh.size),
                                      workers=config.num_workers, mesh=mesh)
    train_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    record = {"dataset": config.dataset, "arch": config.model.arch,
              "backbone_weights": config.model.pretrained or f"random init (seed {config.seed})"}
    init, _ = initialise_head(extractor, train_set, tuple(config.model.taps), options, workdir=workdir,
                              out_dim=config.model.out_dim, seed=config.seed, cache_key=config.dataset,
                              summary=record)
    for i, layer in enumerate(init.layers):
        k = init.kl[i]
        print(f"{layer}: KL min {k.min():.4f} mean {k.mean():.4f} max {k.max():.4f} nats, {k.size} regions")
    print(f"wrote {workdir}/head_init.npz (set config.head_init to it), head_params.msgpack, "
          "region_weights.png")
    return init


def main(argv):
    del argv
    from absl import flags

    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "training config file (train/configs/NAME.py)",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for the outputs and the region-descriptor cache")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
