"""Style LoRAs (pipeline/loras.py, loras.py) on tiny-random with generated LoRA files in the three key formats
diffusers' loader reads: bf16 equals diffusers' own LoRA path, quantized tiers stay close, a scale change reloads
nothing, and a shared studio opens only its own folder's files."""

from dataclasses import replace
import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import FluxControlPipeline, FluxTransformer2DModel

from conftest import DEPTH_SYN
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.loras import available_loras, resolve_lora
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineError, PipelineManager, control_tensor
from fluxdepth_ui.pipeline.tiny import build_tiny_components, tiny_transformer_config
from fluxdepth_ui.settings import SettingsError, StyleLora

TINY = ModelSource("tiny-random")
STEPS = 2
DIM, MLP = 32, 128  # the tiny transformer's width and MLP width (pipeline/tiny.py)


def peft_lora(path, seed, r=4, alpha=8, targets=("to_q", "to_k", "to_v", "to_out.0", "proj_mlp")):
    """A diffusers/PEFT-format LoRA as `save_lora_weights` writes it, with its rank and alpha in the metadata."""
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**tiny_transformer_config())
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    model.add_adapter(config)
    folder = str(path) + ".d"
    FluxControlPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model),
                                          transformer_lora_adapter_metadata=config.to_dict())
    os.replace(os.path.join(folder, "pytorch_lora_weights.safetensors"), path)
    return path


def kohya_lora(path, seed, prefix="lora_unet_", sep="_", r=4, alpha=2.0):
    """Kohya keys (lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, with alphas); with prefix
    'diffusion_model.' and sep '.' the ComfyUI layout."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def add(name, n_in, n_out):
        key = prefix + name.replace(".", sep)
        state[f"{key}.lora_down.weight"] = torch.randn(r, n_in, generator=g) * 0.5
        state[f"{key}.lora_up.weight"] = torch.randn(n_out, r, generator=g) * 0.5
        state[f"{key}.alpha"] = torch.tensor(alpha)

    add("double_blocks.0.img_attn.qkv", DIM, 3 * DIM)
    add("double_blocks.0.img_attn.proj", DIM, DIM)
    add("double_blocks.0.txt_mlp.0", DIM, MLP)
    add("single_blocks.0.linear2", DIM + MLP, DIM)
    safetensors.torch.save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    peft_lora(root / "ink.safetensors", 11)
    peft_lora(root / "clay.safetensors", 12, r=2, alpha=2, targets=("to_q", "ff.net.2", "proj_out"))
    kohya_lora(root / "kohya.safetensors", 13)
    kohya_lora(root / "comfy.safetensors", 14, prefix="diffusion_model.", sep=".")
    (root / "notes.txt").write_text("not a LoRA")
    torch.save({"x": torch.zeros(1)}, root / "pickled.ckpt")
    return root


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def settings(*loras, seed=7):
    return GenerationSettings("a wooden chair", seed=seed, steps=STEPS, loras=loras)


def diffusers_own(control, lora_dir, names_scales):
    """diffusers' own LoRA path: load_lora_weights + set_adapters on the same tiny components."""
    pipe = FluxControlPipeline(**build_tiny_components(0))
    pipe.set_progress_bar_config(disable=True)
    for name, _ in names_scales:
        pipe.load_lora_weights(str(lora_dir / name), adapter_name=name.split(".")[0])
    pipe.set_adapters([n.split(".")[0] for n, _ in names_scales], [s for _, s in names_scales])
    return pipe(prompt="a wooden chair", control_image=control_tensor(control), height=control.height,
                width=control.width, num_inference_steps=STEPS, guidance_scale=10.0,
                generator=torch.Generator("cpu").manual_seed(7), output_type="pil").images[0]


@pytest.mark.parametrize("names_scales", [
    [("ink.safetensors", 1.0)],
    [("kohya.safetensors", 0.7)],
    [("comfy.safetensors", 1.3)],
    [("ink.safetensors", 0.6), ("clay.safetensors", -0.4), ("kohya.safetensors", 0.9)],
])
def test_bf16_equals_diffusers_own_lora_path(tmp_path, depth, lora_dir, names_scales):
    manager = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    ours = manager.generate(depth.control, settings(*[StyleLora(n, s) for n, s in names_scales]))
    theirs = diffusers_own(depth.control, lora_dir, names_scales)
    assert np.array_equal(pixels(ours.image), pixels(theirs))
    plain = manager.generate(depth.control, settings())
    assert np.abs(pixels(plain.image) - pixels(ours.image)).mean() > 1.0  # the LoRA does change the picture
    recorded = ours.metadata.loras
    assert [(r["name"], r["scale"]) for r in recorded] == names_scales
    assert all(len(r["sha256"]) == 64 for r in recorded)
    assert "LoRAs: " + names_scales[0][0] in ours.metadata.parameters_line()


def test_scale_change_reloads_nothing_and_zero_is_off(tmp_path, depth, lora_dir, monkeypatch):
    import fluxdepth_ui.pipeline.manager as manager_module

    reads = []
    real_read = manager_module.read_lora
    monkeypatch.setattr(manager_module, "read_lora", lambda *a, **k: reads.append(a[1]) or real_read(*a, **k))
    manager = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    plain = manager.generate(depth.control, settings())
    pipe = manager._pipe
    weak = manager._pipe.transformer.transformer_blocks[0].attn.to_q.weight.data_ptr()
    images = [manager.generate(depth.control, settings(StyleLora("ink.safetensors", s))) for s in (0.5, 1.0, 0.0)]
    assert manager._pipe is pipe and reads == ["ink.safetensors"]  # one load, one read of the file
    assert manager._pipe.transformer.transformer_blocks[0].attn.to_q.weight.data_ptr() == weak  # weights untouched
    assert not np.array_equal(pixels(images[0].image), pixels(images[1].image))
    assert np.array_equal(pixels(images[2].image), pixels(plain.image))  # scale 0 = no LoRA
    assert np.array_equal(pixels(manager.generate(depth.control, settings()).image), pixels(plain.image))  # off
    back = manager.generate(depth.control, settings(StyleLora("ink.safetensors", 0.5)))
    assert np.array_equal(pixels(back.image), pixels(images[0].image))


@pytest.mark.parametrize("variant", ["qint8", "qint4"])
def test_quantized_tiers_take_loras_beside_their_dense_layers(tmp_path, depth, lora_dir, variant):
    from fluxdepth_ui.pipeline.dense import DenseInt4Linear, DenseInt8Linear

    lora = StyleLora("ink.safetensors", 1.0)
    full = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    full_plain, full_lora = (full.generate(depth.control, settings(*x)).image for x in ((), (lora,)))
    quant = PipelineManager(TINY, variant=variant, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    quant_plain, quant_lora = (quant.generate(depth.control, settings(*x)).image for x in ((), (lora,)))
    kind = DenseInt8Linear if variant == "qint8" else DenseInt4Linear
    assert isinstance(quant._pipe.transformer.transformer_blocks[0].attn.to_q, kind)  # the update runs beside it
    effect = np.abs(pixels(full_lora) - pixels(full_plain)).mean()
    quant_effect = np.abs(pixels(quant_lora) - pixels(quant_plain)).mean()
    gap = np.abs(pixels(quant_lora) - pixels(full_lora)).mean()
    assert quant_effect > effect / 2 and gap < effect / 3, (effect, quant_effect, gap)


def test_bad_lora_files_are_one_line(tmp_path, depth, lora_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    wrong = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 48),
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)}
    safetensors.torch.save_file(wrong, str(bad / "sdxl.safetensors"))
    manager = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(bad))
    with pytest.raises(PipelineError, match="could not be read as a FLUX LoRA") as err:
        manager.generate(depth.control, settings(StyleLora("junk.safetensors")))
    assert str(bad) not in str(err.value)
    with pytest.raises(PipelineError, match="does not fit layer transformer_blocks.0.attn.to_q"):
        manager.generate(depth.control, settings(StyleLora("sdxl.safetensors")))
    with pytest.raises(SettingsError, match="is neither a file nor in the LoRA folder"):
        manager.generate(depth.control, settings(StyleLora("missing.safetensors")))
    # Still usable, and nothing half-applied.
    assert manager.generate(depth.control, settings()).metadata.loras == ()


def test_the_folder_lists_safetensors_only_and_a_shared_studio_takes_names_only(tmp_path, lora_dir):
    assert available_loras(str(lora_dir)) == ["clay.safetensors", "comfy.safetensors", "ink.safetensors",
                                              "kohya.safetensors"]
    assert resolve_lora("ink.safetensors", str(lora_dir), allow_paths=False) == str(lora_dir / "ink.safetensors")
    for sneaky in (str(lora_dir / "ink.safetensors"), "../loras/ink.safetensors", "pickled.ckpt", "/etc/passwd"):
        with pytest.raises(SettingsError, match="pick one of the studio's LoRAs") as err:
            resolve_lora(sneaky, str(lora_dir), allow_paths=False)
        assert str(lora_dir) not in str(err.value)
    # The command line may name a file anywhere, .safetensors only.
    assert resolve_lora(str(lora_dir / "ink.safetensors"), None, allow_paths=True).endswith("ink.safetensors")
    with pytest.raises(SettingsError, match="not a .safetensors file"):
        resolve_lora(str(lora_dir / "pickled.ckpt"), None, allow_paths=True)


@pytest.mark.parametrize("text, name, scale", [("ink.safetensors", "ink.safetensors", 1.0),
                                               ("ink.safetensors:0.8", "ink.safetensors", 0.8),
                                               ("/a/b/ink.safetensors:-0.5", "/a/b/ink.safetensors", -0.5),
                                               ("C:\\loras\\ink.safetensors", "C:\\loras\\ink.safetensors", 1.0)])
def test_lora_option_parsing(text, name, scale):
    assert StyleLora.parse(text) == StyleLora(name, scale)


def test_lora_settings_bounds_and_round_trip():
    with pytest.raises(SettingsError, match="scale of LoRA 'ink' 9 is out of range"):
        StyleLora("ink", 9)
    with pytest.raises(SettingsError, match="at most 4"):
        GenerationSettings("x", loras=[f"l{i}" for i in range(5)])
    with pytest.raises(SettingsError, match="listed twice"):
        GenerationSettings("x", loras=["a", "a:0.5"])
    g = GenerationSettings("x", loras=[{"name": "ink.safetensors", "scale": 0.75}, "clay.safetensors:0.5"])
    assert GenerationSettings.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert "loras" not in GenerationSettings("x").to_dict()  # shot keys without LoRAs are unchanged


def test_cli_lora_option_and_depth_lora_rename(tmp_path, lora_dir, capsys):
    out = tmp_path / "a.png"
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a chair", "--model", "tiny-random", "--steps", "2",
               "--seed", "3", "--long-side", "256", "--lora", str(lora_dir / "ink.safetensors") + ":0.8",
               "--lora", "kohya.safetensors", "--lora-dir", str(lora_dir), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    meta = json.loads((tmp_path / "a.json").read_text())
    assert [(x["name"], x["scale"]) for x in meta["loras"]] == [("ink.safetensors", 0.8), ("kohya.safetensors", 1.0)]
    assert str(lora_dir) not in json.dumps(meta)  # names, never the host's paths
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a chair", "--model", "tiny-random", "--lora",
               "nowhere.safetensors", "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: style LoRA 'nowhere.safetensors' is neither a file nor in")
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "a chair", "--model", "tiny-random", "--lora-scale", "0.5",
               "--out", str(tmp_path / "c.png")])
    assert rc == 2 and "--depth-lora-scale" in capsys.readouterr().err  # the old flag points to its new name


# --- the app: slots, presets, the API on a shared studio ---------------------------------------------------------


def test_app_slots_generate_with_the_folder_loras_and_record_them(tmp_path, lora_dir):
    from fluxdepth_ui.ui import handlers as h
    from fluxdepth_ui.ui.sharing import make_policy

    manager = PipelineManager(TINY, cache_root=str(tmp_path / "cache"), lora_dir=str(lora_dir), lora_paths=False)
    studio = h.Studio(manager=manager, outputs=tmp_path / "outputs",
                      policy=make_policy(True, "bf16", ["bf16"], None, None))
    form = dict(depth_file=str(DEPTH_SYN), channel="auto", mode="auto", invert="auto", clip_low=0.5,
                clip_high=99.5, near=None, far=None, long_side=256, edges="snap", prompt="a wooden chair",
                variant="bf16", steps=STEPS, guidance=10.0, seed=7, randomize=False, init_image=None, strength=0.6,
                lora_1="ink.safetensors", lora_1_scale=0.6, lora_2="", lora_2_scale=1.0)
    outcome = h.generate_from_form(studio, "s1", form)
    assert [(x["name"], x["scale"]) for x in outcome.metadata["loras"]] == [("ink.safetensors", 0.6)]
    direct = manager.generate(prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256)).control,
                              settings(StyleLora("ink.safetensors", 0.6)))
    from PIL import Image

    assert np.array_equal(pixels(Image.open(outcome.png)), pixels(direct.image))
    with pytest.raises(SettingsError, match="pick one of the studio's LoRAs"):  # a path, not a folder name
        h.generate_from_form(studio, "s1", {**form, "lora_1": str(lora_dir / "ink.safetensors")})


def test_the_app_api_takes_loras_by_folder_name_only(tmp_path, lora_dir, monkeypatch):
    from gradio_client import Client, handle_file

    from conftest import launch_app

    monkeypatch.setenv("FLUXDEPTH_LORA_DIR", str(lora_dir))
    studio, demo = launch_app(tmp_path)
    try:
        assert studio.manager.lora_paths is False and studio.manager.lora_dir == str(lora_dir)
        client = Client(demo.local_url, verbose=False)
        png, meta, extras = client.predict(handle_file(str(DEPTH_SYN)), "a wooden chair", 7, STEPS, 10.0, "",
                                           long_side=256, loras=["clay.safetensors:0.5"], api_name="/generate")
        assert meta["loras"][0]["name"] == "clay.safetensors" and meta["loras"][0]["scale"] == 0.5
        with pytest.raises(Exception) as err:
            client.predict(handle_file(str(DEPTH_SYN)), "a wooden chair", 7, STEPS, 10.0, "", long_side=256,
                           loras=[str(lora_dir / "clay.safetensors")], api_name="/generate")
        text = str(err.value)
        assert "pick one of the studio's LoRAs" in text and str(lora_dir) not in text
    finally:
        demo.close()


def test_presets_carry_loras(tmp_path, monkeypatch, lora_dir):
    from fluxdepth_ui.presets import PresetError, load_preset, save_preset
    from fluxdepth_ui.ui.app import preset_lora_slots

    path = save_preset("Ink look", {"mode": "auto"}, {"prompt": "x", "loras": [{"name": "ink.safetensors",
                                                                                 "scale": 0.7}]},
                       folder=tmp_path)
    preset = load_preset(path)
    assert preset.generation["loras"] == [{"name": "ink.safetensors", "scale": 0.7}]
    assert preset_lora_slots(preset.generation["loras"], str(lora_dir)) == ["ink.safetensors", 0.7, "", 1.0]
    assert preset_lora_slots(preset.generation["loras"], str(tmp_path)) == ["", 1.0, "", 1.0]  # not on this host
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "Bad", "generation": {"loras": [{"name": "ink", "scale": 40}]}}))
    with pytest.raises(PresetError, match="bad.json: scale of LoRA 'ink' 40 is out of range"):
        load_preset(bad)


def test_a_compiled_transformer_sees_lora_changes(tmp_path, depth, lora_dir):
    """torch.compile does not guard on forward hooks: a LoRA added after tracing would silently do nothing
    (measured on the compiled fp8 tier). The manager traces again when the set of LoRAs changes. The eager dynamo
    backend keeps this test fast and exact on the CPU."""
    eager = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    want_plain = eager.generate(depth.control, settings()).image
    want_ink = eager.generate(depth.control, settings(StyleLora("ink.safetensors", 0.9))).image
    want_ink_half = eager.generate(depth.control, settings(StyleLora("ink.safetensors", 0.45))).image
    compiled = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    compiled.load()
    compiled._pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
    compiled._compiled = True
    messages = []
    got_plain = compiled.generate(depth.control, settings()).image
    got_ink = compiled.generate(depth.control, settings(StyleLora("ink.safetensors", 0.9)),
                                load_progress=lambda f, m: messages.append(m)).image
    got_half = compiled.generate(depth.control, settings(StyleLora("ink.safetensors", 0.45))).image
    got_off = compiled.generate(depth.control, settings()).image
    for got, want in ((got_plain, want_plain), (got_ink, want_ink), (got_half, want_ink_half), (got_off, want_plain)):
        assert np.array_equal(pixels(got), pixels(want))
    assert any("compiling again for the new set of style LoRAs" in m for m in messages)


def test_the_sequence_tab_renders_every_frame_with_the_chosen_loras(tmp_path, lora_dir):
    from test_sequence import make_sequence

    from fluxdepth_ui.pipeline import read_metadata
    from fluxdepth_ui.ui import handlers as h
    from fluxdepth_ui.ui.sharing import make_policy

    manager = PipelineManager(TINY, cache_root=str(tmp_path / "cache"), lora_dir=str(lora_dir), lora_paths=False)
    studio = h.Studio(manager=manager, outputs=tmp_path / "outputs",
                      policy=make_policy(True, "bf16", ["bf16"], None, None))
    frames = sorted(str(p) for p in make_sequence(tmp_path / "src").glob("*.exr"))[:2]
    shot = h.shot_from_form({"prompt": "a hall", "steps": 1, "long_side": 256, "lora_1": "kohya.safetensors",
                             "lora_1_scale": 0.7, "lora_2": ""})
    setup = h.gather_sequence(studio, "q", frames, shot.depth, None)
    done = h.run_sequence(studio, "q", setup, shot, "bf16", 24.0)
    assert done.report.rendered == [1, 2]
    for png in done.report.outputs:
        assert [(x["name"], x["scale"]) for x in read_metadata(png).loras] == [("kohya.safetensors", 0.7)]
    with pytest.raises(SettingsError, match="pick one of the studio's LoRAs"):
        h.run_sequence(studio, "q", setup, replace(shot, generation=replace(
            shot.generation, loras=(StyleLora(str(lora_dir / "ink.safetensors")),))), "bf16", 24.0)
