"""Generated depth files: one test per hard input of depth-conventions.md §8, plus formats and channel search."""

import numpy as np
import OpenEXR
import pytest
from PIL import Image

from conftest import NOZ_EXR, ramp_depth, write_exr
from fluxdepth_ui.depth import (
    DepthInputError,
    DepthSettings,
    NormalizeSettings,
    load_depth,
    normalize,
    prepare_depth,
    read_raster,
)


def exact_disparity(z, valid):
    """v = (1/Z - 1/Zfar) / (1/Znear - 1/Zfar), the exact DA-style map for a scene without background."""
    d = 1.0 / z[valid].astype(np.float64)
    return (d - d.min()) / (d.max() - d.min())


FULL_RANGE = NormalizeSettings(clip=(0.0, 100.0))


@pytest.mark.parametrize("name", ["Z", "Pz", "depth", "depth.Z", "Depth.V", "Pz.z", "Z.R", "ViewLayer.Depth.Z"])
def test_depth_channel_names_found_and_exact_disparity(tmp, name):
    z = ramp_depth()
    path = write_exr(tmp / "d.exr", {"R": np.zeros_like(z), "G": np.ones_like(z), "B": np.ones_like(z), name: z})
    depth = load_depth(str(path))
    assert depth.channel == name and depth.kind == "metric"
    cmap = normalize(depth, FULL_RANGE)
    assert cmap.valid.all() and cmap.range.gap == 0.0
    np.testing.assert_allclose(cmap.values[cmap.valid], exact_disparity(z, cmap.valid), atol=2e-6)
    assert cmap.values[:, 0].min() == pytest.approx(1.0) and cmap.values[:, -1].max() == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["N.z", "Pw.z", "Normal.Z", "velocity.z"])
def test_vector_components_are_not_taken_for_depth(tmp, name):
    z = ramp_depth()
    path = write_exr(tmp / "v.exr", {name: z, "R": z, "G": z * 0.5, "B": z * 0.1})
    with pytest.raises(DepthInputError, match="no depth channel"):
        load_depth(str(path))


def test_user_channel_override_and_unknown_channel(tmp):
    z = ramp_depth()
    path = write_exr(tmp / "o.exr", {"Z": z, "myDepth": z * 2})
    assert load_depth(str(path), channel="myDepth").channel == "myDepth"
    assert load_depth(str(path), channel="z").channel == "Z"  # case-insensitive
    with pytest.raises(DepthInputError, match="no channel 'nope'.*myDepth"):
        load_depth(str(path), channel="nope")


def test_multipart_depth_in_later_part(tmp):
    z = ramp_depth()
    rgb = {c: np.full_like(z, 0.3 * i) for i, c in enumerate("RGB")}
    path = write_exr(tmp / "mp.exr", None, parts=[({"name": "beauty"}, rgb), ({"name": "depth"}, {"depth.Z": z})])
    depth = load_depth(str(path))
    assert depth.channel == "depth.depth.Z" and depth.kind == "metric"  # part.channel
    np.testing.assert_array_equal(depth.values, z)
    assert load_depth(str(path), channel="depth.Z").channel == "depth.depth.Z"


def test_view_prefixed_channel_loses_to_default_view(tmp):
    z = ramp_depth()
    path = write_exr(tmp / "views.exr", {"left.Z": z * 3, "Z": z}, header={"multiView": ["right", "left"]})
    assert load_depth(str(path)).channel == "Z"


def test_half_float_sentinels_and_inf_are_background(tmp):
    z = ramp_depth().astype(np.float16)
    z[:10] = np.float16(65504)  # far sentinel, max half
    z[10:20] = np.inf
    path = write_exr(tmp / "half.exr", {"Z": z})
    depth = load_depth(str(path))
    assert depth.sample_type == "half" and depth.values.dtype == np.float32
    cmap = normalize(depth)
    assert not cmap.valid[:20].any() and cmap.valid[20:].all()
    assert (cmap.values[:20] == 0).all()
    assert cmap.range.gap > 0  # background present -> the farthest object stays above black


def test_nan_and_huge_sentinel_background(tmp):
    z = ramp_depth()
    z[:, :8] = np.nan
    z[:, 8:16] = 1e10  # Arnold AI_BIG-style background
    z[:, 16:20] = -np.inf
    depth = load_depth(write_exr(tmp / "s.exr", {"depth": z}))
    cmap = normalize(depth, FULL_RANGE)
    assert not cmap.valid[:, :20].any() and cmap.valid[:, 20:].all()
    assert (cmap.values[:, :20] == 0).all()
    d = 1.0 / z[:, 20:].astype(np.float64)
    expected = cmap.range.gap + (1 - cmap.range.gap) * (d - d.min()) / (d.max() - d.min())
    np.testing.assert_allclose(cmap.values[:, 20:], expected, atol=3e-6)


def test_data_window_inside_display_window(tmp):
    z = ramp_depth(64, 80)
    header = {
        "dataWindow": (np.array([10, 20], np.int32), np.array([89, 83], np.int32)),
        "displayWindow": (np.array([0, 0], np.int32), np.array([127, 95], np.int32)),
    }
    depth = load_depth(write_exr(tmp / "dw.exr", {"Z": z}, header=header))
    assert (depth.width, depth.height) == (128, 96)
    np.testing.assert_array_equal(depth.values[20:84, 10:90], z)
    outside = np.ones((96, 128), bool)
    outside[20:84, 10:90] = False
    assert np.isnan(depth.values[outside]).all()
    cmap = normalize(depth)
    assert (cmap.values[outside] == 0).all() and cmap.valid[~outside].all()


def test_negative_camera_space_z_is_negated(tmp):
    z = -ramp_depth()
    depth = load_depth(write_exr(tmp / "neg.exr", {"depth": z}))
    assert any("negative" in n for n in depth.notes)
    cmap = normalize(depth, FULL_RANGE)
    np.testing.assert_allclose(cmap.values, exact_disparity(-z, np.ones(z.shape, bool)).reshape(z.shape), atol=2e-6)
    # Karma's camera-space P.z is not picked automatically, but the user may choose it.
    path = write_exr(tmp / "p.exr", {"P.x": z, "P.y": z, "P.z": z})
    assert load_depth(str(path), channel="P.z").kind == "metric"


def test_mixed_signs_nonpositive_is_invalid(tmp):
    z = ramp_depth()
    z[:, :30] = -5.0
    z[:, 30:40] = 0.0
    cmap = normalize(load_depth(write_exr(tmp / "mix.exr", {"Z": z})))
    assert not cmap.valid[:, :40].any() and cmap.valid[:, 40:].all()


def test_deep_exr_flattened_to_front_most_sample(tmp):
    h, w = 64, 72
    samples = np.empty((h, w), dtype=object)
    for y in range(h):
        for x in range(w):
            samples[y, x] = np.array([30.0, 5.0 + x * 0.1], np.float32) if (x + y) % 7 else np.array([], np.float32)
    path = str(tmp / "deep.exr")
    OpenEXR.File({"type": OpenEXR.deepscanline, "compression": OpenEXR.ZIPS_COMPRESSION}, {"Z": samples}).write(path)
    depth = load_depth(path)
    assert any("deep" in n for n in depth.notes)
    assert depth.values[0, 1] == pytest.approx(5.1)  # min of the samples
    assert np.isnan(depth.values[0, 0])  # no samples -> no data


def test_tiled_exr(tmp):
    z = ramp_depth()
    tiles = OpenEXR.TileDescription()
    tiles.xSize = tiles.ySize = 32
    path = str(tmp / "tiled.exr")
    OpenEXR.File({"type": OpenEXR.tiledimage, "tiles": tiles}, {"Z": z}).write(path)
    np.testing.assert_array_equal(load_depth(path).values, z)


def test_exr_rgb_equal_is_made_image_passthrough_never_reciprocal(tmp):
    v = np.tile(np.linspace(0.1, 0.9, 128, dtype=np.float32), (96, 1))
    depth = load_depth(write_exr(tmp / "grey.exr", {"R": v, "G": v, "B": v}))
    assert depth.kind == "image" and depth.channel == "R"
    cmap = normalize(depth)
    assert cmap.mode == "passthrough"
    np.testing.assert_allclose(cmap.values, (v - 0.1) / 0.8, atol=1e-6)  # re-stretched, not 1/x, not inverted
    y = load_depth(write_exr(tmp / "y.exr", {"Y": v}))
    assert y.kind == "image" and normalize(y).mode == "passthrough"


def test_nuke_depth_is_inverse(tmp):
    d = 1.0 / ramp_depth()  # Nuke ScanlineRender stores 1/Z
    path = write_exr(tmp / "nuke.exr", {"depth.Z": d}, header={"nuke/node_hash": "4f2a9c"})
    depth = load_depth(path)
    assert depth.kind == "inverse"
    cmap = normalize(depth, FULL_RANGE)
    assert cmap.mode == "inverse"
    np.testing.assert_allclose(cmap.values, (d - d.min()) / (d.max() - d.min()), atol=2e-6)


def test_inverse_mode_by_hand_for_maya_negative_inverse(tmp):
    d = -1.0 / ramp_depth()  # Maya: -1/z
    depth = load_depth(write_exr(tmp / "maya.exr", {"Z": d}))
    cmap = normalize(depth, NormalizeSettings(mode="inverse", clip=(0, 100)))
    ad = np.abs(d)
    np.testing.assert_allclose(cmap.values, (ad - ad.min()) / (ad.max() - ad.min()), atol=2e-6)


def test_linear_mode_and_explicit_near_far():
    z = ramp_depth(near=1.0, far=100.0)
    from fluxdepth_ui.depth import DepthMap

    depth = DepthMap(z, "metric", "Z", ("Z",), "exr", "float", "synthetic.exr")
    lin = normalize(depth, NormalizeSettings(mode="linear", clip=(0, 100)))
    np.testing.assert_allclose(lin.values, (100.0 - z) / 99.0, atol=2e-6)
    # near/far replace the percentile ends: everything nearer than 2 is white, farther than 50 is black.
    nf = normalize(depth, NormalizeSettings(near=2.0, far=50.0))
    assert (nf.values[z <= 2.0] == 1.0).all() and (nf.values[z >= 50.0] == 0.0).all()
    inside = (z > 2.0) & (z < 50.0)
    np.testing.assert_allclose(nf.values[inside], (1 / z[inside] - 1 / 50) / (1 / 2 - 1 / 50), atol=2e-6)


def test_alpha_zero_is_background_never_divided(tmp):
    z = ramp_depth()
    a = np.ones_like(z)
    a[:, :16] = 0.0
    a[:, 16:20] = 0.5  # partial coverage keeps full Z
    depth = load_depth(write_exr(tmp / "a.exr", {"Z": z, "A": a}))
    cmap = normalize(depth)
    assert not cmap.valid[:, :16].any() and cmap.valid[:, 16:].all()
    np.testing.assert_array_equal(depth.values[:, 16:20], z[:, 16:20])


def test_constant_map_warns():
    from fluxdepth_ui.depth import DepthMap

    flat = np.full((96, 128), 7.0, np.float32)
    cmap = normalize(DepthMap(flat, "metric", "Z", ("Z",), "exr", "float", "flat.exr"))
    assert any("constant" in w for w in cmap.warnings)
    assert (cmap.values == 0.5).all()
    flat[:, :20] = 0.0  # with background, the constant object is near: white
    cmap = normalize(DepthMap(flat, "metric", "Z", ("Z",), "exr", "float", "flat.exr"))
    assert (cmap.values[:, 20:] == 1.0).all() and (cmap.values[:, :20] == 0.0).all()


def test_all_background_rejected(tmp):
    z = np.zeros((96, 128), np.float32)
    with pytest.raises(DepthInputError, match="no pixel holds usable depth"):
        prepare_depth(write_exr(tmp / "empty.exr", {"Z": z}))


# --- 8/16-bit rasters --------------------------------------------------------------------------------------------


def test_png16_made_map_passthrough_keeps_16_bits(tmp):
    v = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (96, 1))
    Image.fromarray(v).save(tmp / "da16.png")
    result = prepare_depth(str(tmp / "da16.png"))
    assert result.depth.kind == "image" and result.control_map.mode == "passthrough"
    np.testing.assert_allclose(result.control_map.values, v / 65535.0, atol=1e-6)
    assert np.unique(result.control_map.values).size == 256
    assert result.stats.unique_levels == 256


def test_png16_15bit_photoshop_is_restretched(tmp):
    v = np.tile(np.linspace(0, 32768, 128).round().astype(np.uint16), (96, 1))
    Image.fromarray(v).save(tmp / "ps15.png")
    result = prepare_depth(str(tmp / "ps15.png"))
    assert result.depth.kind == "image"
    assert result.control_map.values.max() == pytest.approx(1.0)
    assert any("15-bit" in w for w in result.stats.warnings)


def test_png8_near_dark_with_bright_background_is_auto_inverted(tmp):
    img = np.full((96, 128), 255, np.uint8)  # far background is white: a near = dark export
    img[20:76, 30:100] = np.tile(np.linspace(10, 200, 70).astype(np.uint8), (56, 1))
    Image.fromarray(img).save(tmp / "neardark.png")
    cmap = prepare_depth(str(tmp / "neardark.png")).control_map
    assert cmap.inverted
    assert (cmap.values[:10] == 0).all()  # background ends black
    assert cmap.values[40, 30] > cmap.values[40, 99]  # the darkest (nearest) pixel is now the brightest
    kept = prepare_depth(str(tmp / "neardark.png"), DepthSettings(normalize=NormalizeSettings(invert="off")))
    assert not kept.control_map.inverted and (kept.control_map.values[:10] == 1).all()


def test_png8_near_white_map_idempotent(tmp):
    img = np.zeros((96, 128), np.uint8)  # black sky
    img[30:, :] = np.tile(np.linspace(0, 255, 128).round().astype(np.uint8), (66, 1))
    Image.fromarray(img).save(tmp / "da8.png")
    cmap = prepare_depth(str(tmp / "da8.png")).control_map
    assert not cmap.inverted
    np.testing.assert_allclose(cmap.values, img / 255.0, atol=1e-6)


def test_palette_and_grey_alpha_png(tmp):
    img = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))
    Image.fromarray(img).convert("P").save(tmp / "pal.png")
    depth = load_depth(str(tmp / "pal.png"))
    assert depth.kind == "image"
    np.testing.assert_allclose(depth.values, img, atol=2)  # palette colours, not palette indices
    la = Image.merge("LA", [Image.fromarray(img), Image.fromarray(np.where(img > 128, 255, 0).astype(np.uint8))])
    la.save(tmp / "la.png")
    cmap = normalize(load_depth(str(tmp / "la.png")))
    assert not cmap.valid[:, :64].any() and (cmap.values[:, :64] == 0).all()


def test_colormapped_rgb_rejected(tmp):
    x = np.linspace(0, 1, 128)
    rgb = np.stack([x, np.sin(x * 3), 1 - x], axis=-1)
    Image.fromarray((np.tile(rgb, (96, 1, 1)) * 255).astype(np.uint8)).save(tmp / "turbo.png")
    with pytest.raises(DepthInputError, match="colour visualisation"):
        load_depth(str(tmp / "turbo.png"))


def test_cmyk_jpeg_reads_with_warning(tmp):
    img = Image.fromarray(np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))).convert("CMYK")
    img.save(tmp / "cmyk.jpg", quality=95)
    result = prepare_depth(str(tmp / "cmyk.jpg"))
    assert result.depth.kind == "image"
    assert any("JPEG" in w for w in result.stats.warnings)


def test_rgb_jpeg_of_grey_content_is_accepted(tmp):
    img = Image.fromarray(np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))).convert("RGB")
    img.save(tmp / "grey.jpg", quality=90)
    assert load_depth(str(tmp / "grey.jpg")).kind == "image"


def test_byteswapped_pgm16_detected(tmp):
    z = (np.tile(np.linspace(800, 4000, 128), (96, 1))).astype(np.uint16)
    header = b"P5\n128 96\n65535\n"
    (tmp / "le.pgm").write_bytes(header + z.astype("<u2").tobytes())  # wrong byte order for Netpbm
    (tmp / "be.pgm").write_bytes(header + z.astype(">u2").tobytes())
    good = load_depth(str(tmp / "be.pgm"))
    np.testing.assert_array_equal(good.values, z)
    swapped = load_depth(str(tmp / "le.pgm"))
    np.testing.assert_array_equal(swapped.values, z)
    assert any("little-endian" in n for n in swapped.notes)


def test_kinect_raw_disparity(tmp):
    raw = np.tile(np.linspace(400, 1000, 128), (96, 1)).astype(np.uint16)
    raw[:, :10] = 2047  # no data
    Image.fromarray(raw).save(tmp / "kinect.png")
    depth = load_depth(str(tmp / "kinect.png"))
    assert depth.kind == "inverse"
    cmap = normalize(depth, FULL_RANGE)
    assert not cmap.valid[:, :10].any()
    # Smaller raw = nearer: affine in disparity, so the map is min-max of -raw.
    r = raw[:, 10:].astype(np.float64)
    expected = cmap.range.gap + (1 - cmap.range.gap) * (r.max() - r) / (r.max() - r.min())
    np.testing.assert_allclose(cmap.values[:, 10:], expected, atol=1e-5)


def test_made_image_with_near_far_is_remapped_depth(tmp):
    near, far = 2.0, 40.0
    z = ramp_depth(near=near, far=far)
    codes = np.round((z - near) / (far - near) * 65535).astype(np.uint16)  # linear [near, far] export, near dark
    Image.fromarray(codes).save(tmp / "remap.png")
    depth = load_depth(str(tmp / "remap.png"))
    assert depth.kind == "image"
    cmap = normalize(depth, NormalizeSettings(mode="disparity", near=near, far=far))
    np.testing.assert_allclose(cmap.values, (1 / z - 1 / far) / (1 / near - 1 / far), atol=2e-4)
    with pytest.raises(DepthInputError, match="needs near and far"):
        normalize(depth, NormalizeSettings(mode="disparity"))


# --- other formats -----------------------------------------------------------------------------------------------


def test_float_tiff_pfm_npy_are_metric(tmp):
    import tifffile

    z = ramp_depth()
    tifffile.imwrite(tmp / "z.tif", z, compression="zlib")
    np.save(tmp / "z.npy", z)
    with open(tmp / "z.pfm", "wb") as fh:
        fh.write(b"Pf\n128 96\n-1.0\n")
        fh.write(z[::-1].astype("<f4").tobytes())  # PFM rows run bottom to top
    for name in ("z.tif", "z.npy", "z.pfm"):
        depth = load_depth(str(tmp / name))
        assert depth.kind == "metric", name
        np.testing.assert_array_equal(depth.values, z)
    tifffile.imwrite(tmp / "z16.tif", np.round(z * 100).astype(np.uint16))
    assert load_depth(str(tmp / "z16.tif")).sample_type == "uint16"


def test_float_npy_in_unit_range_is_made_image(tmp):
    v = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (96, 1))
    np.save(tmp / "v.npy", v)
    assert load_depth(str(tmp / "v.npy")).kind == "image"


def test_wrong_extension_trusts_content(tmp):
    z = ramp_depth()
    path = tmp / "actually_exr.png"
    write_exr(path, {"Z": z})
    depth = load_depth(str(path))
    assert depth.source_format == "exr" and any("content is EXR" in n for n in depth.notes)


def test_unknown_format_and_empty_and_missing(tmp):
    (tmp / "notes.exr").write_text("this is not an image\n")
    with pytest.raises(DepthInputError, match="not a depth format"):
        read_raster(str(tmp / "notes.exr"))
    (tmp / "empty.png").write_bytes(b"")
    with pytest.raises(DepthInputError, match="empty"):
        read_raster(str(tmp / "empty.png"))
    with pytest.raises(DepthInputError, match="not found"):
        read_raster(str(tmp / "missing.exr"))


def test_truncated_exr_and_png(tmp):
    data = NOZ_EXR.read_bytes()
    (tmp / "cut.exr").write_bytes(data[: len(data) // 2])
    with pytest.raises(DepthInputError, match="corrupt or truncated"):
        load_depth(str(tmp / "cut.exr"))
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (200, 200), dtype=np.uint16)).save(tmp / "x.png")
    png = (tmp / "x.png").read_bytes()
    (tmp / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(DepthInputError, match="corrupt or truncated"):
        load_depth(str(tmp / "cut.png"))


def test_huge_frame_refused_from_header(tmp):
    header = {
        "displayWindow": (np.array([0, 0], np.int32), np.array([9999, 6999], np.int32)),  # 70 MP
        "dataWindow": (np.array([0, 0], np.int32), np.array([63, 63], np.int32)),
    }
    path = write_exr(tmp / "huge.exr", {"Z": np.ones((64, 64), np.float32)}, header=header)
    with pytest.raises(DepthInputError, match="megapixel limit"):
        load_depth(path)
    Image.new("1", (9000, 8000)).save(tmp / "huge.png")
    with pytest.raises(DepthInputError, match="megapixel limit"):
        load_depth(str(tmp / "huge.png"))


@pytest.mark.parametrize("shape,match", [((32, 32), "at least 64"), ((100, 1000), "aspect ratio")])
def test_degenerate_shapes_refused(tmp, shape, match):
    path = write_exr(tmp / "small.exr", {"Z": np.ones(shape, np.float32)})
    with pytest.raises(DepthInputError, match=match):
        load_depth(path)
