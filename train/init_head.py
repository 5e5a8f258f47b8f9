r"""Initialise the REMAP head of a training config: KL region weights and whitening from its starting network.

    python -m train.init_head --config=train/configs/demo.py --workdir=/tmp/remap_init

Describes training pairs with the network `train.main` starts from (`config.model.pretrained`, else the
seeded random initialisation), as training sees the images (`config.image_size`), and writes head_init.npz,
head_params.msgpack, region_weights.png and init_head.json into the workdir (see
`remap_jax.fit.head_init_files`).
Set `config.head_init` to workdir/head_init.npz to train from it. Options: `config.init_head`.
"""

from __future__ import annotations

from remap_jax.runtime.extras import require_for_command

if __name__ == "__main__":
    require_for_command("python -m train.init_head", {"train": ("absl", "ml_collections", "matplotlib"),
                                                      "data": ("tensorflow_datasets",)})

import os  # noqa: E402

import ml_collections  # noqa: E402

from remap_jax.fit.head_init import HeadInit  # noqa: E402
from remap_jax.runtime.command_errors import keeping, reports_os_errors  # noqa: E402
from train.build import init_options  # noqa: E402


def run(config: ml_collections.ConfigDict, workdir: str) -> HeadInit:
    """The command's body: `train.build.initialise_head_from_config`, then a short report."""
    from train.build import initialise_head_from_config

    init_options(config)  # a bad value fails here, before anything is loaded
    if config.model.head != "remap":
        print(f"note: config.model.head is {config.model.head!r}; the alphas only apply to the 'remap' head")
    with keeping(lambda: kept_region_cache(workdir)):
        init = initialise_head_from_config(config, workdir)
    for i, layer in enumerate(init.layers):
        k = init.kl[i]
        print(f"{layer}: KL min {k.min():.4f} mean {k.mean():.4f} max {k.max():.4f} nats, {k.size} regions")
    print(f"wrote {workdir}/head_init.npz (set config.head_init to it), head_params.msgpack, "
          "region_weights.png")
    return init


def kept_region_cache(workdir: str) -> str | None:
    """The region descriptors already cached in `workdir` (a rerun reuses them), in words."""
    cache = os.path.join(workdir, "region_cache")
    chunks = [n for n in os.listdir(cache) if n.endswith(".npz")] if os.path.isdir(cache) else []
    if not chunks:
        return None
    return f"kept {len(chunks)} cached region-descriptor chunks in {cache}: a rerun reuses them"


@reports_os_errors("python -m train.init_head", exit=True)
def main(argv):
    del argv
    from absl import flags

    from remap_jax.runtime.distributed import use_cpu_cores
    from remap_jax.runtime.host_memory import apply_requested

    apply_requested()  # REMAP_JAX_RETAIN_MEMORY=1: before JAX starts its threads
    use_cpu_cores(flags.FLAGS.cpu_devices)
    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "training config file (train/configs/NAME.py)",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for the outputs and the region-descriptor cache")
    flags.DEFINE_integer("cpu_devices", 0, "JAX devices on a CPU host: 0 = one per core (see "
                         "remap_jax.runtime.distributed.use_cpu_cores)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
