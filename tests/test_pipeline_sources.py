"""Model sources (hub errors simulated, no network), local folders, the Depth LoRA path, placement, photo depth."""

import json
from collections import namedtuple

import httpx
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FluxControlPipeline, FluxTransformer2DModel
from huggingface_hub import errors as hub_errors
from PIL import Image

from conftest import DEPTH_SYN
from fluxdepth_ui.depth import DepthSettings, prepare_depth, prepare_loaded
from fluxdepth_ui.pipeline import (
    DEFAULT_MODEL,
    GenerationSettings,
    ModelSource,
    ModelSourceError,
    PipelineManager,
    parse_model_source,
)
from fluxdepth_ui.pipeline.placement import GIB, choose_placement
from fluxdepth_ui.pipeline.tiny import build_tiny_components, tiny_transformer_config


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


def hub_response(status):
    return httpx.Response(status, request=httpx.Request("GET", f"https://huggingface.co/api/models/{DEFAULT_MODEL}"))


DiskUsage = namedtuple("DiskUsage", "total used free")


def load_error(monkeypatch, tmp_path, exc, source=None, offline=False, free_bytes=500 * GIB):
    from huggingface_hub import constants

    def fake_download(*args, **kwargs):
        raise exc

    # The messages must not depend on the free space of the machine running the tests.
    monkeypatch.setattr("shutil.disk_usage", lambda p: DiskUsage(1000 * GIB, 1000 * GIB - free_bytes, free_bytes))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(lambda cls, *a, **k: fake_download()))
    manager = PipelineManager(source or ModelSource(), cache_root=str(tmp_path))
    with pytest.raises(ModelSourceError) as err:
        manager.load()
    return str(err.value)


def test_gated_repo_message(monkeypatch, tmp_path):
    msg = load_error(monkeypatch, tmp_path, hub_errors.GatedRepoError("Access restricted", response=hub_response(403)))
    assert "gated" in msg and "huggingface.co/black-forest-labs/FLUX.1-Depth-dev" in msg and "HF_TOKEN" in msg
    assert "\n" not in msg


def test_missing_repo_and_revision_messages(monkeypatch, tmp_path):
    msg = load_error(monkeypatch, tmp_path, hub_errors.RepositoryNotFoundError("404", response=hub_response(404)),
                     ModelSource("someone/not-a-model"))
    assert "someone/not-a-model was not found" in msg
    msg = load_error(monkeypatch, tmp_path, hub_errors.RevisionNotFoundError("404", response=hub_response(404)),
                     ModelSource(revision="v9"))
    assert "revision 'v9' does not exist" in msg


def test_offline_with_nothing_cached_says_what_to_download(monkeypatch, tmp_path):
    # The exact OSError diffusers raises offline (seen with HF_HUB_OFFLINE=1 and an empty cache).
    exc = OSError("Cannot load model black-forest-labs/FLUX.1-Depth-dev: the model is not fully cached locally "
                  "(Cannot find an appropriate cached snapshot folder ... outgoing traffic has been disabled.")
    msg = load_error(monkeypatch, tmp_path, exc, offline=True)
    assert "offline" in msg and f"hf download {DEFAULT_MODEL}" in msg and "--model" in msg
    # Offline nothing would be downloaded, so a small disk must not hide the real reason behind a disk-space message.
    msg = load_error(monkeypatch, tmp_path, exc, offline=True, free_bytes=5 * 10**9)
    assert "offline" in msg and "disk space" not in msg


def test_real_offline_hub_lookup_is_translated(monkeypatch, tmp_path):
    """No simulation: the real diffusers download call, offline, against an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("fluxdepth_ui.pipeline.sources._check_disk", lambda *a: None)
    manager = PipelineManager(ModelSource(), cache_root=str(tmp_path))
    with pytest.raises(ModelSourceError, match="not in the local Hugging Face cache"):
        manager.load()


def test_not_enough_disk(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # only a download needs the space
    monkeypatch.setattr("shutil.disk_usage", lambda p: DiskUsage(100 * GIB, 95 * GIB, 5 * 10**9))
    with pytest.raises(ModelSourceError, match="not enough disk space .* about 34 GB .* 5.0 GB are free"):
        PipelineManager(ModelSource(), cache_root=str(tmp_path)).load()


def test_folder_checks(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match="no model_index.json"):
        PipelineManager(ModelSource(str(empty)), cache_root=str(tmp_path)).load()
    dev = tmp_path / "dev"
    comps = build_tiny_components(0)
    comps["transformer"] = FluxTransformer2DModel(**{**tiny_transformer_config(), "in_channels": 64,
                                                     "out_channels": None})
    FluxControlPipeline(**comps).save_pretrained(dev)
    with pytest.raises(ModelSourceError, match=r"FLUX.1-dev .*not a depth model.*--depth-lora"):
        PipelineManager(ModelSource(str(dev)), cache_root=str(tmp_path)).load()
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelSourceError, match="not FLUX"):
        PipelineManager(ModelSource(str(sd)), cache_root=str(tmp_path)).load()


def test_parse_model_source():
    assert parse_model_source(None).model == DEFAULT_MODEL
    assert parse_model_source("tiny-random").kind == "tiny"
    lora = parse_model_source("flux-dev+depth-lora")
    assert lora.model == "black-forest-labs/FLUX.1-dev" and lora.depth_lora == "black-forest-labs/FLUX.1-Depth-dev-lora"
    assert parse_model_source("owner/name", revision="abc").revision == "abc"
    with pytest.raises(ModelSourceError, match="neither a Hub id"):
        parse_model_source("not a model")
    with pytest.raises(ModelSourceError, match="does not exist"):
        parse_model_source("/no/such/folder")


# --- FLUX.1-dev + Depth LoRA (tiny) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_and_lora(tmp_path_factory):
    from peft import LoraConfig, get_peft_model_state_dict

    root = tmp_path_factory.mktemp("lora")
    comps = build_tiny_components(0)
    torch.manual_seed(5)
    comps["transformer"] = FluxTransformer2DModel(**{**tiny_transformer_config(), "in_channels": 64,
                                                     "out_channels": None})
    FluxControlPipeline(**comps).save_pretrained(root / "dev")
    torch.manual_seed(6)
    trained = FluxTransformer2DModel(**tiny_transformer_config())  # LoRA trained against 128 input channels
    trained.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["x_embedder", "to_q", "to_k", "to_v"],
                                   init_lora_weights=False))
    FluxControlPipeline.save_lora_weights(root / "lora", transformer_lora_layers=get_peft_model_state_dict(trained))
    return root / "dev", root / "lora"


@pytest.mark.parametrize("variant", ["bf16", "qint8"])
def test_depth_lora_is_fused_before_quantizing(tmp_path, depth, dev_and_lora, variant):
    dev, lora = dev_and_lora
    source = ModelSource(str(dev), depth_lora=str(lora), depth_lora_scale=0.85)
    manager = PipelineManager(source, variant=variant, cache_root=str(tmp_path))
    result = manager.generate(depth.control, GenerationSettings("a chair", seed=2, steps=2))
    transformer = manager._pipe.transformer
    assert transformer.config.in_channels == 128 and transformer.x_embedder.in_features == 128
    assert not any("lora" in name for name, _ in transformer.named_modules())  # fused, adapters gone
    assert result.image.size == (256, 192) and "+" in result.metadata.model
    if variant == "qint8":
        again = PipelineManager(source, variant=variant, cache_root=str(tmp_path))
        second = again.generate(depth.control, GenerationSettings("a chair", seed=2, steps=2))
        assert "transformer: qint8 weights from the cache" in again.status()["notes"]
        assert np.array_equal(np.asarray(second.image), np.asarray(result.image))


# --- placement policy ----------------------------------------------------------------------------------------------


def test_placement_policy():
    cuda = torch.device("cuda")
    sizes = {"transformer": int(22.2 * GIB), "text_encoder_2": int(8.9 * GIB), "vae": GIB // 6}
    assert choose_placement("auto", cuda, sizes, 1.0, 80 * GIB, False).placement == "gpu"
    assert choose_placement("auto", cuda, sizes, 1.0, 30 * GIB, False).placement == "model_offload"
    assert choose_placement("auto", cuda, sizes, 1.0, 16 * GIB, False).placement == "sequential_offload"
    q4 = {"transformer": int(5.9 * GIB), "text_encoder_2": int(4.5 * GIB), "vae": GIB // 6}
    assert choose_placement("auto", cuda, q4, 1.0, 16 * GIB, True).placement == "gpu"
    assert choose_placement("auto", cuda, q4, 1.0, 10 * GIB, True).placement == "model_offload"
    forced = choose_placement("sequential_offload", cuda, q4, 1.0, 80 * GIB, True)
    assert forced.placement == "model_offload" and "quantized" in forced.reason
    assert choose_placement("gpu", cuda, sizes, 1.0, 8 * GIB, False).placement == "gpu"
    assert choose_placement("auto", torch.device("cpu"), sizes, 1.0, None, False).placement == "cpu"


# --- depth from a photo ----------------------------------------------------------------------------------------------


def test_depth_from_photo_feeds_the_same_normalization(depth):
    from fluxdepth_ui.pipeline.tiny import build_tiny_depth_estimator

    estimator = build_tiny_depth_estimator()
    photo = Image.fromarray((np.random.default_rng(1).random((150, 200, 3)) * 255).astype(np.uint8))
    estimated = estimator.estimate(photo, "photo.jpg")
    assert estimated.values.shape == (150, 200) and estimated.values.dtype == np.float32
    assert estimated.kind == "image" and estimated.near_is_bright
    result = prepare_loaded(estimated, DepthSettings(long_side=256))
    raw = estimated.values
    cmap = result.control_map
    assert cmap.mode == "passthrough" and not cmap.inverted  # polarity known: never auto-flipped
    np.testing.assert_allclose(cmap.values, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    assert (result.control.width, result.control.height) == (256, 192)


def test_depth_from_photo_offline_fails_at_once_and_remembers(tmp_path, monkeypatch):
    """Issue 28: offline with Depth Anything not cached, Estimate once waited 93 s for the Hub and again on every
    retry. Now: the local cache is asked first, an offline studio never asks the Hub, the one line says what to do,
    and a retry within FAILURE_REMEMBERED_S fails at once without trying again."""
    import time

    from fluxdepth_ui.pipeline import depth_estimation
    from fluxdepth_ui.pipeline.errors import PipelineError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    estimator = depth_estimation.DepthEstimator()
    tries = []
    real = estimator._from_hub
    monkeypatch.setattr(estimator, "_from_hub", lambda local_only: tries.append(local_only) or real(local_only))
    photo = Image.new("RGB", (64, 48))
    t = time.monotonic()
    with pytest.raises(PipelineError, match="not in the local Hugging Face cache and this studio is offline"):
        estimator.estimate(photo)
    assert tries == [True] and time.monotonic() - t < 10
    with pytest.raises(PipelineError, match="this studio is offline"):
        estimator.estimate(photo)
    assert tries == [True]  # remembered: not tried again
    monkeypatch.setattr(depth_estimation, "FAILURE_REMEMBERED_S", 0.0)
    with pytest.raises(PipelineError):
        estimator.estimate(photo)
    assert tries == [True, True]  # after the window, tried again


def test_a_hub_model_in_the_local_cache_is_read_ahead_and_loads_offline(tmp_path, monkeypatch, depth):
    """The default model comes from the Hub: once it is in the local Hugging Face cache, a load (and the app's
    warm-up) reads its big files ahead like a local folder's, found without asking the Hub; the image is the local
    folder's. Not in the cache: nothing to read ahead (the load then downloads, or says what to download)."""
    from huggingface_hub import constants

    from fluxdepth_ui.pipeline import sources
    from fluxdepth_ui.pipeline.variants import QuantizedCache, get_variant

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-flux"
    snapshot = repo / "snapshots" / commit
    FluxControlPipeline(**build_tiny_components(0)).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    source, cache = ModelSource("someone/tiny-flux"), QuantizedCache(str(tmp_path / "cache"))
    assert source.kind == "hub"
    shards = [str(p) for c in ("transformer", "text_encoder_2") for p in sorted((snapshot / c).glob("*.safetensors"))]
    assert shards and sources._files_to_read(source, get_variant("bf16"), cache) == shards
    assert sources._files_to_read(ModelSource("someone/not-cached"), get_variant("bf16"), cache) == []
    read_ahead = []
    monkeypatch.setattr(sources, "_prefetch", lambda paths, for_next_load=False: read_ahead.append(list(paths)))
    ours = PipelineManager(source, cache_root=str(tmp_path / "cache"))
    image = ours.generate(depth.control, GenerationSettings("a wooden chair", seed=7, steps=2)).image
    assert read_ahead == [shards] and ours.status()["revision"] == commit
    local = PipelineManager(ModelSource(str(snapshot)), cache_root=str(tmp_path / "cache"))
    same = local.generate(depth.control, GenerationSettings("a wooden chair", seed=7, steps=2)).image
    assert np.array_equal(np.asarray(image), np.asarray(same))


def test_model_builds_take_turns_across_threads(monkeypatch):
    """from_pretrained switches the default dtype and accelerate's init_empty_weights patches nn.Module while they
    run: the pipeline's load and the depth estimator's (or the preview decoder's) hold one process-wide lock, so
    another thread's build waits instead of interleaving (sources.MODEL_BUILDING)."""
    import threading

    from fluxdepth_ui.pipeline import sources, tiny

    def free_for_another_thread() -> bool:
        result = []

        def probe():
            got = sources.MODEL_BUILDING.acquire(blocking=False)
            if got:
                sources.MODEL_BUILDING.release()
            result.append(got)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return result[0]

    seen = []
    real_build = tiny.build_tiny_components

    def build(*args, **kwargs):
        seen.append(("pipeline", free_for_another_thread()))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_components", build)
    PipelineManager(ModelSource("tiny-random"), variant="bf16").load()
    sources.from_cache_or_hub(lambda local_only: seen.append(("estimator", free_for_another_thread())))
    assert seen == [("pipeline", False), ("estimator", False)] and free_for_another_thread()
