"""`fluxdepth generate`: the contract (a real subprocess for the happy path, in-process for the error cases)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import BEACHBALL, DEPTH_SYN
from fluxdepth_ui.cli import main
from fluxdepth_ui.pipeline import read_metadata


def test_generate_writes_png_and_sidecar_and_reproduces(tmp_path, capsys):
    """The first run is a real process (the CLI contract: JSON on stdout); the second runs in this process, and
    both write the same bytes."""
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        argv = ["generate", str(BEACHBALL), "--prompt", "a beach ball", "--model", "tiny-random", "--steps", "3",
                "--seed", "11", "--long-side", "256", "--out", str(out)]
        if name == "a.png":
            proc = subprocess.run([sys.executable, "-m", "fluxdepth_ui.cli", *argv], capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stderr
            stdout = proc.stdout
        else:
            capsys.readouterr()
            assert main(argv) == 0
            stdout = capsys.readouterr().out
        info = json.loads(stdout)
        assert info["out"] == str(out) and info["seed"] == 11 and info["variant"] == "bf16"
        assert info["model"] == "tiny-random-seed0" and info["seconds"] > 0
        assert (info["width"], info["height"]) == (256, 192)
        assert any("produces noise" in n for n in info["notes"])
        outs.append(out)
    a, b = (np.asarray(Image.open(p)) for p in outs)
    assert a.shape == (192, 256, 3) and np.array_equal(a, b)
    # Files hold no wall-clock time: two runs write the same bytes (image, sidecar and 16-bit control map).
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a-control.png").read_bytes() == (tmp_path / "b-control.png").read_bytes()
    assert Image.open(tmp_path / "a-control.png").mode.startswith("I;16")
    meta = read_metadata(str(outs[0]))
    side = json.loads((tmp_path / "a.json").read_text())
    # The sidecar is the PNG's record plus the shot's settings (what the app's History restores).
    shot = side.pop("shot")
    assert meta.file_dict() == side and "seconds" not in side
    from fluxdepth_ui.settings import ShotSettings

    restored = ShotSettings.from_dict(shot)
    assert (restored.generation.prompt, restored.generation.seed) == (meta.prompt, meta.seed)
    assert restored.depth.channel is None and restored.depth.long_side == 256  # auto; the channel found: metadata
    assert side["depth_channel"] == "Z" and side["depth_mode"] == "disparity" and side["guidance"] == 10.0


def test_generate_img2img_in_process(tmp_path, capsys):
    init = tmp_path / "plate.png"
    Image.new("RGB", (320, 240), (90, 120, 200)).save(init)
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random", "--steps", "4",
               "--long-side", "256", "--init-image", str(init), "--strength", "0.5", "--seed", "1",
               "--variant", "qint8", "--out", str(tmp_path / "o.png")])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    side = json.loads((tmp_path / "o.json").read_text())
    assert side["strength"] == 0.5 and side["init_image"] == "plate.png" and info["variant"] == "qint8"


@pytest.mark.parametrize("args,fragment", [
    (["--model", "nope"], "neither a Hub id"),
    (["--steps", "0"], "steps 0 is out of range"),
    (["--guidance", "-2"], "guidance -2.0 is out of range"),
    (["--init-image", "/no/plate.png"], "init image not found"),
    (["--variant", "fp4"], "invalid choice"),
    (["--model", "/no/such/folder"], "does not exist"),
    (["--model", "tiny-random", "--variant", "fp8", "--long-side", "256"], "fp8 tier needs an NVIDIA GPU"),
])
def test_generate_bad_input_exit_2_one_line(tmp_path, capsys, args, fragment):
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "x", "--out", str(tmp_path / "o.png"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "o.png").exists()


def test_generate_missing_output_folder(tmp_path, capsys):
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random",
               "--out", str(tmp_path / "nope" / "o.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: output folder") and "\n" not in err


def test_generate_compile_flag_on_cpu_is_noted_and_changes_nothing(tmp_path, capsys):
    common = ["generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random", "--steps", "2",
              "--long-side", "256", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--compile", "--out", str(tmp_path / "b.png")]) == 0
    capsys.readouterr()
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)


def test_generate_with_a_mask_fixes_one_region(tmp_path, capsys):
    """`--init-image` + `--mask`: the masked region regenerated with the same control map (inpainting); the
    sidecar names the mask; a mask alone is a usage error (exit 2, one line)."""
    init = tmp_path / "result.png"
    Image.new("RGB", (256, 192), (90, 120, 200)).save(init)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (256, 192), 0)
    m.paste(255, (64, 48, 192, 144))
    m.save(mask)
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random", "--steps", "4",
               "--long-side", "256", "--init-image", str(init), "--mask", str(mask), "--strength", "0.9",
               "--seed", "2", "--out", str(tmp_path / "o.png")])
    assert rc == 0
    side = json.loads((tmp_path / "o.json").read_text())
    assert side["inpaint_mask"] == "mask.png" and side["init_image"] == "result.png" and side["strength"] == 0.9
    capsys.readouterr()
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "x", "--mask", str(mask), "--out", str(tmp_path / "p.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "give that image with --init-image" in err[0]
