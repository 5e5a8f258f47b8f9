"""Retrieval evaluation: mAP and mP@k under the revisited Oxford/Paris protocol, classic Oxford/Paris and
INRIA Holidays mAP, Recall@k of labelled collections, and the results table. Rankings come from
``remap_jax.search.ranking.rank_database`` (or an index); alpha-QE / alpha-DBA live in
``remap_jax.evaluation.expansion``.

Conventions (the README's "Evaluation" section states the protocol):

* ``ranks`` is an integer array of shape (K, num_queries): column q lists database indices in ranked order
  for query q (best first). K is the database size, or a top-k cut; positives not in the cut count as
  never retrieved.
* ``gnd`` is a list with one dict per query. :func:`compute_map` reads ``ok`` (positives) and ``junk``
  (ignored); :func:`evaluate_revisited` reads ``easy``, ``hard`` and ``junk``.
* Ignored images are removed from each ranking before scoring; AP uses the trapezoid rule over recall
  steps; queries without positives are skipped in the means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "average_precision",
    "compute_map",
    "evaluate_classic",
    "evaluate_holidays",
    "evaluate_labelled",
    "evaluate_revisited",
    "format_revisited_table",
    "holidays_ground_truth",
    "main_setup",
    "recall_at_k",
    "revisited_setups",
]

_NOT_RANKED = np.iinfo(np.int64).max


def average_precision(positive_ranks: np.ndarray, num_positives: int) -> float:
    """Trapezoid-rule AP from the sorted 0-based ranks of the retrieved positives.

    For the j-th positive (0-based) at rank r: precision before = 1 if r == 0 else j / r, precision after =
    (j + 1) / (r + 1); AP is the sum of their means divided by ``num_positives`` (positives that were never
    retrieved contribute nothing).
    """
    r = np.asarray(positive_ranks, dtype=np.float64)
    if num_positives <= 0:
        raise ValueError(f"num_positives: expected >= 1, got {num_positives}")
    j = np.arange(r.size, dtype=np.float64)
    before = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    after = (j + 1.0) / (r + 1.0)
    return float(np.sum((before + after) * 0.5) / num_positives)


def _check_ranks(ranks, num_queries: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks: expected rank 2 (num_db_or_k, num_queries), got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks: expected integer database indices, got dtype {ranks.dtype}")
    if ranks.shape[1] != num_queries:
        raise ValueError(
            f"ranks: expected one column per query ({num_queries} queries in gnd), got shape {ranks.shape}"
        )
    if ranks.size and ranks.min() < 0:
        raise ValueError(f"ranks: expected non-negative database indices, got minimum {ranks.min()}")
    return ranks


def _as_index_array(values, what: str, q: int) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError(f"gnd[{q}]['{what}']: expected non-negative database indices, got {arr.min()}")
    return arr


class _RankLookup:
    """Per-query inverse permutation: database index -> 0-based position in that query's ranking.

    One int64 buffer of size max index + 1 is reused across queries, so looking up the positions of a few
    hundred positives costs two O(K) scatters per query, not a search through K ranks.
    """

    def __init__(self, ranks: np.ndarray, max_index: int):
        self._ranks_t = np.ascontiguousarray(ranks.T)  # (num_queries, K), rows are contiguous
        size = max(int(ranks.max(initial=-1)), int(max_index)) + 1
        self._pos = np.full(size, _NOT_RANKED, dtype=np.int64)
        self._order = np.arange(ranks.shape[0], dtype=np.int64)
        self._current = None

    def positions(self, q: int, indices: np.ndarray) -> np.ndarray:
        if self._current != q:
            if self._current is not None:
                self._pos[self._ranks_t[self._current]] = _NOT_RANKED
            self._pos[self._ranks_t[q]] = self._order
            self._current = q
        return self._pos[indices]


def _score_query(pos: np.ndarray, junk_pos: np.ndarray, num_positives: int, kappas: np.ndarray):
    """AP and precision@kappas for one query, from the ranking positions of its positives and junk."""
    pos = np.sort(pos[pos != _NOT_RANKED])
    junk_pos = np.sort(junk_pos[junk_pos != _NOT_RANKED])
    # Removing ignored images shifts every later positive up by the number of junk images before it.
    pos = pos - np.searchsorted(junk_pos, pos, side="left")
    ap = average_precision(pos, num_positives)
    prs = np.zeros(kappas.shape, dtype=np.float64)
    if pos.size:
        one_based = pos + 1
        k_eff = np.minimum(one_based.max(), kappas)
        prs = np.sum(one_based[None, :] <= k_eff[:, None], axis=1) / k_eff
    return ap, prs


def compute_map(ranks, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)):
    """Mean average precision and mean precision@k of a ranking (fractions in [0, 1]).

    Args:
      ranks: (K, num_queries) integer array, column q the database indices ranked for query q.
      gnd: one dict per query with ``ok`` (positive database indices) and optionally ``junk`` (ignored).
      kappas: the k of mP@k.

    Returns:
      ``(map, aps, mpr, prs)``: mAP over queries with positives; aps (num_queries,) per-query AP with NaN for
      skipped queries; mpr (len(kappas),) mean precision@k; prs (num_queries, len(kappas)) with NaN rows for
      skipped queries.
    """
    return _compute_maps(ranks, [list(gnd)], kappas)[0]


def _compute_maps(ranks, gnds: Sequence[Sequence[Mapping]], kappas: Sequence[int]):
    """:func:`compute_map` for several ground truths over the same ranking, sharing the rank lookups."""
    nq = len(gnds[0])
    ranks = _check_ranks(ranks, nq)
    kappas = np.asarray(kappas, dtype=np.int64).reshape(-1)
    if kappas.size and kappas.min() < 1:
        raise ValueError(f"kappas: expected k >= 1, got {kappas.tolist()}")
    parsed = []  # per setup: list of (ok, junk) per query
    max_index = 0
    for gnd in gnds:
        setup = []
        for q, g in enumerate(gnd):
            if "ok" not in g:
                raise ValueError(f"gnd[{q}]: expected keys 'ok' (and optionally 'junk'), got {list(g)}")
            ok = np.unique(_as_index_array(g["ok"], "ok", q))
            junk = np.setdiff1d(_as_index_array(g.get("junk"), "junk", q), ok)
            max_index = max(max_index, int(ok.max(initial=0)), int(junk.max(initial=0)))
            setup.append((ok, junk))
        parsed.append(setup)
    lookup = _RankLookup(ranks, max_index) if nq else None

    aps = np.full((len(gnds), nq), np.nan)
    prs = np.full((len(gnds), nq, kappas.size), np.nan)
    for q in range(nq):
        for s, setup in enumerate(parsed):
            ok, junk = setup[q]
            if ok.size == 0:
                continue  # no positives: skipped in the means
            aps[s, q], prs[s, q] = _score_query(
                lookup.positions(q, ok), lookup.positions(q, junk), ok.size, kappas
            )
    results = []
    for s in range(len(gnds)):
        valid = ~np.isnan(aps[s])
        if not valid.any():
            results.append((0.0, aps[s], np.zeros(kappas.size), prs[s]))
        else:
            results.append((float(aps[s][valid].mean()), aps[s], prs[s][valid].mean(axis=0), prs[s]))
    return results


def revisited_setups(gnd: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Builds the Easy / Medium / Hard ground truth (``ok``/``junk``) from per-query easy/hard/junk lists."""
    setups = {"easy": [], "medium": [], "hard": []}
    for q, g in enumerate(gnd):
        missing = {"easy", "hard", "junk"} - set(g)
        if missing:
            raise ValueError(f"gnd[{q}]: expected keys easy, hard, junk; missing {sorted(missing)}")
        easy = _as_index_array(g["easy"], "easy", q)
        hard = _as_index_array(g["hard"], "hard", q)
        junk = _as_index_array(g["junk"], "junk", q)
        setups["easy"].append({"ok": easy, "junk": np.concatenate([junk, hard])})
        setups["medium"].append({"ok": np.concatenate([easy, hard]), "junk": junk})
        setups["hard"].append({"ok": hard, "junk": np.concatenate([junk, easy])})
    return setups


def evaluate_revisited(ranks, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """Revisited Oxford/Paris protocol: Easy, Medium and Hard mAP and mP@k, in percent.

    Returns:
      ``{"easy"|"medium"|"hard": {"mAP": float, "mP@1": float, ..., "aps": (num_queries,) percent with NaN
      for skipped queries, "num_queries": queries scored}}``.
    """
    results = {}
    setups = revisited_setups(gnd)
    scored = _compute_maps(ranks, list(setups.values()), kappas)
    for name, (m, aps, mpr, _) in zip(setups, scored, strict=True):
        entry = {"mAP": 100.0 * m}
        for k, p in zip(kappas, mpr, strict=True):
            entry[f"mP@{int(k)}"] = 100.0 * float(p)
        entry["aps"] = 100.0 * aps
        entry["num_queries"] = int(np.sum(~np.isnan(aps)))
        results[name] = entry
    return results


def recall_at_k(ranks, gnd: Sequence[Mapping], ks: Sequence[int] = (1, 5, 10)):
    """Recall@k of deep metric learning (SOP, CUB, In-shop): the fraction of queries with at least one
    positive among their top k, ignored (``junk``) images removed from the ranking first.

    Args:
      ranks: (K, num_queries) as in :func:`compute_map`; gnd: ``ok`` and optionally ``junk`` per query.
    Returns:
      ``(recall (len(ks),) fractions over queries with positives, hits (num_queries, len(ks)) 0/1 with NaN
      rows for queries without positives)``.
    """
    nq = len(gnd)
    ranks = _check_ranks(ranks, nq)
    ks = np.asarray(ks, dtype=np.int64).reshape(-1)
    if ks.size and ks.min() < 1:
        raise ValueError(f"ks: expected k >= 1, got {ks.tolist()}")
    parsed = []
    for q, g in enumerate(gnd):
        if "ok" not in g:
            raise ValueError(f"gnd[{q}]: expected keys 'ok' (and optionally 'junk'), got {list(g)}")
        ok = np.unique(_as_index_array(g["ok"], "ok", q))
        parsed.append((ok, np.setdiff1d(_as_index_array(g.get("junk"), "junk", q), ok)))
    max_index = max((int(max(ok.max(initial=0), junk.max(initial=0))) for ok, junk in parsed), default=0)
    lookup = _RankLookup(ranks, max_index) if nq else None
    hits = np.full((nq, ks.size), np.nan)
    for q, (ok, junk) in enumerate(parsed):
        if ok.size == 0:
            continue
        pos = lookup.positions(q, ok)
        pos = pos[pos != _NOT_RANKED]
        junk_pos = np.sort(lookup.positions(q, junk))
        if pos.size == 0:
            hits[q] = 0.0
            continue
        first = pos.min() - np.searchsorted(junk_pos, pos.min(), side="left")  # 0-based, junk removed
        hits[q] = (first < ks).astype(np.float64)
    valid = ~np.isnan(hits[:, 0]) if ks.size else np.zeros(nq, bool)
    recall = hits[valid].mean(axis=0) if valid.any() else np.zeros(ks.size)
    return recall, hits


def evaluate_labelled(ranks, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10),
                      recall_ks: Sequence[int] = (1, 5, 10)) -> dict:
    """One-setup protocol of labelled collections (each image queries the rest; positives share its label):
    mAP, mP@k and Recall@k in percent, under the key ``"all"``.

    ``gnd[q]``: ``ok`` (or ``easy`` + ``hard``) positives and ``junk`` ignored (the query itself).
    Returns ``{"all": {"mAP", "mP@k"..., "R@k"..., "aps": (num_queries,) percent with NaN for skipped
    queries, "num_queries"}}``.
    """
    setup = _positives_and_junk(gnd)
    m, aps, mpr, _ = compute_map(ranks, setup, kappas)
    recall, _ = recall_at_k(ranks, setup, recall_ks)
    entry = {"mAP": 100.0 * m}
    entry.update({f"mP@{int(k)}": 100.0 * float(p) for k, p in zip(kappas, mpr, strict=True)})
    entry.update({f"R@{int(k)}": 100.0 * float(r) for k, r in zip(recall_ks, recall, strict=True)})
    entry["aps"] = 100.0 * aps
    entry["num_queries"] = int(np.sum(~np.isnan(aps)))
    return {"all": entry}


def main_setup(results: Mapping) -> str:
    """The setup a one-line summary quotes: ``"medium"`` (revisited protocol) or ``"all"`` (labelled)."""
    for name in ("medium", "all"):
        if name in results:
            return name
    raise ValueError(f"results: expected a 'medium' or 'all' setup, got {sorted(results)}")


def evaluate_classic(ranks, gnd: Sequence[Mapping]) -> float:
    """Classic Oxford5k / Paris6k mAP in percent: positives ``ok`` (or easy + hard), ignored ``junk``."""
    return 100.0 * compute_map(ranks, _positives_and_junk(gnd))[0]


def _positives_and_junk(gnd: Sequence[Mapping]) -> list[dict]:
    """``[{"ok", "junk"}]`` per query: positives ``ok`` (or ``easy`` + ``hard``), ignored ``junk``."""
    setup = []
    for q, g in enumerate(gnd):
        if "ok" in g:
            ok = _as_index_array(g["ok"], "ok", q)
        elif "easy" in g and "hard" in g:
            easy, hard = _as_index_array(g["easy"], "easy", q), _as_index_array(g["hard"], "hard", q)
            ok = np.concatenate([easy, hard])
        else:
            raise ValueError(f"gnd[{q}]: expected 'ok' or 'easy' and 'hard', got keys {sorted(g)}")
        setup.append({"ok": ok, "junk": _as_index_array(g.get("junk"), "junk", q)})
    return setup


def holidays_ground_truth(filenames: Sequence[str]) -> tuple[np.ndarray, list[dict]]:
    """INRIA Holidays queries and ground truth from the image file names (``100000.jpg`` ...).

    Images are grouped by ``int(stem) // 100``; the first image of each group is the query. The query itself
    is in the database and is ignored in its own ranking (``junk``); the other group members are ``ok``.

    Returns:
      ``(query_db_indices (num_queries,), gnd)``.
    """
    stems = []
    for name in filenames:
        stem = str(name).rsplit("/", 1)[-1].split(".", 1)[0]
        if not stem.isdigit():
            raise ValueError(f"filenames: expected Holidays names like '100000.jpg', got {name!r}")
        stems.append(int(stem))
    stems = np.asarray(stems)
    groups = stems // 100
    queries, gnd = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        members = members[np.argsort(stems[members], kind="stable")]
        queries.append(members[0])
        gnd.append({"ok": members[1:], "junk": members[:1]})
    return np.asarray(queries, dtype=np.int64), gnd


def evaluate_holidays(ranks, gnd: Sequence[Mapping]) -> float:
    """INRIA Holidays mAP in percent (ground truth from :func:`holidays_ground_truth`)."""
    return 100.0 * compute_map(ranks, gnd)[0]


def format_revisited_table(results: Mapping, title: str | None = None) -> str:
    """Formats :func:`evaluate_revisited` (Easy/Medium/Hard) or :func:`evaluate_labelled` (All, with
    Recall@k) results as a fixed-width table (percent)."""
    setups = [s for s in ("easy", "medium", "hard", "all") if s in results]
    if not setups:
        raise ValueError(f"results: expected keys easy/medium/hard or all, got {sorted(results)}")
    metrics = [m for m in results[setups[0]] if m == "mAP" or m.startswith(("mP@", "R@"))]
    lines = []
    if title:
        lines.append(title)
    header = f"{'':8s}" + "".join(f"{m:>9s}" for m in metrics) + f"{'queries':>9s}"
    lines.append(header)
    lines.append("-" * len(header))
    for s in setups:
        row = results[s]
        lines.append(
            f"{s.capitalize():8s}"
            + "".join(f"{row[m]:9.2f}" for m in metrics)
            + f"{row.get('num_queries', -1):9d}"
        )
    return "\n".join(lines)
