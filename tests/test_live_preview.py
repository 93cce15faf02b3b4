"""Live preview (issue 28): every N steps the latents decoded by the tiny autoencoder, exactly as the pipeline would
decode them with it in place of its VAE; the image itself unchanged; offline without TAEF1 the preview is off with one
note, never an error."""

import os

import numpy as np
import pytest
import torch
from diffusers import FluxControlPipeline

from conftest import DEPTH_SYN
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager, control_tensor
from fluxdepth_ui.pipeline.preview import decode_preview, load_preview_decoder
from fluxdepth_ui.pipeline.tiny import build_tiny_components

STEPS = 5


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    return PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path_factory.mktemp("cache")))


def tiny_decoder(components):
    decoder, why = load_preview_decoder("tiny", components["vae"].config, torch.device("cpu"), torch.float32)
    assert why is None
    return decoder


def direct_call(components, control, seed, **extra):
    pipe = FluxControlPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a wooden chair", control_image=control_tensor(control), height=control.height,
                width=control.width, num_inference_steps=STEPS, guidance_scale=10.0,
                generator=torch.Generator("cpu").manual_seed(seed), **extra)


def test_preview_decode_is_the_pipelines_own_decode_with_the_tiny_autoencoder(depth):
    """decode_preview of the final latents == what diffusers returns when the tiny autoencoder is its VAE for the final
    decode (swapped in after the first step: the control map is encoded by the real VAE before the loop)."""
    components = build_tiny_components(0)
    decoder = tiny_decoder(components)
    latents = direct_call(components, depth.control, 7, output_type="latent").images

    def use_tiny_vae(pipe, step, timestep, callback_kwargs):
        pipe.vae = decoder
        return callback_kwargs

    theirs = direct_call(build_tiny_components(0), depth.control, 7, output_type="pil",
                         callback_on_step_end=use_tiny_vae).images[0]
    ours = decode_preview(FluxControlPipeline(**components), decoder, latents, depth.control.height,
                          depth.control.width)
    assert ours.size == theirs.size == (256, 192)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_previews_come_every_n_steps_and_leave_the_image_unchanged(manager, depth):
    settings = GenerationSettings("a wooden chair", seed=7, steps=STEPS)
    plain = manager.generate(depth.control, settings)
    seen = []
    shown = manager.generate(depth.control, settings, preview_every=2,
                             on_preview=lambda step, total, image: seen.append((step, total, image)))
    assert [(step, total) for step, total, _ in seen] == [(2, STEPS), (4, STEPS)]  # never the last: the real decode
    assert np.array_equal(np.asarray(plain.image), np.asarray(shown.image))
    assert all(image.size == (256, 192) for _, _, image in seen)
    assert not np.array_equal(np.asarray(seen[0][2]), np.asarray(seen[1][2]))  # the image forming

    # The preview at step 2 is the tiny autoencoder's view of diffusers' own latents after step 2.
    captured = {}

    def grab(pipe, step, timestep, callback_kwargs):
        captured.setdefault(step + 1, callback_kwargs["latents"].clone())
        return callback_kwargs

    components = build_tiny_components(0)
    direct_call(components, depth.control, 7, output_type="latent", callback_on_step_end=grab)
    expected = decode_preview(FluxControlPipeline(**components), tiny_decoder(components), captured[2],
                              depth.control.height, depth.control.width)
    assert np.array_equal(np.asarray(seen[0][2]), np.asarray(expected))

    off = []
    manager.generate(depth.control, settings, preview_every=0, on_preview=lambda *a: off.append(a))
    assert off == []


def test_without_taef1_offline_the_preview_is_off_with_one_note(tmp_path, monkeypatch, depth):
    """A real model source offline with an empty Hugging Face cache: no preview, one status line, the image made."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    decoder, why = load_preview_decoder("hub", build_tiny_components(0)["vae"].config, torch.device("cpu"),
                                        torch.float32)
    assert decoder is None and why.startswith("live preview off: the tiny autoencoder (madebyollin/taef1)")

    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path / "cache"))
    manager.load()  # tiny-random's weights; from here on the source says it is a Hub model
    monkeypatch.setattr(manager.source.__class__, "kind", property(lambda self: "hub"))
    lines, seen = [], []
    result = manager.generate(depth.control, GenerationSettings("a chair", seed=1, steps=STEPS), preview_every=1,
                              on_preview=lambda *a: seen.append(a), load_progress=lambda f, m: lines.append(m))
    assert result.image.size == (256, 192) and seen == []
    assert sum(line.startswith("live preview off") for line in lines) == 1  # tried once, remembered
    assert any(n.startswith("live preview off") for n in manager.status()["notes"])


def test_a_plate_previews_both_passes_with_steps_counted_across_them(manager, tmp_path):
    """A 2K plate renders in two passes (shot.py): previews come from both, numbered on one bar of all its steps."""
    from fluxdepth_ui.settings import ShotSettings
    from fluxdepth_ui.shot import render_shot

    settings = ShotSettings(DepthSettings(long_side=1536),
                            GenerationSettings("a hall", seed=3, steps=4, plate=True, plate_strength=0.75))
    seen = []
    result = render_shot(manager, str(DEPTH_SYN), settings, str(tmp_path / "plate.png"), preview_every=1,
                         on_preview=lambda step, total, image: seen.append((step, total, image.size)))
    assert len(result.metadata.passes) == 2
    first, second = result.metadata.passes
    assert first["steps"] > 1 and second["steps"] > 1  # both passes make previews
    total = first["steps"] + second["steps"]
    # every step but the last of each pass (the real decode follows it), at that pass's size
    expected = [(s, total, (first["width"], first["height"])) for s in range(1, first["steps"])]
    expected += [(first["steps"] + s, total, (second["width"], second["height"])) for s in range(1, second["steps"])]
    assert seen == expected


def test_a_failing_preview_decode_never_costs_the_image(manager, depth, monkeypatch):
    """A preview is optional: when its decode fails (out of memory on a full card, say), the preview is off for the
    rest of the load with one line, and the image is the one made without previews."""
    from fluxdepth_ui.pipeline import manager as manager_module

    settings = GenerationSettings("a wooden chair", seed=11, steps=STEPS)
    plain = manager.generate(depth.control, settings)

    def broken(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(manager_module, "decode_preview", broken)
    lines, seen = [], []
    result = manager.generate(depth.control, settings, preview_every=1, on_preview=lambda *a: seen.append(a),
                              load_progress=lambda f, m: lines.append(m))
    assert np.array_equal(np.asarray(result.image), np.asarray(plain.image)) and seen == []
    assert [line for line in lines if line.startswith("live preview off")] == [
        "live preview off: its decode failed (OutOfMemoryError); the image goes on"]
    manager.unload()  # the next load tries the preview again


def test_live_previews_go_to_the_page_small_and_leave_no_files_behind(tmp_path):
    """A preview every few steps, hundreds of images a day: each is a 512 px JPEG in gradio's cache (tens of KB over a
    share link instead of a 1-2 MB PNG), and all of an image's previews are removed once it is done."""
    from PIL import Image

    from fluxdepth_ui.ui.app import LIVE_PREVIEW_LONG_SIDE, LivePreviewFiles

    cache = tmp_path / "gradio-cache"
    files = LivePreviewFiles(str(cache))
    rng = np.random.default_rng(0)
    paths = [files.add(Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8))) for _ in range(3)]
    for path in paths:
        assert os.path.dirname(os.path.dirname(path)) == str(cache.resolve())
        with Image.open(path) as shown:
            assert shown.format == "JPEG" and shown.size == (LIVE_PREVIEW_LONG_SIDE, 384)
        assert os.path.getsize(path) < 200_000
    files.remove_all()
    assert not any(cache.rglob("*")), "previews left in gradio's cache"
