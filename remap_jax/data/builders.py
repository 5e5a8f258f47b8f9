"""TFDS dataset builders for retrieval benchmarks and training sets (array_record format, random access).

Builders (registered with TFDS when this module is imported):

* ``roxford5k``, ``rparis6k``: revisited Oxford / Paris. Splits ``index`` (database, in ``imlist`` order)
  and ``query`` (70 queries, image cropped to the ground-truth box; the original JPEG is kept in
  ``original_image``). Ground truth (imlist, qimlist, per-query easy/hard/junk/bbx) is in
  ``info.metadata`` and in the query records.
* ``revisitop1m``: the 1M distractors (split ``index``); configs ``full`` or a prefix of the 100 tars.
* ``sfm120k``: retrieval-SfM-120k (splits ``train`` and ``val`` with cluster labels and query/positive pairs).
* ``gldv2_clean``: Google Landmarks v2 clean train set (split ``train``, landmark labels, positive pairs
  between images of the same landmark); configs ``full`` or a prefix of the 500 tars.
* ``synthetic_landmarks``: the offline demo dataset (:mod:`remap_jax.data.synthetic`).
* ``user_images`` (:class:`UserImages`, not registered: built through ``folder:``/``csv:``/``gnd:`` names of
  :mod:`remap_jax.data.sets`): your own images, one config per listing digest.

Every builder first looks for its files in ``manual_dir`` (default ``<data_dir>/downloads/manual``) and
downloads the missing ones from the official location otherwise. Labels and query/positive pairs of the
training sets live in ``info.metadata`` so that loaders need not read the images to get them.

This module uses ``epath`` for file access (TFDS's builder tests forbid ``os``/``open`` in builders).
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile

import numpy as np
from etils import epath

from remap_jax.data import synthetic
from remap_jax.data.images import ImageDecodeError, crop_bbox, encode_jpeg, load_rgb
from remap_jax.data.labelled import DatasetFileError  # noqa: F401 (one error class for every dataset file)
from remap_jax.runtime.extras import require

tfds = require("tensorflow_datasets", "data", "the TFDS datasets (remap_jax.data)")

REVISITOP_GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl"
OXFORD_IMAGES_URL = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
PARIS_IMAGES_URLS = (
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
)
REVISITOP1M_URL = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.{i}.tar.gz"
SFM120K_IMAGES_URL = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/ims/ims.tar.gz"
SFM120K_DB_URL = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/dbs/retrieval-SfM-120k.pkl"
GLDV2_CSV_URL = "https://s3.amazonaws.com/google-landmark/metadata/train_clean.csv"
GLDV2_TAR_URL = "https://s3.amazonaws.com/google-landmark/train/images_{i:03d}.tar"

_IMAGE = tfds.features.Image(shape=(None, None, 3))


# ------------------------------------------------------------------------------------------ file inputs


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


def _iter_tar_images(dl_manager, path: epath.Path):
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


def _as_int_list(x) -> list[int]:
    return [int(v) for v in np.asarray(x if x is not None else [], dtype=np.int64).reshape(-1)]


# ------------------------------------------------------------------------------- revisited Oxford/Paris


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
        entry = {k: _as_int_list(g[k]) for k in ("easy", "hard", "junk")}
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
                    "image": _IMAGE,
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
            for stem, member, data in _iter_tar_images(dl_manager, tar):
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


# -------------------------------------------------------------------------------------------- R1M


@dataclasses.dataclass
class TarPrefixConfig(tfds.core.BuilderConfig):
    """Build from the first ``num_tars`` image archives only (quick runs)."""

    num_tars: int = 0


class Revisitop1m(tfds.core.GeneratorBasedBuilder):
    """The revisitop 1M distractor images (100 tars of 10k JPEGs); build a prefix with the tars_N configs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        TarPrefixConfig(name="full", num_tars=100, description="all 100 tars (1,001,001 images)"),
        TarPrefixConfig(name="tars_10", num_tars=10, description="first 10 tars (~100k images)"),
        TarPrefixConfig(name="tars_1", num_tars=1, description="first tar (~10k images)"),
    ]
    DEFAULT_CONFIG_NAME = "full"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put revisitop1m.1.tar.gz ... revisitop1m.N.tar.gz (N = the config's num_tars) in manual_dir. "
        f"Source: {REVISITOP1M_URL.format(i='N')}"
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"image": _IMAGE, "filename": tfds.features.Text()}),
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
            for j, (_, member, data) in enumerate(_iter_tar_images(dl_manager, tar)):
                count += 1
                yield t * 10_000_000 + j, {"image": data, "filename": member}
            if count == 0:
                raise DatasetFileError(f"{tar}: expected JPEG images in the archive, found none")


# --------------------------------------------------------------------------------------- SfM-120k


def sfm_cid_path(cid: str) -> str:
    """Relative image path of a retrieval-SfM-120k cid (cirtorch's ``cid2filename`` layout)."""
    return f"{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}"


def _training_features():
    return tfds.features.FeaturesDict(
        {"image": _IMAGE, "filename": tfds.features.Text(), "label": np.int64, "id": np.int64}
    )


def _check_pairs(path, split, n, qidx, pidx):
    if len(qidx) != len(pidx):
        raise DatasetFileError(
            f"{path}: {split}: qidxs and pidxs differ in length ({len(qidx)}, {len(pidx)})"
        )
    for name, arr in (("qidxs", qidx), ("pidxs", pidx)):
        if arr and not 0 <= min(arr) <= max(arr) < n:
            raise DatasetFileError(f"{path}: {split}: {name} has indices outside 0..{n - 1}")


class Sfm120k(tfds.core.GeneratorBasedBuilder):
    """retrieval-SfM-120k (Radenovic et al.): train/val images with 3D-model cluster labels and
    query/positive pairs, from ``ims.tar.gz`` and ``retrieval-SfM-120k.pkl``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put ims.tar.gz ({SFM120K_IMAGES_URL}) and retrieval-SfM-120k.pkl ({SFM120K_DB_URL}) in manual_dir."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=_training_features(),
            homepage="http://cmp.felk.cvut.cz/cnnimageretrieval/",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
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
            labels = _as_int_list(d["cluster"])
            if len(labels) != len(cids):
                raise DatasetFileError(f"{db_path}: {split}: {len(cids)} cids but {len(labels)} cluster ids")
            qidx, pidx = _as_int_list(d["qidxs"]), _as_int_list(d["pidxs"])
            _check_pairs(db_path, split, len(cids), qidx, pidx)
            self.info.metadata[split] = {"labels": labels, "qidx": qidx, "pidx": pidx}
            splits[split] = self._generate_examples(dl_manager, paths["ims.tar.gz"], cids, labels)
        return splits

    def _generate_examples(self, dl_manager, tar, cids, labels):
        position = {c: i for i, c in enumerate(cids)}
        seen = set()
        for stem, _, data in _iter_tar_images(dl_manager, tar):
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


class Gldv2Clean(tfds.core.GeneratorBasedBuilder):
    """Google Landmarks v2, cleaned training set (train_clean.csv + images_NNN.tar). Positive pairs join
    each image with the next image (cyclically) of the same landmark; landmarks with one image are dropped."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        TarPrefixConfig(name="full", num_tars=500, description="all 500 image tars"),
        TarPrefixConfig(name="tars_10", num_tars=10, description="first 10 tars"),
        TarPrefixConfig(name="tars_1", num_tars=1, description="first tar"),
    ]
    DEFAULT_CONFIG_NAME = "full"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put train_clean.csv ({GLDV2_CSV_URL}) and images_000.tar ... ({GLDV2_TAR_URL.format(i=0)} ...) "
        "in manual_dir."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=_training_features(),
            homepage="https://github.com/cvdfoundation/google-landmark",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
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
            for stem, member, data in _iter_tar_images(dl_manager, tar):
                k = position.get(stem)
                if k is not None:
                    yield k, {"image": data, "filename": member, "label": int(labels[k]), "id": k}


# ------------------------------------------------------------------------------- synthetic landmarks


@dataclasses.dataclass
class SyntheticLandmarksConfig(tfds.core.BuilderConfig):
    """A :class:`remap_jax.data.synthetic.SyntheticConfig` as a TFDS builder config."""

    synthetic: synthetic.SyntheticConfig = dataclasses.field(default_factory=synthetic.SyntheticConfig)


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
            synthetic=synthetic.NAMED_CONFIGS["default"],
        ),
        SyntheticLandmarksConfig(
            name="tiny",
            description="64 px images, few views: for tests",
            synthetic=synthetic.NAMED_CONFIGS["tiny"],
        ),
        SyntheticLandmarksConfig(
            name="hard",
            version="1.3.0",
            release_notes=_HARD_RELEASE_NOTES,
            description="192 px; 6-cell photos, strong views; train: 97 cells of 16-cell training photos "
            "x 12 views + 250 collages x 2; 76 queries (19 test cells), 756 index (300 distractors, half "
            "look-alike)",
            synthetic=synthetic.NAMED_CONFIGS["hard"],
        ),
        SyntheticLandmarksConfig(
            name="hard_tiny",
            version="1.2.0",
            release_notes=_HARD_RELEASE_NOTES,
            description="the hard recipe at 64 px with few views: for tests",
            synthetic=synthetic.NAMED_CONFIGS["hard_tiny"],
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": _IMAGE,
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
        data = synthetic.generate(cfg)
        meta = self.info.metadata
        meta["config"] = dataclasses.asdict(cfg)
        # labels past these are training collages, then (photo_cells) the cells of meta["cells"]
        meta["landmark_names"] = list(synthetic.LANDMARK_PHOTOS)
        meta["landmarks"] = {k: list(v) for k, v in data["landmarks"].items()}
        if cfg.photo_cells:  # labels of cells: which photo, which part of it (fractions of width / height)
            meta["photos"] = {k: list(v) for k, v in synthetic.split_landmarks(cfg).items()}
            meta["cells"] = {
                str(i): {"photo": cell.photo, "box": list(cell.box)}
                for i, cell in synthetic.cell_layout(cfg)["landmarks"].items()
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


# ------------------------------------------------------------------------------------- your own images


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
                {"image": _IMAGE, "filename": tfds.features.Text(), "id": np.int64}
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
