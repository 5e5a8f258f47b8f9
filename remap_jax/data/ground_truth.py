"""Ground-truth JSON files (``gnd:FILE.json``): a benchmark of your own laid out like the revisited ones,
read and checked into query / database paths and per-query easy / hard / junk positions."""

from __future__ import annotations

import os

import numpy as np

from remap_jax.data.labelled import DatasetFileError
from remap_jax.runtime.atomic import read_json


def read_ground_truth(path: str, check_files: bool = True) -> dict:
    """A benchmark laid out like the revisited ones, as JSON::

        {"qimlist": ["queries/q1.jpg", ...], "imlist": ["db/a.jpg", ...],
         "gnd": [{"easy": [0, 5], "hard": [7], "junk": [3], "bbx": [x0, y0, x1, y1]}, ...]}

    ``gnd[q]`` holds database positions (into ``imlist``): ``easy``/``hard``/``junk`` (the revisited
    protocol: Easy, Medium and Hard setups), or ``positives`` (or ``ok``) and optionally ``junk`` (one setup,
    with Recall@k); ``bbx`` (optional) crops the query. Names are relative to the JSON's folder (or absolute);
    a name without extension is also looked up as ``<name>.jpg`` and ``jpg/<name>.jpg`` (the revisited
    download layout). ``check_files=False``: missing images are not an error (scoring descriptors made
    elsewhere); their path is the first candidate.

    Returns ``{"queries": [paths], "database": [paths], "query_ids", "database_ids", "gnd": [dict],
    "protocol": "revisited" | "labels"}``.
    """
    if not os.path.isfile(path):
        raise DatasetFileError(f"{path}: no such file; expected a ground-truth JSON with qimlist, imlist, "
                               "gnd")
    raw = read_json(path, DatasetFileError)
    if not isinstance(raw, dict) or not {"qimlist", "imlist", "gnd"} <= set(raw):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DatasetFileError(f"{path}: expected an object with keys qimlist, imlist, gnd; got {got}")
    base = os.path.dirname(path)

    def resolve(name: str, what: str) -> str:
        candidates = [name if os.path.isabs(name) else os.path.join(base, name)]
        if not os.path.splitext(name)[1]:
            candidates += [candidates[0] + ".jpg", os.path.join(base, "jpg", f"{name}.jpg")]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None and check_files:
            raise DatasetFileError(f"{path}: {what} image {name!r} not found (looked for "
                                   f"{', '.join(candidates)})")
        return found or candidates[0]

    queries = [resolve(str(n), "query") for n in raw["qimlist"]]
    database = [resolve(str(n), "database") for n in raw["imlist"]]
    if len(raw["gnd"]) != len(queries):
        raise DatasetFileError(f"{path}: {len(raw['gnd'])} gnd entries for {len(queries)} queries; "
                               "expected one per query")
    revisited = all(isinstance(g, dict) and {"easy", "hard"} <= set(g) for g in raw["gnd"])
    gnd = []
    for q, g in enumerate(raw["gnd"]):
        if not isinstance(g, dict):
            raise DatasetFileError(f"{path}: gnd[{q}] is {type(g).__name__}; expected an object")
        if revisited:
            entry = {k: g.get(k, []) for k in ("easy", "hard", "junk")}
        else:
            positives = g.get("positives", g.get("ok"))
            if positives is None:
                raise DatasetFileError(f"{path}: gnd[{q}] has keys {sorted(g)}; expected easy+hard (+junk) "
                                       "or positives (+junk)")
            entry = {"easy": positives, "hard": [], "junk": g.get("junk", [])}
        for k in ("easy", "hard", "junk"):
            arr = np.asarray(entry[k], np.int64).reshape(-1)
            if arr.size and not 0 <= arr.min() <= arr.max() < len(database):
                raise DatasetFileError(f"{path}: gnd[{q}]['{k}'] has positions outside imlist "
                                       f"(0..{len(database) - 1})")
            entry[k] = arr
        if "bbx" in g and g["bbx"] is not None:
            bbx = np.asarray(g["bbx"], np.float64).reshape(-1)
            if bbx.size != 4:
                raise DatasetFileError(f"{path}: gnd[{q}]['bbx'] has {bbx.size} numbers; "
                                       "expected x0 y0 x1 y1")
            entry["bbx"] = bbx
        gnd.append(entry)
    return {"queries": queries, "database": database, "query_ids": [str(n) for n in raw["qimlist"]],
            "database_ids": [str(n) for n in raw["imlist"]], "gnd": gnd,
            "protocol": "revisited" if revisited else "labels"}
