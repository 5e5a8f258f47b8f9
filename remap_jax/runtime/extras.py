"""Optional dependencies: which extra of `pip install remap-jax[...]` brings a module, and the one-line error
when it is missing.

The core install (jax, flax, numpy, pillow, tqdm, safetensors; flax brings optax, orbax-checkpoint and
msgpack) describes images, searches exactly and reads exported models; the extras bring the rest
(pyproject.toml): `[train]` (ml-collections, absl-py, optax, orbax-checkpoint, tensorboard, matplotlib),
`[data]` (TensorFlow, TFDS, array-record, scikit-image), `[index]` (ScaNN), `[all]`. Code that needs an
extra imports it through `require` at the point of use, so the core paths never import TensorFlow, TFDS or
ScaNN.
"""

from __future__ import annotations

import importlib
import importlib.util
import types


class MissingExtraError(ImportError):
    """A feature's optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, feature: str) -> types.ModuleType:
    """Imports `module` (dotted name) and returns it.

    If `module` or one of its parent packages is not installed, raises `MissingExtraError` with one line:
    "{feature} needs the [{extra}] extra (no module '...'): pip install 'remap-jax[{extra}]'". Any other
    import failure (an installed package that breaks while importing) propagates unchanged, since naming
    an extra would hide its cause.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        if e.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise
        raise MissingExtraError(_message(feature, extra, e.name)) from None


def require_for_command(command: str, needs: dict[str, tuple[str, ...]]) -> None:
    """At a command's start, before any work: exits (status 2) with the same one line as `require` for the
    first missing top-level module of `needs` ({extra: modules}). Checks that the modules are installed
    without importing them (TensorFlow takes seconds)."""
    for extra, modules in needs.items():
        for module in modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                raise SystemExit(f"error: {_message(command, extra, module)}")


def _message(feature: str, extra: str, module: str | None) -> str:
    return f"{feature} needs the [{extra}] extra (no module {module!r}): pip install 'remap-jax[{extra}]'"
