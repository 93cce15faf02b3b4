"""`fluxdepth preview`: the contract other work and users rely on (run as a real subprocess)."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import BEACHBALL, DEPTH_SYN, NOZ_EXR


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fluxdepth_ui.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_preview_writes_16bit_png_and_json(tmp_path):
    out = tmp_path / "ctrl.png"
    proc = run_cli("preview", BEACHBALL, "--out", out)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["channel"] == "Z" and info["mode"] == "disparity" and info["inverted"] is False
    assert (info["width"], info["height"]) == (1024, 768)
    assert 0.18 < info["valid_fraction"] < 0.19 and info["range"]["mode"] == "disparity"
    assert isinstance(info["warnings"], list)
    img = Image.open(out)
    assert img.mode.startswith("I;16") and img.size == (1024, 768)
    px = np.array(img)
    assert px.max() == 65535 and px[0, 0] == 0  # near object white, empty corner black
    assert np.unique(px).size > 256  # not squeezed to 8 bits


def test_preview_options_change_the_map(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run_cli("preview", DEPTH_SYN, "--out", a, "--long-side", "512").returncode == 0
    proc = run_cli("preview", DEPTH_SYN, "--out", b, "--long-side", "512", "--mode", "linear", "--invert", "on",
                   "--clip", "1", "99")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["mode"] == "linear" and info["inverted"] is True and info["width"] == 512
    assert not np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


def test_preview_bad_inputs_exit_2_with_one_line(tmp_path):
    cases = [
        ("preview", NOZ_EXR, "--out", tmp_path / "x.png"),
        ("preview", tmp_path / "missing.exr", "--out", tmp_path / "x.png"),
        ("preview", BEACHBALL, "--out", tmp_path / "x.png", "--mode", "bogus"),
        ("preview", BEACHBALL, "--out", tmp_path / "no_dir" / "x.png"),
        ("preview", BEACHBALL, "--out", tmp_path / "x.png", "--near", "5", "--far", "2"),
        ("preview", BEACHBALL),
    ]
    for args in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_every_help_prints_usage_without_a_traceback(capsys):
    """`--help` of the program and of each subcommand (a stray % in a help string once crashed `sequence --help`)."""
    import argparse

    import pytest

    from fluxdepth_ui.cli import build_parser, main

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"preview", "generate", "sequence", "warmup"} <= set(commands)
    for argv in ([], *([name] for name in commands)):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and out.startswith("usage: fluxdepth"), argv
    # Bare `fluxdepth`: the usage and the commands, exit 2.
    bare = subprocess.run([sys.executable, "-m", "fluxdepth_ui.cli"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and bare.stderr.startswith("usage: fluxdepth") and "sequence" in bare.stderr
