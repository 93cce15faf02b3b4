"""Fixed ranges across frames, histogram data and stats."""

import json

import numpy as np
import pytest

from conftest import BEACHBALL, ramp_depth
from fluxdepth_ui.depth import (
    DepthMap,
    DepthRange,
    DepthSettings,
    NormalizeSettings,
    compute_sequence_range,
    normalize,
    prepare_depth,
    prepare_loaded,
)


def frame(near_object_z):
    """A back wall at Z=50 with a near object whose distance changes per frame."""
    z = np.full((96, 128), 50.0, np.float32)
    z[30:60, 40:80] = near_object_z
    return DepthMap(z, "metric", "Z", ("Z",), "exr", "float", f"f{near_object_z}.exr")


def test_sequence_range_keeps_the_wall_at_one_level():
    frames = [frame(z) for z in (5.0, 8.0, 12.0, 20.0)]
    # Per-frame normalization: the wall is always the far end, the object always white -> no depth change visible.
    per_frame = [normalize(f, NormalizeSettings(clip=(0, 100))).values for f in frames]
    assert len({round(float(v[5, 5]), 6) for v in per_frame}) == 1
    assert len({round(float(v[45, 60]), 6) for v in per_frame}) == 1
    # One range over the sequence: the wall keeps one grey level while the object fades as it moves away.
    rng = compute_sequence_range(frames, NormalizeSettings(clip=(0, 100)))
    shared = [normalize(f, fixed_range=rng).values for f in frames]
    assert len({float(v[5, 5]) for v in shared}) == 1
    obj = [float(v[45, 60]) for v in shared]
    assert obj[0] == pytest.approx(1.0) and obj == sorted(obj, reverse=True) and obj[-1] < 0.5


def test_range_roundtrips_through_dict_and_invert_override():
    rng = DepthRange("disparity", 0.02, 0.2, 0.1, False)
    assert DepthRange.from_dict(json.loads(json.dumps(rng.to_dict()))) == rng
    z = ramp_depth()
    depth = DepthMap(z, "metric", "Z", ("Z",), "exr", "float", "r.exr")
    flipped = normalize(depth, NormalizeSettings(invert="on"), fixed_range=rng)
    plain = normalize(depth, fixed_range=rng)
    assert flipped.inverted and not plain.inverted
    assert plain.values[0, 0] > plain.values[0, -1] and flipped.values[0, 0] < flipped.values[0, -1]


def test_histograms_count_valid_pixels_and_mark_clip_ends():
    result = prepare_depth(str(BEACHBALL))
    valid = int(result.control_map.valid.sum())
    assert int(result.raw_histogram.counts.sum()) == valid
    assert int(result.control_histogram.counts.sum()) == valid
    far, near = result.stats.raw_clip
    assert 9.0 <= near < far <= 10.92
    assert result.raw_histogram.markers == (far, near)
    assert result.raw_histogram.edges[0] == pytest.approx(9.0) and result.raw_histogram.edges[-1] == pytest.approx(10.92, abs=0.01)
    logged = prepare_loaded(result.depth, DepthSettings(), log_histogram=True)
    assert logged.raw_histogram.log and logged.raw_histogram.edges[0] == pytest.approx(np.log10(9.0))
    # The normalized histogram: nothing between the background (0) and the gap (0.25).
    c = result.control_histogram
    assert c.counts[(c.edges[1:] <= 0.24)].sum() == 0


def test_stats_fields_and_summary():
    s = prepare_depth(str(BEACHBALL)).stats
    d = s.to_dict()
    for key in ("channel", "mode", "inverted", "width", "height", "valid_fraction", "range", "warnings"):
        assert key in d
    assert d["valid_fraction"] == pytest.approx(0.1879, abs=1e-3)
    assert "Z (half)" in s.summary() and "1024×768" in s.summary() and "cropped 0×10 px" in s.summary()
