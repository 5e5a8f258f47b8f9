"""The HTTP layer of `remap-serve`: Starlette routes over a `SearchService`.

    POST /search            multipart form: `image` (a file) or `id` (an indexed image: "more like this"),
                            optional `box` = "x0,y0,x1,y1", `k`, `rerank`  -> JSON ids, scores, image URLs
    GET  /explain           ?query=<token from /search>&result=<id>        -> region contributions (heatmap)
    GET  /images/{id}       the indexed image file      GET /thumbs/{id}   a JPEG thumbnail
    GET  /healthz, /stats, /openapi.json, /  (the page) and /static/*

Every refusal is JSON `{"error": {"code", "message"}}` with a 4xx status (503 `overloaded` when the batch
queue is full); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import time
import urllib.parse

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from remap_jax.serve.batching import Overloaded
from remap_jax.serve.limits import BodyLimit, BodyTooLarge
from remap_jax.serve.openapi import openapi_schema
from remap_jax.serve.service import SearchService
from remap_jax.serve.uploads import (
    UploadError,
    check_declared_type,
    decode_image,
    parse_box,
    parse_choice,
    parse_k,
)

__all__ = ["create_app"]

FORM_FIELDS = ("image", "id", "box", "k", "rerank")
MAX_PARTS = len(FORM_FIELDS)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def image_url(image_id: str, kind: str = "images") -> str:
    return f"/{kind}/" + urllib.parse.quote(image_id)


def create_app(service: SearchService, *, max_body_bytes: int = 8 << 20, warmup: bool = True,
               decode_slots: int = 2):
    """The ASGI app serving `service`; uploads over `max_body_bytes` get 413. `warmup` compiles everything at
    start-up (before the first request is answered). At most `decode_slots` uploads are decoded at once:
    a decoded image can be far larger than its upload (up to 3 bytes per pixel of the pixel cap), so this
    bounds the memory that concurrent uploads take."""
    decoding = asyncio.Semaphore(decode_slots)

    async def search(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise UploadError(415, "unsupported_media_type",
                              f"request: content type {content_type!r}; expected multipart/form-data with an "
                              "`image` file or an `id` field")
        try:
            form = await request.form(max_files=1, max_fields=MAX_PARTS - 1, max_part_size=64 << 10)
        except (MultiPartException, HTTPException) as e:
            detail = getattr(e, "message", None) or getattr(e, "detail", str(e))
            raise UploadError(400, "bad_form", f"request: malformed or oversized form ({detail}); expected "
                              f"at most one file and the fields {list(FORM_FIELDS)}") from None
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(form.close)
            items = list(form.multi_items())
            unknown = sorted({name for name, _ in items} - set(FORM_FIELDS))
            if unknown:
                raise UploadError(400, "unknown_field", f"request: unknown form field(s) {unknown[:5]}; "
                                  f"expected some of {list(FORM_FIELDS)}")
            names = [name for name, _ in items]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise UploadError(400, "too_many_parts", f"request: field(s) {repeated} given more than once")
            fields = dict(items)
            upload, image_id = fields.get("image"), fields.get("id")
            if (upload is None) == (image_id is None or image_id == ""):
                raise UploadError(400, "missing_image", "request: expected exactly one of an `image` file "
                                  "and an `id` of an indexed image")
            k = parse_k(fields.get("k"), service.default_k, service.max_k)
            rerank = parse_choice(fields.get("rerank"), "rerank", list(service.rerankers), "none")
            if upload is not None:
                if isinstance(upload, str):
                    raise UploadError(400, "missing_image", "image: a text field; expected a file part")
                check_declared_type(upload.content_type)
                data = await upload.read()
                source = "upload"
            else:
                image_id = str(image_id)
                source = f"id:{image_id}"
        async with decoding:  # decoded images are held only in here; the batcher gets the small prepared ones
            start = time.perf_counter()
            if source == "upload":
                image = await asyncio.to_thread(decode_image, data, service.max_pixels)
            else:
                image = await asyncio.to_thread(service.read_indexed, image_id)
            size = (int(image.shape[1]), int(image.shape[0]))
            box = parse_box(fields.get("box"), *size)
            pixels = await asyncio.to_thread(service.prepare, image, box)
            del image
            prepare_ms = round((time.perf_counter() - start) * 1e3, 2)
        answer = await service.search(pixels, size=size, box=box, k=k, rerank=rerank, source=source)
        answer["timing_ms"]["decode_prepare"] = prepare_ms
        for r in answer["results"]:
            r["image_url"] = image_url(r["id"])
            r["thumb_url"] = image_url(r["id"], "thumbs")
        answer["query_size"] = list(size)
        answer["box"] = None if box is None else list(box)
        answer["source"] = source
        return JSONResponse(answer)

    async def explain(request: Request) -> Response:
        token, result = request.query_params.get("query"), request.query_params.get("result")
        if not token or not result:
            raise UploadError(400, "missing_parameter", "explain: expected ?query=<token from /search>"
                              "&result=<an id of its results>")
        return JSONResponse(await service.explain(token, result))

    async def image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        return FileResponse(service.image_path(image_id), media_type=service.media_type(image_id))

    async def thumb(request: Request) -> Response:
        data = await asyncio.to_thread(service.thumbnail, request.path_params["image_id"])
        return Response(data, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "images": len(service.ids), "dim": service.index.dim,
                             "platform": service.platform, "batch_sizes": list(service.policy.sizes),
                             "queued": service.batcher.queued})

    async def stats(request: Request) -> Response:
        snap = service.stats.snapshot()
        snap["queued"] = service.batcher.queued
        policy = service.policy
        snap["batch_policy"] = {"sizes": list(policy.sizes), "max_wait_ms": policy.max_wait_s * 1e3,
                                "max_queue": policy.max_queue, "platform": service.platform}
        return JSONResponse(snap)

    async def schema(request: Request) -> Response:
        return JSONResponse(openapi_schema(service, max_body_bytes))

    async def page(request: Request) -> Response:
        return Response(_static_text("index.html"), media_type="text/html; charset=utf-8")

    async def upload_error(request: Request, exc: UploadError) -> Response:
        return _error(exc.status, exc.code, exc.message)

    async def too_large(request: Request, exc: BodyTooLarge) -> Response:
        return _error(413, "too_large", str(exc), headers={"connection": "close"})

    async def overloaded(request: Request, exc: Overloaded) -> Response:
        return _error(503, "overloaded", f"service: overloaded, {exc}; retry shortly",
                      headers={"retry-after": "1"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, "http_" + str(exc.status_code), str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warmup:
            await asyncio.to_thread(service.warmup)
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    static_dir = str(importlib.resources.files("remap_jax.serve") / "static")
    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/search", search, methods=["POST"]),
            Route("/explain", explain, methods=["GET"]),
            Route("/images/{image_id:path}", image, methods=["GET"]),
            Route("/thumbs/{image_id:path}", thumb, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/openapi.json", schema, methods=["GET"]),
            Mount("/static", StaticFiles(directory=static_dir), name="static"),
        ],
        exception_handlers={UploadError: upload_error, BodyTooLarge: too_large, Overloaded: overloaded,
                            HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(_StatsMiddleware, stats=service.stats)  # outermost: sees 413s of BodyLimit too
    return app


class _StatsMiddleware:
    """Records every HTTP request's route template, status and latency in the service's Stats."""

    def __init__(self, app, stats):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            static = scope["path"].startswith("/static/")
            name = getattr(route, "path", None) or ("/static" if static else "other")
            self.stats.record(name, status, time.perf_counter() - start)


def _static_text(name: str) -> str:
    return (importlib.resources.files("remap_jax.serve") / "static" / name).read_text(encoding="utf-8")
