"""The PyTorch side of `benchmarks/compare_torch.py`: torchvision ResNet + an R-MAC head written like
cnnimageretrieval-pytorch's `cirtorch.layers.functional.rmac`, timed one call at a time on request.

Runs in a separate virtualenv with torch and torchvision (never a dependency of remap-jax); imports only
torch, torchvision, numpy and the standard-library `_line_protocol` beside it (torch lazily, so the pure
parts can be imported and tested without it).

    /tmp/torchenv/bin/python benchmarks/_torch_worker.py --arch resnet50 --weights w.safetensors --threads 2

Protocol (`_line_protocol.serve`): one JSON object per line on stdin, one JSON reply per line on stdout
(nothing else is printed on stdout; errors are replies {"error": "..."}):

    {"cmd": "load", "images": "x.npy"}     uint8 (B, H, W, 3) RGB pixels -> {"batch": B, "warmup_s": [...]}
    {"cmd": "time"}                         one timed call on the loaded batch -> {"seconds": s}
    {"cmd": "describe", "out": "d.npy"}     writes the (B, D) float32 descriptors -> {"shape": [B, D]}
    {"cmd": "info"}                         -> torch/torchvision versions, threads, device
    {"cmd": "quit"}

A call is what the remap-jax side times too: uint8 pixels already on the device -> float, ImageNet
normalisation -> backbone up to layer4 -> R-MAC (L2 per region, sum, L2) -> descriptors back on the host.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from _line_protocol import serve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cirtorch_region_grid(height: int, width: int, levels: int = 3, overlap: float = 0.4,
                         include_global: bool = False) -> list[tuple[int, int, int, int]]:
    """(y0, x0, h, w) regions of an `height` x `width` map, computed as cirtorch's `rmac` does inline.

    The square regions of side floor(2 min(H, W) / (l + 1)) at scales l = 1..L, l + Wd (or l + Hd) of them
    along the long side, where the extra count comes from the overlap closest to `overlap` over 2..7
    steps; starts floor(wl2 + i b) - wl2 (clamped into the map, which only matters for regions of side 1).
    `remap_jax.nn.regions.rmac_regions` gives the same list: like it, a portrait map gets the transposed
    landscape grid in the same order, and the duplicates of tiny maps are dropped (cirtorch keeps them).
    """
    w = min(height, width)
    wd = hd = 0
    if height != width:
        b = [(max(height, width) - w) / (s - 1) for s in range(2, 8)]
        err = [abs((w * w - w * bi) / (w * w) - overlap) for bi in b]
        extra = min(range(len(err)), key=err.__getitem__) + 1
        if height < width:
            wd = extra
        else:
            hd = extra
    rows = [(0, 0, height, width)] if include_global else []
    transpose = height > width  # cirtorch lays portrait grids out column-major; remap-jax keeps the order
    for level in range(1, levels + 1):
        wl = math.floor(2 * w / (level + 1))
        if wl == 0:
            continue
        wl2 = math.floor(wl / 2 - 1)
        bw = 0 if level + wd == 1 else (width - wl) / (level + wd - 1)
        bh = 0 if level + hd == 1 else (height - wl) / (level + hd - 1)
        xs = [min(max(math.floor(wl2 + i * bw) - wl2, 0), width - wl) for i in range(level + wd)]
        ys = [min(max(math.floor(wl2 + i * bh) - wl2, 0), height - wl) for i in range(level + hd)]
        if transpose:
            rows += [(y, x, wl, wl) for x in xs for y in ys]
        else:
            rows += [(y, x, wl, wl) for y in ys for x in xs]
    return list(dict.fromkeys(rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", help="torchvision ResNet name (resnet50, resnet101, ...)")
    p.add_argument("--weights", required=True, help=".safetensors or .npz in torchvision naming")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast on CUDA (on the CPU too, if asked)")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--overlap", type=float, default=0.4)
    p.add_argument("--include-global", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="torch.channels_last memory format")
    return p.parse_args(argv)


def _read_weights(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class TorchSide:
    """torchvision backbone (up to layer4) + cirtorch-style R-MAC, on one device, inference only."""

    def __init__(self, args):
        import torch
        import torchvision

        self.torch = torch
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (only possible before any parallel work)
            pass
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda":  # pick the fastest cuDNN algorithms, as XLA autotunes its own
            torch.backends.cudnn.benchmark = True
        net = getattr(torchvision.models, args.arch)(weights=None)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _read_weights(args.weights).items()}
        result = net.load_state_dict(state, strict=False)
        ignored = ("fc.weight", "fc.bias")  # the classifier, which retrieval drops
        missing = [k for k in result.missing_keys
                   if k not in ignored and not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise ValueError(f"weights {args.weights}: missing {missing[:8]}, unexpected "
                             f"{list(result.unexpected_keys)[:8]} for torchvision {args.arch}")
        # cirtorch keeps `features = nn.Sequential(*list(net.children())[:-2])`: no avgpool, no fc
        self.features = torch.nn.Sequential(*list(net.children())[:-2]).eval().to(self.device)
        if args.channels_last:
            self.features = self.features.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        self.pixels = None
        self.regions = None

    def rmac(self, x, eps: float = 1e-6):
        """cirtorch's rmac on (B, C, H, W) -> (B, C, 1, 1): per region max-pool, L2 (+eps), sum.

        The grid is computed once per map shape; a region is a slice (cirtorch gathers it with index
        lists, a copy: same values, slower).
        """
        F = self.torch.nn.functional
        if self.regions is None or self.regions[0] != tuple(x.shape[-2:]):
            grid = cirtorch_region_grid(x.shape[-2], x.shape[-1], self.args.levels, self.args.overlap,
                                        self.args.include_global)
            self.regions = (tuple(x.shape[-2:]), grid)
        v = None
        for y0, x0, h, w in self.regions[1]:
            r = x[:, :, y0:y0 + h, x0:x0 + w]
            vt = F.max_pool2d(r, (r.size(-2), r.size(-1)))
            vt = vt / (self.torch.norm(vt, p=2, dim=1, keepdim=True) + eps).expand_as(vt)
            v = vt if v is None else v + vt
        return v

    def describe(self):
        torch = self.torch
        with torch.inference_mode():
            x = self.pixels.permute(0, 3, 1, 2).float()
            x = (x - self.mean) / self.std
            if self.args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            autocast = self.args.dtype == "bfloat16"
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                fmap = self.features(x)
            v = self.rmac(fmap.float()).flatten(1)
            v = v / (torch.norm(v, p=2, dim=1, keepdim=True) + 1e-6)  # cirtorch's L2N after pooling
            return v.cpu().numpy()

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def handle(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        if cmd == "load":
            images = np.load(msg["images"])
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                return {"error": f"images: expected uint8 (B, H, W, 3), got {images.dtype} {images.shape}"}
            self.pixels = self.torch.from_numpy(images).to(self.device)
            warm = []
            for _ in range(int(msg.get("warmup", 1))):
                t0 = time.perf_counter()
                self.describe()
                self.sync()
                warm.append(time.perf_counter() - t0)
            return {"batch": int(images.shape[0]), "warmup_s": warm}
        if self.pixels is None and cmd in ("time", "describe"):
            return {"error": f"{cmd}: no images loaded (send a load command first)"}
        if cmd == "time":
            self.sync()
            t0 = time.perf_counter()
            self.describe()
            self.sync()
            return {"seconds": time.perf_counter() - t0}
        if cmd == "describe":
            out = self.describe()
            np.save(msg["out"], out.astype(np.float32))
            return {"shape": list(out.shape)}
        if cmd == "info":
            import torchvision

            return {"torch": self.torch.__version__, "torchvision": torchvision.__version__,
                    "threads": self.torch.get_num_threads(), "device": str(self.device),
                    "mkldnn": bool(self.torch.backends.mkldnn.is_available())}
        return {"error": f"unknown command {cmd!r}; expected load, time, describe, info or quit"}


def main(argv=None):
    args = parse_args(argv)
    side = TorchSide(args)
    serve(side.handle)


if __name__ == "__main__":
    main()
