"""2K plates (shot.py, pipeline/manager.py) on tiny-random: long sides up to 2048, VAE tiling on and off, and the
two-pass plate recorded in the metadata. GPU memory and seconds at 2K: benchmarks/production_gpu.py."""

import json

import numpy as np
import pytest
from PIL import Image

import fluxdepth_ui.shot as shot_module
from conftest import DEPTH_SYN, TUM
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthSettings
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
from fluxdepth_ui.settings import SettingsError, ShotSettings
from fluxdepth_ui.shot import plate_first_side, render_shot


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    return PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path_factory.mktemp("cache")))


def shot(long_side, **generation):
    return ShotSettings(DepthSettings(long_side=long_side),
                        GenerationSettings("a hall", seed=3, steps=generation.pop("steps", 1), **generation))


def test_2k_long_side_renders_at_full_size(tmp_path, manager):
    result = render_shot(manager, str(DEPTH_SYN), shot(2048), str(tmp_path / "a.png"))
    width, height = result.image.size
    assert max(width, height) == 2048 and width % 16 == 0 and height % 16 == 0
    assert Image.open(result.png).size == (width, height) and result.metadata.width == width


def test_vae_tiling_on_and_off_give_the_right_size_and_are_recorded(tmp_path, manager):
    whole = render_shot(manager, str(DEPTH_SYN), shot(1024, vae_tiling="off"), str(tmp_path / "whole.png"))
    tiled = render_shot(manager, str(DEPTH_SYN), shot(1024, vae_tiling="on"), str(tmp_path / "tiled.png"))
    assert whole.image.size == tiled.image.size == (1024, 768)
    assert tiled.metadata.vae_tiling is True and whole.metadata.vae_tiling is False
    a, b = (np.asarray(r.image, dtype=np.int16) for r in (whole, tiled))
    assert not np.array_equal(a, b)  # the decode really ran in tiles (random weights: no closeness to test here)
    assert json.loads(open(tiled.sidecar).read())["vae_tiling"] is True
    assert "vae_tiling" not in json.loads(open(whole.sidecar).read())  # old files' bytes unchanged
    # auto on the CPU: a whole decode (no GPU budget to protect).
    auto = render_shot(manager, str(DEPTH_SYN), shot(1024), str(tmp_path / "auto.png"))
    assert auto.metadata.vae_tiling is False
    assert np.array_equal(np.asarray(auto.image), np.asarray(whole.image))


@pytest.mark.parametrize("size, first", [((2048, 1152), 1360), ((2048, 2048), 1024), ((1024, 1024), None),
                                         ((1152, 2048), 1360), ((1280, 720), None)])
def test_plate_first_pass_is_about_one_megapixel(size, first):
    assert plate_first_side(*size) == first


def test_plate_runs_two_passes_and_records_both(tmp_path, manager, monkeypatch):
    steps = []
    monkeypatch.setattr(shot_module, "PLATE_FIRST_MEGAPIXELS", 0.1)  # a small first pass keeps the CPU test short
    settings = shot(768, steps=4, plate=True, plate_strength=0.5)
    result = render_shot(manager, str(TUM), settings, str(tmp_path / "p.png"),
                         on_step=lambda i, n: steps.append((i, n)))
    meta = result.metadata
    first, second = meta.passes
    assert (second["width"], second["height"]) == result.image.size == (768, 576)
    assert first["width"] * first["height"] < 0.15 * 2**20 and abs(first["width"] / first["height"] - 4 / 3) < 0.05
    assert first["steps"] == 4 and second["steps"] == 2 and second["strength"] == 0.5
    assert steps[-1] == (6, 6) and [n for _, n in steps] == [6] * 6  # one progress bar over both passes
    assert meta.strength == 0.5 and meta.init_image == "plate first pass"
    on_disk = json.loads(open(result.sidecar).read())
    assert on_disk["passes"] == [dict(p) for p in meta.passes]
    # Same settings, same seed: the same plate.
    again = render_shot(manager, str(TUM), settings, str(tmp_path / "q.png"))
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    # A plate differs from a single pass at the full size, which does not start from a first image.
    single = render_shot(manager, str(TUM), shot(768, steps=4), str(tmp_path / "s.png"))
    assert not np.array_equal(np.asarray(single.image), np.asarray(result.image))


def test_plate_at_one_megapixel_is_one_pass_and_says_so(tmp_path, manager):
    result = render_shot(manager, str(DEPTH_SYN), shot(1024, plate=True), str(tmp_path / "p.png"))
    assert result.metadata.passes == () and "plate: one pass (the image is about 1 MP already)" in \
        result.metadata.notes


def test_plate_settings_bounds_and_cli(tmp_path, capsys):
    with pytest.raises(SettingsError, match="plate strength 0 is out of range"):
        GenerationSettings("x", plate=True, plate_strength=0)
    with pytest.raises(SettingsError, match="unknown vae tiling 'maybe'; use one of: auto, on, off"):
        GenerationSettings("x", vae_tiling="maybe")
    assert "plate" not in GenerationSettings("x").to_dict()  # shot keys without plates are unchanged
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a hall", "--model", "tiny-random", "--steps", "2",
               "--long-side", "512", "--vae-tiling", "on", "--plate", "--plate-strength", "0.5",
               "--out", str(tmp_path / "c.png")])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "c.json").read_text())
    assert meta["vae_tiling"] is True and "plate: one pass (the image is about 1 MP already)" in meta["notes"]
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a hall", "--model", "tiny-random", "--plate-strength", "2",
               "--out", str(tmp_path / "d.png")])
    assert rc == 2 and "plate strength 2.0 is out of range" in capsys.readouterr().err
