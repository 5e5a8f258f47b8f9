"""Serving artifacts of an extractor: a `jax.export` program, a TF SavedModel and an ONNX file.

Each maps uint8 pixels (B, H, W, 3) at the model's input size (H, W) to (B, D) float32 unit descriptors:
normalisation, the backbone, the head and (MS-REMAP) the resizing to every scale and their combination are
inside; the batch size B is symbolic. The weights are constants of the program, so a serving process needs
neither remap_jax nor the checkpoint:

    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open("out/descriptor.jax", "rb").read()))
    descriptors = np.asarray(exported.call(images))   # uint8 (B, H, W, 3) -> (B, D) float32

`descriptor.json` beside it records the input size, the resize rule, the descriptor size, the platforms,
the artifact's SHA-256 and the versions it was made with. `Extractor.from_exported(path)` runs the whole
input pipeline (decode, resize, batching, devices) on an artifact.

Inputs are resized with `resize="exact"` to (H, W) whatever their orientation (how training images are
fed): a program has static spatial shapes. The artifact holds the program for one input size; for
MS-REMAP the scales are resized from that input on the device (antialiased bilinear,
`remap_jax.model.describe_multiscale`), not from the original image as the Extractor does on the host.

The program is the Extractor's describe function unjitted (a jitted function with compiler options cannot
be nested in an export); what runs on each platform (depthwise convolutions, the ROI cell pass) is chosen
per lowering platform, so one artifact carries the CPU, CUDA and TPU programs
(`remap_jax.describe.lowerings` tells which an exported module holds).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.model import combine_scales, scaled_size
from remap_jax.runtime import atomic

__all__ = ["ARTIFACT_FILE", "ExportError", "ExportedDescriber", "METADATA_FILE", "ONNX_FILE", "PLATFORMS",
           "SAVED_MODEL_DIR", "describe_program", "export_describer", "load_artifact", "onnx_available",
           "onnx_refusal", "save_artifact", "save_onnx", "save_saved_model"]

PLATFORMS = ("cpu", "cuda", "tpu")
ARTIFACT_FILE = "descriptor.jax"
METADATA_FILE = "descriptor.json"
SAVED_MODEL_DIR = "saved_model"
ONNX_FILE = "descriptor.onnx"
FORMAT = "remap-jax-descriptor-export"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An artifact that cannot be written, read or called as asked (one line naming the problem)."""


# ----------------------------------------------------------------------------------------------- program


def describe_program(extractor) -> tuple[Callable[[jax.Array], jax.Array], tuple[int, int]]:
    """The extractor's description as one unjitted function of uint8 (B, H, W, 3) pixels at the model's
    landscape input size (H, W) -> (B, D) float32 unit rows, with its variables closed over (they become
    constants of an exported program); and (H, W).

    Single scale: exactly the Extractor's describe program on a batch. MS-REMAP: each scale is resized
    from the input on the device (antialiased bilinear, as `remap_jax.model.describe_multiscale`)."""
    if getattr(extractor, "_program", None) is not None:
        raise ExportError("extractor: it already runs an exported artifact; export from the model instead")
    size = extractor.image_size
    model, weights, scales = extractor.model, extractor.scale_weights, extractor.scales
    variables = extractor._variables_for(size)

    def describe(images: jax.Array) -> jax.Array:
        b, h, w, c = images.shape
        batches = []
        for s in scales:
            target = scaled_size((h, w), s)
            batches.append(images if target == (h, w) else
                           jax.image.resize(images.astype(jnp.float32), (b, *target, c), "linear"))
        descs = [model.apply(v, x) for v, x in zip(variables, batches, strict=True)]
        return combine_scales(descs, weights)

    return describe, size


def export_describer(extractor, platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
    """`jax.export` of `describe_program(extractor)` for `platforms`, batch dimension symbolic."""
    platforms = _check_platforms(platforms)
    describe, (h, w) = describe_program(extractor)
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8)
    return jax.export.export(jax.jit(describe), platforms=platforms)(spec)


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    platforms = tuple(platforms)
    known = ("cpu", "cuda", "rocm", "tpu")
    bad = [p for p in platforms if p not in known]
    if not platforms or bad:
        raise ExportError(f"platforms: expected some of {', '.join(known)}, got {list(platforms)}")
    return platforms


# ------------------------------------------------------------------------------------- jax.export artifact


def save_artifact(directory: str | os.PathLike, extractor, platforms: Sequence[str] = PLATFORMS,
                  source: dict | None = None) -> dict:
    """Writes `descriptor.jax` (the serialized `export_describer`) and `descriptor.json` into `directory`;
    returns the metadata. `source` (e.g. {"checkpoint": path}) is recorded as given."""
    exported = export_describer(extractor, platforms)
    blob = bytes(exported.serialize())
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with atomic.atomic_write(os.path.join(directory, ARTIFACT_FILE)) as f:
        f.write(blob)
    meta = _metadata(extractor, exported, blob, source)
    atomic.write_json(os.path.join(directory, METADATA_FILE), meta, indent=2)
    return meta


def _metadata(extractor, exported, blob: bytes, source: dict | None) -> dict:
    import flax

    h, w = extractor.image_size
    out = exported.out_avals[0]
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "input": {"shape": ["B", h, w, 3], "dtype": "uint8", "layout": "NHWC RGB pixels 0-255"},
        "output": {"shape": ["B", int(out.shape[-1])], "dtype": "float32", "rows": "L2-normalised"},
        "image_size": [h, w],
        "resize": "exact",
        "resize_rule": f"every image resized to {h}x{w} (height x width), bilinear, whatever its orientation",
        "descriptor_size": int(out.shape[-1]),
        "scales": list(extractor.scales),
        "scale_weights": extractor.scale_weights and list(extractor.scale_weights),
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "flax": flax.__version__,
                     "remap_jax": _version()},
        "model": extractor.config if extractor.config is not None else repr(extractor.model)[:2000],
        "source": source or {},
    }


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("remap-jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def load_artifact(path: str | os.PathLike) -> tuple[jax.export.Exported, dict]:
    """(Exported, metadata) of an artifact: `path` is its directory or its `descriptor.jax`.

    Raises ExportError when the metadata is missing or foreign, or the artifact is truncated, altered or
    not a jax.export serialization."""
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    artifact = os.path.join(directory, ARTIFACT_FILE) if os.path.isdir(path) else path
    meta_path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(artifact):
        raise ExportError(f"artifact {artifact!r}: no such file; expected a directory written by "
                          "remap-export")
    if not os.path.isfile(meta_path):
        raise ExportError(f"artifact {artifact!r}: no {METADATA_FILE} beside it; expected a directory "
                          "written by remap-export")
    meta = atomic.read_json(meta_path, ExportError, f"artifact metadata {meta_path!r}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"artifact metadata {meta_path!r}: not a remap-export file (format "
                          f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ExportError(f"artifact metadata {meta_path!r}: version {meta['version']} is newer than this "
                          f"remap_jax reads ({FORMAT_VERSION}); upgrade remap-jax")
    with open(artifact, "rb") as f:
        blob = f.read()
    if len(blob) != meta.get("bytes"):
        raise ExportError(f"artifact {artifact!r}: {len(blob)} bytes, its metadata says {meta.get('bytes')}: "
                          "truncated or replaced; export it again")
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise ExportError(f"artifact {artifact!r}: its SHA-256 differs from the one in {METADATA_FILE}: "
                          "altered or from another export; export it again")
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # flatbuffer / MLIR errors of a foreign file
        raise ExportError(f"artifact {artifact!r}: not a jax.export serialization ({type(e).__name__})") \
            from None
    h, w = meta["image_size"]
    ins, outs = exported.in_avals, exported.out_avals
    if (len(ins) != 1 or ins[0].dtype != np.uint8 or tuple(ins[0].shape[1:]) != (h, w, 3) or len(outs) != 1
            or tuple(outs[0].shape[1:]) != (meta["descriptor_size"],)):
        raise ExportError(f"artifact {artifact!r}: holds a program of {[str(a) for a in ins]} -> "
                          f"{[str(a) for a in outs]}, not uint8 (B, {h}, {w}, 3) -> (B, "
                          f"{meta['descriptor_size']}) as {METADATA_FILE} says: a foreign artifact")
    return exported, meta


def platform_name(device: jax.Device) -> str:
    """A device's platform as jax.export names them: "cpu", "cuda", "rocm" or "tpu"."""
    if device.platform == "gpu":
        return "rocm" if "rocm" in device.client.platform_version.lower() else "cuda"
    return device.platform


class ExportedDescriber:
    """Calls an artifact with checks: `ExportedDescriber(path)(images)` -> (B, D) float32 numpy.

    `program(images)` is the unchecked call (usable under jit). Wrong dtype or shape, and devices of a
    platform the artifact was not exported for, raise ExportError naming the problem."""

    def __init__(self, path: str | os.PathLike):
        self.exported, self.meta = load_artifact(path)
        self.image_size = tuple(int(v) for v in self.meta["image_size"])
        self.dim = int(self.meta["descriptor_size"])
        self.digest = self.meta["sha256"]

    def __repr__(self) -> str:  # stable: part of Extractor.fingerprint
        return f"ExportedDescriber(sha256={self.digest})"

    def check_platform(self, device: jax.Device) -> None:
        name = platform_name(device)
        if name not in self.exported.platforms:
            raise ExportError(f"artifact: exported for {', '.join(self.exported.platforms)}, not for this "
                              f"device's platform {name!r}; export it again with --platforms ... {name}")

    def check_input(self, images: Any) -> None:
        h, w = self.image_size
        shape, dtype = tuple(getattr(images, "shape", ())), getattr(images, "dtype", None)
        if dtype != np.uint8 or len(shape) != 4 or shape[1:] != (h, w, 3):
            raise ExportError(f"images: expected uint8 (B, {h}, {w}, 3) pixels (the artifact's input size), "
                              f"got {dtype} {shape}")

    def program(self, images: jax.Array) -> jax.Array:
        return self.exported.call(images)

    def __call__(self, images: Any) -> np.ndarray:
        self.check_input(images)
        self.check_platform(jax.devices()[0])
        return np.asarray(self.program(images), np.float32)


# ------------------------------------------------------------------------------------------ TF SavedModel


def save_saved_model(directory: str | os.PathLike, extractor, platforms: Sequence[str] = PLATFORMS) -> str:
    """A TF SavedModel at `directory` whose `serving_default` signature maps `images` uint8 (B, H, W, 3)
    to `descriptors` float32 (B, D) (jax2tf native serialization of `describe_program` for `platforms`).
    Returns the directory."""
    from jax.experimental import jax2tf

    from remap_jax.runtime.extras import require

    tf = require("tensorflow", "data", "A TF SavedModel export")

    platforms = _check_platforms(platforms)
    describe, (h, w) = describe_program(extractor)
    converted = jax2tf.convert(describe, polymorphic_shapes=["(b, _, _, _)"], with_gradient=False,
                               native_serialization_platforms=platforms)
    module = tf.Module()
    module.describe = tf.function(
        lambda images: {"descriptors": converted(images)}, autograph=False,
        input_signature=[tf.TensorSpec((None, h, w, 3), tf.uint8, name="images")],
    )
    directory = os.fspath(directory)
    with _stablehlo_target(TF_STABLEHLO_VERSION):
        tf.saved_model.save(module, directory, signatures={"serving_default": module.describe})
    return directory


# The StableHLO version TensorFlow 2.20's XlaCallModule reads (its error names it: "failed to deserialize
# portable artifact using StableHLO_v1.12.1"). jax >= 0.11 serializes for a newer one by default (1.18.0),
# with ops TF 2.20 cannot read (`vhlo.custom_call_v2`), so the SavedModel is serialized for this version.
TF_STABLEHLO_VERSION = "1.12.1"


@contextlib.contextmanager
def _stablehlo_target(version: str):
    """While active, jax.export serializes StableHLO for at most `version` (jax picks a version about four
    weeks old by default; a consumer built on an older StableHLO, like TensorFlow 2.20, needs an older
    one). Serialization fails loudly if the program needs a newer op than `version` has."""
    from jax._src.export import _export

    hlo = _export.hlo
    default = hlo.get_version_from_compatibility_requirement

    def capped(requirement):
        chosen = default(requirement)
        older = min(chosen, version, key=lambda v: tuple(int(p) for p in str(v).split(".")))
        return older

    hlo.get_version_from_compatibility_requirement = capped
    try:
        yield
    finally:
        hlo.get_version_from_compatibility_requirement = default


# ------------------------------------------------------------------------------------------------- ONNX


def onnx_available() -> bool:
    """Whether `jax2onnx` is importable (it is an extra: `pip install 'remap-jax[onnx]'`, see the README)."""
    try:
        import jax2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def for_platform(fn: Callable, platform: str) -> Callable:
    """`fn` with every `lax.platform_dependent` choice resolved for `platform` (an unknown name such as
    "onnx" takes the `default` branches, the GPU/TPU kernels): a function whose jaxpr holds no
    `platform_index`/platform `cond`, for converters that work on jaxprs (jax2onnx has no rule for
    them). Calls of jitted and custom-derivative functions are inlined (forward only)."""

    def run(*args):
        specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*specs)
        outs = _eval_resolved(closed.jaxpr, closed.consts, jax.tree.leaves(args), platform)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return run


def _branch_of(branches_platforms, platform: str) -> int:
    for i, names in enumerate(branches_platforms):
        if names is None or platform in names:
            return i
    raise ExportError(f"platform {platform!r}: a platform_dependent choice has no branch for it")


def _eval_resolved(jaxpr, consts, args, platform: str) -> list:
    from jax.extend.core import Literal

    env = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name, params = eqn.primitive.name, eqn.params
        if name == "platform_index":
            outs = [np.int32(_branch_of(params["platforms"], platform))]
        elif name == "cond" and params.get("branches_platforms") is not None:
            branch = params["branches"][_branch_of(params["branches_platforms"], platform)]
            outs = _eval_resolved(branch.jaxpr, branch.consts, invals[1:], platform)
        elif name in ("pjit", "jit", "closed_call", "custom_jvp_call", "custom_vjp_call"):
            inner = params["jaxpr"] if "jaxpr" in params else params["call_jaxpr"]
            closed = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, [])
            outs = _eval_resolved(*closed, invals, platform)
        else:
            outs = eqn.primitive.bind(*invals, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def onnx_refusal(extractor) -> str | None:
    """Why `save_onnx` cannot convert `extractor` (jax2onnx missing, a 16-bit model), or None."""
    if not onnx_available():
        return ("jax2onnx is not installed; pip install -e '.[onnx]' && pip install --no-deps "
                "jax2onnx==0.17.1 (see the README's Export and serving section)")
    dtype = jnp.dtype(getattr(getattr(extractor.model, "backbone", None), "dtype", jnp.float32))
    if dtype != jnp.float32:
        return (f"float32 models only, this one computes in {dtype.name} (jax2onnx mis-converts padded "
                "16-bit max pooling); export with --dtype float32")
    return None


def save_onnx(path: str | os.PathLike, extractor, batch: int | None = None, opset: int = 21) -> str:
    """An ONNX file at `path`: input `images` uint8 (B, H, W, 3) -> `descriptors` float32 (B, D), through
    jax2onnx; B symbolic unless `batch` is given; float32 models only. The program is the GPU/TPU one
    (grouped convolutions, which ONNX's Conv expresses with `group`, and the gather ROI cell pass), see
    `for_platform`. Returns the path."""
    reason = onnx_refusal(extractor)
    if reason:
        raise ExportError(f"onnx: {reason}")
    from jax2onnx import to_onnx

    describe, (h, w) = describe_program(extractor)
    path = os.fspath(path)
    describe = for_platform(describe, "onnx")
    spec = jax.ShapeDtypeStruct(("B" if batch is None else int(batch), h, w, 3), jnp.uint8)
    model = to_onnx(describe, [spec], model_name="remap_descriptor", opset=opset,
                    input_names=["images"], output_names=["descriptors"])
    data = model.SerializeToString()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.atomic_write(path) as f:
        f.write(data)
    return path
