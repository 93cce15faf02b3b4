"""Presets (plain JSON, user folder only) and the bundled example depth files."""

import json

import numpy as np
import pytest
from PIL import Image

from fluxdepth_ui.depth import load_depth, prepare_depth
from fluxdepth_ui.presets import PresetError, builtin_dir, delete_preset, list_presets, load_preset, save_preset
from fluxdepth_ui.ui.examples import EXAMPLES, FOLDER, make_examples


def test_builtin_presets_load_and_cover_the_workflows(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUXDEPTH_PRESETS", str(tmp_path / "user"))
    presets = list_presets()
    names = {p.name for p in presets}
    assert len(presets) >= 6 and all(p.builtin for p in presets)
    for wanted in ("Karma / Mantra EXR depth", "16-bit PNG export, near = dark", "Already-inverted map, near = white",
                   "Deep landscape", "Product shot", "Fast draft"):
        assert wanted in names
    draft = next(p for p in presets if p.name == "Fast draft")
    assert draft.generation["variant"] == "qint8" and draft.depth["long_side"] == 768


def test_save_preset_goes_to_user_folder_and_overwrites_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUXDEPTH_PRESETS", str(tmp_path / "user"))
    depth = {"mode": "linear", "invert": "on", "clip": [1.0, 99.0], "near": None, "far": None, "long_side": 768}
    first = save_preset("My Interior", depth, {"prompt": "a loft", "variant": "qint8", "steps": 20, "guidance": 9.0})
    with pytest.raises(PresetError, match="exists; tick Overwrite"):
        save_preset("My Interior", depth, {"variant": "bf16", "steps": 30, "guidance": 10.0})
    assert json.loads(first.read_text())["generation"]["steps"] == 20  # untouched without overwrite
    second = save_preset("my interior", depth, {"variant": "bf16", "steps": 30, "guidance": 10.0}, overwrite=True)
    assert first.parent == tmp_path / "user" and first.name == "my-interior.json" and second == first
    assert json.loads(first.read_text())["generation"]["steps"] == 30
    assert [p.name for p in list_presets() if not p.builtin] == ["my interior"]  # one preset, not a copy
    with pytest.raises(PresetError, match="built-in preset"):
        save_preset("Fast draft", depth, {}, overwrite=True)
    saved = save_preset("Loft", depth, {"prompt": "a loft at dusk", "steps": 12})
    assert load_preset(saved).generation["prompt"] == "a loft at dusk"  # presets hold the prompt
    delete_preset("Loft")
    assert "Loft" not in {p.name for p in list_presets()}
    with pytest.raises(PresetError, match="cannot be deleted"):
        delete_preset("Fast draft")
    assert not list(builtin_dir().glob("my-interior*.json"))
    with pytest.raises(PresetError, match="not written into the install"):
        save_preset("x", depth, {}, folder=builtin_dir())
    with pytest.raises(PresetError, match="name"):
        save_preset("  ", depth, {})


def test_broken_preset_is_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "Bad", "depth": {"mode": "sideways"}}))
    with pytest.raises(PresetError, match="bad.json.*unknown mode"):
        load_preset(bad)
    (tmp_path / "typo.json").write_text(json.dumps({"name": "Typo", "depth": {"moed": "auto"}}))
    with pytest.raises(PresetError, match="unknown settings: moed"):
        load_preset(tmp_path / "typo.json")


def test_committed_examples_are_what_the_generator_makes(tmp_path):
    made = make_examples(tmp_path)
    for name in EXAMPLES:
        committed, fresh = load_depth(str(FOLDER / name)), load_depth(str(made[name]))
        np.testing.assert_array_equal(committed.values, fresh.values)
        assert (FOLDER / name).stat().st_size < 100_000


def test_examples_normalize_as_described():
    room = prepare_depth(str(FOLDER / "room_karma_depth.exr"))
    assert room.depth.channel == "depth" and room.control_map.mode == "disparity"
    sphere = prepare_depth(str(FOLDER / "sphere_export_near_dark_16bit.png"))
    assert sphere.control_map.inverted and (sphere.control.pixels[0] == 0).all()  # sky ends black
    white = prepare_depth(str(FOLDER / "room_near_white_8bit.png"))
    assert white.control_map.mode == "passthrough" and not white.control_map.inverted
    raw = np.array(Image.open(FOLDER / "room_near_white_8bit.png")) / 255.0
    np.testing.assert_allclose(white.control_map.values, raw, atol=1e-6)


def test_flat_relief_is_warned_and_the_advice_fixes_it():
    """The bundled sphere export (plain distance, near dark) reads as an almost flat white disc: the preview says
    so and how to fix it; following the advice gives relief and no stale warning."""
    from fluxdepth_ui.depth import DepthSettings, NormalizeSettings, prepare_depth
    from fluxdepth_ui.depth.preview import FLAT_RELIEF, relief
    from fluxdepth_ui.ui.examples import FOLDER

    sphere = str(FOLDER / "sphere_export_near_dark_16bit.png")
    as_is = prepare_depth(sphere)
    flat = [w for w in as_is.stats.warnings if w.startswith("near objects will come out flat")]
    assert len(flat) == 1 and "mode disparity" in flat[0] and relief(as_is.control_map) < FLAT_RELIEF
    fixed = prepare_depth(sphere, DepthSettings(normalize=NormalizeSettings(mode="disparity", near=3.0, far=40.0)))
    assert relief(fixed.control_map) > 2 * FLAT_RELIEF  # 0.25: six times the relief of the file read as is
    assert not [w for w in fixed.stats.warnings if "flat" in w or "mode disparity" in w], fixed.stats.warnings


@pytest.mark.parametrize("name", ["openexr_beachball_singlepart_0001.exr", "open3d_TUM_depth.png",
                                  "open3d_depth_syn.png"])
def test_real_depth_files_are_not_called_flat(name):
    from conftest import FIXTURES
    from fluxdepth_ui.depth import prepare_depth

    assert not [w for w in prepare_depth(str(FIXTURES / name)).stats.warnings if "come out flat" in w]
