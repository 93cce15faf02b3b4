"""16-bit PNG and EXR copies from the VAE's float decode (docs/outputs.md), through the CLI, sequences and the
pipeline manager, with tiny-random."""

import json

import numpy as np
import OpenEXR
import pytest
from PIL import Image

from conftest import BEACHBALL
from fluxdepth_ui.cli import main
from fluxdepth_ui.image_files import check_formats, linear_to_srgb, read_extra, read_record, srgb_to_linear
from test_sequence import make_sequence


def eight_bit(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def test_generate_also_saves_16bit_png_and_linear_exr(tmp_path, capsys):
    out = tmp_path / "shot.png"
    rc = main(["generate", str(BEACHBALL), "--prompt", "a beach ball", "--model", "tiny-random", "--steps", "2",
               "--seed", "3", "--long-side", "256", "--also-save", "exr,png16", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    info = json.loads(captured.out)
    png16, exr = tmp_path / "shot-16bit.png", tmp_path / "shot.exr"
    assert info["also_saved"] == {"png16": str(png16), "exr": str(exr)}
    # The model loading is announced with its tier and placement (stderr, so farm logs show it too).
    assert "loading model tiny-random" in captured.err and "(bf16, placement auto on cpu)" in captured.err

    png8 = eight_bit(out)
    deep = read_extra(str(png16))
    # Same picture; the 8-bit PNG is the 16-bit one rounded to 256 levels (both from one float decode).
    assert deep.shape == png8.shape == (192, 256, 3)
    assert np.abs(deep - png8).max() <= 0.5 / 255 + 1 / 65535
    assert len(np.unique(deep)) > len(np.unique(png8))  # real extra precision, not 8 bits scaled up
    with Image.open(png16) as img:  # any PNG reader opens it
        assert img.size == (256, 192)

    linear = read_extra(str(exr))
    with OpenEXR.File(str(exr), header_only=True) as f:
        header = dict(f.header())  # the dict is emptied when the file closes
    assert header.get("colorInteropID") == "lin_rec709_scene", header
    assert np.allclose(header["chromaticities"], (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290), atol=1e-6)
    # Linear: a mid grey in the PNG is ~0.2 in the EXR; encoded back it matches the 16-bit PNG within half precision.
    assert np.abs(linear_to_srgb(linear) - deep).max() < 2e-3
    assert np.abs(linear - srgb_to_linear(deep)).max() < 2e-3
    for path in (png16, exr):
        record = read_record(str(path))
        assert record["seed"] == 3 and record["prompt"] == "a beach ball" and record["variant"] == "bf16"
    sidecar = json.loads((tmp_path / "shot.json").read_text())
    assert sidecar["extra_files"] == {"png16": "shot-16bit.png", "exr": "shot.exr"}


def test_unknown_format_is_exit_2_before_any_work(tmp_path, capsys):
    rc = main(["generate", str(BEACHBALL), "--prompt", "x", "--model", "tiny-random", "--also-save", "tiff",
               "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unknown output format 'tiff'; choose from: png16, exr")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("given, wanted", [("", ()), ("exr", ("exr",)), (["EXR", " png16 "], ("png16", "exr")),
                                           (None, ())])
def test_format_lists(given, wanted):
    assert check_formats(given) == wanted


def test_sequence_resume_checks_the_extra_files(tmp_path, capsys):
    seq = make_sequence(tmp_path / "seq")
    out = tmp_path / "out"
    args = ["sequence", str(seq / "shot.####.exr"), "--prompt", "a hall", "--model", "tiny-random", "--steps", "1",
            "--seed", "2", "--long-side", "256", "--also-save", "exr", "--out", str(out)]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["rendered"] == [1, 2, 3, 4] and len(list(out.glob("frame.*.exr"))) == 4
    (out / "frame.0002.exr").unlink()  # a frame whose EXR is gone is not finished
    (out / "frame.0003.exr").write_bytes(b"v/1\x01 cut short")  # nor one whose EXR does not decode
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["rendered"] == [2, 3] and second["skipped"] == [1, 4]
    assert read_extra(str(out / "frame.0003.exr")).shape == (192, 256, 3)


def test_manager_keeps_the_float_decode_the_png_is_rounded_from(tmp_path):
    from fluxdepth_ui.depth import DepthSettings, prepare_depth
    from fluxdepth_ui.pipeline import PipelineManager
    from fluxdepth_ui.pipeline.sources import ModelSource
    from fluxdepth_ui.settings import GenerationSettings

    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path))
    control = prepare_depth(str(BEACHBALL), DepthSettings(long_side=256)).control
    result = manager.generate(control, GenerationSettings("x", seed=1, steps=1))
    assert result.pixels.dtype == np.float32 and result.pixels.shape == (192, 256, 3)
    assert np.array_equal(np.asarray(result.image), (result.pixels * 255).round().astype(np.uint8))


TORCH_FREE = r'''
import json, sys
from types import SimpleNamespace

import numpy as np
from PIL import Image

import fluxdepth_ui.bfl, fluxdepth_ui.cli, fluxdepth_ui.depth, fluxdepth_ui.sequence, fluxdepth_ui.shot
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.outputs import GenerationMetadata, read_metadata, write_shot
from fluxdepth_ui.pipeline import GenerationCancelled, PipelineError  # the errors alone: no torch either

folder, depth = sys.argv[1], sys.argv[2]
control = prepare_depth(depth, DepthSettings(long_side=256)).control
pixels = np.random.default_rng(0).random((control.height, control.width, 3), dtype=np.float32)
image = Image.fromarray((pixels * 255).round().astype(np.uint8))
meta = GenerationMetadata(prompt="a hall", seed=3, steps=2, guidance=10.0, width=control.width,
                          height=control.height, variant="bf16", model="m", revision="r")
png, sidecar, extras = write_shot(SimpleNamespace(image=image, pixels=pixels), meta, control, folder + "/shot.png",
                                  folder + "/control/shot.png", ("png16", "exr"))
print(json.dumps({"torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules,
                  "seed": read_metadata(png).seed, "extras": sorted(extras),
                  "sidecar": json.load(open(sidecar))["extra_files"]}))
'''


def test_front_ends_and_the_output_writer_never_import_torch(tmp_path):
    """The CLI, the BFL backend, the shot and sequence services, the depth package and the one writer of a shot's
    files (outputs.write_shot) load and write a whole shot without torch (1.5 s of import a front end need not pay)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", TORCH_FREE, str(tmp_path), str(BEACHBALL)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {"torch": False, "diffusers": False, "seed": 3, "extras": ["exr", "png16"],
                   "sidecar": {"png16": "shot-16bit.png", "exr": "shot.exr"}}
    assert (tmp_path / "control" / "shot.png").is_file()
