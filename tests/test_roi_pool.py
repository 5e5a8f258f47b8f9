import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remap_jax.nn.regions import rmac_regions
from remap_jax.nn.roi_pool import _from_order_key, _order_key, roi_max_pool

HALF_DTYPES = [jnp.bfloat16, jnp.float16]


def reference(features, regions):
    x = np.asarray(jnp.asarray(features).astype(jnp.float32))
    return np.stack([x[:, y : y + h, x0 : x0 + w].max(axis=(1, 2)) for y, x0, h, w in regions], axis=1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("method", ["slices", "gather"])
@pytest.mark.parametrize(
    "shape,levels,include_global",
    [
        ((2, 6, 8, 5), 4, False),
        ((1, 8, 6, 3), 3, True),
        ((3, 1, 1, 2), 4, False),
        ((2, 3, 2, 4), 4, False),
        ((1, 1, 5, 3), 2, False),
        ((2, 11, 7, 2), 5, True),
    ],
)
def test_equals_slicing_every_region(shape, levels, include_global, method, dtype):
    # Shapes include tiny maps and odd channel counts (nothing pairs channels up).
    x = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape).astype(dtype)
    regions = rmac_regions(shape[1], shape[2], levels, include_global=include_global)
    out = jax.jit(lambda v: roi_max_pool(v, regions, method))(x)
    assert out.shape == (shape[0], len(regions), shape[3])
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), reference(x, regions))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_arbitrary_region_sets_in_any_order(dtype):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 10, 4)).astype(dtype)
    regions = np.array([[3, 2, 4, 5], [0, 0, 9, 10], [3, 2, 4, 5], [8, 9, 1, 1], [1, 4, 2, 2], [0, 7, 3, 3]])
    for method in ("slices", "gather"):
        out = roi_max_pool(x, regions, method).astype(jnp.float32)
        np.testing.assert_array_equal(np.asarray(out), reference(x, regions))


@pytest.mark.parametrize("method", ["slices", "gather"])
@pytest.mark.parametrize("channels", [4, 1])
def test_float16_is_exact_and_keeps_dtype(method, channels):
    # bfloat16 runs through every shape above; float16 shares its int16-key lowering with another layout.
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 8, channels)).astype(jnp.float16)
    regions = rmac_regions(6, 8)
    out = jax.jit(lambda v: roi_max_pool(v, regions, method))(x)
    assert out.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), reference(x, regions))


def special_values(dtype, subnormals: bool) -> np.ndarray:
    """Signed zeros, infinities, NaNs of both signs, extreme finite values (and subnormals) of `dtype`."""
    info = jnp.finfo(dtype)
    extremes = [float(info.max), float(info.tiny)] + ([float(info.smallest_subnormal)] if subnormals else [])
    values = [0.0, -0.0, np.inf, -np.inf, 1.0, -1.0] + extremes + [-v for v in extremes]
    values = np.array(values, np.float32).astype(dtype)
    width = np.dtype(dtype).itemsize * 8
    unsigned = np.dtype(f"uint{width}")
    nan_bits = np.array([np.nan], dtype).view(unsigned)
    negative_nan = (nan_bits | unsigned.type(1 << (width - 1))).view(dtype)  # x86's 0/0 is a negative NaN
    return np.concatenate([values, np.array([np.nan], dtype), negative_nan])


@pytest.mark.parametrize("method", ["slices", "gather"])
@pytest.mark.parametrize("dtype", [jnp.float32, *HALF_DTYPES])
def test_special_values_match_slicing(method, dtype):
    # Maps drawn from the special values, mostly negative so that some regions hold no positive value;
    # NaN anywhere in a region gives NaN, like the float max of slicing. Subnormals only where no float
    # arithmetic runs (the int16 keys of the 16-bit CPU lowering): XLA's CPU float ops flush them to zero,
    # slicing included.
    pool = special_values(dtype, subnormals=method == "slices" and dtype != jnp.float32)
    rng = np.random.default_rng(7)
    x = jnp.asarray(pool[rng.choice(len(pool), size=(2, 7, 9, 5))])
    negative = jnp.asarray(-np.abs(rng.normal(size=(2, 7, 9, 5)))).astype(dtype)
    x = jnp.where(jnp.asarray(rng.random((2, 7, 9, 5)) < 0.8), negative, x)
    regions = np.concatenate([rmac_regions(7, 9, levels=3), [[2, 3, 1, 1], [0, 0, 7, 9]]])
    out = jax.jit(lambda v: roi_max_pool(v, regions, method))(x)
    expected = reference(x, regions)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), expected)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_order_key_sorts_every_16bit_value_like_the_floats(dtype):
    bits = np.arange(-(2**15), 2**15, dtype=np.int32).astype(np.int16)
    floats = bits.view(dtype).astype(np.float32)
    inf_bits = int(np.array(np.inf, dtype).view(np.int16))
    keys = np.asarray(_order_key(jnp.asarray(bits), inf_bits)).astype(np.int32)
    nan = np.isnan(floats)
    assert (keys[nan] == 2**15 - 1).all()  # every NaN, either sign, is the largest key
    finite = ~nan & (floats != 0)  # +0 and -0 compare equal as floats but get neighbouring keys
    order = np.argsort(keys[finite], kind="stable")
    assert (np.diff(floats[finite][order]) > 0).all()
    assert keys[~nan].max() < 2**15 - 1
    decoded = np.asarray(_from_order_key(jnp.asarray(keys.astype(np.int16)), dtype))
    np.testing.assert_array_equal(decoded[~nan].view(np.int16), bits[~nan])
    assert np.isnan(decoded[nan].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vmap_over_an_extra_batch_axis(dtype):
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 2, 5, 7, 4)).astype(dtype)
    regions = rmac_regions(5, 7)
    out = jax.vmap(lambda v: roi_max_pool(v, regions))(x)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out[i].astype(jnp.float32)), reference(x[i], regions))


@pytest.mark.parametrize("dtype,channels", [(jnp.float32, 3), (jnp.bfloat16, 3), (jnp.float16, 2)])
def test_gradient_goes_to_the_max_element_of_each_region(dtype, channels):
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6, channels)).astype(dtype)
    regions = rmac_regions(5, 6, levels=3)
    weights = jax.random.normal(jax.random.PRNGKey(5), (2, len(regions), channels))
    grad = jax.jit(jax.grad(lambda v: (roi_max_pool(v, regions).astype(jnp.float32) * weights).sum()))(x)
    assert grad.dtype == dtype
    expected = np.zeros(x.shape, np.float32)
    xs = np.asarray(x.astype(jnp.float32))
    w = np.asarray(weights)
    for r, (y0, x0, h, wd) in enumerate(regions):
        for b in range(2):
            for c in range(channels):
                window = xs[b, y0 : y0 + h, x0 : x0 + wd, c]
                i, j = np.unravel_index(np.argmax(window), window.shape)
                expected[b, y0 + i, x0 + j, c] += w[b, r, c]
    tol = 1e-6 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(grad.astype(jnp.float32)), expected, rtol=tol, atol=tol)


def slicing_gradient(x, regions, weights):
    """d/dx of sum(weights * region maxima) through slice-and-max in float32: ties share equally."""

    def loss(v):
        maxima = jnp.stack([v[:, y : y + h, x0 : x0 + w].max(axis=(1, 2)) for y, x0, h, w in regions], axis=1)
        return (maxima * weights).sum()

    return np.asarray(jax.grad(loss)(jnp.asarray(x).astype(jnp.float32)))


@pytest.mark.parametrize("dtype", [jnp.float32, *HALF_DTYPES])
def test_gradient_shares_ties_like_slicing(dtype):
    # Few distinct values: most regions hold their max several times, within and across cells.
    x = jax.random.randint(jax.random.PRNGKey(6), (2, 7, 9, 3), -2, 2).astype(dtype)
    regions = rmac_regions(7, 9, levels=3)
    weights = jax.random.normal(jax.random.PRNGKey(7), (2, len(regions), 3))
    grad = jax.jit(jax.grad(lambda v: (roi_max_pool(v, regions).astype(jnp.float32) * weights).sum()))(x)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    expected = slicing_gradient(x, regions, weights)
    np.testing.assert_allclose(np.asarray(grad.astype(jnp.float32)), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_of_regions_that_leave_pixels_out_under_vmap(dtype):
    # Rows 0 and 8 and the last column lie in no region: they get zero gradient.
    x = jax.random.normal(jax.random.PRNGKey(8), (2, 1, 9, 10, 3)).astype(dtype)
    regions = np.array([[3, 2, 4, 5], [1, 0, 7, 9], [3, 2, 4, 5], [2, 4, 2, 2]])
    weights = jax.random.normal(jax.random.PRNGKey(9), (1, len(regions), 3))

    def loss(v):
        return (roi_max_pool(v, regions).astype(jnp.float32) * weights).sum()

    grads = jax.jit(jax.vmap(jax.grad(loss)))(x)
    for i in range(2):
        expected = slicing_gradient(x[i], regions, weights)
        np.testing.assert_allclose(np.asarray(grads[i].astype(jnp.float32)), expected, rtol=1e-2, atol=1e-2)
    assert not np.asarray(grads[:, :, [0, 8]].astype(jnp.float32)).any()


def test_wrong_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"features: expected rank 4 \(B, H, W, C\), got shape \(4, 5, 6\)"):
        roi_max_pool(jnp.zeros((4, 5, 6)), rmac_regions(4, 5))


@pytest.mark.parametrize("region", [[0, 0, 5, 2], [-1, 0, 2, 2], [0, 5, 1, 1], [0, 0, 0, 1]])
def test_regions_outside_the_map_are_a_clear_error(region):
    with pytest.raises(ValueError, match=r"region 1 .* 4x5 feature map"):
        roi_max_pool(jnp.zeros((1, 4, 5, 2)), np.array([[0, 0, 1, 1], region]))


def test_bad_region_array_and_method():
    with pytest.raises(ValueError, match="regions: expected a non-empty"):
        roi_max_pool(jnp.zeros((1, 4, 5, 2)), np.zeros((0, 4), int))
    with pytest.raises(ValueError, match="method"):
        roi_max_pool(jnp.zeros((1, 4, 5, 2)), rmac_regions(4, 5), method="loop")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_program_size_does_not_grow_with_the_number_of_regions(dtype):
    # Same cells, many more regions: only the small region-assembly step may grow.
    x = jnp.zeros((1, 12, 16, 8), dtype)
    few = np.array([[0, 0, 12, 16], [0, 0, 6, 8], [6, 8, 6, 8]])
    many = np.array([[y, x, 6, 8] for y in (0, 6) for x in (0, 8)] * 10 + few.tolist())

    def count_fusions(regions):
        text = jax.jit(lambda v: roi_max_pool(v, regions)).lower(x).compile().as_text()
        return text.count(" fusion(")

    assert count_fusions(many) <= count_fusions(few) + 2
