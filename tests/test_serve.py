"""remap-serve in process: search, more like this, images, the heatmap's arithmetic, stats, OpenAPI, the
batcher sharing one compiled call, and every hostile or broken request refused with a JSON 4xx/503."""

from __future__ import annotations

import asyncio
import io
import struct
import warnings
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="remap-serve needs the serve extra (pip install -e .[serve])")

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from remap_jax.serve import heatmap  # noqa: E402
from remap_jax.serve.app import create_app  # noqa: E402
from remap_jax.serve.batching import Batcher, BatchPolicy, Overloaded  # noqa: E402
from tests.serve_helpers import build_collection, encoded, make_service  # noqa: E402

MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(str(tmp_path_factory.getbasetemp() / "serve_collection"))  # shared with the
    # browser test


@pytest.fixture(scope="module")
def client(collection):
    service = make_service(collection)
    service.check_images()
    service.check_model()
    with TestClient(create_app(service, max_body_bytes=MAX_BODY)) as c:
        yield c


def _query_bytes(collection) -> bytes:
    with open(f"{collection['queries']}/chelsea.png", "rb") as f:
        return f.read()


def _search(client, data=None, files=None, **kw):
    return client.post("/search", data=data or {}, files=files, **kw)


def test_search_upload_returns_ranked_ids_scores_and_urls(client, collection):
    r = _search(client, {"k": "5"}, {"image": ("q.png", _query_bytes(collection), "image/png")})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["k"] == 5 and len(answer["results"]) == 5 and answer["source"] == "upload"
    assert answer["results"][0]["id"].startswith("chelsea/")
    scores = [x["score"] for x in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    first = answer["results"][0]
    assert first["image_url"] == "/images/" + first["id"] and first["thumb_url"] == "/thumbs/" + first["id"]
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (160, 120)
    thumb = client.get(first["thumb_url"])
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 192


def test_more_like_this_finds_the_image_itself_first(client):
    r = _search(client, {"id": "coffee/1.jpg", "k": "3"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["id"] == "coffee/1.jpg" and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert r.json()["source"] == "id:coffee/1.jpg"


def test_superglobal_rerank_reorders_the_shortlist_as_the_index_does(client, collection):
    from remap_jax import Index
    from remap_jax.search.rerank import SuperGlobal

    r = _search(client, {"id": "coffee/1.jpg", "k": "12", "rerank": "superglobal"})
    assert r.status_code == 200, r.text
    assert r.json()["rerank"] == "superglobal"
    index = Index.load(collection["index"])
    row = index.rerank_vectors()[list(index.ids).index("coffee/1.jpg")]
    ids, scores = index.search(row, 12, rerank=SuperGlobal(m=12))
    assert [x["id"] for x in r.json()["results"]] == list(ids)
    np.testing.assert_allclose([x["score"] for x in r.json()["results"]], scores, atol=1e-3)


def test_box_describes_only_the_crop(client, collection):
    whole = np.asarray(Image.open(f"{collection['images']}/rocket/0.jpg"))
    canvas = np.full((200, 300, 3), 255, np.uint8)
    canvas[40:160, 70:230] = whole
    files = {"image": ("c.png", encoded(canvas), "image/png")}
    r = _search(client, {"box": "70,40,230,160", "k": "2"}, files)
    assert r.status_code == 200, r.text
    assert r.json()["box"] == [70, 40, 230, 160]
    assert r.json()["results"][0]["id"] == "rocket/0.jpg"


def test_explain_splits_the_similarity_into_region_terms(client, collection):
    r = _search(client, {"k": "3"}, {"image": ("q.png", _query_bytes(collection), "image/png")}).json()
    for result in r["results"]:
        e = client.get("/explain", params={"query": r["query"], "result": result["id"]})
        assert e.status_code == 200, e.text
        e = e.json()
        # the terms sum to the similarity, which is the index's score for that pair
        assert e["similarity"] == pytest.approx(result["score"], abs=2e-4)
        assert e["regions_total"] + e["bias"] == pytest.approx(e["similarity"], abs=1e-5)
        assert e["descriptor_error"] < 1e-4  # the regions rebuild the model's own descriptor
        share = np.asarray(e["grid"]["share"])
        assert share.shape == (e["grid"]["height"], e["grid"]["width"]) == (3, 4)
        assert share.sum() == pytest.approx(e["regions_total"], abs=1e-4)
        assert np.asarray(e["grid"]["weights"]).sum() == pytest.approx(1.0, abs=1e-4)
        assert sum(x["share"] for x in e["regions"]) == pytest.approx(e["regions_total"], abs=1e-4)
        weights = {x["weight"] for x in e["regions"]}
        assert len(weights) > 2  # the export's learned, non-uniform region weights
        assert all(0 <= v <= 1 for x in e["regions"] for v in x["box"])
    assert client.get("/explain", params={"query": "nope", "result": "coffee/1.jpg"}).status_code == 404


def test_contributions_sum_to_the_dot_product():
    rng = np.random.default_rng(1)
    layers = ("a", "b")
    regions = {"a": rng.standard_normal((5, 4)), "b": rng.standard_normal((5, 6))}
    regions = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in regions.items()}
    alpha = {k: rng.uniform(0, 2, 5) for k in layers}
    kernel, bias = rng.standard_normal((10, 7)), rng.standard_normal(7)
    x = np.concatenate([alpha[k] @ regions[k] for k in layers])
    y = x @ kernel + bias
    y /= np.linalg.norm(y)
    result = rng.standard_normal(7)
    result /= np.linalg.norm(result)
    parts = heatmap.contributions(regions, alpha, kernel, bias, result, layers)
    np.testing.assert_allclose(parts.descriptor, y, rtol=1e-5, atol=1e-6)
    assert parts.total == pytest.approx(float(y @ result), abs=1e-9)
    assert sum(t.sum() for t in parts.regions.values()) + parts.bias == pytest.approx(parts.total, abs=1e-12)
    plain = heatmap.contributions(regions, alpha, None, None, np.concatenate([result, result[:3]]), layers)
    unit = x / np.linalg.norm(x)
    assert plain.total == pytest.approx(float(unit @ np.concatenate([result, result[:3]])), abs=1e-9)
    boxes = np.array([[0, 0, 2, 2], [1, 1, 2, 3], [0, 2, 3, 2]])
    grid = heatmap.cell_map(boxes, np.array([1.0, -2.0, 0.5]), (3, 4), (3, 4))
    assert grid.sum() == pytest.approx(-0.5) and grid[0, 0] == pytest.approx(0.25)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with no pixel data to speak of."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _bad_requests(collection):
    good = _query_bytes(collection)
    jpeg = encoded(np.asarray(Image.open(io.BytesIO(good)).convert("RGB")), "JPEG", quality=90)
    ppm = encoded(np.zeros((8, 8, 3), np.uint8), "PPM")
    img = {"image": ("q.png", good, "image/png")}

    def chunks(size):
        for _ in range(size // 65536 + 1):
            yield b"\0" * 65536

    return [
        # (what, request kwargs, expected status, expected error code)
        ("zero-byte file", dict(files={"image": ("e.png", b"", "image/png")}), 400, "empty_file"),
        ("truncated JPEG", dict(files={"image": ("t.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}), 400,
         "undecodable"),
        ("not an image", dict(files={"image": ("x.png", b"hello, not a picture" * 20, "image/png")}), 400,
         "not_an_image"),
        ("PPM: a format that is not a photo's",
         dict(files={"image": ("x.ppm", ppm, "image/x-portable-pixmap")}), 415, "unsupported_media_type"),
        ("PPM declared as octet-stream", dict(files={"image": ("x.bin", ppm, "application/octet-stream")}),
         415, "unsupported_format"),
        ("48 Mpixel header (below Pillow's limit)",
         dict(files={"image": ("b.png", _png_header(8000, 6000), "image/png")}), 400, "too_many_pixels"),
        ("10 Gpixel header (above Pillow's limit)",
         dict(files={"image": ("b.png", _png_header(100000, 100000), "image/png")}), 400, "too_many_pixels"),
        ("part declared text/plain", dict(files={"image": ("q.txt", good, "text/plain")}), 415,
         "unsupported_media_type"),
        ("JSON body", dict(json={"id": "coffee/1.jpg"}), 415, "unsupported_media_type"),
        ("two files", dict(files=[("image", ("a.png", good, "image/png")), ("image", ("b.png", good,
                                                                                      "image/png"))]),
         400, "bad_form"),
        ("too many fields", dict(data={f"f{i}": "1" for i in range(10)}, files=img), 400, "bad_form"),
        ("unknown field", dict(data={"colour": "red"}, files=img), 400, "unknown_field"),
        ("neither image nor id", dict(data={"k": "3"}), 400, "missing_image"),
        ("both image and id", dict(data={"id": "coffee/1.jpg"}, files=img), 400, "missing_image"),
        ("unknown id", dict(data={"id": "nope.jpg"}), 404, "unknown_id"),
        ("id escaping the folder", dict(data={"id": "../export/config.json"}), 404, "unknown_id"),
        ("box outside the image", dict(data={"box": "0,0,500,50"}, files=img), 400, "bad_box"),
        ("empty box", dict(data={"box": "20,20,20,40"}, files=img), 400, "bad_box"),
        ("box not four numbers", dict(data={"box": "1,2,three"}, files=img), 400, "bad_box"),
        ("k = 0", dict(data={"k": "0"}, files=img), 400, "bad_k"),
        ("k above the index size", dict(data={"k": "1000"}, files=img), 400, "bad_k"),
        ("unknown re-ranking", dict(data={"rerank": "magic"}, files=img), 400, "bad_rerank"),
        ("declared body over the cap", dict(content=b"\0" * (MAX_BODY + 1),
                                            headers={"content-type": "multipart/form-data; boundary=x"}),
         413, "too_large"),
        ("streamed body over the cap", dict(content=chunks(MAX_BODY + 1),
                                            headers={"content-type": "multipart/form-data; boundary=x"}),
         413, "too_large"),
    ]


def test_hostile_and_broken_requests_get_json_errors(client, collection):
    seen = []
    for what, kwargs, status, code in _bad_requests(collection):
        r = client.post("/search", **kwargs)
        seen.append((what, r.status_code))
        assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
        error = r.json()["error"]
        assert error["code"] == code and error["message"], what
        assert client.get("/healthz").json()["status"] == "ok", f"not serving after {what}"
    print("\n".join(f"{status}  {what}" for what, status in seen))
    for path in ("/images/nope.jpg", "/thumbs/nope.jpg", "/images/../export/config.json",
                 "/images/%2E%2E/export/config.json", "/images//etc/passwd"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] in ("unknown_id", "http_404"), path
    r = _search(client, {"k": "2"}, {"image": ("q.png", _query_bytes(collection), "image/png")})
    assert r.status_code == 200  # still serving


def test_stats_and_openapi(client, collection):
    before = client.get("/stats").json()
    _search(client, {"k": "2"}, {"image": ("q.png", _query_bytes(collection), "image/png")})
    client.post("/search", data={"id": "nope"})
    stats = client.get("/stats").json()
    assert stats["requests"]["/search"] == before["requests"].get("/search", 0) + 2
    assert stats["errors"]["/search"] == before["errors"].get("/search", 0) + 1
    lat = stats["latency_ms"]["/search"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert sum(stats["batch_size_histogram"].values()) >= 1 and stats["batch_policy"]["sizes"]
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    routes = {getattr(r, "path", None) for r in client.app.routes} - {"/static", None}
    documented = {p.replace("{image_id}", "{image_id:path}") for p in schema["paths"]}
    assert routes == documented
    assert schema["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_compiled_call(collection):
    """With batch sizes (1, 4) and a wait long enough, four concurrent searches run as one call of 4."""
    service = make_service(collection, policy=BatchPolicy(sizes=(1, 4), max_wait_s=2.0))
    app = create_app(service, warmup=False)
    query = _query_bytes(collection)

    async def go():
        await asyncio.to_thread(service.warmup)
        await service.batcher.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                calls = service.describe_calls
                rs = await asyncio.gather(*[
                    c.post("/search", data={"k": "3"}, files={"image": ("q.png", query, "image/png")})
                    for _ in range(4)])
                return rs, service.describe_calls - calls
        finally:
            await service.batcher.stop()

    responses, calls = _run(go())
    assert [r.status_code for r in responses] == [200] * 4
    assert calls == 1
    assert service.stats.snapshot()["batch_size_histogram"] == {"4": 1}
    assert len({tuple(x["id"] for x in r.json()["results"]) for r in responses}) == 1


def test_overload_beyond_the_queue_bound_gets_503(collection):
    service = make_service(collection, policy=BatchPolicy(sizes=(1,), max_queue=1))
    app = create_app(service, warmup=False)
    run = service.batcher._run

    def slow(items):
        import time

        time.sleep(0.3)
        return run(items)

    service.batcher._run = slow
    query = _query_bytes(collection)

    async def go():
        await service.batcher.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                rs = await asyncio.gather(*[
                    c.post("/search", data={"k": "2"}, files={"image": ("q.png", query, "image/png")})
                    for _ in range(6)])
                after = await c.post("/search", data={"k": "2"},
                                     files={"image": ("q.png", query, "image/png")})
                return rs, after
        finally:
            await service.batcher.stop()

    responses, after = _run(go())
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded" and refused.headers["retry-after"] == "1"
    assert after.status_code == 200  # the queue drained: serving again


def test_batcher_refuses_beyond_queue_and_pads_sizes():
    policy = BatchPolicy(sizes=(4, 1, 2), max_wait_s=0.05, max_queue=2)
    assert policy.sizes == (1, 2, 4) and policy.padded(3) == 4 and policy.padded(1) == 1
    with pytest.raises(ValueError):
        BatchPolicy(sizes=(0,))
    seen = []

    def run(items):
        seen.append(len(items))
        return [ValueError("bad") if i == "bad" else i * 2 for i in items]

    async def go():
        batcher = Batcher(run, policy)
        await batcher.start()
        try:
            # three submitted before the worker runs: the third finds the queue at its bound of 2
            results = await asyncio.gather(batcher.submit(1), batcher.submit(2), batcher.submit(3),
                                           return_exceptions=True)
            with pytest.raises(ValueError, match="bad"):  # a per-item error reaches its submitter only
                await asyncio.gather(batcher.submit("bad"), batcher.submit(5))
            return results
        finally:
            await batcher.stop()

    results = _run(go())
    assert results[:2] == [2, 4] and isinstance(results[2], Overloaded)
    assert seen[0] == 2  # the first two were described together


def test_model_that_did_not_build_the_index_is_refused(collection):
    from remap_jax import Index
    from remap_jax.serve.service import ModelMismatchError, SearchService
    from tests.serve_helpers import serving_extractor

    index = Index.load(collection["index"])
    shuffled = Index.build(np.asarray(index._database)[::-1], ids=index.ids, method="exact")
    service = SearchService(serving_extractor(collection["export"]), shuffled, collection["images"])
    with pytest.raises(ModelMismatchError, match="not the model|own index entry"):
        service.check_model()
    wrong_dim = Index.build(np.eye(4, 8, dtype=np.float32), ids=[f"x{i}" for i in range(4)])
    with pytest.raises(ModelMismatchError, match="48-d descriptors but the index holds 8-d"):
        SearchService(serving_extractor(collection["export"]), wrong_dim, collection["images"])


def test_command_line_errors_are_one_line(capsys, tmp_path):
    from remap_jax.cli.serve import main

    assert main(["--arch", "efficientnet_lite0"]) == 2
    assert "expected --index and --images" in capsys.readouterr().err
    assert main(["--index", str(tmp_path), "--images", str(tmp_path), "--arch", "efficientnet_lite0",
                 "--weights", "installed", "--image-size", "64,64"]) == 2
    assert "not a remap-jax index" in capsys.readouterr().err


@pytest.mark.slow  # about a minute (TFDS build + Lite0 extraction); `remap-serve --demo` and
# benchmarks/serve_load.py run the same path on the full split
def test_demo_builds_its_collection_and_index_once(tmp_path):
    """`remap-serve --demo` on the tiny synthetic split: images written, described and indexed by the
    command's own code, then served (the model check passes); a second start reuses everything."""
    from remap_jax.cli.serve import build_parser, build_service

    workdir = tmp_path / "demo"
    argv = ["--demo", "--workdir", str(workdir), "--demo-dataset", "synthetic_landmarks/hard_tiny",
            "--data-dir", str(tmp_path / "tfds"), "--demo-export", str(tmp_path / "no_export")]
    service, what = build_service(build_parser().parse_args(argv))
    assert "hard_tiny" in what and "efficientnet_lite0" in what
    images = sorted(p.name for p in (workdir / "images").glob("db_*.jpg"))
    assert len(images) == len(service.ids) and sorted(service.ids) == images
    assert list((workdir / "queries").glob("q_*.jpg"))
    indexes = list(workdir.glob("index-*"))
    assert len(indexes) == 1
    stamp = (indexes[0] / "index.json").stat().st_mtime_ns
    service, _ = build_service(build_parser().parse_args(argv))
    assert (indexes[0] / "index.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="holds the images of synthetic_landmarks/hard_tiny"):
        build_service(build_parser().parse_args([*argv[:4], "synthetic_landmarks/tiny", *argv[5:]]))


def test_explain_needs_a_remap_head(collection):
    from remap_jax import Extractor, Index
    from remap_jax.serve.service import SearchService
    from remap_jax.serve.uploads import UploadError
    from tests.serve_helpers import SIZE, TAPS

    gem = Extractor.from_pretrained("efficientnet_lite0", weights="installed", taps=TAPS, head="gem",
                                    image_size=SIZE, resize="exact", batch_size=1)
    ids = [str(i) for i in Index.load(collection["index"]).ids]
    rows = np.random.default_rng(0).standard_normal((len(ids), gem.dim)).astype(np.float32)
    index = Index.build(rows / np.linalg.norm(rows, axis=1, keepdims=True), ids=ids)
    service = SearchService(gem, index, collection["images"])
    assert "GeM" in service.explainable()
    with pytest.raises(UploadError, match="heatmap: unavailable") as e:
        asyncio.run(service.explain("token", ids[0]))
    assert e.value.status == 422 and e.value.code == "no_heatmap"
