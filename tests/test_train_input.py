"""Training images come through the Extractor's input pipeline (`train.input.ImageSource` over
`remap_jax.describe.pipeline`): threaded read-ahead, JPEG draft decoding, odd images, the same pixels as the
mining describer's inputs."""

import numpy as np
from test_train import SIZE, TinyModel, _variables, tiny_config

from train import loop
from train.input import ImageSource


def test_image_source_prefetch_with_one_worker_does_not_deadlock():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, SIZE + 3, SIZE, 3), dtype=np.uint8)
    source = ImageSource(lambda i: images[i], (SIZE, SIZE), cache=True, workers=1)
    ids = np.array([[0, 1], [2, 5]])
    got = source.prefetch(ids).result(timeout=30)
    assert got.shape == (2, 2, SIZE, SIZE, 3) and got.dtype == np.uint8
    from remap_jax.data.images import resize_to

    np.testing.assert_array_equal(got[1, 1], resize_to(images[5], (SIZE, SIZE)))
    assert source.read(5) is source.read(5)  # cached
    source.close()


def test_image_source_decodes_encoded_images_through_the_extractors_path():
    """Training images go through `decode_resized`: JPEG bytes twice the size are draft-decoded, and
    `draft=False` gives exactly load_rgb + resize_to."""
    from remap_jax.data.images import decode_resized, encode_jpeg, load_rgb, resize_to

    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    data = [encode_jpeg(resize_to(small, (4 * SIZE, 4 * SIZE)), quality=95)]
    drafted = ImageSource(lambda i: data[i], (SIZE, SIZE), workers=1)
    exact = ImageSource(lambda i: data[i], (SIZE, SIZE), workers=1, draft=False)
    assert decode_resized(data[0], [(SIZE, SIZE)]).draft_scale == 4
    np.testing.assert_array_equal(drafted.read(0), decode_resized(data[0], [(SIZE, SIZE)]).images[0])
    np.testing.assert_array_equal(exact.read(0), resize_to(load_rgb(data[0]), (SIZE, SIZE)))
    assert np.abs(drafted.read(0).astype(int) - exact.read(0)).mean() < 3
    drafted.close()
    exact.close()


def test_training_images_and_extractor_inputs_come_out_of_one_pipeline():
    """The train step's images (`ImageSource`) and the mining describer's inputs go through the same
    `remap_jax.describe.pipeline` (decode, JPEG draft, EXIF orientation, mode conversion, resize, threaded
    read-ahead): identical pixels for the same sources, odd images included."""
    import io

    from PIL import Image

    from remap_jax.data.images import decode_resized, load_rgb, resize_to
    from remap_jax.describe.pipeline import Failed

    rng = np.random.default_rng(3)
    base = resize_to(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), (48, 80))  # landscape, smooth
    pil = Image.fromarray(base)

    def encoded(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    sources = [
        encoded(Image.fromarray(resize_to(base, (4 * SIZE, 5 * SIZE))), "JPEG", quality=95),  # draft-decoded
        encoded(pil.convert("L"), "PNG"),  # grayscale
        encoded(pil.convert("CMYK"), "JPEG", quality=95),
        encoded(pil.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        encoded(pil, "JPEG", quality=95, exif=exif),  # EXIF-rotated
        base,  # a decoded array
    ]
    assert decode_resized(sources[0], [(SIZE, SIZE)]).draft_scale > 1
    config = tiny_config()
    mine, _ = loop.make_describers(TinyModel(), None, _variables(), config)
    source = ImageSource(lambda i: sources[i], config.image_size, workers=2)
    assert source.resizing == mine.resizing
    described = {}
    for item in mine.input_batches(sources):
        assert not isinstance(item, Failed), item
        for row, i in enumerate(item.indices):
            described[i] = np.asarray(item.batches[0][row])
    training = source.get(np.arange(len(sources)))
    assert sorted(described) == list(range(len(sources)))
    for i in range(len(sources)):
        np.testing.assert_array_equal(training[i], described[i])
        assert training[i].shape == (SIZE, SIZE, 3)
    assert np.array_equal(training[1][..., 0], training[1][..., 2])  # gray -> RGB
    np.testing.assert_array_equal(training[4], resize_to(load_rgb(sources[4]), (SIZE, SIZE)))  # turned
    stored = resize_to(load_rgb(sources[4], exif_transpose=False), (SIZE, SIZE))
    assert not np.array_equal(training[4], stored)
    source.close()
