"""The ``synthetic_landmarks`` builder: stores what :func:`remap_jax.data.synthetic.dataset.generate`
returns for one of :data:`remap_jax.data.synthetic.config.NAMED_CONFIGS` (or a custom config)."""

from __future__ import annotations

import dataclasses

import numpy as np

from remap_jax.data.builders.base import IMAGE_FEATURE, tfds
from remap_jax.data.images import crop_bbox, encode_jpeg
from remap_jax.data.synthetic.config import LANDMARK_PHOTOS, NAMED_CONFIGS, SyntheticConfig
from remap_jax.data.synthetic.dataset import generate
from remap_jax.data.synthetic.photos import cell_layout, split_landmarks


@dataclasses.dataclass
class SyntheticLandmarksConfig(tfds.core.BuilderConfig):
    """A :class:`remap_jax.data.synthetic.config.SyntheticConfig` as a TFDS builder config."""

    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


class SyntheticLandmarks(tfds.core.GeneratorBasedBuilder):
    """Offline demo dataset: views of scikit-image photos as landmarks (see remap_jax.data.synthetic).

    Splits ``train`` and ``val`` (labels + query/positive pairs in metadata), ``index`` and ``query``
    (revisited-style easy/hard/junk ground truth in metadata and in the query records).

    Configs: ``default`` (whole photos as landmarks), ``hard`` (photos cut into cells, strong views,
    look-alike distractors: a pretrained network is far from saturating it) and their scaled-down test
    versions ``tiny`` and ``hard_tiny``. A config keeps the version of the release that last changed its
    data: default and tiny are still 1.1.0, hard_tiny 1.2.0, hard 1.3.0."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Training split adds 200 collage landmarks (4 views each) cut from the training photos.",
    }
    _HARD_RELEASE_NOTES = {
        **RELEASE_NOTES,
        "1.2.0": "New configs hard and hard_tiny: photos cut into grid cells (4 landmark cells per photo, "
        "the rest material for backgrounds, occluders, look-alike distractors and the training collages), "
        "strong views. default and tiny are unchanged (same records as 1.1.0).",
        "1.3.0": "hard: the training photos are cut into a 16-cell grid whose textured cells are all "
        "landmarks (97 sibling training landmarks instead of 29), collages have 2 views instead of 4; its "
        "val, index and query splits are the records of 1.2.0. hard_tiny is unchanged (1.2.0).",
    }
    BUILDER_CONFIGS = [
        SyntheticLandmarksConfig(
            name="default",
            description="192 px; train: 9 photos x 40 views + 200 collages x 4; 30 queries, 300 index",
            synthetic=NAMED_CONFIGS["default"],
        ),
        SyntheticLandmarksConfig(
            name="tiny",
            description="64 px images, few views: for tests",
            synthetic=NAMED_CONFIGS["tiny"],
        ),
        SyntheticLandmarksConfig(
            name="hard",
            version="1.3.0",
            release_notes=_HARD_RELEASE_NOTES,
            description="192 px; 6-cell photos, strong views; train: 97 cells of 16-cell training photos "
            "x 12 views + 250 collages x 2; 76 queries (19 test cells), 756 index (300 distractors, half "
            "look-alike)",
            synthetic=NAMED_CONFIGS["hard"],
        ),
        SyntheticLandmarksConfig(
            name="hard_tiny",
            version="1.2.0",
            release_notes=_HARD_RELEASE_NOTES,
            description="the hard recipe at 64 px with few views: for tests",
            synthetic=NAMED_CONFIGS["hard_tiny"],
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": IMAGE_FEATURE,
                    "original_image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "id": np.int64,
                    "label": np.int64,
                    "visibility": np.float32,
                    "difficulty": tfds.features.Text(),
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                }
            ),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config.synthetic
        data = generate(cfg)
        meta = self.info.metadata
        meta["config"] = dataclasses.asdict(cfg)
        # labels past these are training collages, then (photo_cells) the cells of meta["cells"]
        meta["landmark_names"] = list(LANDMARK_PHOTOS)
        meta["landmarks"] = {k: list(v) for k, v in data["landmarks"].items()}
        if cfg.photo_cells:  # labels of cells: which photo, which part of it (fractions of width / height)
            meta["photos"] = {k: list(v) for k, v in split_landmarks(cfg).items()}
            meta["cells"] = {
                str(i): {"photo": cell.photo, "box": list(cell.box)}
                for i, cell in cell_layout(cfg)["landmarks"].items()
            }
        splits = {}
        for split in ("train", "val"):
            part = data[split]
            if not part["views"]:
                continue
            meta[split] = {
                "labels": [v.landmark for v in part["views"]],
                "qidx": part["qidx"].tolist(),
                "pidx": part["pidx"].tolist(),
            }
            splits[split] = self._generate_examples(part["views"], cfg.jpeg_quality)
        meta["gnd"] = [
            {k: (np.asarray(g[k]).tolist()) for k in ("easy", "hard", "junk", "bbx")} for g in data["gnd"]
        ]
        splits["index"] = self._generate_examples(data["index"], cfg.jpeg_quality)
        splits["query"] = self._generate_examples(data["query"], cfg.jpeg_quality, query=True)
        return splits

    def _generate_examples(self, views, quality, query=False):
        for i, v in enumerate(views):
            full = encode_jpeg(v.image, quality=quality)
            # Like roxford5k: a query's image is cropped to its box, the full view is kept aside.
            image = encode_jpeg(crop_bbox(v.image, v.bbox), quality=quality) if query else full
            yield i, {
                "image": image,
                "original_image": full if query else b"",
                "id": i,
                "label": v.landmark,
                "visibility": v.visibility,
                "difficulty": v.difficulty,
                "bbox": np.asarray(v.bbox, np.float32),
            }
