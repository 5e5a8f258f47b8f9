"""Shared code of the builders: finding input files (``manual_dir`` first, else a download), reading
pickles and tar archives of images, the image feature and the tar-prefix config.

Every file error is a :class:`remap_jax.data.labelled.DatasetFileError` naming the file and what was
expected.
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile

import numpy as np
from etils import epath

from remap_jax.data.labelled import DatasetFileError
from remap_jax.runtime.extras import require

tfds = require("tensorflow_datasets", "data", "the TFDS datasets (remap_jax.data)")

IMAGE_FEATURE = tfds.features.Image(shape=(None, None, 3))


def _manual_dir(dl_manager) -> epath.Path | None:
    try:
        return epath.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):
        return None


def resolve_inputs(dl_manager, files: dict[str, str]) -> dict[str, epath.Path]:
    """Maps ``{file name: official url}`` to local paths: the file in ``manual_dir`` when it is there,
    otherwise a download from the url (TFDS caches downloads)."""
    manual = _manual_dir(dl_manager)
    found, missing = {}, {}
    for name, url in files.items():
        if manual is not None and (manual / name).exists():
            found[name] = manual / name
        else:
            missing[name] = url
    if missing:
        try:
            found.update({k: epath.Path(v) for k, v in dl_manager.download(missing).items()})
        except Exception as e:  # network down, 404, checksum...
            where = f"in manual_dir {manual}" if manual is not None else "(no manual_dir given)"
            raise DatasetFileError(
                f"could not download {sorted(missing)} and did not find them {where}: {e}. "
                "Download them yourself (see the README, section Datasets) and pass manual_dir."
            ) from e
    return found


def load_pickle(path: epath.Path, expected_keys: tuple[str, ...]) -> dict:
    """Loads a pickled dict and checks its top-level keys."""
    path = epath.Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path}: file not found, expected a pickle with keys {expected_keys}")
    try:
        data = pickle.loads(path.read_bytes(), encoding="latin1")
    except Exception as e:
        raise DatasetFileError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not set(expected_keys) <= set(data):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetFileError(f"{path}: expected a dict with keys {list(expected_keys)}, got {got}")
    return data


def iter_tar_images(dl_manager, path: epath.Path):
    """Yields (basename without extension, member path, bytes) for every file in a (compressed) tar."""
    path = epath.Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path}: file not found, expected a tar archive of JPEG images")
    try:
        for member, fobj in dl_manager.iter_archive(path):
            member = str(member)
            base = member.replace("\\", "/").rsplit("/", 1)[-1]
            if not base or base.startswith("."):
                continue
            yield base.rsplit(".", 1)[0] if "." in base else base, member, fobj.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetFileError(f"{path}: not a readable tar archive ({type(e).__name__}: {e})") from e


def as_int_list(x) -> list[int]:
    return [int(v) for v in np.asarray(x if x is not None else [], dtype=np.int64).reshape(-1)]



@dataclasses.dataclass
class TarPrefixConfig(tfds.core.BuilderConfig):
    """Build from the first ``num_tars`` image archives only (quick runs)."""

    num_tars: int = 0


def tar_prefix_configs(total: int, full: str, ten: str, one: str) -> list[TarPrefixConfig]:
    """The configs of a dataset shipped as ``total`` numbered tars: ``full``, ``tars_10`` and ``tars_1``, each
    with its description (any other ``tars_N`` is made on demand by ``records.get_builder``)."""
    return [TarPrefixConfig(name="full", num_tars=total, description=full),
            TarPrefixConfig(name="tars_10", num_tars=10, description=ten),
            TarPrefixConfig(name="tars_1", num_tars=1, description=one)]
