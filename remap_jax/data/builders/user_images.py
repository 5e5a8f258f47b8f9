"""The ``user_images`` builder: your own images (a labelled folder, a CSV or a ground-truth benchmark) stored
as they are, one config per listing digest (:mod:`remap_jax.data.labelled_sets` builds it)."""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath

from remap_jax.data.builders.base import IMAGE_FEATURE, tfds
from remap_jax.data.images import ImageDecodeError, load_rgb
from remap_jax.data.labelled import DatasetFileError


@dataclasses.dataclass
class UserImagesConfig(tfds.core.BuilderConfig):
    """The files of a user's listing (:mod:`remap_jax.data.labelled`); its name is the listing's digest.

    files: split -> tuple of (absolute path, id). strict: an unreadable image stops the build (a ground-truth
    benchmark refers to images by position) instead of being skipped and reported.
    """

    files: dict = dataclasses.field(default_factory=dict, repr=False)  # TFDS logs the config's repr
    strict: bool = False


def check_images(paths, workers: int = 2) -> tuple[list[int], list[tuple[int, str]]]:
    """Decodes every file once: (positions that decode, [(position, reason)] of those that do not)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(i_path):
        i, path = i_path
        try:
            load_rgb(path, exif_transpose=False)
            return i, None
        except (ImageDecodeError, OSError) as e:
            return i, str(e)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, enumerate(paths)))
    return [i for i, bad in results if bad is None], [(i, bad) for i, bad in results if bad is not None]


class UserImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A user's own images (a labelled folder, a CSV or a ground-truth benchmark), stored as they are
    (encoded bytes) for random access. One config per listing digest, so a changed listing is rebuilt.

    Every file is decoded once while building: the ones that do not decode are left out (or, with
    ``strict``, stop the build) and ``info.metadata[split]`` records ``kept`` (the listing positions of the
    records, in order) and ``unreadable`` ([id, reason] pairs). Labels stay with the listing."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": IMAGE_FEATURE, "filename": tfds.features.Text(), "id": np.int64}
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the files are local
        splits = {}
        for split, files in self.builder_config.files.items():
            kept, bad = check_images([p for p, _ in files])
            if bad and self.builder_config.strict:
                i, reason = bad[0]
                raise DatasetFileError(f"{files[i][0]}: {reason}; expected a readable image ({len(bad)} "
                                       f"unreadable in {split})")
            self.info.metadata[split] = {"kept": kept, "unreadable": [[files[i][1], r] for i, r in bad]}
            splits[split] = self._generate_examples(files, kept)
        return splits

    def _generate_examples(self, files, kept):
        for k, i in enumerate(kept):
            path, name = files[i]
            yield k, {"image": epath.Path(path).read_bytes(), "filename": name, "id": i}
