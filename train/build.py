"""From a training config to the model: its spec, the network to train, its initial variables.

The model spec (`remap_jax.model`) is the one description of the model: the trainer trains
`model_from_config(spec)`, exports the spec with the weights, and evaluates through
`remap_jax.Extractor.from_config(spec, ...)`, exactly what `Extractor.from_checkpoint` of the export builds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from remap_jax.fit.head_init import HeadInit, HeadInitOptions
from remap_jax.fit.head_init_files import head_param_tree, load_head_init
from remap_jax.fit.initialise import initialise_head
from remap_jax.model import MODEL_FIELDS, init_variables, model_from_config, normalise_config


def model_spec(config: ml_collections.ConfigDict) -> dict | None:
    """The spec of the model `config` trains (images at `test_image_size`, one scale); None for a custom
    model (`config.model.arch = ""`)."""
    if not config.model.arch:
        return None
    fields = {k: config.model[k] for k in MODEL_FIELDS}
    return normalise_config({**fields, "taps": list(fields["taps"]),
                             "image_size": list(config.test_image_size), "scales": [1.0]})


def build_model(config: ml_collections.ConfigDict):
    """The RetrievalModel to train (BatchNorm unfolded) from `config.model`."""
    return model_from_config(model_spec(config))


def initial_variables(model, config: ml_collections.ConfigDict, key) -> dict:
    """Variables training starts from: the backbone from `config.model.pretrained` (a weights file, or
    "installed" for the arch's pip weights package; else the seeded random init `train.init_head` describes
    with), the head from `config.head_init` (else alpha ones, identity whitening). With
    `config.model.arch = ""` (a custom model) everything comes from `model.init`."""
    h, w = config.image_size
    if not config.model.arch:
        variables = jax.jit(model.init)(key, jnp.zeros((1, h, w, 3), jnp.float32))
        return jax.tree_util.tree_map(np.asarray, dict(variables))
    from remap_jax.nn.backbones import init_backbone, load_pretrained

    if config.model.pretrained:  # a weights file, or "installed": the arch's pip weights package
        backbone = load_pretrained(config.model.arch, config.model.pretrained)
    else:
        backbone = init_backbone(config.model.arch, jax.random.PRNGKey(config.seed))
    head = head_param_tree(load_head_init(config.head_init, config.model.taps)) if config.head_init else None
    variables = init_variables(model, key, (1, h, w, 3), backbone, head_params=head)
    return jax.tree_util.tree_map(np.asarray, variables)


def check_eval_shapes(model, variables, config: ml_collections.ConfigDict) -> None:
    """Fail early if the evaluation size cannot run with parameters shaped at the training size.

    Region heads hold one alpha per ROI region, and the region count depends on the feature-map size, so
    `test_image_size` (and its portrait transpose) must give the same count as `image_size`.
    """
    h, w = config.test_image_size
    for shape in ((h, w), (w, h)):
        try:
            jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, *shape, 3), jnp.float32))
        except Exception as e:  # flax raises ScopeParamShapeError, others TypeError/ValueError
            raise ValueError(
                f"config.test_image_size = {tuple(config.test_image_size)}: the model trained at image_size "
                f"{tuple(config.image_size)} cannot describe {shape[0]}x{shape[1]} images "
                f"({type(e).__name__}: {str(e).splitlines()[0]}). Region heads have one alpha per ROI "
                f"region; use a test size whose feature map gives the same region count (e.g. the same size)"
            ) from None


def init_options(config: ml_collections.ConfigDict) -> HeadInitOptions:
    """`config.init_head` as options; an unknown key or a bad value raises ValueError naming the field."""
    try:
        return HeadInitOptions.from_mapping(config.get("init_head", ml_collections.ConfigDict()).to_dict())
    except ValueError as e:
        raise ValueError(f"config.{e}") from None


def initialise_head_from_config(config: ml_collections.ConfigDict, workdir: str, training_set=None, *,
                                mesh=None) -> HeadInit:
    """KL region weights and whitening for `config`'s head, from the network training starts from (its
    `pretrained` backbone, or the seeded random init), on its training set at `config.image_size`; the
    files of `remap_jax.fit.head_init_files.write_outputs` go to `workdir` (`config.head_init` takes
    head_init.npz)."""
    from remap_jax.data import load_training_set
    from remap_jax.describe.extractor import Extractor
    from train.step import make_mesh, pad_to_multiple

    options = init_options(config)  # a bad value fails here, before any compute
    start = config.copy_and_resolve_references()
    start.head_init = ""  # describe with the network training starts from, before any head initialisation
    spec = model_spec(start)
    variables = initial_variables(model_from_config(spec), start, jax.random.key(config.seed))
    mesh = mesh or make_mesh()
    extractor = Extractor.from_config(spec, variables, image_size=config.image_size, resize="exact",
                                      batch_size=pad_to_multiple(config.describe_batch_size, mesh.size),
                                      workers=config.num_workers, mesh=mesh)
    if training_set is None:
        training_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    record = {"dataset": config.dataset, "arch": config.model.arch,
              "backbone_weights": config.model.pretrained or f"random init (seed {config.seed})"}
    init, _ = initialise_head(extractor, training_set, tuple(config.model.taps), options, workdir=workdir,
                              out_dim=config.model.out_dim, seed=config.seed,
                              # a user set's name carries its listing digest: a changed folder is a miss
                              cache_key=getattr(training_set, "name", config.dataset),
                              summary=record)
    return init
