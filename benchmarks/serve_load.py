"""Load on `remap-serve`: 16 concurrent clients for 30 s on loopback, next to the bare model's images/s.

Starts `remap-serve --demo` (the demo's test split; built in --workdir on first use) as a subprocess on
127.0.0.1, and in this process:

1. the bare model: the demo's Extractor, `describe_batch` on a prepared batch, at the serving policy's batch
   size (the compiled program alone: no HTTP, decoding, resizing or search), measured before and after the
   load (the mean is the reference: the machine may be shared);
2. the server's resident memory (VmRSS) after a short warm pass, before the load;
3. `--clients` async clients (httpx), each POSTing the demo's query images to /search in a loop for
   `--seconds`: requests/s, latency p50/p90/p99, errors by status;
4. the resident memory after the load, and the server's /stats.

`--sweep` first measures the bare model at batch sizes 1, 2, 4, 8, 16 (the batch policy's measurement).
Targets on the project's 2-core CPU: no errors, requests/s >= 60% of the bare model's images/s, memory after
within 10% of before.

    python benchmarks/serve_load.py --workdir /tmp/remap_serve --json /tmp/serve_load.json [--sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import socket
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remap_jax.runtime import atomic  # noqa: E402


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_model(workdir: str, sizes, seconds: float) -> dict[int, float]:
    """The demo model's images/s at each batch size (describe_batch on prepared uint8 batches)."""
    from remap_jax.cli import serve_demo as demo
    from remap_jax.cli.extract import make_extractor
    from remap_jax.cli.serve import _model_args, build_parser
    from remap_jax.serve.batching import measure_rates

    args = build_parser().parse_args(["--demo", "--workdir", workdir])
    extractor, _ = make_extractor(_model_args(args, demo.demo_model_flags()))
    shape = (*extractor.image_size, 3)
    return measure_rates(lambda b: np.asarray(extractor.describe_batch(b)), shape, sizes, seconds)


async def _load(url: str, files: list[bytes], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def client(i: int, c):
        n = i
        while time.perf_counter() < stop:
            data = files[n % len(files)]
            n += clients
            start = time.perf_counter()
            try:
                r = await c.post(url + "/search", data={"k": "12"},
                                 files={"image": ("q.jpg", data, "image/jpeg")})
                status = str(r.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        began = time.perf_counter()
        await asyncio.gather(*[client(i, c) for i in range(clients)])
        elapsed = time.perf_counter() - began
    lat = np.asarray(latencies) * 1e3
    ok = statuses.get("200", 0)
    return {"requests": len(latencies), "ok": ok, "errors": len(latencies) - ok, "statuses": statuses,
            "seconds": elapsed, "requests_per_s": ok / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/remap_serve")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--bare-seconds", type=float, default=8.0, help="bare-model timing, before and after each")
    p.add_argument("--sweep", action="store_true", help="also time the bare model at batch 1, 2, 4, 8, 16")
    p.add_argument("--serve-args", default="", help="extra remap-serve flags, e.g. '--batch-sizes 1,2,4'")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "remap_jax.cli.serve", "--demo", "--workdir", args.workdir,
               "--port", str(port), *args.serve_args.split()]
    print("starting:", " ".join(command), flush=True)
    server = subprocess.Popen(command)
    try:
        deadline = time.time() + 1800
        while True:
            if server.poll() is not None:
                raise SystemExit(f"serve_load: remap-serve exited with {server.returncode}")
            try:
                health = httpx.get(url + "/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise SystemExit("serve_load: remap-serve did not come up in 30 minutes") from None
                time.sleep(1)
        sizes = health["batch_sizes"]
        serving_batch = sizes[-1]
        files = []
        for path in sorted(glob.glob(os.path.join(args.workdir, "queries", "*.jpg"))):
            with open(path, "rb") as f:
                files.append(f.read())
        sweep = bare_model(args.workdir, [1, 2, 4, 8, 16], args.bare_seconds) if args.sweep else None
        bare_before = bare_model(args.workdir, [serving_batch], args.bare_seconds)[serving_batch]
        asyncio.run(_load(url, files, args.clients, 3.0))  # warm pass (thumbnails untouched; caches fill)
        rss_before = _rss_mb(server.pid)
        load = asyncio.run(_load(url, files, args.clients, args.seconds))
        rss_after = _rss_mb(server.pid)
        stats = httpx.get(url + "/stats", timeout=10).json()
        bare_after = bare_model(args.workdir, [serving_batch], args.bare_seconds)[serving_batch]
    finally:
        server.terminate()
        server.wait(timeout=60)
    bare = (bare_before + bare_after) / 2
    result = {
        "machine": _cpu_name(), "load_average": os.getloadavg(), "clients": args.clients,
        "batch_sizes": sizes, "bare_images_per_s": {"before": bare_before, "after": bare_after, "mean": bare},
        "load": load, "throughput_ratio": load["requests_per_s"] / bare,
        "rss_mb": {"before": rss_before, "after": rss_after, "change": rss_after / rss_before - 1},
        "server_stats": {k: stats[k] for k in ("requests", "errors", "latency_ms", "batch_size_histogram")},
        "sweep_images_per_s": sweep,
    }
    print(f"machine: {result['machine']}; load average {result['load_average']}")
    if sweep:
        print("bare model images/s by batch size: " + ", ".join(f"{b}: {r:.1f}" for b, r in sweep.items()))
    print(f"bare model at batch {serving_batch}: {bare_before:.1f} / {bare_after:.1f} img/s (before / after)")
    print(f"{args.clients} clients, {load['seconds']:.1f} s: {load['requests_per_s']:.1f} req/s "
          f"({result['throughput_ratio']:.0%} of the bare model), p50 {load['p50_ms']:.0f} ms, "
          f"p90 {load['p90_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, errors {load['errors']} "
          f"{load['statuses']}")
    change = result["rss_mb"]["change"]
    print(f"server RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after ({change:+.1%})")
    targets = {"no errors": load["errors"] == 0,
               "throughput >= 60% of bare": result["throughput_ratio"] >= 0.6,
               "memory within 10%": abs(change) <= 0.10}
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    result["targets"] = targets
    if args.json:
        atomic.write_json(args.json, result)
    return 0


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        names = (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        return next(names)
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
