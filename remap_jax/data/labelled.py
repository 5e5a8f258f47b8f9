"""Your own labelled images: listings of a folder tree or a CSV, their bad-data report, pairs and splits.

Spellings (one for configs, the command line and Python; options after ``?``, joined by ``&``):

* ``folder:/data/products`` -- a tree ``root/<label>/<image>``; files at any depth under a label folder
  belong to that label.
* ``csv:/data/train.csv`` (or ``.tsv``) -- a header naming a path column (``path``, ``filename``, ``file``,
  ``image``) and a label column (``label``, ``landmark_id``, ``class``, ``category``), optionally ``split``
  (``train``, ``val``, ``test``). GLDv2's ``train.csv`` (``id,url,landmark_id``: images found as
  ``<id>.jpg`` or ``train/a/b/c/<id>.jpg`` next to the file) and ``train_clean.csv`` (``landmark_id,images``)
  are read as they come. Relative paths are relative to the CSV file.
* ``gnd:/data/bench/gnd.json`` -- a test set laid out like the revisited benchmarks (see
  :func:`remap_jax.data.ground_truth.read_ground_truth`).

Options: ``val`` (training: the labels held out for validation, a fraction < 1 or a count; default 0.1;
a CSV's ``split=val`` rows take precedence), ``queries`` (test: a seeded sample of N queries; default every
image with a positive), ``seed`` (default 0), e.g. ``folder:/data/products?val=0.2&seed=1``.

Nothing here reads pixels: listing stats files (size, mtime) for :func:`listing_digest`, which keys the
built dataset (:class:`remap_jax.data.builders.user_images.UserImages`), so a changed listing is rebuilt,
never read stale. What cannot be used is skipped and counted in a :class:`DataReport` (first few names kept),
or stops with a :class:`DatasetFileError` naming the file and the expected layout. From a listing's labels to
training pairs, a validation hold-out and test ground truth: :mod:`remap_jax.data.labels`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from urllib.parse import parse_qsl

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
KINDS = ("folder", "csv", "gnd")
SPLITS = ("train", "val", "test")
PATH_COLUMNS = ("path", "filename", "file", "image", "image_path")
LABEL_COLUMNS = ("label", "landmark_id", "class", "category", "class_id")
FOLDER_LAYOUT = "root/<label>/<image> (one folder per label, images at any depth below it)"
CSV_LAYOUT = (f"a header with a path column ({'|'.join(PATH_COLUMNS)}) or GLDv2's id, a label column "
              f"({'|'.join(LABEL_COLUMNS)}) and optionally split ({'|'.join(SPLITS)})")
SHOWN = 5  # names kept per reason in a report

# reason -> how the report says it
REASONS = {
    "non_image_files": "non-image files (by extension)",
    "files_outside_label_folders": "files directly under the root, outside a label folder",
    "empty_label_folders": "label folders without images",
    "duplicate_paths": "duplicate paths (kept the first)",
    "missing_files": "rows whose file is missing",
    "blank_labels": "rows with a blank label",
    "unreadable_images": "unreadable images (could not be decoded)",
    "single_image_labels": "labels with one image (no positive: never a query, kept as negatives)",
    "test_rows": "rows of split test (not used for training)",
    "missing_features": "images without a descriptor in the feature files",
    "unlisted_features": "descriptors whose id is not in the listing",
}


class DatasetFileError(ValueError):
    """A dataset input file (a benchmark's download, a listing, a CSV, a ground-truth file) is missing or
    malformed; the message names the file and what was expected."""


@dataclasses.dataclass
class DataReport:
    """What was skipped and why: per reason a count and the first few names. ``kept`` counts what was used."""

    source: str
    kept: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)  # reason -> {"count": n, "first": [names]}

    def skip(self, reason: str, name: str) -> None:
        if reason not in REASONS:
            raise KeyError(f"reason: expected one of {sorted(REASONS)}, got {reason!r}")
        entry = self.skipped.setdefault(reason, {"count": 0, "first": []})
        entry["count"] += 1
        if len(entry["first"]) < SHOWN:
            entry["first"].append(str(name))

    def count(self, reason: str) -> int:
        return int(self.skipped.get(reason, {}).get("count", 0))

    def to_dict(self) -> dict:
        skipped = {k: {"count": v["count"], "first": list(v["first"])} for k, v in self.skipped.items()}
        return {"source": self.source, "kept": dict(self.kept), "skipped": skipped}

    @classmethod
    def from_dict(cls, d: dict) -> DataReport:
        skipped = {k: {"count": int(v["count"]), "first": list(v["first"])} for k, v in d["skipped"].items()}
        return cls(d["source"], dict(d.get("kept", {})), skipped)

    def format(self) -> str:
        kept = ", ".join(f"{v} {k}" for k, v in self.kept.items())
        lines = [f"{self.source}: {kept or 'nothing kept'}"]
        for reason, entry in self.skipped.items():
            more = ", ..." if entry["count"] > len(entry["first"]) else ""
            lines.append(f"  skipped {entry['count']} {REASONS[reason]}: {', '.join(entry['first'])}{more}")
        return "\n".join(lines)


@dataclasses.dataclass
class Spec:
    """A parsed ``kind:path?options`` spelling."""

    kind: str
    path: str
    options: dict

    @property
    def display(self) -> str:
        return f"{self.kind}:{self.path}"

    def option(self, name: str, cast, default):
        if name not in self.options:
            return default
        try:
            return cast(self.options[name])
        except ValueError:
            raise ValueError(f"{self.display}: option {name}={self.options[name]!r} is not a valid "
                             f"{cast.__name__}") from None


OPTIONS = ("val", "queries", "seed")


def is_spec(name: str) -> bool:
    """True for the user-image spellings ``folder:``, ``csv:`` and ``gnd:``."""
    return isinstance(name, str) and name.partition(":")[0] in KINDS and ":" in name


def parse_spec(name: str) -> Spec:
    """``"folder:/data/products?val=0.2"`` -> Spec(kind, absolute path, options)."""
    kind, _, rest = name.partition(":")
    if kind not in KINDS or not rest:
        raise ValueError(f"dataset {name!r}: expected {'|'.join(KINDS)}:PATH[?option=value&...]")
    path, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown options {unknown}; expected {list(OPTIONS)}")
    return Spec(kind, os.path.abspath(os.path.expanduser(path)), options)


@dataclasses.dataclass
class Listing:
    """Images named by a folder tree or a CSV: absolute paths, ids (paths relative to the root or the CSV's
    folder, as written for absolute CSV paths), label names and splits ("" when none is given)."""

    source: str
    root: str
    paths: list[str]
    ids: list[str]
    labels: list[str]
    splits: list[str]
    report: DataReport

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep) -> Listing:
        keep = [int(i) for i in keep]
        return dataclasses.replace(self, paths=[self.paths[i] for i in keep], ids=[self.ids[i] for i in keep],
                                   labels=[self.labels[i] for i in keep],
                                   splits=[self.splits[i] for i in keep])


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_folder(root: str) -> Listing:
    """Lists ``root/<label>/...`` (sorted, symlinked duplicates and non-images skipped and reported)."""
    source = f"folder:{root}"
    if not os.path.isdir(root):
        raise DatasetFileError(f"{root}: not a directory; expected {FOLDER_LAYOUT}")
    report = DataReport(source)
    paths, ids, labels, seen = [], [], [], {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            report.skip("files_outside_label_folders", entry.name)
            continue
        found = 0
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                if not _is_image(name):
                    report.skip("non_image_files", rel)
                    continue
                real = os.path.realpath(path)
                if real in seen:
                    report.skip("duplicate_paths", f"{rel} (the file of {seen[real]})")
                    continue
                seen[real] = rel
                paths.append(path)
                ids.append(rel)
                labels.append(entry.name)
                found += 1
        if not found:
            report.skip("empty_label_folders", entry.name + "/")
    if not paths:
        raise DatasetFileError(f"{root}: no images found ({', '.join(IMAGE_EXTENSIONS)}); "
                               f"expected {FOLDER_LAYOUT}")
    return Listing(source, root, paths, ids, labels, [""] * len(paths), report)


def _gldv2_image(base: str, image_id: str) -> str:
    """Where an image of GLDv2's ``id`` column lies: ``<id>.jpg`` or ``[train/]a/b/c/<id>.jpg``."""
    candidates = [os.path.join(base, f"{image_id}.jpg")]
    if len(image_id) >= 3:
        nested = os.path.join(image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")
        candidates += [os.path.join(base, "train", nested), os.path.join(base, nested)]
    return next((c for c in candidates if os.path.exists(c)), candidates[-1])


def _csv_rows(path: str):
    """Yields (line number, {column: value}) of a CSV/TSV with a header; train_clean.csv is expanded."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    lines = text.splitlines()
    if not lines:
        raise DatasetFileError(f"{path}: empty file; expected {CSV_LAYOUT}")
    delimiter = "\t" if path.lower().endswith(".tsv") or "\t" in lines[0] else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    if header == ["landmark_id", "images"]:  # GLDv2 train_clean.csv: landmark_id, space-separated ids
        for n, row in enumerate(reader, start=2):
            if len(row) == 2:
                for image_id in row[1].split():
                    yield n, {"id": image_id, "landmark_id": row[0].strip()}
        return
    for n, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DatasetFileError(f"{path}: line {n}: {len(row)} fields, the header has {len(header)} "
                                   f"({', '.join(header)}); expected {CSV_LAYOUT}")
        yield n, dict(zip(header, (c.strip() for c in row), strict=True))


def list_csv(path: str, check_files: bool = True) -> Listing:
    """Lists the rows of a CSV/TSV (see the module doc); bad rows are skipped and reported, conflicting
    labels for one path stop with an error naming both lines. ``check_files=False`` keeps rows whose file
    is not there (scoring descriptors made elsewhere)."""
    source = f"csv:{path}"
    if not os.path.isfile(path):
        raise DatasetFileError(f"{path}: no such file; expected a CSV with {CSV_LAYOUT}")
    base = os.path.dirname(path)
    report = DataReport(source)
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DatasetFileError(f"{path}: no rows after the header; expected {CSV_LAYOUT}")
    columns = list(first[1])
    path_col = next((c for c in PATH_COLUMNS if c in columns), "id" if "id" in columns else None)
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    if path_col is None or label_col is None:
        raise DatasetFileError(f"{path}: line 1: header {columns}; expected {CSV_LAYOUT}")
    paths, ids, labels, splits = [], [], [], []
    first_line: dict[str, tuple[int, str]] = {}
    for n, row in [first, *rows]:
        name, label = row[path_col], row[label_col]
        split = row.get("split", "").lower()
        split = "val" if split == "validation" else split
        if split and split not in SPLITS:
            raise DatasetFileError(f"{path}: line {n}: split {row['split']!r}; expected one of {SPLITS} "
                                   "or blank")
        where = f"line {n}: {name or '(blank path)'}"
        if not label:
            report.skip("blank_labels", where)
            continue
        if path_col == "id":
            full = _gldv2_image(base, name)
            name = os.path.relpath(full, base)
        else:
            full = name if os.path.isabs(name) else os.path.join(base, name)
        if not name or (check_files and not os.path.isfile(full)):
            report.skip("missing_files", where)
            continue
        if not _is_image(full):
            report.skip("non_image_files", where)
            continue
        key = os.path.realpath(full)
        if key in first_line:
            m, other = first_line[key]
            if other != label:
                raise DatasetFileError(f"{path}: line {n}: {name} has label {label!r}, but line {m} gave it "
                                       f"{other!r}; expected one label per image")
            report.skip("duplicate_paths", f"{where} (as line {m})")
            continue
        first_line[key] = (n, label)
        paths.append(full)
        ids.append(name)
        labels.append(label)
        splits.append(split)
    if not paths:
        raise DatasetFileError(f"{path}: no usable rows ({report.format()}); expected {CSV_LAYOUT}")
    return Listing(source, base, paths, ids, labels, splits, report)


def list_source(spec: Spec, check_files: bool = True) -> Listing:
    """The listing of a ``folder:`` or ``csv:`` spec (``check_files``: see :func:`list_csv`)."""
    if spec.kind == "folder":
        return list_folder(spec.path)
    if spec.kind == "csv":
        return list_csv(spec.path, check_files)
    raise ValueError(f"{spec.display}: expected a labelled folder: or csv: (gnd: names a test set)")


def listing_digest(kind: str, paths, labels=(), names=()) -> str:
    """sha1 (hex) of a listing: each path with its size and mtime (ns), and its label and name when given.
    A file rewritten, renamed, added, removed or relabelled changes it."""
    h = hashlib.sha1(kind.encode())
    for i, p in enumerate(paths):
        st = os.stat(p)
        h.update(json.dumps([p, st.st_size, st.st_mtime_ns, labels[i] if len(labels) else "",
                             names[i] if len(names) else ""]).encode())
    return h.hexdigest()
