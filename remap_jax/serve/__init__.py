"""`remap-serve`: an HTTP search service over a remap-jax index, and its web page.

Modules, one job each: `service` (describe + search + explain, arrays in and out), `batching` (the request
batcher and its per-platform policy), `uploads` (what clients may send), `limits` (the streamed byte cap),
`heatmap` (each region's share of a similarity), `stats` (`/stats` counters), `openapi` (the schema),
`app` (the Starlette routes), `demo` (the demo collection), `cli` (the command). Needs the `serve` extra
(`pip install -e .[serve]`: Starlette, uvicorn, python-multipart).
"""

__all__ = ["create_app", "SearchService"]


def __getattr__(name):
    if name == "create_app":
        from remap_jax.serve.app import create_app

        return create_app
    if name == "SearchService":
        from remap_jax.serve.service import SearchService

        return SearchService
    raise AttributeError(f"module 'remap_jax.serve' has no attribute {name!r}")
