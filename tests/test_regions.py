import numpy as np
import pytest

from remap_jax.nn.regions import num_regions, rmac_regions


def as_set(regions):
    return {tuple(r) for r in regions.tolist()}


def test_paper_setting_has_40_regions_with_reference_coordinates():
    regions = rmac_regions(24, 32, levels=4)
    assert regions.shape == (40, 4) and regions.dtype == np.int32
    scale = {side: [tuple(r) for r in regions.tolist() if r[2] == side] for side in (24, 16, 12, 9)}
    assert scale[24] == [(0, 0, 24, 24), (0, 8, 24, 24)]
    assert {(y, x) for y, x, _, _ in scale[16]} == {(y, x) for y in (0, 8) for x in (0, 8, 16)}
    assert {(y, x) for y, x, _, _ in scale[9]} == {(y, x) for y in (0, 5, 10, 15) for x in (0, 5, 11, 17, 23)}
    assert len(scale[12]) == 12


@pytest.mark.parametrize("shape", [(24, 32), (3, 7), (1, 5), (10, 41)])
def test_portrait_is_the_transpose_of_landscape_region_for_region(shape):
    land, port = rmac_regions(*shape, include_global=True), rmac_regions(*shape[::-1], include_global=True)
    assert port.tolist() == [[x, y, w, h] for y, x, h, w in land.tolist()]


def test_square_map_has_l_squared_regions_per_scale():
    regions = rmac_regions(30, 30, levels=3)
    assert len(regions) == 1 + 4 + 9
    assert tuple(regions[0]) == (0, 0, 30, 30)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1), (3, 2), (2, 3), (2, 100), (7, 7), (13, 61)])
@pytest.mark.parametrize("levels", [1, 3, 4, 6])
def test_every_region_is_inside_and_non_empty_and_unique(shape, levels):
    height, width = shape
    regions = rmac_regions(height, width, levels=levels)
    assert len(regions) >= 1
    y0, x0, h, w = regions.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (y0 + h <= height).all() and (x0 + w <= width).all()
    assert len(as_set(regions)) == len(regions)


def test_tiny_maps():
    assert rmac_regions(1, 1).tolist() == [[0, 0, 1, 1]]
    assert as_set(rmac_regions(1, 5)) == {(0, x, 1, 1) for x in range(5)}


def test_include_global_prepends_the_whole_map():
    regions = rmac_regions(24, 32, include_global=True)
    assert len(regions) == 41 and tuple(regions[0]) == (0, 0, 24, 32)
    assert num_regions(24, 32, include_global=True) == 41


def test_results_are_cached_and_read_only():
    a, b = rmac_regions(24, 32), rmac_regions(24, 32)
    assert a is b
    with pytest.raises(ValueError):
        a[0, 0] = 5


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"height": 0, "width": 4}, "height"),
        ({"height": 4, "width": -1}, "width"),
        ({"height": 4, "width": 4, "levels": 0}, "levels"),
        ({"height": 4.5, "width": 4}, "height"),
        ({"height": 4, "width": 4, "overlap": 1.5}, "overlap"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        rmac_regions(**kwargs)
