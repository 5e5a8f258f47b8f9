"""The OpenAPI 3.1 description of the service, served at `/openapi.json` (Starlette writes none itself)."""

from __future__ import annotations

from remap_jax.serve.uploads import FORMATS

__all__ = ["openapi_schema"]

_ERROR = {"description": "refused; the body names the problem",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def openapi_schema(service, max_body_bytes: int) -> dict:
    """The schema for `service` (its limits: k, pixels, bytes, re-ranking methods)."""
    errors = {code: _ERROR for code in ("400", "404", "413", "415", "422")}
    image_id = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "an id of the index (as returned by /search), URL-encoded"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "remap-serve", "version": "1",
                 "description": "Image search over a remap-jax index with the model that built it."},
        "paths": {
            "/search": {"post": {
                "summary": "Search with an uploaded image or an indexed one (more like this)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description":
                                  f"{', '.join(FORMATS)}; at most {max_body_bytes} bytes and "
                                  f"{service.max_pixels} pixels"},
                        "id": {"type": "string", "description": "instead of image: an id of the index"},
                        "box": {"type": "string", "pattern": r"^\s*[-0-9.]+(\s*,\s*[-0-9.]+){3}\s*$",
                                "description": "x0,y0,x1,y1 in pixels of the image (x1, y1 exclusive): "
                                               "describe only this part"},
                        "k": {"type": "integer", "minimum": 1, "maximum": service.max_k,
                              "default": service.default_k},
                        "rerank": {"type": "string", "enum": list(service.rerankers), "default": "none"},
                    }}}}},
                "responses": {"200": _json("#/components/schemas/SearchResult", "the best matches"), **errors,
                              "503": _ERROR},
            }},
            "/explain": {"get": {
                "summary": "Each query region's share of the similarity to one result (the heatmap)",
                "parameters": [
                    {"name": "query", "in": "query", "required": True, "schema": {"type": "string"},
                     "description": "the `query` token of a /search answer"},
                    {"name": "result", "in": "query", "required": True, "schema": {"type": "string"},
                     "description": "an id of the index"}],
                "responses": {"200": _json("#/components/schemas/Explanation", "region contributions"),
                              **errors, "503": _ERROR},
            }},
            "/images/{image_id}": {"get": {
                "summary": "An indexed image file", "parameters": [image_id],
                "responses": {"200": {"description": "the file as stored",
                                      "content": {m: {} for m in FORMATS.values()}}, "404": _ERROR}}},
            "/thumbs/{image_id}": {"get": {
                "summary": f"A JPEG thumbnail (long side at most {service.thumb_size} px)",
                "parameters": [image_id],
                "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}, "404": _ERROR}}},
            "/healthz": {"get": {"summary": "Liveness and the index served",
                                 "responses": {"200": {"description": "ok"}}}},
            "/stats": {"get": {"summary": "Requests, errors, latency p50/p90/p99 (ms), batch-size histogram",
                               "responses": {"200": {"description": "counters"}}}},
            "/openapi.json": {"get": {"summary": "This schema",
                                      "responses": {"200": {"description": "OpenAPI"}}}},
            "/": {"get": {"summary": "The search page", "responses": {"200": {"description": "HTML"}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "SearchResult": {"type": "object", "required": ["query", "k", "results"], "properties": {
                "query": {"type": "string", "description": "token for /explain"},
                "k": {"type": "integer"}, "rerank": {"type": "string"}, "source": {"type": "string"},
                "query_size": {"type": "array", "items": {"type": "integer"},
                               "description": "[width, height]"},
                "box": {"type": ["array", "null"], "items": {"type": "integer"}},
                "timing_ms": {"type": "object"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "rank": {"type": "integer"}, "id": {"type": "string"},
                    "score": {"type": "number", "description": "inner product of unit descriptors"},
                    "image_url": {"type": "string"}, "thumb_url": {"type": "string"}}}}}},
            "Explanation": {"type": "object", "properties": {
                "similarity": {"type": "number", "description": "query . result = regions_total + bias"},
                "regions_total": {"type": "number"}, "bias": {"type": "number",
                                                              "description": "the whitening bias's share"},
                "grid": {"type": "object", "description": "share and weights maps over the query (rows of "
                                                          "cells); share sums to regions_total"},
                "regions": {"type": "array", "items": {"type": "object"}}}},
        }},
    }
