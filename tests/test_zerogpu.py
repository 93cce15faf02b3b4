"""ZeroGPU start-up compile (pipeline/zerogpu.py) with a fake `spaces` module that follows the real helpers' contract:
`GPU(duration=)` wraps a function, `aoti_capture` records the module's first call and stops it, `aoti_compile` takes
an ExportedProgram (here: runs the exported graph itself, on the CPU), `aoti_apply` puts it in place of the forward.
The export is torch's real one, with the dynamic token dimensions the Space relies on."""

import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from conftest import DEPTH_SYN
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineError, PipelineManager
from fluxdepth_ui.settings import StyleLora

TINY = ModelSource("tiny-random")


class Captured(Exception):
    pass


def fake_spaces():
    spaces = types.ModuleType("spaces")
    spaces.calls = []

    def GPU(duration=None):
        def wrap(fn):
            def run(*args, **kwargs):
                spaces.calls.append(("GPU", duration))
                return fn(*args, **kwargs)

            return run

        return wrap

    @contextmanager
    def aoti_capture(module):
        call = types.SimpleNamespace(args=None, kwargs=None)

        def record(*args, **kwargs):
            call.args, call.kwargs = args, kwargs
            raise Captured

        module.forward = record
        try:
            yield call
        except Captured:
            pass
        finally:
            del module.forward
        spaces.calls.append(("capture", call.kwargs["hidden_states"].shape))

    class Compiled:  # like the real helpers' compiled model: a plain callable, not a torch module
        def __init__(self, exported):
            self.graph = exported.module()

        def __call__(self, *args, **kwargs):
            spaces.calls.append(("run", kwargs["hidden_states"].shape[1]))
            return self.graph(*args, **kwargs)

    def aoti_compile(exported, inductor_configs=None):
        spaces.calls.append(("compile", exported.range_constraints))
        return Compiled(exported)

    def aoti_apply(compiled, module):
        spaces.calls.append(("apply", type(module).__name__))
        module.forward = compiled

    spaces.GPU, spaces.aoti_capture = GPU, aoti_capture
    spaces.aoti_compile, spaces.aoti_apply = aoti_compile, aoti_apply
    return spaces


def settings(*loras):
    return GenerationSettings("a lighthouse", seed=5, steps=2, loras=loras)


@pytest.fixture
def on_zerogpu(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    spaces = fake_spaces()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    # The tiny model runs on the CPU here; on a Space the device is "cuda". The decision itself is ZeroGPU's branch.
    from fluxdepth_ui.pipeline import speed

    real = speed.decide_compile
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.decide_compile",
                        lambda requested, device, placement: real(requested, torch.device("cuda"), placement))
    return spaces


def test_the_space_compiles_once_at_start_up_and_every_size_runs_compiled(on_zerogpu, tmp_path):
    from fluxdepth_ui.ui import handlers as h
    from fluxdepth_ui.ui.launch import start_on_zerogpu
    from fluxdepth_ui.ui.sharing import make_policy

    eager = PipelineManager(TINY, cache_root=str(tmp_path / "eager"))
    manager = PipelineManager(TINY, cache_root=str(tmp_path / "cache"), compile=True)
    studio = h.Studio(manager=manager, outputs=tmp_path / "outputs", policy=make_policy(True, "bf16", ["bf16"], None,
                                                                                          None))
    start_on_zerogpu(studio)
    kinds = [c[0] for c in on_zerogpu.calls]
    assert kinds == ["GPU", "capture", "compile", "apply"] and on_zerogpu.calls[0][1] == 1500
    assert on_zerogpu.calls[1][1][1] == (1024 // 16) ** 2  # captured at the default size
    for long_side in (256, 320):  # other sizes than the captured one: the token dimensions are dynamic
        depth = prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=long_side))
        got = manager.generate(depth.control, settings())
        want = eager.generate(depth.control, settings())
        assert got.image.size == want.image.size
        np.testing.assert_allclose(got.pixels, want.pixels, atol=1e-5)
        assert got.metadata.compiled
        tokens = (got.image.size[0] // 16) * (got.image.size[1] // 16)
        assert on_zerogpu.calls[-2:] == [("run", tokens)] * 2  # both steps ran the compiled graph
    assert [c[0] for c in on_zerogpu.calls].count("compile") == 1
    start_on_zerogpu(studio)  # a second call compiles nothing
    assert [c[0] for c in on_zerogpu.calls].count("compile") == 1


def test_style_loras_are_refused_in_one_line_on_a_compiled_space(on_zerogpu, tmp_path):
    manager = PipelineManager(TINY, cache_root=str(tmp_path), compile=True, lora_dir=str(tmp_path))
    manager.compile_on_zerogpu(on_zerogpu)
    depth = prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))
    with pytest.raises(PipelineError, match=r"style LoRAs are off on this Space: .*FLUXDEPTH_COMPILE") as err:
        manager.generate(depth.control, settings(StyleLora("ink.safetensors", 1.0)))
    assert "\n" not in str(err.value)


def test_a_tier_switched_to_after_start_up_says_how_to_get_it(on_zerogpu, tmp_path):
    manager = PipelineManager(TINY, cache_root=str(tmp_path), compile=True)
    depth = prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))
    with pytest.raises(PipelineError, match="compiled at start-up only: start the Space with FLUXDEPTH_VARIANT"):
        manager.generate(depth.control, settings())


def test_fp8_quantizes_inside_the_start_up_gpu_call(on_zerogpu, tmp_path, monkeypatch):
    """On ZeroGPU the fp8 weights are made in the long GPU call, just before the export, not at load."""
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.check_fp8", lambda device: None)
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.fp8_quantize_transformer",
                        lambda transformer, device, exclude, keep_on_gpu=True: on_zerogpu.calls.append(("quantize",)))
    manager = PipelineManager(TINY, variant="fp8", cache_root=str(tmp_path))
    manager.load()
    assert on_zerogpu.calls == []
    manager.compile_on_zerogpu(on_zerogpu)
    assert [c[0] for c in on_zerogpu.calls] == ["GPU", "quantize", "capture", "compile", "apply"]


def test_a_failed_start_up_compile_runs_bf16_uncompiled_and_stops_fp8_in_one_line(on_zerogpu, tmp_path, monkeypatch):
    def broken(exported, inductor_configs=None):
        raise RuntimeError("inductor could not build it")

    monkeypatch.setattr(on_zerogpu, "aoti_compile", broken)
    manager = PipelineManager(TINY, cache_root=str(tmp_path), compile=True)
    manager.compile_on_zerogpu(on_zerogpu)
    depth = prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))
    want = PipelineManager(TINY, cache_root=str(tmp_path / "eager")).generate(depth.control, settings())
    got = manager.generate(depth.control, settings())
    np.testing.assert_array_equal(got.pixels, want.pixels)
    assert not got.metadata.compiled and any("start-up compile failed (RuntimeError)" in n for n in manager._notes)

    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.check_fp8", lambda device: None)
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.fp8_quantize_transformer", lambda *a, **k: None)
    fp8 = PipelineManager(TINY, variant="fp8", cache_root=str(tmp_path))
    with pytest.raises(PipelineError, match=r"fp8 tier could not be compiled on this Space \(RuntimeError\); start "
                                            "it with FLUXDEPTH_VARIANT=bf16"):
        fp8.compile_on_zerogpu(on_zerogpu)


def test_quantized_tiers_stay_uncompiled_on_zerogpu(on_zerogpu, tmp_path):
    manager = PipelineManager(TINY, variant="qint8", cache_root=str(tmp_path), compile=True)
    manager.compile_on_zerogpu(on_zerogpu)
    assert on_zerogpu.calls == [] and manager._zerogpu is None and not manager._compiled
    assert any("compile is off for qint8 on ZeroGPU" in n for n in manager._notes)


def test_a_space_that_cannot_compile_fp8_stops_at_start_in_one_line(on_zerogpu, tmp_path, monkeypatch, capsys):
    from fluxdepth_ui.ui import launch

    def broken(exported, inductor_configs=None):
        raise RuntimeError("inductor could not build it")

    monkeypatch.setattr(on_zerogpu, "aoti_compile", broken)
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.check_fp8", lambda device: None)
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.fp8_quantize_transformer", lambda *a, **k: None)
    monkeypatch.setattr("fluxdepth_ui.ui.sharing.start_retention", lambda *a: None)  # no hourly thread
    with pytest.raises(SystemExit) as done:
        launch.main(["--model", "tiny-random", "--variant", "fp8", "--outputs", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert "error: the fp8 tier could not be compiled on this Space (RuntimeError)" in err and "Traceback" not in err
