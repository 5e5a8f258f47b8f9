import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remap_jax.ops import roi_max_pool
from remap_jax.regions import rmac_regions


def reference(features, regions):
    x = np.asarray(jnp.asarray(features).astype(jnp.float32))
    return np.stack([x[:, y : y + h, x0 : x0 + w].max(axis=(1, 2)) for y, x0, h, w in regions], axis=1)


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
def test_equals_slicing_every_region(shape, levels, include_global, method):
    x = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
    regions = rmac_regions(shape[1], shape[2], levels, include_global=include_global)
    out = jax.jit(lambda v: roi_max_pool(v, regions, method))(x)
    assert out.shape == (shape[0], len(regions), shape[3])
    np.testing.assert_array_equal(np.asarray(out), reference(x, regions))


def test_arbitrary_region_sets_in_any_order():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 10, 4))
    regions = np.array([[3, 2, 4, 5], [0, 0, 9, 10], [3, 2, 4, 5], [8, 9, 1, 1], [1, 4, 2, 2], [0, 7, 3, 3]])
    for method in ("slices", "gather"):
        np.testing.assert_array_equal(np.asarray(roi_max_pool(x, regions, method)), reference(x, regions))


@pytest.mark.parametrize("method", ["slices", "gather"])
@pytest.mark.parametrize("channels", [4, 3])  # odd C takes the generic half-precision path
def test_bfloat16_is_exact_and_keeps_dtype(method, channels):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 8, channels)).astype(jnp.bfloat16)
    regions = rmac_regions(6, 8)
    out = jax.jit(lambda v: roi_max_pool(v, regions, method))(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), reference(x, regions))


def test_vmap_over_an_extra_batch_axis():
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 2, 5, 7, 4))
    regions = rmac_regions(5, 7)
    out = jax.vmap(lambda v: roi_max_pool(v, regions))(x)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out[i]), reference(x[i], regions))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_goes_to_the_max_element_of_each_region(dtype):
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6, 3)).astype(dtype)
    regions = rmac_regions(5, 6, levels=3)
    weights = jax.random.normal(jax.random.PRNGKey(5), (2, len(regions), 3))
    grad = jax.jit(jax.grad(lambda v: (roi_max_pool(v, regions).astype(jnp.float32) * weights).sum()))(x)
    expected = np.zeros(x.shape, np.float32)
    xs = np.asarray(x.astype(jnp.float32))
    w = np.asarray(weights)
    for r, (y0, x0, h, wd) in enumerate(regions):
        for b in range(2):
            for c in range(3):
                window = xs[b, y0 : y0 + h, x0 : x0 + wd, c]
                i, j = np.unravel_index(np.argmax(window), window.shape)
                expected[b, y0 + i, x0 + j, c] += w[b, r, c]
    tol = 1e-6 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(grad.astype(jnp.float32)), expected, rtol=tol, atol=tol)


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


def test_program_size_does_not_grow_with_the_number_of_regions():
    # Same cells, many more regions: only the small region-assembly step may grow.
    x = jnp.zeros((1, 12, 16, 8))
    few = np.array([[0, 0, 12, 16], [0, 0, 6, 8], [6, 8, 6, 8]])
    many = np.array([[y, x, 6, 8] for y in (0, 6) for x in (0, 8)] * 10 + few.tolist())

    def count_fusions(regions):
        text = jax.jit(lambda v: roi_max_pool(v, regions)).lower(x).compile().as_text()
        return text.count(" fusion(")

    assert count_fusions(many) <= count_fusions(few) + 2
