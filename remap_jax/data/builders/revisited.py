"""Revisited Oxford 5k and Paris 6k (``roxford5k``, ``rparis6k``: index and cropped queries with their
easy / hard / junk ground truth) and the revisitop 1M distractors (``revisitop1m``)."""

from __future__ import annotations

import numpy as np
from etils import epath

from remap_jax.data.builders.base import (
    IMAGE_FEATURE,
    as_int_list,
    iter_tar_images,
    load_pickle,
    resolve_inputs,
    tar_prefix_configs,
    tfds,
)
from remap_jax.data.images import ImageDecodeError, crop_bbox, load_rgb
from remap_jax.data.labelled import DatasetFileError

REVISITOP_GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl"
OXFORD_IMAGES_URL = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
PARIS_IMAGES_URLS = (
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
)
REVISITOP1M_URL = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.{i}.tar.gz"


def parse_revisited_gnd(path: epath.Path) -> dict:
    """Reads ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` into plain lists; checks its structure."""
    raw = load_pickle(path, ("imlist", "qimlist", "gnd"))
    imlist = [str(s) for s in raw["imlist"]]
    qimlist = [str(s) for s in raw["qimlist"]]
    if len(raw["gnd"]) != len(qimlist):
        raise DatasetFileError(
            f"{path}: expected one gnd entry per query ({len(qimlist)} in qimlist), got {len(raw['gnd'])}"
        )
    gnd = []
    for q, g in enumerate(raw["gnd"]):
        missing = {"bbx", "easy", "hard", "junk"} - set(g)
        if missing:
            raise DatasetFileError(f"{path}: gnd[{q}] lacks keys {sorted(missing)}")
        entry = {k: as_int_list(g[k]) for k in ("easy", "hard", "junk")}
        bbx = [float(v) for v in np.asarray(g["bbx"], dtype=np.float64).reshape(-1)]
        if len(bbx) != 4:
            raise DatasetFileError(f"{path}: gnd[{q}]['bbx'] expected 4 numbers (x0, y0, x1, y1), got {bbx}")
        entry["bbx"] = bbx
        for k in ("easy", "hard", "junk"):
            if entry[k] and not 0 <= min(entry[k]) <= max(entry[k]) < len(imlist):
                raise DatasetFileError(
                    f"{path}: gnd[{q}]['{k}'] has indices outside imlist (0..{len(imlist) - 1})"
                )
        gnd.append(entry)
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def _manual_instructions(dataset: str, image_urls: tuple[str, ...]) -> str:
    names = ", ".join(u.rsplit("/", 1)[-1] for u in image_urls)
    return (
        f"Put {names} and gnd_{dataset}.pkl in manual_dir (default <data_dir>/downloads/manual). "
        f"Images: {', '.join(image_urls)}; ground truth: {REVISITOP_GND_URL.format(name=dataset)}"
    )


class _RevisitedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared code of roxford5k and rparis6k."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    IMAGE_URLS: tuple[str, ...] = ()
    DATASET = ""

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": IMAGE_FEATURE,
                    "original_image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "filename": tfds.features.Text(),
                    "id": np.int64,
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "easy": tfds.features.Sequence(np.int64),
                    "hard": tfds.features.Sequence(np.int64),
                    "junk": tfds.features.Sequence(np.int64),
                }
            ),
            homepage="http://cmp.felk.cvut.cz/revisitop/",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        gnd_name = f"gnd_{self.DATASET}.pkl"
        files = {gnd_name: REVISITOP_GND_URL.format(name=self.DATASET)}
        files.update({u.rsplit("/", 1)[-1]: u for u in self.IMAGE_URLS})
        paths = resolve_inputs(dl_manager, files)
        gt = parse_revisited_gnd(paths[gnd_name])
        self.info.metadata.update(gt)
        tars = [paths[u.rsplit("/", 1)[-1]] for u in self.IMAGE_URLS]
        return {
            "index": self._generate_examples(dl_manager, tars, gt, query=False),
            "query": self._generate_examples(dl_manager, tars, gt, query=True),
        }

    def _generate_examples(self, dl_manager, tars, gt, query: bool):
        names = gt["qimlist"] if query else gt["imlist"]
        position = {n: i for i, n in enumerate(names)}
        seen = set()
        empty = np.zeros(4, np.float32)
        for tar in tars:
            for stem, member, data in iter_tar_images(dl_manager, tar):
                i = position.get(stem)
                if i is None or i in seen:
                    continue
                seen.add(i)
                record = {"filename": stem + ".jpg", "id": i, "easy": [], "hard": [], "junk": []}
                if query:
                    g = gt["gnd"][i]
                    try:
                        # The boxes were drawn on the stored pixels: no EXIF rotation.
                        full = load_rgb(data, exif_transpose=False)
                    except ImageDecodeError as e:
                        raise DatasetFileError(f"{tar}: query image {member}: {e}") from e
                    record.update(
                        image=crop_bbox(full, g["bbx"]),
                        original_image=data,
                        bbox=np.asarray(g["bbx"], np.float32),
                        easy=g["easy"],
                        hard=g["hard"],
                        junk=g["junk"],
                    )
                else:
                    record.update(image=data, original_image=b"", bbox=empty)
                yield i, record
        if len(seen) != len(names):
            missing = [n for n in names if position[n] not in seen][:5]
            raise DatasetFileError(
                f"{', '.join(str(t) for t in tars)}: expected all {len(names)} "
                f"{'query' if query else 'index'} images of {self.DATASET}, {len(names) - len(seen)} missing "
                f"(e.g. {missing})"
            )


class Roxford5k(_RevisitedBuilder):
    """Revisited Oxford 5k (Radenovic et al., CVPR 2018): 4993 index images, 70 queries."""

    DATASET = "roxford5k"
    IMAGE_URLS = (OXFORD_IMAGES_URL,)
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual_instructions(DATASET, IMAGE_URLS)


class Rparis6k(_RevisitedBuilder):
    """Revisited Paris 6k (Radenovic et al., CVPR 2018): 6322 index images, 70 queries."""

    DATASET = "rparis6k"
    IMAGE_URLS = PARIS_IMAGES_URLS
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual_instructions(DATASET, IMAGE_URLS)



class Revisitop1m(tfds.core.GeneratorBasedBuilder):
    """The revisitop 1M distractor images (100 tars of 10k JPEGs); build a prefix with the tars_N configs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = tar_prefix_configs(
        100, "all 100 tars (1,001,001 images)", "first 10 tars (~100k images)", "first tar (~10k images)")
    DEFAULT_CONFIG_NAME = "full"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put revisitop1m.1.tar.gz ... revisitop1m.N.tar.gz (N = the config's num_tars) in manual_dir. "
        f"Source: {REVISITOP1M_URL.format(i='N')}"
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"image": IMAGE_FEATURE, "filename": tfds.features.Text()}),
            homepage="http://cmp.felk.cvut.cz/revisitop/",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        n = self.builder_config.num_tars
        if not 1 <= n <= 100:
            raise ValueError(f"num_tars: expected 1..100, got {n}")
        files = {f"revisitop1m.{i}.tar.gz": REVISITOP1M_URL.format(i=i) for i in range(1, n + 1)}
        paths = resolve_inputs(dl_manager, files)
        return {"index": self._generate_examples(dl_manager, [paths[k] for k in files])}

    def _generate_examples(self, dl_manager, tars):
        for t, tar in enumerate(tars):
            # Streamed in archive order (deterministic), so a 10k-image tar is never held in memory.
            count = 0
            for j, (_, member, data) in enumerate(iter_tar_images(dl_manager, tar)):
                count += 1
                yield t * 10_000_000 + j, {"image": data, "filename": member}
            if count == 0:
                raise DatasetFileError(f"{tar}: expected JPEG images in the archive, found none")
