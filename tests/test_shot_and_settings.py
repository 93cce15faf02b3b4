"""The shot service and the settings schema: one way to make a shot, one place for each default."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

from conftest import BEACHBALL, launch_app, write_exr
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthSettings, NormalizeSettings
from fluxdepth_ui.errors import FluxDepthError
from fluxdepth_ui.settings import GenerationSettings, PipelineSpec, SettingsError, ShotSettings

PACKAGE = Path(__file__).resolve().parents[1] / "fluxdepth_ui"
# Where each default is typed, and only there.
HOMES = {"defaults.py", "settings.py", "limits.py", "depth/control.py", "depth/normalize.py"}
RETYPED = [
    (r"long_side\s*(:\s*int)?\s*=\s*\d", "the long side"),
    (r"(value|default)\s*=\s*1024\b", "the long side"),
    (r"strength\s*(:\s*float)?\s*=\s*0?\.\d", "the img2img strength"),
    (r"value\s*=\s*0\.6\b", "the img2img strength"),
    (r"\b99\.5\b|clip_low\s*(:\s*float)?\s*=\s*0\.5", "the clip ends"),
    (r"\bsteps\s*(:\s*int)?\s*=\s*\d", "the steps"),
    (r"\bguidance\s*(:\s*float)?\s*=\s*\d", "the guidance"),
    (r"edges\s*(:\s*str)?\s*=\s*\"snap\"|value\s*=\s*\"snap\"", "the edge treatment"),
]


def test_no_default_is_typed_twice():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in HOMES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in RETYPED:
                if re.search(pattern, code):
                    offenders.append(f"{rel}:{number}: {what} re-typed: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_settings_check_themselves_and_round_trip():
    with pytest.raises(SettingsError, match="steps 0 is out of range; use 1..100"):
        GenerationSettings("x", steps=0)
    with pytest.raises(SettingsError, match="seed must be a whole number"):
        GenerationSettings("x", seed=1.5)
    with pytest.raises(FluxDepthError, match="unknown variant"):
        PipelineSpec(variant="fp4")
    g = GenerationSettings("x", seed="7", steps=3.0)
    assert (g.seed, g.steps) == (7, 3) and isinstance(g.steps, int)  # normalized once, on creation
    assert GenerationSettings("x").settled().seed is not None
    shot = ShotSettings(DepthSettings(channel="Z", normalize=NormalizeSettings(mode="linear", edges="far"),
                                      long_side=512), GenerationSettings("a hall", seed=3))
    data = json.loads(json.dumps(shot.to_dict()))
    assert ShotSettings.from_dict(data) == shot


@pytest.fixture
def sequence(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 3):
        d = np.full((96, 128), 30.0, np.float32)
        d[20:70, 10 * i: 10 * i + 50] = 5.0
        write_exr(folder / f"shot.{i:04d}.exr", {"Z": d})
    return folder


def files_of(png: Path) -> list[bytes]:
    control = png.parent / "control" / png.name if (png.parent / "control" / png.name).exists() else \
        png.with_name(png.stem + "-control.png")
    return [png.read_bytes(), png.with_suffix(".json").read_bytes(), control.read_bytes()]


def test_cli_api_and_sequence_make_the_same_files(tmp_path, sequence, capsys):
    """One shot, three ways in: the CLI, the /generate endpoint and a sequence frame write identical bytes."""
    common = ["--prompt", "a hall", "--model", "tiny-random", "--steps", "2", "--long-side", "256", "--seed", "5"]
    # CLI vs API, the same file and settings.
    assert main(["generate", str(BEACHBALL), *common, "--out", str(tmp_path / "cli.png")]) == 0
    studio, demo = launch_app(tmp_path)
    try:
        Client(demo.local_url, verbose=False).predict(handle_file(str(BEACHBALL)), "a hall", seed=5, steps=2,
                                                      long_side=256, api_name="/generate")
    finally:
        demo.close()
    api_png = next(studio.outputs.glob("*/*-seed5.png"))
    assert files_of(api_png) == files_of(tmp_path / "cli.png")

    # Fixing one region: the CLI's --init-image/--mask and the /inpaint endpoint, the same files too.
    from PIL import Image

    mask = tmp_path / "mask.png"
    m = Image.new("L", Image.open(api_png).size, 0)
    m.paste(255, (32, 32, 160, 128))
    m.save(mask)
    assert main(["generate", str(BEACHBALL), *common, "--init-image", str(api_png), "--mask", str(mask),
                 "--strength", "0.9", "--out", str(tmp_path / "fixed.png")]) == 0
    studio, demo = launch_app(tmp_path / "second")
    try:
        client = Client(demo.local_url, verbose=False)
        client.predict(handle_file(str(BEACHBALL)), "a hall", seed=5, steps=2, long_side=256, strength=0.9,
                       init_image=handle_file(str(api_png)), mask=handle_file(str(mask)), api_name="/inpaint")
        with pytest.raises(Exception, match="inpaint needs the image"):
            client.predict(handle_file(str(BEACHBALL)), "a hall", seed=5, api_name="/inpaint")
    finally:
        demo.close()
    fixed = next(studio.outputs.glob("*/*-seed5.png"))
    meta = json.loads(fixed.with_suffix(".json").read_text())
    assert meta["inpaint_mask"] == "mask.png" and files_of(fixed) == files_of(tmp_path / "fixed.png")

    # A sequence frame vs the CLI re-rendering that frame under the sequence's stats file.
    out = tmp_path / "seq"
    assert main(["sequence", str(sequence / "shot.####.exr"), *common, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", str(sequence / "shot.0002.exr"), *common, "--stats", str(out / "sequence_stats.json"),
                 "--out", str(tmp_path / "frame2.png")]) == 0
    assert files_of(out / "frame.0002.png") == files_of(tmp_path / "frame2.png")


NEW_FIELD = '''    film_grain: float = setting(0.25, label="Film grain", bounds=(0.0, 1.0), step=0.05,
                                help="grain over the result (a field added by tests/test_shot_and_settings.py)")
'''
NEW_FIELD_CHECK = r'''
import argparse, inspect, json, sys
from pathlib import Path

out = {}
from fluxdepth_ui.cli import build_parser, shot_from_args
args = build_parser().parse_args(["generate", "d.exr", "--prompt", "x", "--film-grain", "0.5", "--out", "o.png"])
out["cli"] = shot_from_args(args).generation.film_grain
out["cli_help"] = "--film-grain" in build_parser()._subparsers._group_actions[0].choices["generate"].format_help()

from fluxdepth_ui.ui.launch import build_parser as app_parser, create
studio, demo = create(app_parser().parse_args(["--model", "tiny-random", "--outputs", sys.argv[1]]))
controls = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Film grain"]
out["ui"] = [(c.value, c.minimum, c.maximum) for c in controls]
api = next(f for f in demo.fns.values() if f.api_name == "generate")
param = inspect.signature(api.fn).parameters.get("film_grain")
out["api"] = None if param is None else param.default

from fluxdepth_ui.presets import load_preset, save_preset
from fluxdepth_ui.settings import GenerationSettings, ShotSettings, preset_sections
sections = preset_sections(ShotSettings(generation=GenerationSettings("x", film_grain=0.75)))
path = save_preset("grainy", sections["depth"], sections["generation"], folder=Path(sys.argv[1]))
out["preset"] = load_preset(path).generation.get("film_grain")
print(json.dumps(out))
'''


def test_a_field_added_to_the_settings_reaches_the_cli_the_app_the_api_and_presets(tmp_path):
    """The one-codec promise (issue 27): a setting declared once, in its dataclass, appears as a CLI option, an app
    control with its range, an API parameter with its default and a preset key, with no other edit. Checked on a copy
    of the package whose GenerationSettings gained a field."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE, copy / "fluxdepth_ui", ignore=shutil.ignore_patterns("__pycache__"))
    settings = copy / "fluxdepth_ui" / "settings.py"
    source = settings.read_text()
    anchor = "    def __post_init__(self):\n        check_fields(self, SettingsError)\n        most = limits"
    assert source.count(anchor) == 1, "GenerationSettings.__post_init__ moved: update the anchor"
    settings.write_text(source.replace(anchor, NEW_FIELD + "\n" + anchor))
    (tmp_path / "outputs").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", NEW_FIELD_CHECK, str(tmp_path / "outputs")], cwd=copy, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # Two controls: the image's generation settings and the Sequence tab's.
    assert out == {"cli": 0.5, "cli_help": True, "ui": [[0.25, 0.0, 1.0]] * 2, "api": 0.25, "preset": 0.75}
