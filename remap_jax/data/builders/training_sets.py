"""The training sets: retrieval-SfM-120k (``sfm120k``: 3D-model cluster labels and the published
query/positive pairs) and Google Landmarks v2 clean (``gldv2_clean``: landmark labels, pairs within a
landmark). Labels and pairs are stored in ``info.metadata``."""

from __future__ import annotations

import tarfile

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
from remap_jax.data.labelled import DatasetFileError

SFM120K_IMAGES_URL = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/ims/ims.tar.gz"
SFM120K_DB_URL = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/dbs/retrieval-SfM-120k.pkl"
GLDV2_CSV_URL = "https://s3.amazonaws.com/google-landmark/metadata/train_clean.csv"
GLDV2_TAR_URL = "https://s3.amazonaws.com/google-landmark/train/images_{i:03d}.tar"


def sfm_cid_path(cid: str) -> str:
    """Relative image path of a retrieval-SfM-120k cid (cirtorch's ``cid2filename`` layout)."""
    return f"{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}"


class _TrainingSetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared schema of sfm120k and gldv2_clean: image, filename, label, id; examples kept in order (pairs
    refer to positions)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    HOMEPAGE = ""

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": IMAGE_FEATURE, "filename": tfds.features.Text(), "label": np.int64, "id": np.int64}
            ),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )


def _check_pairs(path, split, n, qidx, pidx):
    if len(qidx) != len(pidx):
        raise DatasetFileError(
            f"{path}: {split}: qidxs and pidxs differ in length ({len(qidx)}, {len(pidx)})"
        )
    for name, arr in (("qidxs", qidx), ("pidxs", pidx)):
        if arr and not 0 <= min(arr) <= max(arr) < n:
            raise DatasetFileError(f"{path}: {split}: {name} has indices outside 0..{n - 1}")


class Sfm120k(_TrainingSetBuilder):
    """retrieval-SfM-120k (Radenovic et al.): train/val images with 3D-model cluster labels and
    query/positive pairs, from ``ims.tar.gz`` and ``retrieval-SfM-120k.pkl``."""

    HOMEPAGE = "http://cmp.felk.cvut.cz/cnnimageretrieval/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put ims.tar.gz ({SFM120K_IMAGES_URL}) and retrieval-SfM-120k.pkl ({SFM120K_DB_URL}) in manual_dir."
    )

    def _split_generators(self, dl_manager):
        paths = resolve_inputs(
            dl_manager, {"ims.tar.gz": SFM120K_IMAGES_URL, "retrieval-SfM-120k.pkl": SFM120K_DB_URL}
        )
        db_path = paths["retrieval-SfM-120k.pkl"]
        db = load_pickle(db_path, ("train", "val"))
        splits = {}
        for split in ("train", "val"):
            d = db[split]
            missing = {"cids", "cluster", "qidxs", "pidxs"} - set(d)
            if missing:
                raise DatasetFileError(f"{db_path}: {split} lacks keys {sorted(missing)}")
            cids = [str(c) for c in d["cids"]]
            labels = as_int_list(d["cluster"])
            if len(labels) != len(cids):
                raise DatasetFileError(f"{db_path}: {split}: {len(cids)} cids but {len(labels)} cluster ids")
            qidx, pidx = as_int_list(d["qidxs"]), as_int_list(d["pidxs"])
            _check_pairs(db_path, split, len(cids), qidx, pidx)
            self.info.metadata[split] = {"labels": labels, "qidx": qidx, "pidx": pidx}
            splits[split] = self._generate_examples(dl_manager, paths["ims.tar.gz"], cids, labels)
        return splits

    def _generate_examples(self, dl_manager, tar, cids, labels):
        position = {c: i for i, c in enumerate(cids)}
        seen = set()
        for stem, _, data in iter_tar_images(dl_manager, tar):
            i = position.get(stem)
            if i is None or i in seen:
                continue
            seen.add(i)
            yield i, {"image": data, "filename": sfm_cid_path(cids[i]), "label": labels[i], "id": i}
        if len(seen) != len(cids):
            missing = [c for c in cids if position[c] not in seen][:5]
            raise DatasetFileError(
                f"{tar}: {len(cids) - len(seen)} images listed in the db are missing, e.g. {missing}"
            )


# ------------------------------------------------------------------------------------- GLDv2 clean


def parse_gldv2_csv(path: epath.Path) -> dict[str, int]:
    """Reads ``train_clean.csv`` (``landmark_id,images`` with space-separated ids) -> {image id: landmark}."""
    path = epath.Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path}: file not found, expected train_clean.csv (landmark_id,images)")
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip().replace(" ", "") != "landmark_id,images":
        raise DatasetFileError(f"{path}: expected the header 'landmark_id,images', got {lines[:1]}")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        lm, _, ids = line.partition(",")
        try:
            landmark = int(lm)
        except ValueError:
            raise DatasetFileError(f"{path}: line {n}: expected an integer landmark_id, got {lm!r}") from None
        for image_id in ids.split():
            out[image_id] = landmark
    if not out:
        raise DatasetFileError(f"{path}: no images listed")
    return out


class Gldv2Clean(_TrainingSetBuilder):
    """Google Landmarks v2, cleaned training set (train_clean.csv + images_NNN.tar). Positive pairs join
    each image with the next image (cyclically) of the same landmark; landmarks with one image are dropped."""

    HOMEPAGE = "https://github.com/cvdfoundation/google-landmark"
    BUILDER_CONFIGS = tar_prefix_configs(500, "all 500 image tars", "first 10 tars", "first tar")
    DEFAULT_CONFIG_NAME = "full"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put train_clean.csv ({GLDV2_CSV_URL}) and images_000.tar ... ({GLDV2_TAR_URL.format(i=0)} ...) "
        "in manual_dir."
    )

    def _split_generators(self, dl_manager):
        n = self.builder_config.num_tars
        if not 1 <= n <= 500:
            raise ValueError(f"num_tars: expected 1..500, got {n}")
        files = {"train_clean.csv": GLDV2_CSV_URL}
        files.update({f"images_{i:03d}.tar": GLDV2_TAR_URL.format(i=i) for i in range(n)})
        paths = resolve_inputs(dl_manager, files)
        landmark_of = parse_gldv2_csv(paths["train_clean.csv"])
        tars = [paths[f"images_{i:03d}.tar"] for i in range(n)]
        present = set()
        for tar in tars:  # list members (headers only) to know which clean images these tars hold
            try:
                with epath.Path(tar).open("rb") as f, tarfile.open(fileobj=f) as archive:
                    names = archive.getnames()
            except (tarfile.TarError, OSError) as e:
                raise DatasetFileError(f"{tar}: not a readable tar archive ({e})") from e
            present.update(s.rsplit("/", 1)[-1].rsplit(".", 1)[0] for s in names)
        ids = [i for i in landmark_of if i in present]
        counts: dict[int, int] = {}
        for i in ids:
            counts[landmark_of[i]] = counts.get(landmark_of[i], 0) + 1
        ids = sorted((i for i in ids if counts[landmark_of[i]] >= 2), key=lambda i: (landmark_of[i], i))
        if not ids:
            raise DatasetFileError(
                f"{', '.join(map(str, tars))}: no landmark has two clean images in these tars"
            )
        labels = np.array([landmark_of[i] for i in ids], np.int64)
        qidx, pidx = [], []
        for lm in np.unique(labels):
            members = np.flatnonzero(labels == lm)
            qidx.extend(members.tolist())
            pidx.extend(np.roll(members, -1).tolist())
        self.info.metadata["train"] = {"labels": labels.tolist(), "qidx": qidx, "pidx": pidx}
        return {"train": self._generate_examples(dl_manager, tars, ids, labels)}

    def _generate_examples(self, dl_manager, tars, ids, labels):
        position = {i: k for k, i in enumerate(ids)}
        for tar in tars:
            for stem, member, data in iter_tar_images(dl_manager, tar):
                k = position.get(stem)
                if k is not None:
                    yield k, {"image": data, "filename": member, "label": int(labels[k]), "id": k}
