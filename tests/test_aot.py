"""Ahead-of-time compiled blocks (pipeline/aot.py) on tiny-random, on the CPU: AOTInductor really compiles and runs
here (C++ instead of Triton). The GPU gate of the compile decision is opened for the test; everything after it is
the path a CUDA machine takes."""

import os
import shutil
import sys
import threading
import time

import numpy as np
import pytest
import torch

from conftest import DEPTH_SYN
from fluxdepth_ui.atomic import exclusive
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
from fluxdepth_ui.pipeline import aot as aot_module
from fluxdepth_ui.pipeline import aot_check
from fluxdepth_ui.pipeline.aot import CHECK_FAILED, AotBlocks, aot_folder, inputs_signature, package_key, read_verdict
from fluxdepth_ui.pipeline.speed import CompileDecision, use_aot
from fluxdepth_ui.settings import StyleLora

TINY = ModelSource("tiny-random")


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One cache folder for the module: the packages compiled by the first test are the saved ones later tests load."""
    return str(tmp_path_factory.mktemp("cache"))


def open_compile_gate(monkeypatch) -> list:
    """Open the compile gate on the CPU; torch.compile (the fallback) runs with the eager backend, fast and exact.
    Returns the list of cache roots torch.compile was called for."""
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.decide_compile",
                        lambda requested, device, placement: CompileDecision(requested, ""))
    calls = []

    def eager_compile(transformer, cache_root):
        calls.append(cache_root)
        transformer.compile_repeated_blocks(backend="eager", fullgraph=True)

    monkeypatch.setattr("fluxdepth_ui.pipeline.manager.compile_transformer", eager_compile)
    return calls


@pytest.fixture(autouse=True)
def packages_asked_for(monkeypatch):
    """The packages are opt-in (FLUXDEPTH_AOT=1, docs/fast-tier.md): these tests ask for them."""
    monkeypatch.setenv("FLUXDEPTH_AOT", "1")


@pytest.fixture
def compiling(monkeypatch):
    return open_compile_gate(monkeypatch)


def settings(*loras, seed=7, prompt="a stone arch"):
    return GenerationSettings(prompt, seed=seed, steps=2, loras=loras)


@pytest.fixture(scope="module")
def eager_result(depth, tmp_path_factory):
    return PipelineManager(TINY, cache_root=str(tmp_path_factory.mktemp("eager"))).generate(depth.control, settings())


@pytest.fixture(scope="module")
def first_run(cache_root, depth):
    """The first compiled image in an empty cache (the real AOTInductor compile, about half a minute here)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FLUXDEPTH_AOT", "1")
        calls = open_compile_gate(monkeypatch)
        manager = PipelineManager(TINY, cache_root=cache_root, compile=True)
        messages = []
        result = manager.generate(depth.control, settings(), load_progress=lambda f, m: messages.append(m))
        again = manager.generate(depth.control, settings())
    return manager, result, again, messages, calls


def test_first_image_compiles_and_saves_packages_and_matches_eager(first_run, cache_root, eager_result):
    manager, result, again, messages, compiling = first_run
    assert manager._aot is not None and manager._aot.installed and not compiling  # no torch.compile
    assert [e.kind for e in manager._aot.events] == ["compiled", "compiled"]
    packages = sorted(f for f in os.listdir(aot_folder(cache_root)) if f.endswith(".pt2"))
    assert len(packages) == 2 and {p.split("-")[0] for p in packages} == {"transformer_blocks",
                                                                           "single_transformer_blocks"}
    # C++ code from inductor against eager PyTorch: the same maths, float rounding apart.
    np.testing.assert_allclose(result.pixels, eager_result.pixels, atol=2e-3)
    assert result.metadata.compiled
    assert any(m.startswith("compiling the double blocks") and "first image" in m for m in messages)
    # Each package ran once in a child process before this process loaded it, and the verdict is kept beside it.
    assert any("checking the compiled blocks in a separate process" in m for m in messages)
    assert [read_verdict(os.path.join(aot_folder(cache_root), p)) for p in packages] == [{"passed": True,
                                                                                        "reason": ""}] * 2
    assert manager.timings.first_compiled(TINY.key, manager.device_name(), "bf16") is not None
    # The second image of the same size runs the loaded blocks: nothing compiles, the same pixels come out.
    assert len(manager._aot.events) == 2 and np.array_equal(again.pixels, result.pixels)


def test_a_later_start_loads_the_saved_packages_without_compiling(first_run, compiling, cache_root, depth, monkeypatch,
                                                                  eager_result):
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again although the package was saved")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    # A package that passed its check is loaded directly: no second child process.
    monkeypatch.setattr(aot_check, "check_in_child", lambda *a, **k: pytest.fail("checked a verified package again"))
    manager = PipelineManager(TINY, cache_root=cache_root, compile=True)  # a new process, as far as the cache knows
    messages = []
    result = manager.generate(depth.control, settings(), load_progress=lambda f, m: messages.append(m))
    assert [e.kind for e in manager._aot.events] == ["loaded", "loaded"]
    assert any("loading the compiled double blocks" in m for m in messages)
    np.testing.assert_allclose(result.pixels, eager_result.pixels, atol=2e-3)
    # img2img at the same size feeds the blocks the same shapes: the same packages serve it.
    second = manager.generate(depth.control, settings(), init_image=result.image)
    assert len(manager._aot.events) == 2 and second.image.size == result.image.size


def test_a_damaged_package_is_rebuilt_not_fatal(first_run, compiling, cache_root, depth, monkeypatch, eager_result):
    folder = aot_folder(cache_root)
    saved = {}
    for name in os.listdir(folder):
        if name.endswith(".pt2"):
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                saved[path] = fh.read()
            with open(path, "wb") as fh:
                fh.write(b"not a package")
    rebuilt = []

    def rebuild(self, path, key, compiler, block, args, kwargs):  # the real compile is the first test's; here: asked
        rebuilt.append(path)
        with open(path, "wb") as fh:
            fh.write(saved[path])

    monkeypatch.setattr(AotBlocks, "_compile", rebuild)
    manager = PipelineManager(TINY, cache_root=cache_root, compile=True)
    result = manager.generate(depth.control, settings())
    assert sorted(rebuilt) == sorted(saved)
    np.testing.assert_allclose(result.pixels, eager_result.pixels, atol=2e-3)


def test_style_loras_leave_the_packages_for_torch_compile(first_run, compiling, cache_root, depth, tmp_path):
    """A package cannot see a LoRA's hooks; the image with a LoRA must equal the eager image with that LoRA."""
    from test_loras import peft_lora

    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    peft_lora(lora_dir / "ink.safetensors", 11)
    eager = PipelineManager(TINY, cache_root=str(tmp_path / "eager"), lora_dir=str(lora_dir))
    want = eager.generate(depth.control, settings(StyleLora("ink.safetensors", 0.9))).pixels
    manager = PipelineManager(TINY, cache_root=cache_root, compile=True, lora_dir=str(lora_dir))
    manager.generate(depth.control, settings())  # loads the saved blocks
    messages = []
    got = manager.generate(depth.control, settings(StyleLora("ink.safetensors", 0.9)),
                           load_progress=lambda f, m: messages.append(m)).pixels
    assert not manager._aot.installed and compiling == [cache_root]
    np.testing.assert_array_equal(got, want)
    assert any("style LoRAs: the transformer compiles again" in m for m in messages)


def test_a_failed_export_falls_back_to_torch_compile(compiling, tmp_path, depth, monkeypatch, eager_result):
    def broken_export(*args, **kwargs):
        raise RuntimeError("export cannot trace this")

    monkeypatch.setattr(torch.export, "export", broken_export)
    manager = PipelineManager(TINY, cache_root=str(tmp_path), compile=True)
    result = manager.generate(depth.control, settings())
    assert not manager._aot.installed and compiling == [str(tmp_path)]
    assert any("ahead-of-time compile failed (RuntimeError)" in n for n in manager._notes)
    np.testing.assert_array_equal(result.pixels, eager_result.pixels)
    assert not os.path.exists(aot_folder(str(tmp_path))) or not any(
        f.endswith(".pt2") for f in os.listdir(aot_folder(str(tmp_path))))


def test_package_keys_separate_what_makes_code_valid():
    cpu = torch.device("cpu")
    x = torch.zeros(1, 192, 32)
    small = inputs_signature((), {"hidden_states": x})
    big = inputs_signature((), {"hidden_states": torch.zeros(1, 768, 32)})
    half = inputs_signature((), {"hidden_states": x.to(torch.bfloat16)})
    assert len({small, big, half}) == 3
    base = package_key("transformer_blocks", small, "bf16", {"num_layers": 19}, cpu)
    others = [
        package_key("single_transformer_blocks", small, "bf16", {"num_layers": 19}, cpu),
        package_key("transformer_blocks", big, "bf16", {"num_layers": 19}, cpu),
        package_key("transformer_blocks", small, "fp8", {"num_layers": 19}, cpu),
        package_key("transformer_blocks", small, "bf16", {"num_layers": 12}, cpu),
    ]
    names = {aot_module._key_name(k) for k in [base, *others]}
    assert len(names) == 5
    assert base["torch"] == torch.__version__ and "cpu" in base["device"]
    with torch._inductor.config.patch(coordinate_descent_tuning=True):
        tuned = package_key("transformer_blocks", small, "bf16", {"num_layers": 19}, cpu)
    assert aot_module._key_name(tuned) != aot_module._key_name(base)


def test_which_tiers_take_packages(monkeypatch):
    assert use_aot("bf16") and use_aot("fp8") and not use_aot("qint8") and not use_aot("qint4")
    monkeypatch.setenv("FLUXDEPTH_AOT", "0")
    assert not use_aot("fp8")
    monkeypatch.delenv("FLUXDEPTH_AOT")  # not asked for: torch.compile (packages are not yet measured on a GPU)
    assert not use_aot("bf16") and not use_aot("fp8")


def test_a_transformer_that_moves_keeps_torch_compile(compiling, tmp_path, monkeypatch):
    """Model offload moves the transformer every image, giving its parameters new storage under a bound package:
    such a load compiles with torch.compile instead."""
    from fluxdepth_ui.pipeline.budget import MemoryPlan
    from fluxdepth_ui.pipeline.manager import _transformer_moves
    from fluxdepth_ui.pipeline.placement import PlacementChoice

    assert not _transformer_moves(PlacementChoice("gpu", ""), None)
    assert _transformer_moves(PlacementChoice("model_offload", ""), None)
    resident = MemoryPlan(budget=8, resident=("transformer",), streamed=("text_encoder_2",))
    assert not _transformer_moves(PlacementChoice("budget", ""), resident)
    streamed = MemoryPlan(budget=8, resident=(), streamed=("transformer",))
    assert _transformer_moves(PlacementChoice("budget", ""), streamed)
    assert use_aot("fp8") and not use_aot("fp8", transformer_moves=True)
    # Through the manager: the same load with the transformer offloaded takes torch.compile, not packages.
    monkeypatch.setattr("fluxdepth_ui.pipeline.manager._transformer_moves", lambda choice, plan: True)
    manager = PipelineManager(TINY, cache_root=str(tmp_path), compile=True)
    manager.load()
    assert manager._aot is None and compiling == [str(tmp_path)]


def wait_for(messages, text, seconds=60):
    deadline = time.monotonic() + seconds
    while not any(text in m for m in messages):
        assert time.monotonic() < deadline, f"never said {text!r}: {messages}"
        time.sleep(0.05)


def test_a_second_process_waits_for_the_packages_being_compiled(first_run, compiling, cache_root, depth, tmp_path,
                                                                monkeypatch, eager_result):
    """Two farm workers on one machine start together: the second waits for the first one's packages instead of
    compiling the same blocks again. The 'first worker' here holds the packages' locks and then writes them."""
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although another process was making the package")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    made, root = aot_folder(cache_root), str(tmp_path / "second")
    folder = aot_folder(root)
    packages = [f for f in os.listdir(made) if f.endswith(".pt2")]
    locks = [exclusive(os.path.join(folder, name)) for name in packages]
    for lock in locks:
        lock.__enter__()
    messages, result = [], {}
    manager = PipelineManager(TINY, cache_root=root, compile=True)
    worker = threading.Thread(target=lambda: result.update(
        image=manager.generate(depth.control, settings(), load_progress=lambda f, m: messages.append(m))))
    worker.start()
    try:
        wait_for(messages, "waiting for another process compiling the same double blocks")
        for name in os.listdir(made):
            shutil.copy(os.path.join(made, name), folder)
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)
    worker.join(120)
    assert [e.kind for e in manager._aot.events] == ["loaded", "loaded"]
    np.testing.assert_allclose(result["image"].pixels, eager_result.pixels, atol=2e-3)


def test_the_warmup_command_makes_the_packages_a_later_run_loads(compiling, tmp_path, monkeypatch, capsys):
    """`fluxdepth warmup` before a job: the first run compiles each size's blocks, a later one (another worker,
    the job itself) loads them; bad sizes are one-line errors with exit code 2."""
    import json

    from fluxdepth_ui.cli import main

    monkeypatch.setenv("FLUXDEPTH_CACHE", str(tmp_path))
    args = ["warmup", "--model", "tiny-random", "--compile", "--size", "256x192"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["compiled"] and first["cache"] == str(tmp_path)
    assert first["sizes"]["256x192"]["blocks"] == {"transformer_blocks": "compiled",
                                                   "single_transformer_blocks": "compiled"}
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["sizes"]["256x192"]["blocks"] == {"transformer_blocks": "loaded", "single_transformer_blocks": "loaded"}
    for size, fragment in (("1000x1000", "multiples of 16"), ("4096x4096", "256..2048"), ("big", "not WIDTHxHEIGHT")):
        assert main(["warmup", "--model", "tiny-random", "--size", size]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --size") and fragment in err and err.count("\n") == 1


CRASH = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]


def copy_made_packages(made_folder, compilers_seen):
    """An `AotBlocks._compile` that writes the package the first test really compiled (same key but the compiler):
    what the check then loads is a real package."""
    made = {name.split("-")[0]: os.path.join(made_folder, name) for name in os.listdir(made_folder)
            if name.endswith(".pt2")}

    def compile_(self, path, key, compiler, block, args, kwargs):
        compilers_seen.append((compiler, path))
        shutil.copy(made[os.path.basename(path).split("-")[0]], path)

    return compile_


def test_a_package_whose_check_crashes_is_never_loaded_and_torch_compile_serves(first_run, compiling, cache_root,
                                                                                 depth, tmp_path, monkeypatch,
                                                                                 eager_result):
    """The child that checks a package dies of SIGSEGV: the app goes on with torch.compile and one status line, the
    package is marked bad, and the next start neither compiles nor checks again."""
    root = str(tmp_path / "crashing")
    compiled = []
    monkeypatch.setattr(AotBlocks, "_compile", copy_made_packages(aot_folder(cache_root), compiled))
    monkeypatch.setattr(aot_module, "compiler_candidates", lambda: ["/opt/cc/g++"])
    monkeypatch.setattr(aot_check, "check_command", lambda *a: CRASH)
    manager = PipelineManager(TINY, cache_root=root, compile=True)
    result = manager.generate(depth.control, settings())
    assert CHECK_FAILED in manager.status()["notes"] and compiling == [root]
    assert not manager._aot.installed
    np.testing.assert_array_equal(result.pixels, eager_result.pixels)
    bad = [os.path.join(aot_folder(root), f) for f in os.listdir(aot_folder(root)) if f.endswith(".pt2")]
    assert len(bad) == 1 and read_verdict(bad[0])["passed"] is False
    assert "crashed (signal 11)" in read_verdict(bad[0])["reason"]

    def never(*args, **kwargs):
        raise AssertionError("a machine whose packages crash was tried again")

    monkeypatch.setattr(AotBlocks, "_compile", never)
    monkeypatch.setattr(aot_check, "check_in_child", never)
    later = PipelineManager(TINY, cache_root=root, compile=True)
    again = later.generate(depth.control, settings())
    assert CHECK_FAILED in later.status()["notes"] and compiling == [root, root]
    np.testing.assert_array_equal(again.pixels, eager_result.pixels)


def test_a_crashing_compiler_hands_over_to_the_next_one(first_run, compiling, cache_root, depth, tmp_path,
                                                        monkeypatch, eager_result):
    """The lent H200's case: packages built with $CXX crash the loader, those built with the system g++ run. The
    first compiler's packages are marked bad, the second's are checked and serve the image."""
    root = str(tmp_path / "two-compilers")
    compiled = []
    monkeypatch.setattr(AotBlocks, "_compile", copy_made_packages(aot_folder(cache_root), compiled))
    monkeypatch.setattr(aot_module, "compiler_candidates", lambda: ["/opt/gcc/bin/g++", "/usr/bin/g++"])
    real_command = aot_check.check_command
    monkeypatch.setattr(aot_check, "check_command", lambda package, *a: CRASH if any(
        path == package and compiler.startswith("/opt") for compiler, path in compiled) else real_command(package, *a))
    manager = PipelineManager(TINY, cache_root=root, compile=True)
    result = manager.generate(depth.control, settings())
    assert manager._aot.installed and compiling == [] and CHECK_FAILED not in manager.status()["notes"]
    assert sorted(c for c, _ in compiled) == ["/opt/gcc/bin/g++"] * 2 + ["/usr/bin/g++"] * 2  # both block kinds
    verdicts = {c: read_verdict(p)["passed"] for c, p in compiled}
    assert verdicts == {"/opt/gcc/bin/g++": False, "/usr/bin/g++": True}
    np.testing.assert_allclose(result.pixels, eager_result.pixels, atol=2e-3)
