"""Pipeline manager on tiny-random FLUX-shaped models (CPU): equivalence to diffusers, tiers, cache, safety."""

import gc
import json
import os
import threading
import weakref

import numpy as np
import pytest
import torch
from diffusers import FluxControlImg2ImgPipeline, FluxControlPipeline
from PIL import Image

from conftest import DEPTH_SYN, TUM
from fluxdepth_ui.errors import FluxDepthError
from fluxdepth_ui.depth import ControlImage, DepthSettings, prepare_depth
from fluxdepth_ui.pipeline import (
    GenerationCancelled,
    GenerationSettings,
    ModelSource,
    OutOfMemoryError,
    PipelineError,
    PipelineManager,
    control_tensor,
    read_metadata,
    save_result,
)
from fluxdepth_ui.pipeline.tiny import build_tiny_components

TINY = ModelSource("tiny-random")
STEPS = 3


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


@pytest.fixture
def manager(tmp_path):
    return PipelineManager(TINY, cache_root=str(tmp_path / "cache"))


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def run(manager, depth, **kw):
    settings = GenerationSettings(kw.pop("prompt", "a wooden chair"), seed=kw.pop("seed", 7), steps=STEPS, **kw)
    return manager.generate(depth.control, settings, depth=depth.stats)


def direct(components, control, prompt="a wooden chair", seed=7, **extra):
    """What calling diffusers by hand gives: same components, the control as a float tensor, a CPU generator."""
    from diffusers import FluxControlInpaintPipeline

    cls = (FluxControlInpaintPipeline if "mask_image" in extra else FluxControlImg2ImgPipeline if "image" in extra
           else FluxControlPipeline)
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=prompt, control_image=control_tensor(control), height=control.height, width=control.width,
                num_inference_steps=STEPS, guidance_scale=10.0, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="pil", **extra).images[0]


def test_manager_equals_direct_diffusers_call(manager, depth):
    ours = run(manager, depth)
    theirs = direct(build_tiny_components(0), depth.control)
    assert np.array_equal(pixels(ours.image), pixels(theirs))
    assert ours.image.size == (depth.control.width, depth.control.height) == (256, 192)


def test_img2img_equals_direct_diffusers_call(manager, depth):
    init = Image.fromarray((np.indices((192, 256)).sum(0) % 255).astype(np.uint8)).convert("RGB")
    ours = manager.generate(depth.control, GenerationSettings("a chair", seed=3, steps=STEPS, strength=0.8),
                            init_image=init, init_image_name="plate.png")
    theirs = direct(build_tiny_components(0), depth.control, prompt="a chair", seed=3, image=init, strength=0.8)
    assert np.array_equal(pixels(ours.image), pixels(theirs))
    assert ours.metadata.strength == 0.8 and ours.metadata.init_image == "plate.png"


def test_inpainting_equals_direct_diffusers_call(manager, depth):
    """Fixing one region (issue 28): exactly what diffusers' FluxControlInpaintPipeline gives with the same
    components, control map, image, mask and seed; the mask is recorded, and a mask without its image is refused."""
    init = Image.fromarray((np.indices((192, 256)).sum(0) % 255).astype(np.uint8)).convert("RGB")
    mask = Image.new("L", (256, 192), 0)
    mask.paste(255, (96, 64, 192, 160))
    settings = GenerationSettings("a chair", seed=3, steps=STEPS, strength=0.9)
    ours = manager.generate(depth.control, settings, init_image=init, init_image_name="result.png", mask=mask,
                            mask_name="mask.png")
    theirs = direct(build_tiny_components(0), depth.control, prompt="a chair", seed=3, image=init, mask_image=mask,
                    strength=0.9)
    assert np.array_equal(pixels(ours.image), pixels(theirs))
    assert ours.metadata.inpaint_mask == "mask.png" and ours.metadata.init_image == "result.png"
    img2img = manager.generate(depth.control, settings, init_image=init)
    assert not np.array_equal(pixels(img2img.image), pixels(ours.image))  # the mask is what changed it
    with pytest.raises(PipelineError, match="a mask needs the image it is painted on"):
        manager.generate(depth.control, settings, mask=mask)


def test_img2img_keeps_a_bf16_pipeline_in_bf16(tmp_path, depth):
    """The img2img pipeline shares the modules and must not cast them (diffusers' from_pipe casts to float32)."""
    from fluxdepth_ui.pipeline.sources import LoadedModel

    components = build_tiny_components(0, dtype=torch.bfloat16)
    manager = PipelineManager(TINY, cache_root=str(tmp_path),
                              loader=lambda v, p: LoadedModel(components=components, revision="tiny", notes=[]))
    init = Image.new("RGB", (256, 192), (90, 120, 150))
    manager.generate(depth.control, GenerationSettings("a chair", seed=3, steps=2, strength=0.5), init_image=init)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        dtypes = {p.dtype for p in getattr(manager._pipe, name).parameters()}
        assert dtypes == {torch.bfloat16}, (name, dtypes)
    manager.generate(depth.control, GenerationSettings("a chair", seed=3, steps=2))  # text-to-image still runs


def test_control_goes_in_as_float_not_8bit(manager, depth):
    ours = run(manager, depth)
    squeezed = ControlImage(np.round(depth.control.pixels * 255) / 255)
    assert not np.array_equal(depth.control.pixels, squeezed.pixels)
    via_8bit = manager.generate(squeezed, GenerationSettings("a wooden chair", seed=7, steps=STEPS))
    assert not np.array_equal(pixels(ours.image), pixels(via_8bit.image))


def test_determinism_and_each_input_matters(manager, depth):
    base = pixels(run(manager, depth).image)
    assert np.array_equal(base, pixels(run(manager, depth).image))
    other_depth = prepare_depth(str(TUM), DepthSettings(long_side=256))
    changed = {
        "seed": run(manager, depth, seed=8),
        "prompt": run(manager, depth, prompt="a glass vase"),
        "depth": run(manager, other_depth),
    }
    for what, result in changed.items():
        assert np.abs(pixels(result.image) - base).mean() > 1.0, what
    init = Image.new("RGB", (256, 192), (200, 30, 30))
    weak = manager.generate(depth.control, GenerationSettings("x", seed=1, steps=4, strength=0.3), init_image=init)
    strong = manager.generate(depth.control, GenerationSettings("x", seed=1, steps=4, strength=1.0), init_image=init)
    assert np.abs(pixels(weak.image) - pixels(strong.image)).mean() > 1.0


def test_seed_drawn_and_reported_reproduces(manager, depth):
    first = manager.generate(depth.control, GenerationSettings("a chair", steps=STEPS))
    assert 0 <= first.metadata.seed <= 2**32 - 1
    again = manager.generate(depth.control, GenerationSettings("a chair", seed=first.metadata.seed, steps=STEPS))
    assert np.array_equal(pixels(first.image), pixels(again.image))


@pytest.mark.parametrize("variant", ["qint8", "qint4"])
def test_quantized_tiers_run_and_stay_close(tmp_path, depth, variant):
    full = run(PipelineManager(TINY, cache_root=str(tmp_path)), depth)
    quant_manager = PipelineManager(TINY, variant=variant, cache_root=str(tmp_path))
    quant = run(quant_manager, depth)
    from fluxdepth_ui.pipeline.dense import DenseInt4Linear, DenseInt8Linear

    # quanto quantized, and the dense-path linears hold its weights (issue 6).
    kind = DenseInt8Linear if variant == "qint8" else DenseInt4Linear
    transformer = quant_manager._pipe.transformer
    qlinears = [n for n, m in transformer.named_modules() if isinstance(m, kind)]
    assert qlinears and "proj_out" not in qlinears and "x_embedder" not in qlinears
    assert "norm_out.linear" not in qlinears and "context_embedder" not in qlinears
    assert not any(isinstance(m, torch.nn.Linear) for n, m in transformer.named_modules()
                   if n.startswith("transformer_blocks.0.attn."))
    assert any(isinstance(m, DenseInt8Linear) for m in quant_manager._pipe.text_encoder_2.modules())
    diff = np.abs(pixels(quant.image) - pixels(full.image)).mean()
    seed_diff = np.abs(pixels(run(quant_manager, depth, seed=99).image) - pixels(quant.image)).mean()
    assert diff < seed_diff / 3, (diff, seed_diff)
    assert quant.metadata.variant == variant


def test_quantized_cache_roundtrip_bit_identical_and_stale_rejected(tmp_path, depth):
    cache = str(tmp_path / "cache")
    fresh = PipelineManager(TINY, variant="qint4", cache_root=cache)
    first = run(fresh, depth)
    assert not any("from the cache" in n for n in fresh.status()["notes"])
    folder = tmp_path / "cache" / "quantized" / "tiny-random-seed0_default" / "transformer-qint4"
    assert (folder / "weights.safetensors").exists() and (folder / "fingerprint.json").exists()

    cached = PipelineManager(TINY, variant="qint4", cache_root=cache)
    second = run(cached, depth)
    assert any("transformer: qint4 weights from the cache" in n for n in cached.status()["notes"])
    assert np.array_equal(pixels(first.image), pixels(second.image))

    # A fingerprint that no longer matches (other quanto version, other weights) is rebuilt, not used.
    fp = json.loads((folder / "fingerprint.json").read_text())
    fp["source"] = "other-weights"
    (folder / "fingerprint.json").write_text(json.dumps(fp))
    stale = PipelineManager(TINY, variant="qint4", cache_root=cache)
    third = run(stale, depth)
    assert not any("transformer: qint4 weights from the cache" in n for n in stale.status()["notes"])
    assert json.loads((folder / "fingerprint.json").read_text())["source"] == "tiny-seed0"
    assert np.array_equal(pixels(first.image), pixels(third.image))

    # The cache is the plain dense layout, not quanto's serialization.
    layout = json.loads((folder / "layout.json").read_text())
    assert layout["modules"]["transformer_blocks.0.attn.to_q"]["kind"] == "int4"

    # A cache missing tensors is refused too (they would stay uninitialised).
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "weights.safetensors"))
    state.pop(sorted(state)[0])
    save_file(state, str(folder / "weights.safetensors"))
    partial = PipelineManager(TINY, variant="qint4", cache_root=cache)
    assert np.array_equal(pixels(run(partial, depth).image), pixels(first.image))
    assert not any("transformer: qint4 weights from the cache" in n for n in partial.status()["notes"])


def test_a_second_process_waits_for_the_quantized_cache_being_made(tmp_path, depth, monkeypatch):
    """Farm workers starting the same tier together: the second waits for the first one's cache entry instead of
    quantizing the same weights again. The 'first worker' holds the entry's lock, then writes the entry."""
    import shutil
    import time

    from fluxdepth_ui.atomic import exclusive
    from fluxdepth_ui.pipeline import sources

    made = tmp_path / "made"
    run(PipelineManager(TINY, variant="qint8", cache_root=str(made)), depth)
    monkeypatch.setattr(sources, "quantize_component", lambda *a, **k: pytest.fail("quantized a second time"))
    root = tmp_path / "second"
    entry = root / "quantized" / "tiny-random-seed0_default" / "transformer-qint8"
    messages, errors = [], []
    second = PipelineManager(TINY, variant="qint8", cache_root=str(root))

    def load():
        try:
            second.load(lambda f, m: messages.append(m))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    with exclusive(str(entry)):
        worker = threading.Thread(target=load)
        worker.start()
        deadline = time.monotonic() + 60
        while not any("waiting for another process quantizing transformer" in m for m in messages):
            assert time.monotonic() < deadline and worker.is_alive(), (messages, errors)
            time.sleep(0.05)
        shutil.copytree(made / "quantized", root / "quantized", dirs_exist_ok=True)
    worker.join(60)
    assert not errors and second.loaded
    assert "transformer: qint8 weights from the cache" in second.status()["notes"]
    assert "text_encoder_2: qint8 weights from the cache" in second.status()["notes"]


def test_quantized_tiers_share_the_qint8_text_encoder_cache(tmp_path, depth):
    run(PipelineManager(TINY, variant="qint8", cache_root=str(tmp_path)), depth)
    m4 = PipelineManager(TINY, variant="qint4", cache_root=str(tmp_path))
    run(m4, depth)
    notes = m4.status()["notes"]
    assert "text_encoder_2: qint8 weights from the cache" in notes
    assert not any(n.startswith("transformer:") for n in notes)


def test_local_folder_loads_and_equals_direct(tmp_path, depth):
    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    m = PipelineManager(ModelSource(str(folder)), cache_root=str(tmp_path / "cache"))
    ours = run(m, depth)
    assert m.status()["revision"] == "local"
    assert ours.metadata.model == "pipe" and str(tmp_path) not in json.dumps(ours.metadata.file_dict())
    pipe = FluxControlPipeline.from_pretrained(folder, dtype=torch.bfloat16, local_files_only=True)
    theirs = direct(pipe.components, depth.control)
    assert np.array_equal(pixels(ours.image), pixels(theirs))
    # Quantized from the folder, then cached under the folder's fingerprint; touching the weights invalidates it.
    q = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=str(tmp_path / "cache"))
    run(q, depth)
    q2 = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=str(tmp_path / "cache"))
    run(q2, depth)
    assert "transformer: qint8 weights from the cache" in q2.status()["notes"]
    weights = next((folder / "transformer").glob("*.safetensors"))
    weights.touch()
    import os

    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    q3 = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=str(tmp_path / "cache"))
    run(q3, depth)
    assert "transformer: qint8 weights from the cache" not in q3.status()["notes"]


def test_switching_variants_keeps_one_pipeline_resident(manager, depth):
    from diffusers import FluxTransformer2DModel

    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, FluxTransformer2DModel)}  # other tests' leftovers
    refs = []
    for variant in ["bf16", "qint8", "qint4", "bf16", "qint8", "qint4", "bf16"]:
        manager.configure(variant=variant)
        run(manager, depth)
        refs.append(weakref.ref(manager._pipe.transformer))
    gc.collect()
    assert sum(r() is not None for r in refs) == 1
    assert sum(isinstance(o, FluxTransformer2DModel) and id(o) not in before for o in gc.get_objects()) == 1
    assert manager.configure(variant="bf16") is False  # same settings: nothing reloads
    manager.unload()
    gc.collect()
    assert all(r() is None for r in refs) and not manager.loaded


def test_cancel_stops_between_steps_and_manager_stays_usable(manager, depth):
    cancel = threading.Event()
    seen = []

    def on_step(step, total):
        seen.append(step)
        if step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled, match="after step 2"):
        manager.generate(depth.control, GenerationSettings("x", seed=1, steps=10), on_step=on_step, cancel=cancel)
    assert seen == [1, 2]
    cancel.clear()
    assert run(manager, depth).image.size == (256, 192)


def test_two_threads_are_serialized(manager, depth):
    manager.load()
    transformer = manager._pipe.transformer
    active, peak = [0], [0]
    lock = threading.Lock()
    original = transformer.forward

    def tracked(*a, **kw):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            import time

            time.sleep(0.01)
            return original(*a, **kw)
        finally:
            with lock:
                active[0] -= 1

    transformer.forward = tracked
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(run(manager, depth, seed=s))) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and peak[0] == 1


def test_out_of_memory_becomes_a_message_and_manager_recovers(manager, depth):
    manager.load()
    transformer = manager._pipe.transformer
    original = transformer.forward
    calls = [0]

    def boom(*a, **kw):
        calls[0] += 1
        if calls[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(*a, **kw)

    transformer.forward = boom
    with pytest.raises(OutOfMemoryError, match="try qint8 or qint4"):
        run(manager, depth)
    transformer.forward = original
    assert run(manager, depth).image.size == (256, 192)


def test_bad_settings_rejected_before_loading(manager, depth):
    for kw in ({"steps": 0}, {"guidance": -1.0}, {"strength": 0.0}, {"seed": -5}, {"seed": 2**33}):
        with pytest.raises(FluxDepthError):
            manager.generate(depth.control, GenerationSettings("x", **kw))
    with pytest.raises(PipelineError, match="multiple of 16"):
        manager.generate(ControlImage(np.zeros((100, 100), np.float32)), GenerationSettings("x"))
    assert not manager.loaded
    with pytest.raises(PipelineError, match="unknown variant"):
        manager.configure(variant="fp4")


def test_metadata_in_png_and_sidecar(manager, depth, tmp_path):
    result = run(manager, depth)
    png, sidecar = save_result(result.image, result.metadata, str(tmp_path / "out" / "img.png"))
    meta = read_metadata(png)
    assert meta.file_dict() == result.metadata.file_dict() and meta.seconds is None  # no wall-clock in files
    side = json.loads(open(sidecar).read())
    for key in ("prompt", "seed", "steps", "guidance", "strength", "variant", "model", "revision", "depth_file",
                "depth_channel", "depth_mode", "depth_range", "app_version"):
        assert key in side
    assert side["depth_file"] == "open3d_depth_syn.png" and side["depth_mode"] == "disparity"
    assert side["model"] == "tiny-random-seed0" and "produces noise" in side["notes"][0]
    with Image.open(png) as img:
        assert img.format == "PNG" and "Seed: 7" in img.info["parameters"]
        assert np.array_equal(np.asarray(img), np.asarray(result.image))  # lossless


def test_fast_tier_options_are_explained_where_they_cannot_run(tmp_path, depth):
    """compile asks for a CUDA GPU: on the CPU it is off with a note and the image is unchanged; fp8 is refused."""
    plain = run(PipelineManager(TINY, cache_root=str(tmp_path)), depth)
    compiled = PipelineManager(TINY, cache_root=str(tmp_path), compile=True)
    image = run(compiled, depth)
    status = compiled.status()
    assert status["compile"] and not status["compiled"]
    assert any("torch.compile is off" in n and "cpu" in n for n in status["notes"])
    assert np.array_equal(pixels(image.image), pixels(plain.image))
    assert image.metadata.compiled is False and image.metadata.to_dict()["compiled"] is False
    # Switching compile off is a reconfiguration like any other.
    assert compiled.configure(compile=False) and not compiled.loaded

    fp8 = PipelineManager(TINY, variant="fp8", cache_root=str(tmp_path))
    with pytest.raises(PipelineError, match=r"fp8 tier needs an NVIDIA GPU .* choose bf16, qint8 or qint4"):
        run(fp8, depth)
    assert not fp8.loaded


def test_compiled_pipeline_says_when_a_size_compiles_and_records_it(tmp_path, depth, monkeypatch):
    """The compile step itself needs CUDA; what the artist is told around it does not."""
    from fluxdepth_ui.pipeline import manager as manager_module
    from fluxdepth_ui.pipeline.speed import CompileDecision

    compiled_for = []
    monkeypatch.setenv("FLUXDEPTH_AOT", "0")  # torch.compile's path (qint tiers, LoRAs); the packages': test_aot.py
    monkeypatch.setattr(manager_module, "decide_compile", lambda requested, device, placement:
                        CompileDecision(requested, "compiled (test)" if requested else ""))
    monkeypatch.setattr(manager_module, "compile_transformer", lambda t, root: compiled_for.append(t))
    manager = PipelineManager(TINY, cache_root=str(tmp_path), compile=True)
    messages = []

    def generate(control):
        return manager.generate(control, GenerationSettings("a chair", seed=1, steps=2),
                                load_progress=lambda f, m: messages.append(m))

    first = generate(depth.control)
    assert len(compiled_for) == 1 and first.metadata.compiled is True
    assert sum("compiling the transformer for 256x192" in m for m in messages) == 1
    generate(depth.control)  # same size: nothing new to compile, nothing said
    assert sum("compiling the transformer" in m for m in messages) == 1
    # Before any compiled image on this machine the message quotes the figure for fresh machines; after one, the
    # seconds the last first image took here (the app's tier label for fp8 says the same before it is picked).
    said = next(m for m in messages if "compiling the transformer for 256x192" in m)
    assert said.endswith("first image at each size compiles for 10-20 s (cached after)")
    last = manager.timings.first_compiled(manager.source.key, manager.device_name(), "bf16")
    assert last is not None and last >= 0
    generate(ControlImage(np.full((128, 128), 0.5, np.float32)))
    assert f"compiling the transformer for 128x128: first image about {last:.0f} s here last time" in \
        " ".join(messages)
    assert manager.first_compile_cost("fp8") == "first image compiles for about 20 s on a fresh machine " \
        "(cached after)"
    # The per-size step figures are unaffected by the first-image record.
    assert "s/step at 256×192 here (1 image)" in manager.tier_labels()["bf16"]


def test_a_cache_file_is_read_a_window_at_a_time_into_its_own_memory(tmp_path, monkeypatch):
    """Issue 26 (host memory): a quantized cache is read through a fresh mapping every READ_WINDOW bytes (one mapping
    of the whole file held its bytes twice in resident memory: benchmarks/cache_read_rss.py); the tensors and their
    dtypes are the file's, each in memory of its own."""
    import safetensors
    from safetensors.torch import load_file, save_file

    from fluxdepth_ui.pipeline import variants

    path = str(tmp_path / "weights.safetensors")
    torch.manual_seed(0)
    tensors = {"a.weight": torch.randn(64, 32), "b.qdata": torch.randint(-128, 127, (40, 16), dtype=torch.int8),
               "c.scale": torch.randn(40, 1, dtype=torch.bfloat16), "d.bias": torch.randn(7), "e": torch.zeros(())}
    save_file(tensors, path)
    opens = []
    real_open = safetensors.safe_open
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: opens.append(a) or real_open(*a, **k))
    monkeypatch.setattr(variants, "READ_WINDOW", 3000)  # bytes: a few tensors per mapping
    read = variants.read_tensors(path, "cpu")
    expected = load_file(path)
    assert set(read) == set(expected)
    assert all(read[k].dtype == expected[k].dtype and torch.equal(read[k], expected[k]) for k in expected)
    assert len({t.untyped_storage().data_ptr() for t in read.values()}) == len(read)
    assert len(opens) >= 3  # the keys once, then one mapping per window


class _FakeCudart:
    """cudaHostRegister / cudaHostUnregister as CUDA answers them, recorded (this machine has no GPU)."""

    def __init__(self, answer=0):
        self.answer, self.calls = answer, []

    def cudaHostRegister(self, ptr, size, flags):
        self.calls.append(("register", ptr, size))
        return self.answer

    def cudaHostUnregister(self, ptr):
        self.calls.append(("unregister", ptr))
        return 0


def test_streamed_tensors_are_read_into_page_locked_blocks_of_their_exact_size(tmp_path, monkeypatch):
    """Issue 26 (host memory): the tensors a plan streams are read into one registered (page-locked) block per read
    window, exactly their size on whole pages, not through PyTorch's pinned allocator (it rounds each up to a power
    of two); each is the file's tensor, aligned; the block is unregistered once its last tensor goes. Where CUDA
    refuses to register, each is pinned on its own as before."""
    import gc

    from safetensors.torch import load_file, save_file

    from fluxdepth_ui.pipeline import variants

    path = str(tmp_path / "weights.safetensors")
    torch.manual_seed(0)
    tensors = {f"blocks.{i}.weight": torch.randint(-128, 127, (40 + i, 24), dtype=torch.int8) for i in range(6)}
    tensors.update({f"blocks.{i}.scale": torch.randn(40 + i, 1, dtype=torch.bfloat16) for i in range(6)})
    tensors["norm.weight"] = torch.randn(24)
    save_file(tensors, path)
    cudart = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    monkeypatch.setattr(variants, "READ_WINDOW", 2000)  # bytes: several windows
    home = lambda key: variants.PINNED if key.startswith("blocks.") else "cpu"  # noqa: E731
    read = variants.read_tensors(path, home)
    expected = load_file(path)
    assert set(read) == set(expected)
    assert all(read[k].dtype == expected[k].dtype and torch.equal(read[k], expected[k]) for k in expected)
    registered = [c for c in cudart.calls if c[0] == "register"]
    blocks = {read[k].untyped_storage().data_ptr() for k in read if k.startswith("blocks.")}
    assert len(registered) == len(blocks) >= 2  # one block per window that had streamed tensors
    assert all(ptr % variants.PAGE == 0 and size % variants.PAGE == 0 for _, ptr, size in registered)
    pinned_bytes = sum(t.numel() * t.element_size() for k, t in expected.items() if k.startswith("blocks."))
    assert sum(size for *_, size in registered) <= pinned_bytes + len(registered) * (variants.PAGE + 13 * 512)
    assert all(read[k].data_ptr() % variants.PINNED_ALIGN == 0 for k in read if k.startswith("blocks."))
    assert read["norm.weight"].untyped_storage().data_ptr() not in blocks
    gc.collect()
    assert not any(c[0] == "unregister" for c in cudart.calls)  # the tensors hold their blocks
    del read
    gc.collect()
    assert sorted(c[1] for c in cudart.calls if c[0] == "unregister") == sorted(ptr for _, ptr, _ in registered)

    refused = _FakeCudart(answer=1)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: refused)
    pinned_one_by_one = []
    monkeypatch.setattr(variants, "_copy_home", lambda t, h: pinned_one_by_one.append(h) or t.clone())
    again = variants.read_tensors(path, home)
    assert all(torch.equal(again[k], expected[k]) for k in expected)
    assert pinned_one_by_one.count(variants.PINNED) == 12 and not any(c[0] == "unregister" for c in refused.calls)


def test_a_later_start_plans_from_the_cache_skeletons_then_reads_each_tensor_to_its_home(tmp_path, depth,
                                                                                          monkeypatch):
    """Issue 26 (host memory): a cached tier's memory plan is made from its components' sizes while the cached ones are
    still skeletons on the meta device, and then each tensor is read straight to the home the plan gives it (on a GPU:
    resident blocks to the card, streamed ones to pinned memory). The sizes are the loaded ones; the image is the
    one the first start made."""
    from fluxdepth_ui.pipeline import variants
    from fluxdepth_ui.pipeline.placement import module_bytes

    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    cache = str(tmp_path / "cache")
    first = run(PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache), depth)
    planned, homes = [], []
    real_plan_for, real_copy = PipelineManager._plan_for, variants._copy_home

    def recording_plan_for(self, device, variant, components):
        planned.append({k: (module_bytes(v), any(t.is_meta for t in v.parameters()))
                        for k, v in components.items() if isinstance(v, torch.nn.Module)})
        return real_plan_for(self, device, variant, components)

    monkeypatch.setattr(PipelineManager, "_plan_for", recording_plan_for)
    monkeypatch.setattr(variants, "_copy_home", lambda tensor, home: homes.append(home) or real_copy(tensor, home))
    later_manager = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache)
    later = run(later_manager, depth)
    assert len(planned) == 1
    assert planned[0]["transformer"][1] and planned[0]["text_encoder_2"][1]  # planned before their weights were read
    assert not planned[0]["vae"][1]
    components = later_manager._pipe.components
    assert {k: size for k, (size, _) in planned[0].items()} == {k: module_bytes(components[k]) for k in planned[0]}
    assert homes and set(map(str, homes)) == {"cpu"}  # no GPU here: the plan's home for everything is the host
    assert "transformer: qint8 weights from the cache" in later_manager.status()["notes"]
    assert np.array_equal(pixels(first.image), pixels(later.image))
    # On ZeroGPU CUDA exists only inside its GPU calls: the weights load on the host first, as before.
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache).load()
    assert len(planned) == 2 and not planned[1]["transformer"][1] and not planned[1]["text_encoder_2"][1]


def _bf16_state(module) -> dict:
    return {k: v.detach().to("cpu", torch.float32) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("sharded", [False, True])
def test_a_bf16_load_reads_the_model_folder_straight_to_each_tensors_home(tmp_path, depth, monkeypatch, sharded):
    """Issue 26 (host memory): the bf16 tier's transformer and T5 are planned as skeletons and read from the model
    folder's safetensors (one file or an index of shards) straight to their homes, cast to the pipeline's dtype, as
    `from_pretrained` loads them (FLUXDEPTH_READ_FOLDER=0, the way before): the same weights, dtypes and tied
    embedding, the same image."""
    from fluxdepth_ui.pipeline import variants

    folder = tmp_path / "pipe"
    pipe = FluxControlPipeline(**build_tiny_components(0))  # float32 weights: the read casts them to bf16
    pipe.save_pretrained(folder, max_shard_size="40KB" if sharded else "10GB")
    index = folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    assert index.exists() == sharded
    reference = FluxControlPipeline.from_pretrained(folder, dtype=torch.bfloat16)
    monkeypatch.setenv("FLUXDEPTH_READ_FOLDER", "0")
    before = run(PipelineManager(ModelSource(str(folder)), variant="bf16", cache_root=str(tmp_path / "c1")), depth)

    monkeypatch.delenv("FLUXDEPTH_READ_FOLDER")
    homes, messages, real_copy = [], [], variants._copy_home
    monkeypatch.setattr(variants, "_copy_home", lambda tensor, home: homes.append(home) or real_copy(tensor, home))
    manager = PipelineManager(ModelSource(str(folder)), variant="bf16", cache_root=str(tmp_path / "c2"))
    manager.load(progress=lambda fraction, message: messages.append(message))
    after = run(manager, depth)
    assert "reading transformer from the model folder" in messages
    assert "reading text_encoder_2 from the model folder" in messages
    assert homes and set(map(str, homes)) == {"cpu"}  # no GPU here: the plan's home for everything is the host
    for component in ("transformer", "text_encoder_2"):
        mine, theirs = getattr(manager._pipe, component), getattr(reference, component)
        assert {t.dtype for t in mine.parameters()} == {torch.bfloat16}
        a, b = _bf16_state(mine), _bf16_state(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    t5 = manager._pipe.text_encoder_2
    assert t5.encoder.embed_tokens.weight is t5.shared.weight  # tied, as transformers ties it
    assert np.array_equal(pixels(before.image), pixels(after.image))


def break_quantized_transformer_cache(cache_root):
    """The transformer's quantized cache entry, its weights file overwritten: it can be opened, not read."""
    weights = next(p for p in cache_root.rglob("*.safetensors") if "transformer-qint8" in str(p))
    weights.write_bytes(b"\x00" * 64)


def add_a_tensor_the_transformer_lacks(folder):
    """The model folder's transformer weights with one tensor more than the model has."""
    from safetensors.torch import load_file, save_file

    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["not_a_layer.weight"] = torch.zeros(2)
    save_file(state, path)


def test_a_model_folder_that_does_not_match_its_skeleton_loads_through_from_pretrained(tmp_path, depth, monkeypatch,
                                                                                      caplog):
    """A weights file with a tensor the model does not have (or without one it needs) is not half-read into the
    skeleton: the component loads through `from_pretrained` instead, with the same image."""
    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    monkeypatch.setenv("FLUXDEPTH_READ_FOLDER", "0")
    before = run(PipelineManager(ModelSource(str(folder)), variant="bf16", cache_root=str(tmp_path / "c1")), depth)
    add_a_tensor_the_transformer_lacks(folder)
    monkeypatch.delenv("FLUXDEPTH_READ_FOLDER")
    with caplog.at_level("WARNING", logger="fluxdepth_ui.pipeline.sources"):
        after = run(PipelineManager(ModelSource(str(folder)), variant="bf16", cache_root=str(tmp_path / "c2")), depth)
    assert "reading transformer from" in caplog.text and "loading it with from_pretrained" in caplog.text
    assert "not_a_layer.weight" in caplog.text
    assert np.array_equal(pixels(before.image), pixels(after.image))


def test_running_out_of_gpu_memory_while_reading_the_folder_is_reported_not_retried(tmp_path, monkeypatch):
    """A forced placement the card cannot hold fails while the folder is read straight to the GPU: that is the
    load's out-of-memory message (naming the smaller tiers), not a second load of 33 GB through from_pretrained."""
    from fluxdepth_ui.pipeline import OutOfMemoryError, sources, variants

    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)

    def full_card(path, home, dtype=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 72.00 MiB")

    monkeypatch.setattr(variants, "read_tensors", full_card)
    monkeypatch.setattr(sources, "_load_full_component", lambda *a, **k: pytest.fail("loaded a second time"))
    manager = PipelineManager(ModelSource(str(folder)), variant="bf16", cache_root=str(tmp_path / "c"))
    with pytest.raises(OutOfMemoryError, match="choose qint8 or qint4"):
        manager.load()
    assert not manager.loaded


def test_a_cache_whose_weights_turn_out_unreadable_is_quantized_again(tmp_path, depth):
    """The skeleton comes from the cache's small files; should its weights file then fail to read, the entry is
    removed and the component quantized again: the same image, and a good cache for the next start."""
    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    cache = str(tmp_path / "cache")
    first = run(PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache), depth)
    break_quantized_transformer_cache(tmp_path / "cache")
    again = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache)
    assert np.array_equal(pixels(first.image), pixels(run(again, depth).image))
    assert "transformer: qint8 weights from the cache" not in again.status()["notes"]
    third = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache)
    run(third, depth)
    assert "transformer: qint8 weights from the cache" in third.status()["notes"]


@pytest.mark.parametrize("broken", ["quantized cache", "model folder"])
def test_a_component_loaded_another_way_waits_for_the_reads_beside_it(tmp_path, depth, monkeypatch, broken):
    """Quantizing again (a cache that turned out unreadable) and from_pretrained (a folder that does not match its
    skeleton) switch process-wide state: accelerate's init_empty_weights patches nn.Module, transformers sets the
    default dtype. Run in a read thread beside the other component's read, two such switches interleaved and left
    the patch or the dtype in place for good (the suite saw every later image of its worker differ). They run after
    the reads, on the loading thread, and leave the process as they found it."""
    from fluxdepth_ui.pipeline import sources

    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    cache = str(tmp_path / "cache")
    variant = "qint8" if broken == "quantized cache" else "bf16"
    first = run(PipelineManager(ModelSource(str(folder)), variant=variant, cache_root=cache), depth)
    if broken == "quantized cache":
        break_quantized_transformer_cache(tmp_path / "cache")
        read_name, other_way_name = "_filled", "_cached_or_quantized"
    else:
        add_a_tensor_the_transformer_lacks(folder)
        read_name, other_way_name = "_read_from_folder", "_load_full_component"
    events, lock = [], threading.Lock()

    def recorded(name, real):
        def call(*args, **kwargs):
            with lock:
                events.append((name, "start", threading.current_thread() is threading.main_thread()))
            try:
                return real(*args, **kwargs)
            finally:
                with lock:
                    events.append((name, "end", None))
        return call

    monkeypatch.setattr(sources, read_name, recorded("read", getattr(sources, read_name)))
    monkeypatch.setattr(sources, other_way_name, recorded("other way", getattr(sources, other_way_name)))
    register_parameter, dtype = torch.nn.Module.register_parameter, torch.get_default_dtype()
    again = run(PipelineManager(ModelSource(str(folder)), variant=variant, cache_root=cache), depth)
    reads = [i for i, e in enumerate(events) if e[0] == "read"]
    other_way = [i for i, e in enumerate(events) if e[0] == "other way"]
    assert len(reads) == 4 and other_way  # two components read side by side; one loaded another way
    assert min(other_way) > max(reads) and all(e[2] for e in events if e[:2] == ("other way", "start"))
    assert torch.nn.Module.register_parameter is register_parameter and torch.get_default_dtype() == dtype
    assert np.array_equal(pixels(first.image), pixels(again.image))


def test_a_load_reads_its_big_files_ahead_in_the_order_it_uses_them(tmp_path, depth, monkeypatch):
    """A later start sets its quantized caches reading (a background thread) before the minutes-long imports, in the
    order the load reads them; a first start from a model folder reads that folder's weights ahead. The images are
    the same with and without (the read-ahead only warms the page cache)."""
    from fluxdepth_ui.pipeline import sources

    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    (folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"another copy, never read")
    cache = str(tmp_path / "cache")
    opened, started = [], []
    real_prefetch, real_open = sources._prefetch, open

    def recording_prefetch(paths):
        started.append(list(paths))
        real_prefetch(paths)
        for thread in threading.enumerate():
            if thread.name == "fluxdepth-prefetch":
                thread.join(timeout=60)

    def recording_open(path, *args, **kwargs):
        if str(path).endswith(".safetensors"):
            opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "_prefetch", recording_prefetch)
    monkeypatch.setattr(sources, "open", recording_open, raising=False)
    first = run(PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache), depth)
    shards = [str(p) for c in ("transformer", "text_encoder_2") for p in sorted((folder / c).glob("*.safetensors"))
              if ".fp16." not in p.name]
    assert started[0] == shards and opened == shards  # first start: the folder's weights, read once ahead
    opened.clear()
    later = run(PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache), depth)
    assert [os.path.basename(os.path.dirname(p)) for p in started[1]] == ["transformer-qint8", "text_encoder_2-qint8"]
    assert opened == started[1]
    assert np.array_equal(pixels(first.image), pixels(later.image))


def test_a_warm_up_reads_ahead_and_imports_for_the_first_load_and_loads_nothing(tmp_path, depth, monkeypatch):
    """The app warms up at launch (issue 26): the model's big files are read into the OS cache and the load's
    libraries imported in a background thread, nothing is loaded; the first load then reads nothing ahead again and
    makes the same image. A loaded manager has nothing to warm."""
    from fluxdepth_ui.pipeline import sources

    folder = tmp_path / "pipe"
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(folder)
    cache = str(tmp_path / "cache")
    first = run(PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache), depth)
    opened, real_open = [], open

    def recording_open(path, *args, **kwargs):
        if str(path).endswith(".safetensors"):
            opened.append(os.path.basename(os.path.dirname(str(path))))
        return real_open(path, *args, **kwargs)

    def join_reads():
        for thread in threading.enumerate():
            if thread.name == "fluxdepth-prefetch":
                thread.join(timeout=60)

    monkeypatch.setattr(sources, "open", recording_open, raising=False)
    manager = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache)
    warming = manager.warm_up()
    warming.join(timeout=120)
    join_reads()
    assert not warming.is_alive() and not manager.loaded
    assert opened == ["transformer-qint8", "text_encoder_2-qint8"]  # the quantized caches, read ahead
    later = run(manager, depth)
    join_reads()
    assert opened == ["transformer-qint8", "text_encoder_2-qint8"]  # the load did not read them ahead again
    assert np.array_equal(pixels(first.image), pixels(later.image))
    assert manager.warm_up() is None
    with monkeypatch.context() as zerogpu:  # there the model loads at start-up: nothing to warm
        zerogpu.setenv("SPACES_ZERO_GPU", "true")
        assert PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache).warm_up() is None
    again = PipelineManager(ModelSource(str(folder)), variant="qint8", cache_root=cache)
    run(again, depth)
    join_reads()
    assert opened[2:] == ["transformer-qint8", "text_encoder_2-qint8"]  # without a warm-up, the load reads ahead


def test_read_ahead_goes_on_past_a_missing_file_and_skips_what_memory_cannot_hold(tmp_path, monkeypatch):
    from fluxdepth_ui.pipeline import sources

    files = [tmp_path / "a.safetensors", tmp_path / "gone.safetensors", tmp_path / "b.safetensors"]
    files[0].write_bytes(b"x" * 1000)
    files[2].write_bytes(b"y" * 1000)
    opened = []
    real_open = open

    def recording_open(path, *args, **kwargs):
        opened.append(os.path.basename(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "open", recording_open, raising=False)
    monkeypatch.setattr(sources, "_available_memory", lambda: 10**9)
    sources._prefetch([str(f) for f in files])
    for thread in threading.enumerate():
        if thread.name == "fluxdepth-prefetch":
            thread.join(timeout=60)
    assert opened == ["a.safetensors", "gone.safetensors", "b.safetensors"]
    opened.clear()
    monkeypatch.setattr(sources, "_available_memory", lambda: 3000)  # 2000 bytes to read: more than half of it
    sources._prefetch([str(f) for f in files])
    assert opened == []


def test_img2img_progress_counts_the_steps_diffusers_runs(manager, depth):
    """7 steps at strength 0.6: diffusers starts at int(7 - 4.2) = 2 and runs 5 steps, not int(4.2) = 4. The progress
    says "5 of 5", never "5 of 4", and the step that precedes the decode is the last one counted."""
    from fluxdepth_ui.settings import refine_steps

    init = Image.new("RGB", (256, 192), (90, 120, 150))
    seen = []
    manager.generate(depth.control, GenerationSettings("a chair", seed=3, steps=7, strength=0.6), init_image=init,
                     on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]
    assert [refine_steps(28, s) for s in (0.6, 0.5, 1.0, 0.01)] == [17, 14, 28, 1]
