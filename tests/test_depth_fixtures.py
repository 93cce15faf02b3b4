"""The real files in ../shared/fixtures/depth: values, polarity, background, precision, sizes."""

import numpy as np
import pytest

from conftest import BEACHBALL, DEPTH_SYN, NOZ_EXR, TUM
from fluxdepth_ui.depth import DepthInputError, DepthSettings, NormalizeSettings, load_depth, prepare_depth
from scenes import spearman


def assert_near_is_brighter(depth_values, control_values, valid):
    """On valid pixels, the control value never increases as depth grows, and does decrease across the range."""
    z = depth_values[valid]
    v = control_values[valid]
    order = np.argsort(z, kind="stable")
    z, v = z[order], v[order]
    # Equal depths may share a value; any step up in depth must not step up in brightness.
    steps = np.diff(v)[np.diff(z) > 0]
    assert (steps <= 1e-6).all(), "a farther pixel came out brighter than a nearer one"
    assert v[0] > v[-1] + 0.5, "near and far are not clearly apart"


def test_beachball_picks_hero_z_not_left_view():
    depth = load_depth(str(BEACHBALL))
    assert depth.channel == "Z"  # not left.Z: the hero view is multiView[0]
    assert depth.kind == "metric" and depth.sample_type == "half"
    assert (depth.width, depth.height) == (2048, 1556)  # display window, not the 911x876 data window
    assert "left.Z" in depth.channels and len(depth.channels) == 20


def test_beachball_control_map_polarity_background_and_window():
    result = prepare_depth(str(BEACHBALL))
    cmap, depth = result.control_map, result.depth
    assert cmap.mode == "disparity" and not cmap.inverted
    # Outside the data window (654..1564, 245..1120) there is no data: background 0.
    assert np.isnan(depth.values[:245]).all() and (cmap.values[:245] == 0).all()
    assert (cmap.values[:, :654] == 0).all() and (cmap.values[:, 1565:] == 0).all()
    # Inside the data window, Z == 0 exactly where A == 0: background, black.
    inside = depth.values[245:1121, 654:1565]
    assert (cmap.values[245:1121, 654:1565][inside == 0] == 0).all()
    assert cmap.valid.sum() == np.count_nonzero(inside > 0)
    assert_near_is_brighter(depth.values, cmap.values, cmap.valid)
    # Background gap: the farthest object pixel sits at 0.25, not at 0 like the background.
    obj = cmap.values[cmap.valid]
    assert obj.min() == pytest.approx(0.25, abs=1e-6) and obj.max() == pytest.approx(1.0)
    assert result.stats.unique_levels == 141
    assert any("141 distinct depth levels" in w for w in result.stats.warnings)


def test_beachball_control_size_multiple_of_16():
    result = prepare_depth(str(BEACHBALL))
    assert (result.control.width, result.control.height) == (1024, 768)  # 1024x778, the centre 768 rows kept
    assert result.control.crop == (0, 5, 0, 5) and result.stats.crop == (0, 5, 0, 5)
    small = prepare_depth(str(BEACHBALL), DepthSettings(long_side=512))
    assert (small.control.width, small.control.height) == (512, 384)
    assert small.control.pixels.dtype == np.float32
    assert small.control.rgb().shape == (384, 512, 3)


def test_noz_exr_lists_channels_and_never_uses_r():
    with pytest.raises(DepthInputError) as err:
        load_depth(str(NOZ_EXR))
    msg = str(err.value)
    assert "no depth channel" in msg
    for name in ("A", "B", "G", "R"):
        assert name in msg.split("channels are:")[1]
    # The user may still pick a channel on purpose: then it is a made image, not 1/Z.
    picked = load_depth(str(NOZ_EXR), channel="R")
    assert picked.channel == "R" and picked.kind == "image"


NO_EDGES = DepthSettings(normalize=NormalizeSettings(edges="off"))


def test_edge_treatment_moves_only_edge_pixels_of_real_files():
    """With the default edge snapping, a few in-between pixels of the control image move onto a surface; every
    other pixel keeps its exact value."""
    for path in (DEPTH_SYN, TUM):
        snapped, plain = prepare_depth(str(path)), prepare_depth(str(path), NO_EDGES)
        moved = snapped.control.pixels != plain.control.pixels
        assert 0 < moved.sum() < 0.02 * moved.size and moved.sum() == snapped.stats.edge_pixels
        assert spearman(snapped.control.pixels, plain.control.pixels) > 0.99
        # The map before resizing (what the histograms show) is the same either way.
        np.testing.assert_array_equal(snapped.control_map.values, plain.control_map.values)


def test_depth_syn_png_16bit_metric_near_bright_background_black():
    result = prepare_depth(str(DEPTH_SYN), NO_EDGES)
    depth, cmap = result.depth, result.control_map
    assert depth.sample_type == "uint16" and depth.kind == "metric"
    raw = depth.values
    assert (cmap.values[raw == 0] == 0).all()
    assert cmap.valid.mean() == pytest.approx(np.count_nonzero(raw) / raw.size)
    assert cmap.valid.mean() == pytest.approx(0.256, abs=0.01)  # 74.4 % background
    assert_near_is_brighter(raw, cmap.values, cmap.valid)
    # 16-bit precision is kept: far more than 256 distinct control levels on the object.
    assert np.unique(cmap.values[cmap.valid]).size > 1000
    assert (result.control.width, result.control.height) == (1024, 768)


def test_tum_sensor_depth_holes_are_background():
    result = prepare_depth(str(TUM), NO_EDGES)
    raw, cmap = result.depth.values, result.control_map
    assert (cmap.values[raw == 0] == 0).all()
    assert cmap.valid.mean() == pytest.approx(0.808, abs=0.002)
    assert_near_is_brighter(raw, cmap.values, cmap.valid)
    # The notes' measurement: median pixel 0.62 in disparity (0.86 with a linear invert).
    median = float(np.median(cmap.values[cmap.valid]))
    assert 0.5 < median < 0.75
    linear = prepare_depth(str(TUM), DepthSettings(normalize=result_settings("linear")))
    assert float(np.median(linear.control_map.values[linear.control_map.valid])) > median + 0.1


def result_settings(mode):
    from fluxdepth_ui.depth import NormalizeSettings

    return NormalizeSettings(mode=mode)
