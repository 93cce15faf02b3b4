"""Issue classes of silently wrong control maps, on Houdini-like scenes with known geometry (tests/scenes.py).

Every case checks the map against the scene's true planar Z: polarity (Spearman < -0.99 on valid pixels), background
black, no valid pixel black, and the warning an ambiguous file must raise.
"""

import numpy as np
import pytest
from PIL import Image

from conftest import write_exr
from fluxdepth_ui.depth import DepthSettings, NormalizeSettings, load_depth, prepare_depth
from scenes import Scene, render, spearman

SKY = Scene(wall_z=None)  # ground, spheres, sky above the horizon
ROOM = Scene(wall_z=25.0)  # ground, spheres, a back wall: no background


@pytest.fixture(scope="module")
def sky():
    return render(SKY)


@pytest.fixture(scope="module")
def room():
    return render(ROOM)


def check_map(result, true_z, background=None, rho=-0.99):
    """Near = white along the true depth; with a background: background 0 and every valid pixel above 0."""
    cmap = result.control_map
    valid = cmap.valid & np.isfinite(true_z)
    assert spearman(cmap.values[valid], true_z[valid]) < rho
    if background is not None:  # with a background, nothing valid may share its black
        assert not cmap.valid[background].any() and (cmap.values[background] == 0).all()
        assert (cmap.values[cmap.valid] > 0).all(), "a valid pixel came out as black as the background"


def settings(**kw):
    long_side = kw.pop("long_side", 256)
    return DepthSettings(normalize=NormalizeSettings(**kw), long_side=long_side)


# --- 1, 9: 16-bit millimetre maps --------------------------------------------------------------------------------

@pytest.mark.parametrize("top", [65535, 65280, 32768, 32767, 32000])
def test_millimetre_png_reaching_a_full_scale_code_stays_distances(tmp_path, sky, top):
    z = sky.zmin
    mm = np.where(np.isfinite(z), np.round(z / np.nanmax(z) * top), 0).astype(np.uint16)
    Image.fromarray(mm).save(tmp_path / "mm.png")
    result = prepare_depth(str(tmp_path / "mm.png"), settings(edges="off"))
    assert result.depth.kind == "metric", result.depth.notes
    check_map(result, z, background=~np.isfinite(z))
    assert not any("15-bit" in n for n in result.depth.notes)


def test_made_16bit_image_at_full_scale_is_still_an_image(tmp_path, sky):
    inv = 1.0 / sky.zmin
    lo, hi = np.nanmin(inv), np.nanmax(inv)
    made = np.where(np.isfinite(inv), np.round((inv - lo) / (hi - lo) * 65535), 0).astype(np.uint16)
    Image.fromarray(made).save(tmp_path / "made.png")
    result = prepare_depth(str(tmp_path / "made.png"), settings(edges="off"))
    assert result.depth.kind == "image" and result.control_map.mode == "passthrough"
    objects = np.isfinite(sky.zmin)  # in a made image the sky is its far end (black), not a hole
    assert spearman(result.control_map.values[objects], sky.zmin[objects]) < -0.99
    assert (result.control_map.values[~objects] == 0).all()


def test_undecidable_16bit_file_says_so(tmp_path):
    # A left-to-right ramp reaching 65535: no ground, no sky, nothing to read the polarity from.
    ramp = np.tile(np.linspace(1000, 65535, 512), (96, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    depth = load_depth(str(tmp_path / "ramp.png"))
    assert depth.kind == "image" and any("unsure" in n and "mode disparity" in n for n in depth.notes)


def test_65535_as_no_reading_is_background(tmp_path, sky):
    z = sky.zmin
    mm = np.where(np.isfinite(z), np.round(z * 40), 65535).astype(np.uint16)  # sky = sensor's "no reading"
    Image.fromarray(mm).save(tmp_path / "sentinel.png")
    result = prepare_depth(str(tmp_path / "sentinel.png"), settings(edges="off"))
    assert result.depth.kind == "metric" and any("65535 = no" in n for n in result.depth.notes)
    check_map(result, z, background=~np.isfinite(z))


# --- 2: stereo multi-part ----------------------------------------------------------------------------------------

def test_stereo_parts_use_the_hero_view_and_any_part_can_be_named(tmp_path, room):
    right = room.zmin
    left = np.roll(right, 34, axis=1)  # the other eye, shifted
    path = write_exr(tmp_path / "stereo.exr", None, parts=[
        ({"name": "depth_left", "view": "left", "multiView": ["right", "left"]}, {"Z": left}),
        ({"name": "depth_right", "view": "right", "multiView": ["right", "left"]}, {"Z": right}),
    ])
    depth = load_depth(path)
    assert depth.channel == "depth_right.Z" and np.array_equal(depth.values, right)
    assert set(depth.channels) == {"depth_left.Z", "depth_right.Z"}
    assert np.array_equal(load_depth(path, "depth_left.Z").values, left)
    assert np.array_equal(load_depth(path, "left.Z").values, left)  # view.channel
    assert np.array_equal(load_depth(path, "depth_right.Z").values, right)


# --- 3: colour is not depth --------------------------------------------------------------------------------------

def test_clay_render_with_camera_space_p_uses_p_z(tmp_path, sky):
    z = np.nan_to_num(sky.zmin, nan=0.0)
    grey = np.clip(1.0 / np.maximum(z, 1), 0, 1).astype(np.float32)
    channels = {"C.R": grey, "C.G": grey, "C.B": grey, "P.x": z * 0.1, "P.y": z * 0.2, "P.z": -z}
    result = prepare_depth(write_exr(tmp_path / "clay.exr", channels), settings(edges="off"))
    assert result.depth.channel == "P.z" and result.depth.kind == "metric"
    check_map(result, sky.zmin, background=~np.isfinite(sky.zmin))


def test_grey_colour_beside_other_aovs_is_refused(tmp_path, room):
    grey = np.full_like(room.zmin, 0.5)
    path = write_exr(tmp_path / "beauty.exr", {"C.R": grey, "C.G": grey, "C.B": grey, "N.x": grey, "N.z": grey})
    with pytest.raises(Exception, match="no depth channel.*choose the depth channel"):
        load_depth(path)
    assert load_depth(path, "C.R").channel == "C.R"  # the artist may still say so


def test_colour_exr_read_through_luminance_warns(tmp_path, room):
    y = (room.zmin / room.zmin.max()).astype(np.float32)
    depth = load_depth(write_exr(tmp_path / "photo.exr", {"Y": y, "RY": y * 0.1, "BY": y * 0.2}))
    assert depth.channel == "Y" and any("looks like a colour image" in n for n in depth.notes)


# --- 4: 1/Z without metadata -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_inverse_depth_without_metadata_is_flagged(tmp_path, sky, sign):
    inv = np.where(np.isfinite(sky.zmin), sign / sky.zmin, 0.0).astype(np.float32)  # Nuke 1/Z, Maya -1/z
    path = write_exr(tmp_path / "inv.exr", {"depth.Z": inv})
    auto = prepare_depth(path, settings(edges="off"))
    assert any("--mode inverse" in w for w in auto.stats.warnings)
    fixed = prepare_depth(path, settings(mode="inverse", edges="off"))
    check_map(fixed, sky.zmin, background=~np.isfinite(sky.zmin))


def test_true_distances_raise_no_polarity_warning(tmp_path, sky):
    path = write_exr(tmp_path / "z.exr", {"Z": np.nan_to_num(sky.zmin, nan=0.0)})
    assert not any("inverse" in w for w in prepare_depth(path, settings()).stats.warnings)


# --- 5: a linear remap with near = white, converted back with near/far ---------------------------------------------

@pytest.mark.parametrize("polarity", ["auto", "near-white"])
def test_near_white_linear_export_converts_back_to_disparity(tmp_path, room, polarity):
    near, far = 4.0, 25.0
    z = np.clip(room.zmin, near, far)
    codes = np.round((far - z) / (far - near) * 65535).astype(np.uint16)  # near = white
    Image.fromarray(codes).save(tmp_path / "export.png")
    result = prepare_depth(str(tmp_path / "export.png"),
                           settings(mode="disparity", near=near, far=far, polarity=polarity, edges="off"))
    check_map(result, room.zmin)
    # The same map as the render itself gives (an EXR of the same Z): near and far say what the export's codes stand
    # for; the map is then stretched between its own ends as any 1/Z is (until session 33 near and far were also
    # taken as the map's ends, up to 0.08 off the EXR's map here).
    render = prepare_depth(write_exr(tmp_path / "z.exr", {"Z": z.astype(np.float32)}), settings(edges="off"))
    np.testing.assert_allclose(result.control_map.values, render.control_map.values, atol=3e-3)


# --- 6: premultiplied (coverage-weighted) depth ------------------------------------------------------------------

def test_premultiplied_depth_gets_no_glowing_rims(tmp_path):
    scene = Scene(wall_z=None, ground_y=-50.0)  # spheres over sky only: every edge is object over background
    r = render(scene)
    path = write_exr(tmp_path / "premult.exr", {"Z": np.nan_to_num(r.z_premult), "A": r.alpha})
    result = prepare_depth(path, settings(edges="off", long_side=256))
    partial = (r.alpha > 0) & (r.alpha < 1)
    assert any("premultiplied" in n for n in result.depth.notes)
    np.testing.assert_allclose(result.depth.values[partial], r.z_avg[partial], rtol=1e-4)
    # Before: the rim pixel was nearer than the whole sphere; now no rim pixel is brighter than its sphere's front.
    cmap = result.control_map
    assert cmap.values[partial].max() <= cmap.values[(r.alpha == 1)].max() + 1e-6
    plain = write_exr(tmp_path / "plain.exr", {"Z": np.nan_to_num(r.z_avg), "A": r.alpha})
    assert not any("premultiplied" in n for n in load_depth(plain).notes)


# --- 7: anti-aliased object-over-object edges --------------------------------------------------------------------

def ghosts(values: np.ndarray) -> int:
    """Pixels strictly between flat left/right neighbours across a jump (in-between levels)."""
    a, b, c, d, e = (values[:, k:values.shape[1] - 4 + k] for k in range(5))
    jump = np.abs(d - b)
    flat = np.maximum(np.abs(b - a), np.abs(e - d)) < 0.25 * jump
    inside = (c > np.minimum(b, d) + 0.05 * jump) & (c < np.maximum(b, d) - 0.05 * jump)
    return int(np.count_nonzero(flat & inside & (jump > 0.02)))


def test_anti_aliased_edges_snap_to_a_surface(tmp_path, room):
    path = write_exr(tmp_path / "aa.exr", {"Z": room.z_avg})
    size = dict(long_side=256)
    off = prepare_depth(path, settings(edges="off", **size))
    snap = prepare_depth(path, settings(**size))
    near = prepare_depth(path, settings(edges="near", **size))
    assert ghosts(off.control.pixels) > 50
    assert ghosts(snap.control.pixels) < 0.2 * ghosts(off.control.pixels)
    assert snap.stats.edge_pixels > 0 and "edges snap" in snap.stats.summary()
    assert (near.control.pixels >= off.control.pixels - 1e-6).all()  # only ever nearer
    valid = np.isfinite(room.z_center)
    assert spearman(snap.control.pixels[valid], room.z_center[valid]) < -0.98
    # The ground's smooth slope towards the horizon is not an edge: a scene of only ground is untouched.
    flat = prepare_depth(write_exr(tmp_path / "floor.exr", {"Z": render(Scene(wall_z=None, spheres=())).z_avg}),
                         settings(**size))
    assert flat.stats.edge_pixels == 0


# --- 8: linear mode keeps the background gap ----------------------------------------------------------------------

def test_linear_mode_keeps_the_farthest_content_above_the_background(tmp_path, sky):
    path = write_exr(tmp_path / "z.exr", {"Z": np.nan_to_num(sky.zmin, nan=0.0)})
    result = prepare_depth(path, settings(mode="linear", edges="off"))
    cmap = result.control_map
    assert cmap.range.gap > 0 and cmap.values[cmap.valid].min() >= cmap.range.gap - 1e-6
    check_map(result, sky.zmin, background=~np.isfinite(sky.zmin))


# --- 10: resizing ------------------------------------------------------------------------------------------------

def test_shrinking_never_darkens_object_rims(tmp_path):
    r = render(Scene(width=512, height=384, wall_z=None, ground_y=-50.0))
    path = write_exr(tmp_path / "big.exr", {"Z": np.nan_to_num(r.zmin, nan=0.0)})
    result = prepare_depth(path, settings(long_side=256, edges="off"))
    control = result.control.pixels
    floor = result.control_map.values[result.control_map.valid].min()  # the farthest object's level
    assert control[control > 0].min() >= floor - 1e-4


def test_aspect_is_kept_by_cropping_and_recorded(tmp_path):
    z = np.full((228, 300), 5.0, np.float32)
    z[50:150, 100:200] = 3.0
    result = prepare_depth(write_exr(tmp_path / "odd.exr", {"Z": z}), settings(long_side=256))
    # 300x228 at 256 is 256x194.6: 256x192 with 3 rows cut (1 top, 2 bottom), not stretched.
    assert (result.control.width, result.control.height) == (256, 192)
    assert result.stats.crop == (0, 1, 0, 2) and sum(result.control.crop) == 3


# --- 11: notes do not contradict ---------------------------------------------------------------------------------

def test_kinect_raw_disparity_has_one_consistent_note(tmp_path):
    raw = np.tile(np.linspace(400, 1000, 128), (96, 1)).astype(np.uint16)
    raw[:8] = 2047
    Image.fromarray(raw).save(tmp_path / "kinect.png")
    depth = load_depth(str(tmp_path / "kinect.png"))
    assert depth.kind == "inverse" and any("Kinect" in n for n in depth.notes)
    assert not any("raw distances" in n for n in depth.notes)


# --- the warnings reach a sequence's stats file ----------------------------------------------------------------------

def test_sequence_stats_carry_the_frames_warnings(tmp_path, sky):
    from fluxdepth_ui.sequence import compute_stats, find_frames, load_stats, save_stats

    for i in (1, 2):
        inv = np.where(np.isfinite(sky.zmin), 1.0 / sky.zmin, 0.0).astype(np.float32)
        write_exr(tmp_path / f"d.{i:04d}.exr", {"depth.Z": inv})
    stats = compute_stats(find_frames(str(tmp_path / "d.####.exr")), DepthSettings(), str(tmp_path / "d.####.exr"))
    assert len(stats.warnings) == 1 and "--mode inverse" in stats.warnings[0]
    save_stats(stats, str(tmp_path / "s.json"))
    assert load_stats(str(tmp_path / "s.json")).warnings == stats.warnings


def test_world_space_p_z_is_not_diagnosed_as_inverse_depth(tmp_path, sky):
    """Issue 25: a world-space P (camera looking down world -z) has larger z nearer; it is not 1/Z, and the
    advice to read it as inverse depth would be wrong."""
    z = np.where(np.isfinite(sky.zmin), sky.zmin, np.nan).astype(np.float32)
    world_z = (100.0 - z).astype(np.float32)
    path = write_exr(tmp_path / "p.exr", {"P.x": np.zeros_like(z), "P.y": np.zeros_like(z), "P.z": world_z})
    depth = load_depth(path)
    assert depth.channel == "P.z"
    text = " ".join(depth.notes)
    assert "world-space P" in text and "export a depth AOV" in text and "inverse depth (1/Z)" not in text
