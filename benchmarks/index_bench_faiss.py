"""The faiss side of `benchmarks/index_bench.py` (--faiss; faiss-cpu is not a dependency): IVF-PQ and IVF-PQ
fast-scan, alone and re-ranked by int8 or float32 vectors, over the same lists and lists probed as ScaNN's
leaves."""

from __future__ import annotations

import gc

import numpy as np
from index_bench_measure import built, result_row, search_sweep, timed

from remap_jax.search.index_options import tree_leaves


def _save_faiss(index, folder):
    import faiss

    faiss.write_index(index, folder)


def _load_faiss(folder):
    import faiss

    return faiss.read_index(folder)


def _faiss_ivfpq(db, sample, nlist, subq, bits):
    import faiss

    d = db.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    if bits == 4:
        index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, subq, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, subq, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(db)
    index.own_fields = True  # the IVF index frees its quantizer; keeps it alive meanwhile
    quantizer.this.disown()
    return index


def _faiss_refined(base, db, sample, kind):
    """``base`` re-ranked by int8 (SQ8) or float32 vectors of the whole database."""
    import faiss

    d = db.shape[1]
    if kind == "int8":
        vectors = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    else:
        vectors = faiss.IndexFlatIP(d)
    vectors.train(sample)
    vectors.add(db)
    refine = faiss.IndexRefine(base, vectors)
    refine.own_refine_index = True
    vectors.this.disown()
    return refine


def run_faiss(db, queries, k, m, truth, train_size, leaves_sweep=None, reorder_sweep=(100,)):
    """faiss IVF-PQ (m 8-bit codes) and IVF-PQ fast-scan (2m 4-bit codes), each alone and re-ranked by int8
    (SQ8) and float32 vectors, over the lists-probed sweep. Ids: 8 bytes per vector in the inverted lists."""
    import faiss

    n, d = db.shape
    nlist = tree_leaves(n)
    rng = np.random.default_rng(0)
    sample = db[np.sort(rng.choice(n, min(n, train_size), replace=False))]
    rows = []
    for name, subq, bits in ((f"faiss IVF-PQ{m}", m, 8), (f"faiss IVF-PQ{2 * m}x4fs", 2 * m, 4)):
        if d % subq:
            continue
        base, build_s, rss = built(
            lambda s=subq, b=bits: _faiss_ivfpq(db, sample, nlist, s, b), _save_faiss, _load_faiss
        )
        code_bytes = subq * bits // 8 + 8
        refiners = []
        for kind, extra in (("int8", d), ("f32", 4 * d)):
            refine, refine_s, refine_rss = built(
                lambda kind=kind, base=base: _faiss_refined(faiss.clone_index(base), db, sample, kind),
                _save_faiss,
                _load_faiss,
            )
            refiners.append((kind, refine, refine_s, refine_rss, extra))
        for nprobe in leaves_sweep or search_sweep(nlist):
            base.nprobe = nprobe
            (_, found), search_s = timed(lambda base=base: base.search(queries, k), repeats=3)
            params = {"nlist": nlist, "nprobe": nprobe}
            row = result_row(name, params, build_s, code_bytes, search_s, found, truth, len(queries))
            row["rss_bytes_per_vector"] = rss / n
            rows.append(row)
            for kind, refine, refine_s, refine_rss, extra in refiners:
                faiss.extract_index_ivf(refine.base_index).nprobe = nprobe
                for reorder in reorder_sweep:
                    refine.k_factor = max(1.0, reorder / k)
                    (_, found), search_s = timed(lambda refine=refine: refine.search(queries, k), repeats=3)
                    params_r = {**params, "rerank": f"{int(refine.k_factor * k)} {kind}"}
                    row = result_row(
                        f"{name}+{kind}", params_r, build_s + refine_s, code_bytes + extra, search_s, found,
                        truth, len(queries),
                    )  # fmt: skip
                    row["rss_bytes_per_vector"] = refine_rss / n  # its own copy of the codes included
                    rows.append(row)
        refiners.clear()
        gc.collect()
    return rows
