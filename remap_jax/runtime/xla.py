"""The XLA compiler options remap-jax compiles its programs with, per platform, and a `jit` that applies them.

CPU: convolutions and dots go to XLA's own Eigen kernels instead of the YNNPACK library fusions that jaxlib
0.10 uses by default on x86 (`xla_cpu_experimental_ynn_fusion_type` emptied), because the forward
descriptor programs run faster with them. Description uses them (the `Extractor`'s programs). Training
steps keep jaxlib's defaults, because with these options the backward pass of the EfficientNet-Lite demo
step is several times slower; so does the exact index (`remap_jax.search.exact`), whose scoring matmul is
slower with Eigen's dot. GPU and TPU: no options. The measurements behind each choice are in
docs/performance.md ("The CPU backend").

An option the user sets in XLA_FLAGS wins: it is left out here, so
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=...` still chooses the library.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["compiler_options", "jit"]

_OPTIONS = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def compiler_options(platform: str | None = None, xla_flags: str | None = None) -> dict[str, Any]:
    """The options for a program compiled for `platform` ("cpu", "gpu", "tpu": the compile target's
    platform, e.g. the `.platform` of the devices it runs on; default: jax's default backend, where a
    plain `jax.jit` compiles), without those named in `xla_flags` (default: the XLA_FLAGS environment
    variable). Options are per compile: they never enter the traced program, so an export or a lowering
    for another platform carries none of them (what runs in the program is chosen per lowering platform
    by `jax.lax.platform_dependent`, see `nn.backbones.layers` and `nn.roi_pool`)."""
    platform = platform or jax.default_backend()
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    named = {f.lstrip("-").split("=", 1)[0] for f in flags.split()}
    return {k: v for k, v in _OPTIONS.get(platform, {}).items() if k not in named}


def jit(fn: Callable, *, platform: str | None = None, **kwargs) -> Callable:
    """`jax.jit(fn, **kwargs)` compiled with `compiler_options(platform)`; `platform` is the platform of
    the devices it will run on (the Extractor passes its mesh's). Only a top-level jit can carry compiler
    options: to export or nest the function, use the unjitted `fn`."""
    return jax.jit(fn, compiler_options=compiler_options(platform) or None, **kwargs)
